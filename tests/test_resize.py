"""Resuming on another number of ranks: a run pre-empted mid-epoch on W ranks continues on W' ranks.

Each scenario: the run is pre-empted (SIGUSR1 to every rank, as SLURM does) early in epoch 0; then it resumes
on the new number of ranks through a probe (`resume_probe.py`), which reports what the engine holds after
set-up and then trains the run to its end.
The Adam moments are checked against the stop checkpoint's, put together here independently of
`trainer.reshard` (ZeRO 2: the ranks' flat partitions concatenated and cut by the parameter shapes;
ZeRO 0: DeepSpeed's unpartitioned optimizer state).
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data_shards.pack import PackOptions
from data_shards.sources import demo
from trainer.config import load_config
from trainer.engine import EXIT_PREEMPTED, build_model, schedule_epoch
from trainer.reshard import MOMENTS
from trainer.sit import exp_warmup_linear_down, param_groups

from .helpers import REPO, TINY, logs, start_ranks, train_overrides, wait_ranks

PROBE = REPO / "tests" / "resume_probe.py"
EPOCHS = 2
STEPS = 32  # 65 train clips, global batch 2: 32 steps per epoch on 1 and on 2 ranks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """CochlScene with 5 clips per scene in Train/ (65): epochs long enough to stop well inside one."""
    size = demo.DemoSize(cochl_train=5, cochl_val=1, cochl_test=1, tau_train_recordings=TINY.tau_train_recordings,
                         tau_test_recordings=1, tau_segments=2, tau_devices_per_recording=2)
    raw = demo.generate(tmp_path_factory.mktemp("resize_raw"), seed=11, size=size)
    out = tmp_path_factory.mktemp("resize_shards")
    demo.pack_demo(raw, PackOptions(out=out, shard_samples=7, workers=2, seed=3), val_fraction=0.5)
    return out


def _overrides(corpus: Path, runs: Path, zero: int) -> list[str]:
    return train_overrides(corpus, runs, "run", train__zero_stage=zero, train__epochs=EPOCHS, train__global_batch=2,
                           train__micro_batch=1, schedule__warm_up_len=1, schedule__ramp_down_start=0,
                           schedule__ramp_down_len=2)


def _preempt_early(args: list[str], folder: Path, log_dir: Path, world: int) -> None:
    procs = start_ranks(args, log_dir, world=world)
    steps, deadline = folder / "steps.csv", time.monotonic() + 300
    while not (steps.is_file() and len(steps.read_text().splitlines()) > 2):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), logs(log_dir)
        time.sleep(0.01)
    for p in procs:
        p.send_signal(signal.SIGUSR1)
    assert wait_ranks(procs) == [EXIT_PREEMPTED] * world, logs(log_dir)


def _stop_moments(tag: Path, zero: int, cfg) -> dict[str, dict[str, torch.Tensor]]:
    """Every parameter's Adam moments in the stop checkpoint, assembled without trainer.reshard."""
    model_states = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)
    if zero == 0:  # DeepSpeed keeps the torch optimizer's own state: indexed by position in the groups
        model = build_model(cfg, 13)
        order = [p for g in param_groups(model, cfg.optim.method, lr=1, head_lr=1, weight_decay=0) for p in g["params"]]
        names = {id(p): n for n, p in model.named_parameters()}
        state = model_states["optimizer"]["state"]
        return {names[id(p)]: {key: state[i][key] for key in MOMENTS} for i, p in enumerate(order)}
    files = sorted(tag.glob("zero_pp_rank_*_optim_states.pt"), key=lambda p: int(p.name.split("_")[3]))
    parts = [torch.load(f, weights_only=False)["optimizer_state_dict"] for f in files]
    moments = {}
    for group, shapes in enumerate(model_states["param_shapes"]):
        for key in MOMENTS:
            flat = torch.cat([p["base_optimizer_state"]["state"][group][key] for p in parts])
            offset = 0
            for name, shape in shapes.items():
                moments.setdefault(name, {})[key] = flat[offset:offset + shape.numel()].view(shape)
                offset += shape.numel()
            assert flat[offset:].abs().sum() == 0  # only the alignment padding is left
    return moments


@pytest.mark.parametrize("before,after,zero", [(2, 1, 2), (1, 2, 0), (2, 1, 0), (1, 2, 2)])
def test_preempted_run_continues_on_another_world_size(corpus, tmp_path, before, after, zero):
    runs, log_dir = tmp_path / "runs", tmp_path / "logs"
    log_dir.mkdir()
    overrides = _overrides(corpus, runs, zero)
    args = ["--stage", "cochl", *overrides]
    folder = runs / "cochl" / "run"
    _preempt_early(args, folder, log_dir, before)

    tag = folder / "checkpoints" / (folder / "checkpoints" / "latest").read_text().strip()
    position = json.loads((tag / "position.json").read_text())
    before_rows = pd.read_csv(folder / "steps.csv")
    stop_step = int(before_rows["step"].iloc[-1])
    assert 0 < stop_step < STEPS, "the pre-emption should land inside epoch 0"
    assert position["world_size"] == before and position["excluded"] == []
    first_part = position["seen"]
    assert len(first_part) == len(set(first_part)) == stop_step * 2  # global batch 2 per step, no repeats

    cfg = load_config("cochl", overrides)
    expected = _stop_moments(tag, zero, cfg)  # read now: the finished run prunes the stop checkpoint
    weights = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]

    # what a resumed engine holds, on the new number of ranks (the same processes then finish the run)
    assert wait_ranks(start_ranks([str(tmp_path / "probe.pt"), *args], log_dir, world=after, script=PROBE)) == \
        [0] * after, logs(log_dir)
    probe = torch.load(tmp_path / "probe.pt", weights_only=False)
    progress = probe["progress"]
    assert (progress["global_step"], progress["step_in_epoch"], progress["part_start"]) == (stop_step,) * 3
    assert probe["accumulation"] * after == 2  # global batch unchanged: micro 1 x accumulation x ranks
    factor = exp_warmup_linear_down(1, 2, 0, cfg.schedule.last_lr_value)(0)
    np.testing.assert_allclose(probe["lrs"], [cfg.optim.lr * factor, cfg.optim.head_lr * factor], rtol=1e-12)
    assert set(probe["state"]) == set(expected)
    for name, saved in expected.items():
        resumed = probe["state"][name]
        assert torch.equal(resumed["fp32"], weights[name]), name  # the optimizer's master copy: the stop's weights
        for key in MOMENTS:
            assert torch.equal(resumed[key], saved[key].view_as(resumed[key])), (name, key)
    # the rest of epoch 0: the samples not yet trained on, for exactly the steps left, each once
    rest = [key for rank in probe["epoch_keys"] for batch in rank for key in batch]
    assert len(rest) == len(set(rest)) == (STEPS - stop_step) * 2
    assert not set(rest) & set(first_part)

    # and the run itself finished there
    assert f"resumed from W={before} on W={after}" in logs(log_dir)
    rows = pd.read_csv(folder / "steps.csv")
    assert rows["step"].tolist() == list(range(1, EPOCHS * STEPS + 1))
    assert rows["epoch"].tolist() == [e for e in range(EPOCHS) for _ in range(STEPS)]
    schedule = exp_warmup_linear_down(1, 2, 0, cfg.schedule.last_lr_value)
    np.testing.assert_allclose(rows["lr_head"], [cfg.optim.head_lr * schedule(e) for e in rows["epoch"]], rtol=1e-12)
    np.testing.assert_array_equal(rows["loss"][:stop_step], before_rows["loss"][:stop_step])
    ds = json.loads((folder / "deepspeed.json").read_text())
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (2, 2 // after)
    assert json.loads((folder / "summary.json").read_text())["test"]["num_samples"] == 13


def test_schedule_epochs_follow_the_anchor():
    """An epoch of 5 steps interrupted at its 2nd on W=8 and continued where epochs have 4 steps."""
    assert [schedule_epoch(s, 0, 0, 5) for s in range(11)] == [0] * 5 + [1] * 5 + [2]
    # epoch 1 started at step 5 and ran 2 of its 5 steps; its 3 others, then epochs of 4 from step 10
    assert [schedule_epoch(s, 2, 10, 4) for s in range(7, 19)] == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4]
