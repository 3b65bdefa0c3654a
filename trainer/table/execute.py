"""Running a table's graph: here, one run after another with the usual launcher, or on a cluster as SLURM jobs.

A run is done when its `summary.json` exists: done runs are skipped, and an interrupted run is continued
from its last checkpoint (the trainer's `run.resume=auto` under the same run name).  A run whose CochlScene
model failed is not started; the others go on.  On a cluster every group of the plan becomes one array job,
TAU arrays `afterok` on the CochlScene job they start from, and a last job aggregates the table once all
of them have ended (`afterany`).
"""
from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..configtools import last_override
from .plan import Run, Table

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "launch" / "train.py"
SBATCH_SCRIPT = REPO / "launch" / "slurm" / "sit_table.sbatch"
EXIT_PREEMPTED = 75  # the trainer's: checkpointed after a pre-emption signal


def run_device(table: Table) -> str:
    """Where the table's runs train: the last `train.device=` of its overrides (the stages' default: auto)."""
    from ..distributed import resolve_device

    chosen = last_override(table.spec.overrides, "train.device")
    return resolve_device("auto" if chosen is None else chosen).type


def default_launcher(device: str) -> list[str]:
    """One process per GPU: torchrun over the GPUs of this machine when there are several and the runs train on
    them (`device`: run_device's), else plain python (runs on the CPU: one process, as the number of GPUs says
    nothing about them)."""
    import torch

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return [sys.executable]


@dataclass
class Outcome:
    run: Run
    status: str  # done (before this call) | trained | failed | blocked (its CochlScene run failed) | preempted


def run_local(table: Table, launcher: list[str]) -> list[Outcome]:
    """Train every run that is not done, in plan order, each started with `launcher`; stops at a pre-emption
    (rerun to resume)."""
    logs = table.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs = table.runs()
    outcomes: dict[str, Outcome] = {}
    for i, run in enumerate(runs, 1):
        key = f"{run.stage}/{run.name}"
        if table.done(run):
            outcomes[key] = Outcome(run, "done")
            continue
        parent = outcomes.get(f"cochl/{run.after}") if run.after else None
        if parent is not None and parent.status == "failed":
            outcomes[key] = Outcome(run, "blocked")
            log.warning("[%d/%d] %s: not started, its CochlScene run %s failed", i, len(runs), key, run.after)
            continue
        path = logs / f"{run.stage}-{run.name}.log"
        cmd = [*launcher, str(TRAIN), *table.arguments(run)]
        log.info("[%d/%d] %s: training (log: %s)", i, len(runs), key, path)
        started = time.perf_counter()
        with path.open("a") as out:  # a resumed run's output continues its log
            out.write(f"$ {shlex.join(cmd)}\n")
            out.flush()
            rc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - started
        if rc == EXIT_PREEMPTED:
            outcomes[key] = Outcome(run, "preempted")
            log.warning("%s was pre-empted and checkpointed: run the same command again to resume it", key)
            break
        status = "trained" if rc == 0 and table.done(run) else "failed"
        outcomes[key] = Outcome(run, status)
        if status == "failed":
            log.error("%s failed (exit status %d): see %s", key, rc, path)
        else:
            log.info("%s: done in %.0f s", key, seconds)
    return list(outcomes.values())


def task_arguments(table: Table, group: str, index: int) -> list[str]:
    """The train.py arguments of task `index` of `group` (a SLURM array task); [] if that run is done."""
    runs = table.group(group).runs
    if not 0 <= index < len(runs):
        raise ValueError(f"group {group!r} has runs 0..{len(runs) - 1}, not {index}")
    return [] if table.done(runs[index]) else table.arguments(runs[index])


def submit(table: Table, *, sbatch: str = "sbatch", script: Path = SBATCH_SCRIPT, extra: list[str] = ()) -> dict:
    """Submit the runs that are not done as SLURM jobs; returns {group: job id} (plus "table": the aggregation job).

    `extra` goes to every sbatch call before the script (e.g. --partition=... --gres=gpu:8)."""
    jobs: dict[str, str] = {}
    root = table.folder.parent
    for group in table.groups():
        pending = [i for i, run in enumerate(group.runs) if not table.done(run)]
        if not pending:
            continue
        cmd = [sbatch, "--parsable", f"--job-name=sit-{table.spec.name}-{group.name}",
               f"--array={','.join(map(str, pending))}"]
        if group.after in jobs:  # a failed CochlScene job cancels the TAU array instead of leaving it pending
            cmd += [f"--dependency=afterok:{jobs[group.after]}", "--kill-on-invalid-dep=yes"]
        cmd += [*extra, str(script), "--root", str(root), "--name", table.spec.name, "--task", group.name]
        jobs[group.name] = _sbatch(cmd)
    if jobs:
        # --wrap scripts run under /bin/sh: `.` rather than bash's `source`
        aggregate = (f"cd {shlex.quote(str(REPO))} && . .venv/bin/activate && python launch/sit_table.py "
                     f"--root {shlex.quote(str(root))} --name {shlex.quote(table.spec.name)} --table-only")
        jobs["table"] = _sbatch([sbatch, "--parsable", f"--job-name=sit-{table.spec.name}-table",
                                 f"--dependency=afterany:{':'.join(jobs.values())}",
                                 f"--output={table.folder / 'slurm-table-%j.out'}", "--wrap", aggregate])
    return jobs


def _sbatch(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]  # --parsable prints "<id>" or "<id>;<cluster>"
