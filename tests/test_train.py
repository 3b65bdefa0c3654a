"""The trainer end to end on the packed test corpus: 2 CPU ranks over gloo, real DeepSpeed engines.

Runs are started the way users start them (separate processes via srun-style environment, torchrun,
the deepspeed launcher and plain python) and judged by what they write: steps.csv, epochs.csv,
summary.json, model.pt and the checkpoints.
"""
from __future__ import annotations

import gzip
import json
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trainer.config import load_config
from trainer.engine import EXIT_PREEMPTED, build_model
from trainer.profiling import category
from trainer.sit import exp_warmup_linear_down

from .helpers import TRAIN, cut_short, flip_bit, free_port, logs, run_command, start_ranks, train_overrides, wait_ranks

EPOCHS = 3


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    (root / "logs").mkdir()
    return {"runs": root / "runs", "logs": root / "logs"}


def _train(trainable, work, name, world=2, **extra) -> Path:
    procs = start_ranks(["--stage", "cochl", *train_overrides(trainable, work["runs"], name, **extra)], work["logs"])
    codes = wait_ranks(procs)
    assert codes == [0] * world, logs(work["logs"])
    return work["runs"] / "cochl" / name


@pytest.fixture(scope="module")
def reference(trainable, work) -> Path:
    """Uninterrupted: ZeRO-1, 2 ranks, gradient accumulation 2 (global 8 = 2 micro x 2 x 2 ranks); step 3 profiled."""
    return _train(trainable, work, "reference", train__zero_stage=1, run__profile_steps=1)


def _last_step(steps_csv: Path) -> int:
    """The step of the last complete row (the file may be half-written or being truncated)."""
    lines = steps_csv.read_text().split("\n")[1:-1] if steps_csv.is_file() else []
    return int(lines[-1].split(",")[1]) if lines else 0


@pytest.fixture(scope="module")
def resumed(trainable, work) -> tuple[Path, list[int]]:
    """The reference run killed (SIGKILL) once epoch 1's checkpoint exists, resumed, pre-empted by SIGUSR1
    (to every rank, as SLURM does) during a later epoch, and resumed again to the end."""
    args = ["--stage", "cochl", *train_overrides(trainable, work["runs"], "resumed", train__zero_stage=1)]
    folder = work["runs"] / "cochl" / "resumed"
    latest = folder / "checkpoints" / "latest"

    procs = start_ranks(args, work["logs"])
    deadline = time.monotonic() + 300
    while not any((folder / "checkpoints").glob("e0001-*/manifest.json")):  # epoch 1's checkpoint, sealed
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), logs(work["logs"])
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    killed = wait_ranks(procs)

    procs = start_ranks(args, work["logs"])
    steps = folder / "steps.csv"
    while _last_step(steps) <= 4:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), logs(work["logs"])
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGUSR1)
    preempted = wait_ranks(procs)
    stopped_at = latest.read_text().strip()

    assert wait_ranks(start_ranks(args, work["logs"])) == [0, 0], logs(work["logs"])
    return folder, killed + preempted + [stopped_at]


def test_steps_follow_the_schedule_and_the_loss_goes_down(trainable, work, reference):
    cfg = load_config("cochl", train_overrides(trainable, work["runs"], "reference"))
    steps = pd.read_csv(reference / "steps.csv")
    # 26 train samples, 13 per rank -> 3 whole steps of 2 x 2 per epoch; every step logged once
    assert steps["step"].tolist() == list(range(1, 3 * EPOCHS + 1))
    assert steps["epoch"].tolist() == [e for e in range(EPOCHS) for _ in range(3)]
    factor = exp_warmup_linear_down(1, 2, 1, 0.01)
    expected = np.array([factor(e) for e in steps["epoch"]])
    np.testing.assert_allclose(steps["lr_representation"], cfg.optim.lr * expected, rtol=1e-12)
    np.testing.assert_allclose(steps["lr_head"], cfg.optim.head_lr * expected, rtol=1e-12)
    assert len(set(np.round(expected, 6))) == 3  # three different factors: a real check of every epoch


def test_training_lowers_the_loss(trainable, work):
    run = _train(trainable, work, "learns", train__epochs=8, augment__mixstyle_p=0, augment__roll=0,
                 frontend__freqm=0, frontend__timem=0, model__s_patchout_f=0, optim__lr=2e-3, optim__head_lr=2e-2,
                 schedule__ramp_down_start=50)
    epochs = pd.read_csv(run / "epochs.csv")
    assert epochs["train_loss"].iloc[-2:].mean() < epochs["train_loss"].iloc[0] - 0.25, epochs
    assert epochs["val_log_loss"].iloc[-1] < epochs["val_log_loss"].iloc[0], epochs


def test_run_contract(reference, trainable):
    summary = json.loads((reference / "summary.json").read_text())
    assert 0 <= summary["best_epoch"] < EPOCHS
    for split, n in (("val", 13), ("test", 13)):
        m = summary[split]
        assert m["num_samples"] == n  # every sample once over 2 ranks; eval padding removed
        assert set(m) >= {"accuracy", "macro_accuracy", "log_loss", "per_device", "per_class"}
        assert sum(map(sum, m["confusion"])) == n
        assert m["accuracy"] == pytest.approx(np.trace(np.array(m["confusion"])) / n)
    epochs = pd.read_csv(reference / "epochs.csv")
    best = epochs.loc[epochs["val_macro_accuracy"].idxmax()]
    assert summary["best_epoch"] == int(best["epoch"])
    assert summary["val"]["macro_accuracy"] == pytest.approx(best["val_macro_accuracy"])
    model = torch.load(reference / "model.pt", weights_only=True)
    assert set(model) == {"state_dict", "classes", "config"}
    assert len(model["classes"]) == 13 and model["state_dict"]["head.1.weight"].shape[0] == 13
    assert all(v.dtype == torch.float32 for v in model["state_dict"].values())
    assert model["config"]["train"]["zero_stage"] == 1
    assert (reference / "config.yaml").is_file() and (reference / "confusion_test.png").stat().st_size > 1000
    ds = json.loads((reference / "deepspeed.json").read_text())
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (8, 2, 2)
    assert len(list((reference / "checkpoints").glob("e*"))) == 2  # run.keep_checkpoints
    newest = max(reference.parent.glob("*/summary.json"), key=lambda p: p.stat().st_mtime).parent
    assert (reference.parent / "latest").resolve() == newest.resolve()  # the next stage's default init_from


def outermost_calls(events: list[dict]) -> dict[str, int]:
    """How often each operator was called from outside itself (an op that dispatches to itself counts once)."""
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0), e["name"], e.get("tid")) for e in events if e.get("ph") == "X")
    open_until: dict[tuple, float] = {}
    counts: dict[str, int] = {}
    for start, end, name, tid in spans:
        if open_until.get((name, tid), -1.0) < start:
            counts[name] = counts.get(name, 0) + 1
            open_until[(name, tid)] = end
    return counts


def test_a_profiled_run_says_where_its_steps_went(reference, work):
    """run.profile_steps=1 after run.log_every=2: exactly step 3 (one optimizer step of 2 micro-batches, each through
    forward and backward) under the profiler, written once by the main rank; the categories and the idle time add up
    to the step's wall time.  Profiling changes no number: the resumed run (not profiled) matches this one exactly."""
    summary = json.loads((reference / "profile.json").read_text())
    assert summary["steps"] == [3, 3]
    by = summary["by_category"]
    assert by["GEMM"] > 0 and by["optimizer"] > 0 and by["communication"] > 0  # ZeRO 1 reduces over 2 gloo ranks
    assert sum(by.values()) == pytest.approx(summary["wall_ms"], rel=1e-6) or by["idle (gaps, host)"] == 0
    trace = json.loads(gzip.decompress((reference / "profile_trace.json.gz").read_bytes()))
    calls = outermost_calls(trace["traceEvents"])
    assert calls["aten::stft"] == 2  # the step's two micro-batches through the front-end, no more, no less
    assert calls["aten::_fused_adam_"] == 2  # one optimizer step: one fused call per parameter group
    top = summary["top"]  # the longest operators, what each category's share is made of
    assert len(top) == 15 and [e["ms"] for e in top] == sorted((e["ms"] for e in top), reverse=True)
    assert all(e["category"] == category(e["name"]) and e["ms"] <= by[e["category"]] * (1 + 1e-9) for e in top)
    assert all(e["calls"] > 0 for e in top)
    text = (reference / "profile.md").read_text()
    assert "Optimizer steps 3-3 under torch.profiler" in text and "| GEMM " in text and "step wall time" in text
    assert "The 15 kernels that took the most time" in text and f"| {top[0]['name']} " in text
    assert "run.profile_steps: steps 3-3 profiled" in logs(work["logs"])


def test_killed_and_preempted_run_resumes_exactly(reference, resumed):
    folder, (kill1, kill2, pre1, pre2, stopped_at) = resumed
    assert (kill1, kill2) == (-signal.SIGKILL, -signal.SIGKILL)
    assert (pre1, pre2) == (EXIT_PREEMPTED, EXIT_PREEMPTED)
    assert not stopped_at.startswith("e0001-s000000003")  # the pre-emption wrote its own checkpoint
    a, b = pd.read_csv(reference / "steps.csv"), pd.read_csv(folder / "steps.csv")
    assert b["step"].tolist() == a["step"].tolist()  # rows after the killed checkpoint were dropped
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
    np.testing.assert_array_equal(b["lr_head"], a["lr_head"])
    ea, eb = pd.read_csv(reference / "epochs.csv"), pd.read_csv(folder / "epochs.csv")
    np.testing.assert_allclose(eb["val_log_loss"], ea["val_log_loss"], rtol=1e-6)
    sa = json.loads((reference / "summary.json").read_text())
    sb = json.loads((folder / "summary.json").read_text())
    assert sb["test"]["log_loss"] == pytest.approx(sa["test"]["log_loss"], rel=1e-6)


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one_exactly(trainable, work, reference):
    """The finished reference run copied twice: in one copy the newest checkpoint's rank-1 ZeRO partition is cut
    short, in the other a bit of its model states is flipped.  Each resumes from the previous checkpoint (the end
    of epoch 1) with a WARNING naming the file and the fault, trains epoch 2 again and ends as the reference did."""
    newest, previous = sorted(p.name for p in (reference / "checkpoints").glob("e*"))[::-1]
    cases = {"truncated": ("zero_pp_rank_1_mp_rank_00_optim_states.pt", cut_short, "bytes, the manifest"),
             "altered": ("mp_rank_00_model_states.pt", flip_bit, "checksum mismatch")}
    procs = {}
    for name, (damaged, damage, _) in cases.items():
        shutil.copytree(reference, work["runs"] / "cochl" / name)
        damage(work["runs"] / "cochl" / name / "checkpoints" / newest / damaged)
        log_dir = work["logs"] / name
        log_dir.mkdir()
        procs[name] = start_ranks(["--stage", "cochl", *train_overrides(trainable, work["runs"], name,
                                                                       train__zero_stage=1)], log_dir)
    for name, (damaged, _, fault) in cases.items():
        assert wait_ranks(procs[name]) == [0, 0], logs(work["logs"] / name)
        folder, text = work["runs"] / "cochl" / name, logs(work["logs"] / name)
        assert f"checkpoint {folder / 'checkpoints' / newest} is damaged" in text and damaged in text and fault in text
        assert f"resumed at epoch 2 step 6 from {previous} (1 newer damaged checkpoint(s) set aside)" in text
        assert (folder / "checkpoints" / f"{newest}.damaged" / "faults.txt").is_file()
        a, b = pd.read_csv(reference / "steps.csv"), pd.read_csv(folder / "steps.csv")
        assert b["step"].tolist() == a["step"].tolist()
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
        ea, eb = pd.read_csv(reference / "epochs.csv"), pd.read_csv(folder / "epochs.csv")
        np.testing.assert_allclose(eb["val_log_loss"], ea["val_log_loss"], rtol=1e-6)
        sa, sb = (json.loads((f / "summary.json").read_text()) for f in (reference, folder))
        assert sb["test"]["log_loss"] == pytest.approx(sa["test"]["log_loss"], rel=1e-6)


def test_a_run_whose_checkpoints_are_all_damaged_exits_2_and_says_why(trainable, work, reference):
    folder = work["runs"] / "cochl" / "hopeless"
    shutil.copytree(reference, folder)
    for tag in (folder / "checkpoints").glob("e*"):
        (tag / "manifest.json").unlink()
    log_dir = work["logs"] / "hopeless"
    log_dir.mkdir()
    args = ["--stage", "cochl", *train_overrides(trainable, work["runs"], "hopeless", train__zero_stage=1)]
    assert wait_ranks(start_ranks(args, log_dir)) == [2, 2], logs(log_dir)
    assert "error: no checkpoint under" in logs(log_dir) and "the run cannot resume" in logs(log_dir)


@pytest.mark.parametrize("launcher,stage", [("torchrun", 0), ("deepspeed", 2)])
def test_zero_stages_agree(trainable, work, reference, launcher, stage):
    name = f"zero{stage}"
    args = [str(TRAIN), "--stage", "cochl",
            *train_overrides(trainable, work["runs"], name, train__zero_stage=stage, train__epochs=2)]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               *args]
    done = run_command(cmd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no gradient all-reduce" not in done.stdout + done.stderr  # two ranks reduce (one rank skips it)
    ds = json.loads((work["runs"] / "cochl" / name / "deepspeed.json").read_text())
    assert (ds["zero_optimization"]["stage"], ds["gradient_accumulation_steps"]) == (stage, 2)  # 2 ranks
    a = pd.read_csv(reference / "steps.csv")
    b = pd.read_csv(work["runs"] / "cochl" / name / "steps.csv")
    assert len(b) == 6
    np.testing.assert_allclose(b["loss"], a["loss"][:6], rtol=1e-4)


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs a CUDA device")])])
def test_the_demo_runs_where_it_is_and_its_first_line_says_how(trainable, tmp_path, device):
    """`make demo`'s stage settings (--demo) on the device at hand: bf16 inside the engine and the DALI pipeline on a
    GPU, fp32 on a CPU; the trainer's first log line names device, precision and loader."""
    done = run_command([sys.executable, str(TRAIN), "--stage", "cochl", "--demo", f"data.root={trainable}",
                        "data.clip_seconds=1.0", "train.epochs=1", "train.global_batch=8", "train.micro_batch=4",
                        f"train.device={device}", f"run.out={tmp_path}", "run.name=demo"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = next(line for line in (done.stdout + done.stderr).splitlines() if "trainer.engine:" in line)
    if device == "cuda":
        assert "1 rank(s) on cuda (nccl)" in first and "dali loader on cuda" in first, first
        assert "precision: bfloat16 autocast inside the engine, float32 weights and Adam state" in first, first
    else:
        assert "1 rank(s) on cpu (gloo)" in first and "precision: float32" in first, first
        assert "dali loader on cpu" in first, first
    assert "ZeRO 0 (one rank: no gradient all-reduce)" in first, first  # DeepSpeed's no-op reduction is skipped
    saved = (tmp_path / "cochl" / "demo" / "config.yaml").read_text()
    assert f"precision: {'bf16' if device == 'cuda' else 'fp32'}" in saved  # the choice, not 'auto'


def test_tau_stage_starts_from_the_cochl_model(trainable, work, reference, demo_root):
    """... and without a validation split (data.val_split=null) keeps its last epoch."""
    overrides = train_overrides(trainable, work["runs"], "tau", dataset="tau22", init_from=reference / "model.pt",
                                train__epochs=2, augment__dir_prob=0.6, data__val_split="null",
                                augment__dir_folder=demo_root["impulse_responses"])
    cfg = load_config("tau", overrides)
    cochl = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    model = build_model(cfg, 10).state_dict()
    backbone = [k for k in cochl if not k.startswith(("head.1", "head_dist"))]
    assert all(torch.equal(model[k], cochl[k]) for k in backbone)
    assert model["head.1.weight"].shape == (10, cochl["head.1.weight"].shape[1])
    assert model["head_dist.weight"].shape[0] == 10
    # and the stage runs in one plain `python` process, with device impulse responses on device-a clips
    done = run_command([sys.executable, str(TRAIN), "--stage", "tau", *overrides])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = work["runs"] / "tau" / "tau"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["classes"][0] == "airport" and len(summary["classes"]) == 10
    assert set(summary["test"]["device_groups"]) == {"real", "seen", "unseen"}
    assert "run directory: " in done.stdout
    assert summary["selection"] == {"split": None, "metric": None, "kept": "last epoch", "on_test": False}
    assert summary["best_epoch"] == 1 and summary["val"] is None and not (folder / "confusion_val.png").exists()
    epochs = pd.read_csv(folder / "epochs.csv")
    assert list(epochs["epoch"]) == [0, 1] and epochs["val_accuracy"].isna().all()
    tag = folder / "checkpoints" / (folder / "checkpoints" / "latest").read_text().strip()
    final = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]  # the weights it ended with
    kept = torch.load(folder / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(kept[k], final[k]) for k in kept)
