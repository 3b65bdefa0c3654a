"""The launcher's way out: `distributed.exit_process` against the gloo teardown race of torch 2.11.

When a gloo worker thread releases a finished collective's tensors after the interpreter has begun to
finalise, the GIL it needs is gone and the process aborts (SIGABRT) although the run is complete. The
scenario below makes that likely: rank 1 holds the GIL in one long C call while its all-gather
completes, then ends. Ending it the ordinary way is the control (it must abort at least once, or the
scenario proves nothing); ending it with `exit_process` must give the requested code.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .helpers import REPO, start_ranks, wait_ranks

SCENARIO = """
import os, sys, time
import torch, torch.distributed as dist
from trainer import distributed

rank, how = int(os.environ["RANK"]), sys.argv[1]
dist.init_process_group("gloo")
parts = [torch.empty(4) for _ in range(2)]
if rank == 0:
    time.sleep(0.5)
work = dist.all_gather(parts, torch.full((4,), float(rank)), async_op=True)
if rank == 0:
    work.wait()
del work, parts
print(f"rank {rank} finished")
busy = sum(range(2 * 10**8))
how == "exit_process" and distributed.exit_process(7)
"""


def _run_pair(tmp_path, how: str) -> tuple[list[int], list[str]]:
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    log_dir = tmp_path / f"{how}-{time.monotonic_ns()}"
    log_dir.mkdir()
    # unbuffered output makes the abort of an ordinary exit much more likely (6 of 8 pairs, not 1 of 8)
    codes = wait_ranks(start_ranks([how], log_dir, script=script, env={"PYTHONUNBUFFERED": "1"}), timeout=120)
    return codes, [log.read_text() for log in sorted(log_dir.glob("rank*.log"))]


def test_exit_process_survives_the_gloo_finalisation_race(tmp_path):
    aborted = False
    for _ in range(4):
        codes, logs = _run_pair(tmp_path, "interpreter")
        if -signal.SIGABRT in codes:
            aborted = True
            assert "terminate called without an active exception" in "".join(logs)
            break
    if not aborted:
        pytest.skip("an ordinary exit no longer aborts in this scenario: torch may have fixed the race, "
                    "and distributed.exit_process may be replaced by sys.exit")
    for _ in range(2):
        codes, logs = _run_pair(tmp_path, "exit_process")
        assert codes == [7, 7], logs
        assert [f"rank {rank} finished" in log for rank, log in enumerate(logs)] == [True, True], logs


def test_exit_process_flushes_buffered_output():
    """Under SLURM or a launcher stdout is a block-buffered pipe: what rank 0 printed last (the metrics
    table) must still arrive although the interpreter does not finalise."""
    code = "from trainer import distributed; print('metrics table'); distributed.exit_process(3)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "metrics table\n"
