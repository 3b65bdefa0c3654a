"""Continual learning across SIT stages (`retain.*`): each method's mathematics against an independent computation,
every method the same on 1 and 2 ranks at ZeRO 0, 1 and 2, and the CochlScene -> TAU chain end to end (the
CochlScene head carried bit for bit, its test before and after, the importance files, the config's refusals).
"""
from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from trainer.config import load_config, validate
from trainer.configtools import ConfigError
from trainer.model.frontend import FrontendConfig, MelFrontend
from trainer.model.passt import create_model
from trainer.retain.ewc import EWC, empirical_fisher
from trainer.retain.lwf import distillation
from trainer.retain.replay import Coreset, Replay, choose, crops, draws
from trainer.retain.si import PathIntegral

from .helpers import REPO, TRAIN, logs, run_command, start_ranks, train_overrides, wait_ranks

FRONTEND = FrontendConfig(sample_rate=16000, n_mels=64, n_fft=512, win_length=400, hop_length=160, fmax=None)


def micro_model(classes: int = 5):
    torch.manual_seed(3)
    return create_model("passt_micro", classes, attention="plain", n_mels=64).eval()


def test_fisher_is_the_mean_squared_per_sample_gradient_over_the_valid_clips():
    model, frontend = micro_model(), MelFrontend(FRONTEND).eval()
    g = torch.Generator().manual_seed(0)
    audio, labels = torch.randn(5, 16000, generator=g) * 0.1, torch.tensor([0, 3, 1, 4, 2])
    valid = torch.tensor([True, True, False, True, True])  # a padded row: not a clip, never counted
    batches = [{"audio": audio[:3], "label": labels[:3], "valid": valid[:3]},
               {"audio": audio[3:], "label": labels[3:], "valid": valid[3:]}]
    fisher, n = empirical_fisher(model, frontend, batches, device=torch.device("cpu"), bf16=False)
    # independently: per-sample gradients with torch.func, over the valid clips only
    params = {k: v.detach() for k, v in model.named_parameters()}

    def nll(p, mel, y):
        return F.cross_entropy(functional_call(model, p, (mel[None],))[0], y[None])

    with torch.no_grad():
        mels = frontend(audio[valid])
    per_sample = vmap(grad(nll), in_dims=(None, 0, 0))(params, mels, labels[valid])
    assert n == 4
    for name, g2 in per_sample.items():
        torch.testing.assert_close(fisher[name], (g2 ** 2).mean(0), rtol=1e-4, atol=1e-10)
    assert fisher["blocks.0.mlp.fc1.weight"].abs().sum() > 0
    assert fisher["head_dist.weight"].abs().sum() == 0  # not in the forward pass: no information


def test_ewc_penalty_and_its_gradient():
    """(lambda / 2) sum F (theta - theta*)^2 over the weights the stage took over, gradient lambda F (theta - theta*);
    the new heads (other shape, or re-initialised) are not anchored."""
    previous = micro_model(13).state_dict()
    model = micro_model(13)
    model.load_state_dict(previous)
    model.reinit_heads(10)
    g = torch.Generator().manual_seed(1)
    fisher = {k: torch.rand(v.shape, generator=g) for k, v in previous.items()}
    ewc = EWC(model, previous, fisher, strength=8.0)
    assert "head.1.weight" not in ewc.names and "blocks.1.attn.qkv.weight" in ewc.names
    assert "head.0.weight" in ewc.names  # trunc_normal keeps the LayerNorm: it is the previous stage's
    assert ewc.penalty().item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    value = ewc.penalty()
    value.backward()
    params = dict(model.named_parameters())
    expected = sum(4.0 * (fisher[n] * (params[n].detach() - previous[n]) ** 2).sum() for n in ewc.names)
    torch.testing.assert_close(value.detach(), expected)
    for n in ewc.names:
        torch.testing.assert_close(params[n].grad, 8.0 * fisher[n] * (params[n].detach() - previous[n]))
    assert params["head.1.weight"].grad is None


def test_si_importance_is_the_hand_computed_path_integral():
    """Two micro-batches per step (the loss halved, as DeepSpeed's accumulation does), plain SGD with weight decay:
    omega = sum over steps of -g * delta, Omega = max(0, omega / ((theta_end - theta_start)^2 + xi))."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    start = {k: v.detach().clone() for k, v in layer.named_parameters()}
    recorder = PathIntegral(layer, xi=0.1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.3, weight_decay=0.05)
    x, y = torch.randn(4, 4, 3), torch.randint(0, 2, (4, 4))
    omega = {k: torch.zeros_like(v) for k, v in start.items()}
    for step in range(4):
        before = {k: v.detach().clone() for k, v in layer.named_parameters()}
        grads = {k: torch.zeros_like(v) for k, v in start.items()}
        for half in (slice(0, 2), slice(2, 4)):
            loss = F.cross_entropy(layer(x[step, half]), y[step, half]) / 2
            loss.backward()
            copies = {k: v.detach().clone().requires_grad_() for k, v in before.items()}  # no hooks on these
            again = F.cross_entropy(F.linear(x[step, half], copies["weight"], copies["bias"]), y[step, half]) / 2
            for k, g in zip(copies, torch.autograd.grad(again, list(copies.values()))):
                grads[k] += g
        optimizer.step()
        optimizer.zero_grad()
        recorder.after_step()
        for k, p in layer.named_parameters():
            omega[k] += -grads[k] * (p.detach() - before[k])
    importance = recorder.importance()
    for k, p in layer.named_parameters():
        expected = torch.clamp(omega[k] / ((p.detach() - start[k]) ** 2 + 0.1), min=0)
        torch.testing.assert_close(importance[k], expected)
    assert sum(v.sum() for v in importance.values()) > 0
    recorder.close()


def test_lwf_loss_is_the_hand_computed_distillation():
    student, teacher, t = torch.tensor([[1.0, -0.5, 0.2], [0.0, 2.0, -1.0]]), torch.tensor([[0.3, 0.1, -0.4],
                                                                                            [1.5, 0.5, 0.0]]), 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / t) for v in t_row]
        q = [math.exp(v / t) for v in s_row]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    assert distillation(student, teacher, t).item() == pytest.approx(t * t * expected / 2, rel=1e-6)
    assert distillation(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


def test_replay_draws_every_coreset_clip_and_the_same_global_batches_on_any_world_size():
    size, k = 7, 2
    # one rank, 4 micro-batches of k per step, vs two ranks, 2 each: the same clips per optimizer step
    one = [draws(size, k, seed=5, epoch=3, micro=m, rank=0, world=1) for m in range(12)]
    two = [[draws(size, k, seed=5, epoch=3, micro=m, rank=r, world=2) for r in (0, 1)] for m in range(6)]
    assert all(len(d) == k for d in one)
    for step in range(3):
        assert sorted(np.concatenate(one[4 * step:4 * step + 4])) == sorted(
            np.concatenate([two[m][r] for m in (2 * step, 2 * step + 1) for r in (0, 1)]))
    # 24 slots over 7 clips: 3 whole permutations (every clip 3 times), then 3 clips of the 4th once more
    counts = np.bincount(np.concatenate(one), minlength=size)
    assert sorted(counts) == [3, 3, 3, 3, 4, 4, 4]
    assert sorted(np.concatenate(one)[:size]) == list(range(size))  # each clip once before any twice
    assert np.array_equal(draws(size, k, seed=5, epoch=3, micro=9, rank=0, world=1), one[9])  # a pure function
    assert not np.array_equal(np.concatenate(one[:4]), np.concatenate(
        [draws(size, k, seed=5, epoch=4, micro=m, rank=0, world=1) for m in range(4)]))  # another epoch, another order
    assert np.array_equal(crops(100, 2, seed=5, epoch=3, micro=1, rank=0, world=1),
                          np.concatenate([crops(100, 1, seed=5, epoch=3, micro=m, rank=r, world=2)
                                          for m, r in ((1, 0), (1, 1))]))  # crops follow the slot too
    assert choose([f"k{i}" for i in range(10)], 4, seed=1) == choose([f"k{i}" for i in range(10)], 4, seed=1)
    assert choose(["a", "b"], 5, seed=1) == ["a", "b"]


def test_replay_batch_and_loss():
    """n of this stage's clips then k coreset crops; the loss is the mean over all n + k clips, each through its head."""
    g = torch.Generator().manual_seed(2)
    coreset = Coreset(["a", "b", "c"], torch.randn(3, 50, generator=g), torch.tensor([4, 0, 7]))
    head = torch.nn.Linear(6, 13)
    replay = Replay(head, coreset, 2, 20, seed=1, rank=0, world=1, device=torch.device("cpu"))
    batch = {"audio": torch.randn(3, 20, generator=g), "label": torch.tensor([1, 2, 3])}
    mixed = replay.batch(batch, epoch=0, micro=4)
    picked = draws(3, 2, seed=1, epoch=0, micro=4, rank=0, world=1)
    starts = crops(31, 2, seed=1, epoch=0, micro=4, rank=0, world=1)
    assert mixed.audio.shape == (5, 20) and torch.equal(mixed.audio[:3], batch["audio"])
    for row, i, s in zip(mixed.audio[3:], picked, starts):
        assert torch.equal(row, coreset.audio[i, s:s + 20])
    assert mixed.previous_labels.tolist() == coreset.labels[picked].tolist()
    logits, features = torch.randn(5, 10, generator=g), torch.randn(5, 6, generator=g)
    expected = (F.cross_entropy(logits[:3], mixed.labels, reduction="sum")
                + F.cross_entropy(head(features[3:]), mixed.previous_labels, reduction="sum")) / 5
    torch.testing.assert_close(replay.loss(None, logits, features, mixed), expected)


def test_every_method_is_the_same_on_one_and_two_ranks_at_every_zero_stage(tmp_path):
    """tests/retain_probe.py: a few steps of each method on fixed global batches; the weights after them (and SI's
    recorded importance) agree across 1 and 2 ranks and ZeRO 0 / 1 / 2, and each method moves them its own way."""
    (tmp_path / "logs").mkdir()
    probe = REPO / "tests" / "retain_probe.py"
    started = [start_ranks([str(tmp_path / f"w{w}.pt")], tmp_path / "logs", world=w, script=probe) for w in (1, 2)]
    codes = [wait_ranks(procs) for procs in started]
    assert codes == [[0], [0, 0]], logs(tmp_path / "logs")
    one, two = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    plain = one["none-z0"]["weights"]
    for case, result in one.items():
        for other in (two[case], one[case.split("-")[0] + "-z0"]):
            for name, w in result["weights"].items():
                torch.testing.assert_close(other["weights"][name], w, rtol=1e-5, atol=1e-6)
        if "importance" in result:
            for name, w in result["importance"].items():
                torch.testing.assert_close(two[case]["importance"][name], w, rtol=1e-4, atol=1e-6)
            assert sum(v.sum() for v in result["importance"].values()) > 0
        method = case.split("-")[0]
        moved = max((result["weights"][n] - plain[n]).abs().max().item() for n in plain)
        assert (moved > 1e-3) == (method not in ("none", "record")), (case, moved)


# --- the chain end to end: CochlScene (recording) -> TAU (carrying its head) ----------------------------------

@pytest.fixture(scope="module")
def chain(trainable, tmp_path_factory) -> dict:
    """A CochlScene run on 2 ranks at ZeRO 1 that records fisher.pt / si.pt, then a TAU run on 2 ranks at ZeRO 2
    with replay (which trains the shared backbone through the carried head)."""
    work = tmp_path_factory.mktemp("retain")
    (work / "logs").mkdir()
    cochl = ["--stage", "cochl", *train_overrides(trainable, work / "runs", "c", train__epochs=2, train__zero_stage=1,
                                                  optim__method="seq_ft", retain__record="true",
                                                  retain__fisher_samples=20)]
    assert wait_ranks(start_ranks(cochl, work / "logs")) == [0, 0], logs(work / "logs")
    model = work / "runs" / "cochl" / "c" / "model.pt"
    tau = ["--stage", "tau", *train_overrides(trainable, work / "runs", "t", dataset="tau22", init_from=model,
                                              train__epochs=2, train__zero_stage=2, optim__method="seq_ft",
                                              data__train_split="train", retain__method="replay",
                                              retain__keep_head="true", retain__replay_size=6,
                                              retain__replay_share=0.5)]
    assert wait_ranks(start_ranks(tau, work / "logs")) == [0, 0], logs(work / "logs")
    return {"work": work, "cochl": model.parent, "tau": work / "runs" / "tau" / "t", "trainable": trainable}


def test_the_cochl_stage_leaves_fisher_and_si_beside_its_model(chain):
    kept = torch.load(chain["cochl"] / "model.pt", weights_only=True)["state_dict"]
    fisher = torch.load(chain["cochl"] / "fisher.pt", weights_only=True)
    si = torch.load(chain["cochl"] / "si.pt", weights_only=True)
    weights = {n for n, _ in create_model("passt_micro", 13).named_parameters()}
    assert set(fisher["importance"]) == set(si["importance"]) == weights and weights <= set(kept)
    assert fisher["samples"] == 20  # retain.fisher_samples of the 26 train clips, split over the 2 ranks
    for name, f in fisher["importance"].items():
        assert f.shape == kept[name].shape and (f >= 0).all() and (si["importance"][name] >= 0).all()
    assert fisher["importance"]["blocks.0.mlp.fc1.weight"].sum() > 0 and si["importance"]["head.1.weight"].sum() > 0
    assert "recording fisher.pt and si.pt" in logs(chain["work"] / "logs")


def test_the_tau_stage_carries_the_cochl_head_bit_for_bit_and_tests_cochl_before_and_after(chain):
    cochl = torch.load(chain["cochl"] / "model.pt", weights_only=True)
    tau = torch.load(chain["tau"] / "model.pt", weights_only=True)
    carried = tau["previous_head"]
    assert carried["classes"] == cochl["classes"] and carried["model"] == str(chain["cochl"] / "model.pt")
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.equal(carried["state_dict"][key], cochl["state_dict"][f"head.{key}"])
    backbone = "blocks.0.mlp.fc1.weight"
    assert not torch.equal(tau["state_dict"][backbone], cochl["state_dict"][backbone])  # TAU trained the backbone
    assert tau["state_dict"]["head.1.weight"].shape[0] == 10 and set(tau["state_dict"]) == set(cochl["state_dict"])
    summary = json.loads((chain["tau"] / "summary.json").read_text())
    previous = summary["previous"]
    cochl_test = json.loads((chain["cochl"] / "summary.json").read_text())["test"]
    # before TAU, the carried head on the untouched backbone is the CochlScene model: its own test result
    assert previous["before"]["accuracy"] == pytest.approx(cochl_test["accuracy"])
    assert previous["before"]["log_loss"] == pytest.approx(cochl_test["log_loss"], rel=1e-4)
    assert previous["after"]["num_samples"] == cochl_test["num_samples"] == 13
    assert previous["forgetting"] == pytest.approx(previous["before"]["accuracy"] - previous["after"]["accuracy"])
    assert previous["after"]["log_loss"] != pytest.approx(previous["before"]["log_loss"])
    assert previous["method"] == "replay" and previous["classes"] == cochl["classes"]
    text = logs(chain["work"] / "logs")
    assert "replay (1 of every micro-batch from 6 coreset clips)" in text and "head kept frozen" in text


def _tau(chain, tmp_path, **extra) -> list[str]:
    settings = {"init_from": chain["cochl"] / "model.pt", "data__train_split": "train", **extra}
    return train_overrides(chain["trainable"], tmp_path, "x", dataset="tau22", **settings)


@pytest.mark.parametrize("extra,message", [
    ({"retain__method": "lwf"}, "retain.method=lwf trains through the previous stage's head: set retain.keep_head=true"),
    ({"retain__method": "replay", "retain__keep_head": "true", "retain__replay_share": 0.3},
     "retain.replay_share=0.3 of train.micro_batch=2 is 0.6 clips"),
    ({"retain__method": "bogus"}, "retain.method='bogus' is not one of none, ewc, si, lwf, replay"),
    ({"retain__keep_head": "true", "retain__previous_data": "/nowhere"},
     "retain.previous_data=/nowhere: the previous stage's dataset /nowhere cannot be read"),
    ({"retain__keep_head": "true", "frontend__sample_rate": 16000},
     "frontend.sample_rate=16000, but the previous stage"),
    ({"retain__keep_head": "true", "init_from": "null"},
     "retain.keep_head=true needs init_from to be the previous stage's runs/<stage>/<run>/model.pt, got null"),
    ({"retain__si_xi": 0}, "retain.si_xi must be > 0"),
])
def test_impossible_combinations_are_config_errors(chain, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=None) as error:
        validate(load_config("tau", _tau(chain, tmp_path, **extra)), 1)
    assert message in str(error.value)


def test_ewc_and_si_without_the_previous_stage_s_files_name_them(chain, tmp_path):
    alone = tmp_path / "cochl_without_record"
    alone.mkdir()
    shutil.copyfile(chain["cochl"] / "model.pt", alone / "model.pt")
    for method, file in (("ewc", "fisher.pt"), ("si", "si.pt")):
        cfg = load_config("tau", _tau(chain, tmp_path, retain__method=method, init_from=alone / "model.pt"))
        with pytest.raises(ConfigError) as error:
            validate(cfg, 1)
        assert f"retain.method={method} needs {alone / file}" in str(error.value)
        assert "retain.record=true" in str(error.value)
    done = run_command([sys.executable, str(TRAIN), "--stage", "tau",
                        *_tau(chain, tmp_path, retain__method="ewc", init_from=alone / "model.pt")])
    assert done.returncode == 2 and f"needs {alone / 'fisher.pt'}" in done.stderr + done.stdout


def test_a_resumed_recording_run_keeps_its_path_integral(group, trainable, tmp_path):
    """SI's omega lives in every checkpoint: a run resumed from one goes on from the omega it had, not from zero."""
    from trainer.engine import Trainer

    overrides = train_overrides(trainable, tmp_path, "rec", train__epochs=2, retain__record="true",
                                retain__fisher_samples=4)
    first = Trainer(load_config("cochl", overrides)).setup()
    assert first.fit() == 0
    omega = {k: v.clone() for k, v in first.retain.recorder.omega.items()}
    start = {k: v.clone() for k, v in first.retain.recorder.start.items()}
    first.close()
    assert sum(v.abs().sum() for v in omega.values()) > 0
    again = Trainer(load_config("cochl", overrides)).setup()  # resumes from the last checkpoint: nothing left to train
    for name, w in again.retain.recorder.omega.items():
        assert torch.equal(w, omega[name]) and torch.equal(again.retain.recorder.start[name], start[name])
    again.close()
