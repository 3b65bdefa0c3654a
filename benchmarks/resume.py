"""Start-up of a mid-epoch resume against where in the epoch it resumes: process start to the first resumed step.

    python benchmarks/resume.py --before 63a2119 --out benchmarks/results/resume.md   # a commit and this checkout
    python benchmarks/resume.py --tiny --out /tmp/resume.md                           # the plumbing, in a minute

The corpus: the demo CochlScene at 1-s clips (`--clips` of them in train, 20,020 by default), packed as FLAC
into `--work` on first use.  For each code version (this checkout; `--before`: a git worktree of that commit,
run with this environment) and each position (`--positions`, fractions of an epoch) the trainer runs on one
CPU rank until the pre-emption signal at that step (SIGUSR1: it checkpoints and exits 75); then the same
command resumes it `--repeats` times, each timed from process start to the first resumed step appearing in
steps.csv and then killed (SIGKILL leaves the checkpoint as it was).  Before issue 29, a same-size resume read
and decoded every batch of the epoch up to its position; after, it starts reading at the position.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import device_name, source_commit  # noqa: E402


def corpus(work: Path, clips: int) -> Path:
    """The demo CochlScene with `clips` 1-s train clips (13 scenes), packed once."""
    from data_shards.pack import PackOptions, pack
    from data_shards.sources import cochlscene, demo

    per_scene = -(-clips // 13)
    folder = work / f"shards-{per_scene * 13}"
    if not (folder / "cochlscene" / "manifest.json").is_file():
        size = demo.DemoSize(cochl_train=per_scene, cochl_val=1, cochl_test=1, cochl_seconds=1.0,
                             tau_train_recordings=1, tau_test_recordings=1, tau_segments=1, tau_devices_per_recording=1)
        raw = demo.generate(work / f"raw-{per_scene * 13}", seed=5, size=size)
        pack(cochlscene.scan(raw["cochlscene"]), PackOptions(out=folder, workers=os.cpu_count() or 2, seed=3,
                                                             overwrite=True))
    return folder


def overrides(shards: Path, runs: Path, name: str, batch: int, workers: int) -> list[str]:
    return [f"data.root={shards}", "data.dataset=cochlscene", "data.clip_seconds=1.0", f"data.num_workers={workers}",
            "init_from=null", "model.name=passt_micro", "train.epochs=1", f"train.global_batch={batch}",
            f"train.micro_batch={batch}", "train.precision=fp32", "train.device=cpu", "run.log_every=1",
            f"run.out={runs}", f"run.name={name}", "augment.dir_prob=0.0"]


def last_step(steps_csv: Path) -> int:
    lines = steps_csv.read_text().split("\n")[1:-1] if steps_csv.is_file() else []
    return int(lines[-1].split(",")[1]) if lines else 0


def start(repo: Path, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, str(repo / "launch" / "train.py"), "--stage", "cochl", *args], cwd=repo,
                            env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def wait_for(proc: subprocess.Popen, steps_csv: Path, step: int, log: Path, timeout: float = 1800) -> float:
    started, deadline = time.perf_counter(), time.monotonic() + timeout
    while last_step(steps_csv) < step:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the trainer stopped (or hung) before step {step}: {log}\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    return time.perf_counter() - started


def measure(repo: Path, shards: Path, runs: Path, fraction: float, steps_per_epoch: int, batch: int, workers: int,
            repeats: int, log: Path) -> dict:
    """Pre-empt a run at `fraction` of its epoch, then time `repeats` resumes of it to their first step."""
    name = f"at{int(round(fraction * 100))}"
    args = overrides(shards, runs, name, batch, workers)
    target, steps_csv = max(1, int(fraction * steps_per_epoch)), runs / "cochl" / name / "steps.csv"
    proc = start(repo, args, log)
    wait_for(proc, steps_csv, target, log)
    proc.send_signal(signal.SIGUSR1)
    if proc.wait(600) != 75:
        raise SystemExit(f"the pre-empted run exited {proc.returncode}, not 75: {log}\n{log.read_text()[-3000:]}")
    stopped, at_stop = last_step(steps_csv), steps_csv.read_text()
    if stopped >= steps_per_epoch:
        raise SystemExit(f"the signal at step {target} stopped the run at the epoch's end ({stopped}): use more clips")
    times = []
    for _ in range(repeats):
        steps_csv.write_text(at_stop)  # as the pre-emption left it: the killed resume had logged steps after it
        proc = start(repo, args, log)
        times.append(wait_for(proc, steps_csv, stopped + 1, log))
        proc.kill()
        proc.wait()
    return {"position": stopped, "seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="a commit to measure beside this checkout (a git worktree of it)")
    ap.add_argument("--clips", type=int, default=20020, help="train clips of the corpus (1 s each)")
    ap.add_argument("--positions", type=float, nargs="+", default=[0.1, 0.9], help="fractions of the epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="loader threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "audio-sit-resume")
    ap.add_argument("--tiny", action="store_true", help="208 clips, batch 4, 1 repeat: checks the plumbing")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.tiny:
        args.clips, args.batch, args.repeats = 208, 4, 1
    args.work.mkdir(parents=True, exist_ok=True)
    shards = corpus(args.work, args.clips)
    from data_shards.manifest import load_manifest

    clips = load_manifest(shards / "cochlscene")["splits"]["train"]["num_samples"]
    steps_per_epoch = clips // args.batch
    versions = [("this checkout", REPO, source_commit(REPO))]
    worktree = None
    if args.before:
        worktree = args.work / f"worktree-{args.before}"
        if not worktree.is_dir():
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.before],
                           check=True, capture_output=True)
        versions.insert(0, (f"before ({args.before})", worktree, args.before))
    rows, medians = [], {}
    for label, repo, commit in versions:
        for fraction in args.positions:
            with tempfile.TemporaryDirectory(dir=args.work) as runs:
                log = args.work / f"{commit}-{fraction}.log"
                log.write_text("")
                got = measure(repo, shards, Path(runs), fraction, steps_per_epoch, args.batch, args.workers,
                              args.repeats, log)
            median = statistics.median(got["seconds"])
            medians[(label, fraction)] = median
            rows.append([label, commit, f"{got['position']} / {steps_per_epoch}", got["position"] * args.batch,
                         f"{median:.1f}", f"{min(got['seconds']):.1f} - {max(got['seconds']):.1f}"])
            print(rows[-1], flush=True)
    lo, hi = min(args.positions), max(args.positions)
    ratios = [f"{label}: {medians[(label, hi)] / medians[(label, lo)]:.2f}x" for label, _, _ in versions]
    table = tabulate(rows, headers=["code", "commit", "resumed at step", "clips before it",
                                    "start -> first resumed step, s (median)", "min - max"], tablefmt="github")
    where = device_name(torch.device("cpu"), threads=False)
    text = (f"## Mid-epoch resume: start-up against position, {where}, {datetime.date.today()}\n\n"
            f"`python benchmarks/resume.py {' '.join(sys.argv[1:])}`: demo CochlScene, {clips} 1-s FLAC train "
            f"clips, one CPU rank, batch {args.batch}, {args.workers} loader threads, passt_micro, {steps_per_epoch} "
            f"steps per epoch; {args.repeats} resume(s) per cell, each from process start to its first step.\n\n"
            f"{table}\n\nStart-up at {hi:.0%} of the epoch / at {lo:.0%}: {', '.join(ratios)}.\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
