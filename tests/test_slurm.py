"""SLURM support without a cluster: rank mapping from srun's environment, and the requeue logic of the scripts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.distributed import launcher_environment

from .helpers import REPO, TRAIN, free_port, train_overrides


def test_srun_tasks_become_ranks():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "node01"}
    assert launcher_environment(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert launcher_environment({"RANK": "0", "WORLD_SIZE": "2", **env}) == {}  # torchrun / deepspeed inside srun
    single = launcher_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert single["WORLD_SIZE"] == "1" and single["RANK"] == "0"  # a 1-task job is a plain run
    with pytest.raises(RuntimeError, match="export MASTER_ADDR"):
        launcher_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


# srun's stand-in: the tasks of one job step on this machine, with srun's per-task variables; SIGTERM (what
# `scontrol requeue` makes SLURM send to the job's steps) and SIGUSR1 are passed on to every task.
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
echo $$ > "$SLURM_SUBMIT_DIR/srun.pid"
pids=()
for ((i = 0; i < FAKE_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$FAKE_NTASKS SLURM_NTASKS_PER_NODE=$FAKE_NTASKS "$@" &
    pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
rc=0
for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
    wait "$pid"; code=$?
    if [ "$code" -ne 0 ]; then rc=$code; fi
done
exit $rc
"""


def _harness(tmp_path: Path, step: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """common.sh's run_step with fake scontrol / srun / activate, recording requeues in a file; a requeue stops
    the running job step as SLURM does."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    fake = tmp_path / "bin" / "scontrol"
    fake.write_text(f'#!/bin/bash\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> {tmp_path}/requeued; '
                    f'[ -f {tmp_path}/srun.pid ] && kill -TERM "$(cat {tmp_path}/srun.pid)" 2>/dev/null; fi; exit 0\n')
    (tmp_path / "bin" / "srun").write_text(FAKE_SRUN)
    for tool in ("scontrol", "srun"):
        (tmp_path / "bin" / tool).chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    script = f"source {REPO}/launch/slurm/common.sh\nrun_step {step}\n"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(tmp_path),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[01-02]", **(env or {})}
    return subprocess.Popen(["bash", "-c", script], env=env, cwd=tmp_path, **popen)


def test_preempted_trainer_requeues_the_job(tmp_path):
    assert _harness(tmp_path, "bash -c 'exit 75'").wait(30) == 75
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]


def test_finished_or_failed_trainer_does_not_requeue(tmp_path):
    assert _harness(tmp_path, "bash -c 'exit 1'").wait(30) == 1
    assert not (tmp_path / "requeued").exists()


def test_a_run_that_cannot_resume_is_not_requeued(tmp_path):
    """Exit 2 (a bad setting, or no checkpoint that verifies) is final: requeueing would only fail again."""
    proc = _harness(tmp_path, "bash -c 'exit 2'", stdout=subprocess.PIPE, text=True)
    assert proc.wait(30) == 2 and "is not requeued" in proc.stdout.read()
    assert not (tmp_path / "requeued").exists()


def test_time_limit_signal_requeues_and_waits_for_the_step(tmp_path):
    marker = tmp_path / "step_done"
    proc = _harness(tmp_path, f"bash -c 'sleep 2; touch {marker}'")
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(30) == 0 and marker.exists()  # the step was not abandoned
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]


def test_requeued_job_resumes_on_fewer_tasks(trainable, tmp_path):
    """The time-limit signal on a 2-task job: requeued, the step stopped, the trainer checkpoints mid-epoch and
    exits 75; the requeued job gets 1 task and continues the run to the end."""
    overrides = train_overrides(trainable, tmp_path / "runs", "job", train__zero_stage=2, train__epochs=2,
                                train__global_batch=2, train__micro_batch=1, run__log_every=1)
    step = " ".join(["srun --kill-on-bad-exit=1", sys.executable, str(TRAIN), "--stage cochl", *overrides])
    folder = tmp_path / "runs" / "cochl" / "job"
    first = _harness(tmp_path, step, {"FAKE_NTASKS": "2", "MASTER_PORT": str(free_port())})
    deadline = time.monotonic() + 300
    while not ((folder / "steps.csv").is_file() and len((folder / "steps.csv").read_text().splitlines()) > 2):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    first.send_signal(signal.SIGUSR1)  # SLURM's --signal=B:USR1@... to the batch shell
    assert first.wait(120) == 75
    assert (tmp_path / "requeued").read_text().split()[:2] == ["requeue", "4242"]
    tag = (folder / "checkpoints" / "latest").read_text().strip()
    assert json.loads((folder / "checkpoints" / tag / "position.json").read_text())["world_size"] == 2
    second = _harness(tmp_path, step, {"FAKE_NTASKS": "1", "MASTER_PORT": str(free_port())},
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output[-3000:]
    assert "resumed from W=2 on W=1" in output
    steps = [int(line.split(",")[1]) for line in (folder / "steps.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, len(steps) + 1)) and json.loads((folder / "summary.json").read_text())["best_epoch"] >= 0


def test_every_sbatch_log_folder_exists_in_a_fresh_clone():
    """SLURM does not create the folder of --output: without it a job dies at once, leaving no log."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: what a fresh clone holds is unknown")
    folders = {str(Path(f).parent) for f in tracked.stdout.splitlines()}
    scripts = sorted((REPO / "launch" / "slurm").glob("*.sbatch"))
    outputs = {}
    for script in scripts:
        lines = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH --output=")]
        assert len(lines) == 1, f"{script.name}: one #SBATCH --output line, so the log's place is known"
        outputs[script.name] = lines[0].split("=", 1)[1]
    assert {"single_node.sbatch", "multi_node.sbatch", "multi_node_torchrun.sbatch", "sit_table.sbatch",
            "continual_table.sbatch"} <= set(outputs)
    for name, output in outputs.items():
        assert not Path(output).is_absolute(), f"{name}: --output={output} is relative to the submission folder"
        assert str(Path(output).parent) in folders, f"{name}: --output={output}, but a fresh clone has no such folder"
