"""Wall-clock gain of running Split AudioSet seeds side by side: the same set of runs with --jobs 1 and --jobs 2
(or any list), alternating, on one machine in one invocation.

    python benchmarks/continual_jobs.py --runs si coresets --seeds 0 1 --n-iter-scale 0.04 --jobs 1 2 --repeats 2 \\
        --out benchmarks/results/continual_jobs.md

Each pass measures every (run, seed) of the set exactly as `continual_table.py --jobs N` does (its own process
per run, threads = cores / N) into a scratch folder and times the pass from first start to last exit.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate

from continual_table import PUBLISHED, default_threads, plan, run_jobs
from machine import device_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["si", "coresets"], choices=list(PUBLISHED))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--n-iter-scale", type=float, default=0.04)
    p.add_argument("--jobs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=1, help="passes per --jobs value (alternating)")
    p.add_argument("--out", type=Path, help="Markdown file")
    args = p.parse_args()
    jobs = plan(args.runs, args.seeds, args.n_iter_scale)
    cores = os.cpu_count() or 1
    walls: dict[int, list[float]] = {n: [] for n in args.jobs}
    for _ in range(args.repeats):
        for n in args.jobs:
            with tempfile.TemporaryDirectory() as scratch:
                walls[n].append(run_jobs(jobs, Path(scratch), parallel=n, threads=default_threads(n), pickle=None))
            print(f"--jobs {n}: {walls[n][-1]:.1f} s", flush=True)
    base = statistics.median(walls[args.jobs[0]])
    rows = [[n, default_threads(n), " / ".join(f"{w:.1f}" for w in walls[n]), f"{statistics.median(walls[n]):.1f}",
             f"{base / statistics.median(walls[n]):.2f}x"] for n in args.jobs]
    text = (f"## Split AudioSet seeds side by side, {device_name(torch.device('cpu'))} ({cores} cores), "
            f"{datetime.date.today()}\n\n"
            f"{len(jobs)} runs ({', '.join(args.runs)} x seeds {' '.join(map(str, args.seeds))}, n_iter x "
            f"{args.n_iter_scale} of the published), each `launch/continual.py` in its own process; a pass is timed "
            f"from its first start to its last exit (`python benchmarks/continual_jobs.py`), the --jobs values "
            f"alternating.\n\n"
            + tabulate(rows, headers=["--jobs", "threads per run", "pass wall s", "median s",
                                      f"speed-up over --jobs {args.jobs[0]}"], tablefmt="github") + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
