"""SLURM support without a cluster: rank mapping from srun's environment, and the requeue logic of the scripts."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from trainer.distributed import launcher_environment

from .helpers import REPO


def test_srun_tasks_become_ranks():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "node01"}
    assert launcher_environment(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert launcher_environment({"RANK": "0", "WORLD_SIZE": "2", **env}) == {}  # torchrun / deepspeed inside srun
    single = launcher_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert single["WORLD_SIZE"] == "1" and single["RANK"] == "0"  # a 1-task job is a plain run
    with pytest.raises(RuntimeError, match="export MASTER_ADDR"):
        launcher_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def _harness(tmp_path: Path, step: str) -> subprocess.Popen:
    """common.sh's run_step with fake scontrol / activate, recording requeues in a file."""
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "scontrol"
    fake.write_text(f'#!/bin/bash\nif [ "$1" = show ]; then echo node01; else echo "$@" >> {tmp_path}/requeued; fi\n')
    fake.chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    script = f"source {REPO}/launch/slurm/common.sh\nrun_step {step}\n"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(tmp_path),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[01-02]"}
    return subprocess.Popen(["bash", "-c", script], env=env, cwd=tmp_path)


def test_preempted_trainer_requeues_the_job(tmp_path):
    assert _harness(tmp_path, "bash -c 'exit 75'").wait(30) == 75
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]


def test_finished_or_failed_trainer_does_not_requeue(tmp_path):
    assert _harness(tmp_path, "bash -c 'exit 1'").wait(30) == 1
    assert not (tmp_path / "requeued").exists()


def test_time_limit_signal_requeues_and_waits_for_the_step(tmp_path):
    marker = tmp_path / "step_done"
    proc = _harness(tmp_path, f"bash -c 'sleep 2; touch {marker}'")
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(30) == 0 and marker.exists()  # the step was not abandoned
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]
