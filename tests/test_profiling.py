"""run.profile_steps' profiler on its own: which steps it captures, and that a failing profiler costs the profile,
never the run (a real run's profile is checked in test_train)."""
from __future__ import annotations

import gzip
import json
import logging
import sys

import pytest
import torch
from torch.profiler import profile

from trainer.profiling import PROFILE_FILES, Capture, StepProfiler

from .helpers import REPO


def run_steps(profiler: StepProfiler, steps: int) -> None:
    """`steps` optimizer steps of one matrix product each, the profiler told after every one."""
    x = torch.randn(64, 64)
    for step in range(1, steps + 1):
        x = torch.tanh(x @ x.T / 64)
        profiler.step_done(step)


def test_exactly_the_steps_after_the_first_window_are_profiled(tmp_path):
    run_steps(StepProfiler(torch.device("cpu"), after=2, count=2, folder=tmp_path), 6)
    summary = json.loads((tmp_path / "profile.json").read_text())
    assert summary["steps"] == [3, 4]
    products = next(entry for entry in summary["top"] if entry["name"] == "aten::mm")
    assert products["calls"] == 1 and products["category"] == "GEMM"  # one per step, steps 1-2 and 5-6 left out
    trace = json.loads(gzip.decompress((tmp_path / "profile_trace.json.gz").read_bytes()))
    assert sum(event.get("name") == "aten::mm" for event in trace["traceEvents"]) == 2
    assert "Optimizer steps 3-4 under torch.profiler" in (tmp_path / "profile.md").read_text()
    assert not torch.autograd.profiler._is_profiler_enabled


def test_no_rank_but_the_main_one_writes_and_zero_steps_profile_nothing(tmp_path):
    run_steps(StepProfiler(torch.device("cpu"), after=1, count=2, folder=None), 4)  # another rank: profiles, no files
    run_steps(StepProfiler(torch.device("cpu"), after=1, count=0, folder=tmp_path), 4)  # run.profile_steps=0
    assert list(tmp_path.iterdir()) == [] and not torch.autograd.profiler._is_profiler_enabled


@pytest.mark.parametrize("fails", ["start", "stop", "trace export"])
def test_a_failing_profiler_costs_the_profile_not_the_run(tmp_path, monkeypatch, caplog, fails):
    def boom(*args, **kwargs):
        raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    target = {"start": (Capture, "start"), "stop": (Capture, "stop"),
              "trace export": (profile, "export_chrome_trace")}[fails]
    monkeypatch.setattr(*target, boom)
    profiler = StepProfiler(torch.device("cpu"), after=2, count=2, folder=tmp_path)
    with caplog.at_level(logging.WARNING, logger="trainer.profiling"):
        run_steps(profiler, 6)  # the steps go on
    assert ("run.profile_steps: profiling steps 3-4 failed, so this run has no profile (training goes on): "
            "RuntimeError: CUPTI_ERROR_NOT_INITIALIZED") in caplog.text
    assert not any((tmp_path / name).exists() for name in PROFILE_FILES)  # nothing half-written (the export is last)
    assert profiler.capture is None and not torch.autograd.profiler._is_profiler_enabled


def test_gpu_py_profiles_a_step_and_a_failing_step_leaves_no_profiler_running(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_profile

    x = torch.randn(64, 64)
    summary = gpu_profile.profile_step(lambda: x @ x, torch.device("cpu"), 3, tmp_path / "trace.json.gz")
    assert next(entry for entry in summary["top"] if entry["name"] == "aten::mm")["calls"] == 1  # 3 calls / 3 steps
    assert (tmp_path / "trace.json.gz").stat().st_size > 0

    def failing():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        gpu_profile.profile_step(failing, torch.device("cpu"), 3, tmp_path / "never.json.gz")
    assert not torch.autograd.profiler._is_profiler_enabled and not (tmp_path / "never.json.gz").exists()
