"""The SIT schedule and parameter groups; DCASE metrics against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from trainer.metrics import classification_metrics
from trainer.model.passt import passt_micro
from trainer.sit import exp_warmup_linear_down, param_groups


def test_schedule_reproduces_the_reference_per_epoch_values():
    f = exp_warmup_linear_down(3, 10, 3, 0.01)
    values = [f(e) for e in range(16)]
    assert [round(v, 4) for v in values[:4]] == [0.0310, 0.1084, 0.5738, 1.0]
    assert values[4] == pytest.approx(0.901) and values[5] == pytest.approx(0.802)
    assert values[12] == pytest.approx(0.109) and values[13] == values[15] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))


def test_sit_groups_split_on_head_and_baselines_use_one_group():
    model = passt_micro(10)
    groups = param_groups(model, "sit", lr=1e-4, head_lr=1e-3, weight_decay=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    rep, head = groups
    assert (rep["lr"], head["lr"]) == (1e-4, 1e-3)
    assert {names[id(p)] for p in head["params"]} == {"head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias",
                                                      "head_dist.weight", "head_dist.bias"}
    assert len(rep["params"]) + len(head["params"]) == len(list(model.parameters()))
    assert not any("head" in names[id(p)] for p in rep["params"])
    (one,) = param_groups(model, "seq_ft", lr=5e-5, head_lr=1e-3, weight_decay=1e-3)
    assert one["lr"] == 5e-5 and len(one["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="method must be one of"):
        param_groups(model, "slca", lr=1, head_lr=1, weight_decay=0)


def test_metrics_match_hand_computed_values():
    classes, devices = ["x", "y", "z"], ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0],
                           [0.0, 2.0, 0.0], [0.5, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 1, 1, 2])  # predictions 0,1,2,0,1,0 -> correct 1,1,1,0,1,0
    dev = torch.tensor([0, 0, 3, 6, 6, 1])  # a, a, s1, s4, s4, b
    m = classification_metrics(logits, labels, dev, classes, devices)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"] == pytest.approx({"x": 1.0, "y": 2 / 3, "z": 0.5})
    assert m["macro_accuracy"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    def nll(row, k):
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))
    expected = sum(nll(r.tolist(), int(k)) for r, k in zip(logits, labels)) / 6
    assert m["log_loss"] == pytest.approx(expected)
    assert m["per_device"]["a"] == 1.0 and m["per_device"]["s4"] == 0.5 and m["per_device"]["b"] == 0.0
    assert m["per_device"]["c"] is None
    assert m["device_groups"] == pytest.approx({"real": 2 / 3, "seen": 1.0, "unseen": 0.5})
    assert m["confusion"] == [[1, 0, 0], [1, 2, 0], [1, 0, 1]]
