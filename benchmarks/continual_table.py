"""Every Split AudioSet run of configs/continual/ over seeds, side by side with the published numbers (Markdown + PNG).

    python benchmarks/continual_table.py --seeds 0 1 2 --jobs 2 --out benchmarks/results/continual.md
    python benchmarks/continual_table.py --runs ewc si --seeds 0 1 2 --out benchmarks/results/continual.md
    python benchmarks/continual_table.py --table-only --out benchmarks/results/continual.md
    python benchmarks/continual_table.py --seeds 0 1 2 --list                      # the plan, one line per index
    python benchmarks/continual_table.py --seeds 0 1 2 --index 7 --threads 2     # one of them (a SLURM array task)

Each (run, seed) goes through the user's command, `python launch/continual.py method=<run> train.seed=<seed>`,
in a fresh process (its YAML: the published hyperparameters, on the synthetic stand-in unless --pickle names
the real data), timed from process start to exit.  --jobs N runs N of them at once, each with --threads
threads (default: this machine's cores / N, so that they do not oversubscribe it), longest first.  A record
(summary, wall time, jobs, threads, load, machine, date, commit) is kept per run, iteration count and seed
in --records/<run>/n_iter<n>/seed<seed>.json; runs already recorded are skipped (--redo measures them again), so a table
can be filled one session, or one cluster job, at a time.  The table aggregates every record there: mean +/-
std over seeds (population std, as the published gather script computes it; the published numbers are
single values) of the runs that finished; a run stopped by its during-accuracy criterion is counted apart,
as the published gather script drops it; what is written below the table in --out (the reading) is kept when
it is regenerated.  --n-iter-scale shortens the runs by one factor.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from machine import device_name, source_commit
from trainer.continual.config import load_continual_config

REPO = Path(__file__).resolve().parents[1]
# reference/continual.md: during / final accuracy (%) of the published runs (None: not reported).
PUBLISHED = {
    "multitask": (None, 77.0), "from_scratch": (79.0, 79.0), "finetune": (72.0, 51.0), "hnet": (None, 72.65),
    "ewc": (None, 67.5), "ewc_task_id": (71.74, 66.35), "si": (None, 67.0), "masking": (None, 55.0),
    "masking_si": (None, 65.0), "coresets": (None, 72.5), "coresets_500": (None, 73.5), "slow_learner": (None, None),
}
# the line under the generated table of --out; the reading written below it survives a regeneration
NOTES = "<!-- written by hand below this line; kept when the table above is regenerated -->"


@dataclass(frozen=True)
class Job:
    run: str
    seed: int
    n_iter: int

    def record(self, records: Path) -> Path:
        return records / self.run / f"n_iter{self.n_iter}" / f"seed{self.seed}.json"


def plan(runs: list[str], seeds: list[int], scale: float) -> list[Job]:
    """Seed by seed (a partial table covers every run once before any twice), the longest runs first within a
    seed (the iterations in all: n_iter x tasks, multitask's n_iter x tasks too), so that N jobs end together."""
    jobs = [Job(run, seed, max(1, round(load_continual_config([f"method={run}"]).n_iter * scale)))
            for seed in seeds for run in runs]
    return sorted(jobs, key=lambda j: (seeds.index(j.seed), -j.n_iter))


def default_threads(jobs: int) -> int:
    """Threads per run when `jobs` runs share this machine: its cores split evenly, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)


def measure(job: Job, pickle: str | None, threads: int, jobs: int, codes: str = "vggish") -> dict:
    """One run through launch/continual.py in its own process; its summary plus the wall time."""
    # the code measured is the code at the start: edits made while a run goes on must not be credited to it
    commit = source_commit(REPO)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / "launch" / "continual.py"), f"method={job.run}", f"n_iter={job.n_iter}",
                   f"train.seed={job.seed}", f"train.threads={threads}", f"out={out}", "name=bench",
                   *([f"data.pickle={pickle}"] if pickle else [f"data.synthetic_codes={codes}"])]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # the BLAS / OpenMP pools too, not torch's alone
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        summary = json.loads((Path(out) / job.run / "bench" / "summary.json").read_text())
    return {**summary, "seed": job.seed, "wall_seconds": round(wall, 1), "jobs": jobs, "threads": threads,
            "load_after": round(os.getloadavg()[0], 2),
            "command": f"python launch/continual.py method={job.run} n_iter={job.n_iter} train.seed={job.seed}",
            "machine": device_name(torch.device("cpu")) if summary["device"] == "cpu" else summary["device"],
            "date": str(datetime.date.today()), "torch": torch.__version__, "data": pickle or f"synthetic stand-in ({codes}-scale codes)",
            "commit": commit}


def save(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def run_jobs(jobs: list[Job], records: Path, *, parallel: int, threads: int, pickle: str | None,
             codes: str = "vggish") -> float:
    """Measure `jobs`, `parallel` at a time; each record is saved as its run ends.  Returns the wall time in all."""
    started = time.perf_counter()
    failures = []
    with ThreadPoolExecutor(parallel) as pool:
        running = {pool.submit(measure, job, pickle, threads, parallel, codes): job for job in jobs}
        for future in as_completed(running):
            job = running[future]
            try:
                record = future.result()
            except RuntimeError as exc:  # the other runs go on; the failure is reported at the end
                failures.append(str(exc))
                print(f"{job.run} seed {job.seed}: FAILED", flush=True)
                continue
            save(record, job.record(records))
            print(f"{job.run} seed {job.seed}: n_iter {job.n_iter}, {record['wall_seconds'] / 60:.1f} min, during "
                  f"{record['during_accuracy']:.1f}%, final {record['final_accuracy']:.1f}%", flush=True)
    if failures:
        raise SystemExit("\n\n".join(failures))
    return time.perf_counter() - started


def load_records(records: Path) -> list[dict]:
    return [json.loads(p.read_text()) for run in PUBLISHED for p in sorted((records / run).glob("n_iter*/seed*.json"))]


def aggregate(records: list[dict]) -> list[dict]:
    """One row per (run, n_iter) in the published order: mean and population std over the finished seeds of
    during / final accuracy and backward transfer, the seeds stopped early apart, mean wall time and ms/iter."""
    rows = []
    for run in PUBLISHED:
        for n_iter in sorted({r["n_iter"] for r in records if r["method"] == run}, reverse=True):
            group = [r for r in records if r["method"] == run and r["n_iter"] == n_iter]
            done = [r for r in group if not r["stopped_early"]]
            row = {"run": run, "n_iter": n_iter, "seeds": sorted(r["seed"] for r in done),
                   "stopped": sorted(r["seed"] for r in group if r["stopped_early"]),
                   "wall_min": float(np.mean([r["wall_seconds"] for r in group])) / 60,
                   "ms_per_iter": float(np.mean([1e3 * r["seconds"] / iterations(r) for r in group])),
                   "jobs": sorted({r["jobs"] for r in group}), "threads": sorted({r["threads"] for r in group})}
            for key in ("during_accuracy", "final_accuracy", "backward_transfer"):
                values = [r[key] for r in done]
                row[key] = (float(np.mean(values)), float(np.std(values))) if values else None
            rows.append(row)
    return rows


def iterations(record: dict) -> int:
    tasks = len(record["accuracy_matrix"]) if record["algorithm"] != "multitask" else len(record["tasks"])
    return record["n_iter"] * tasks


def cell(stat: tuple[float, float] | None, n: int) -> str:
    if stat is None:
        return "-"
    return f"{stat[0]:.1f}" if n == 1 else f"{stat[0]:.1f} ± {stat[1]:.1f}"


def render(records: list[dict], out: Path | None) -> str:
    rows = aggregate(records)
    table = []
    for r in rows:
        during, final = PUBLISHED[r["run"]]
        n = len(r["seeds"])
        table.append([r["run"], r["n_iter"], load_continual_config([f"method={r['run']}"]).n_iter,
                      f"{n}" + (f" (+{len(r['stopped'])} stopped)" if r["stopped"] else ""),
                      cell(r["during_accuracy"], n), cell(r["final_accuracy"], n),
                      "-" if during is None else f"{during:.1f}", "-" if final is None else f"{final:.1f}",
                      cell(r["backward_transfer"], n), f"{r['wall_min']:.1f}", f"{r['ms_per_iter']:.2f}",
                      "/".join(f"{j}x{t}" for j in r["jobs"] for t in r["threads"])])
    headers = ["run", "n_iter/task", "published n_iter", "seeds", "during %", "final %", "published during",
               "published final", "BWT", "wall min", "ms/iter", "jobs x threads"]
    machines = sorted({f"{r['machine']}, torch {r['torch']}" for r in records})
    dates = sorted({r["date"] for r in records})
    text = (f"## Split AudioSet, 10 tasks x 10 classes, on {'; '.join(machines)}\n\n"
            f"Measured {', '.join(dates)} on {', '.join(sorted({r['data'] for r in records}))} "
            f"(commits {', '.join(sorted({r['commit'] for r in records}))}): each seed is "
            f"`python launch/continual.py method=<run> n_iter=<n_iter/task> train.seed=<seed>` in its own process, "
            f"timed from start to exit (`python benchmarks/continual_table.py --seeds ... --jobs ...`). Cells: mean ± "
            f"population std over the seeds that finished (one value: one seed); seeds stopped by the run's "
            f"during-accuracy criterion are counted apart and left out, as the published gather script leaves them "
            f"out. `wall min` is per seed, with `jobs` runs side by side of `threads` threads each.\n\n"
            f"{tabulate(table, headers=headers, tablefmt='github')}\n")
    if out:
        notes = kept_notes(out)
        out.write_text(f"{text}\n{NOTES}\n" + (f"\n{notes}" if notes else ""))
        plot(rows, out.with_suffix(".png"))
    return text


def kept_notes(path: Path) -> str:
    """What was written by hand below the table of an earlier render (the reading of the numbers): regenerating
    the table as sessions add records must not drop it."""
    if not path.is_file():
        return ""
    text = path.read_text()
    if NOTES in text:
        return text.split(NOTES, 1)[1].lstrip("\n")
    # rendered before the marker existed: whatever follows the first table's last row
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if first is None:
        return ""
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "".join(lines[end:]).lstrip("\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["final_accuracy"] is not None]
    pos = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    for offset, key, label in ((-0.27, "during_accuracy", "during (ours)"), (0.0, "final_accuracy", "final (ours)")):
        ax.bar(pos + offset, [r[key][0] for r in rows], 0.27, yerr=[r[key][1] for r in rows], capsize=3, label=label)
    ax.bar(pos + 0.27, [PUBLISHED[r["run"]][1] or 0 for r in rows], 0.27, label="final (published)")
    ax.set_xticks(pos, [f"{r['run']}\n{r['n_iter']} it/task" for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy % (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="train.seed of each run (init and batch order)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once on this machine")
    p.add_argument("--threads", type=int, help="threads per run (default: this machine's cores / --jobs)")
    p.add_argument("--n-iter-scale", type=float, default=1.0)
    p.add_argument("--pickle", help="the published audioset_data_balanced.pickle (default: synthetic stand-in)")
    p.add_argument("--codes", choices=["vggish", "small"], default="vggish",
                   help="the stand-in's code scale (data.synthetic_codes; small: that of continual_small.md)")
    p.add_argument("--records", type=Path, default=REPO / "benchmarks" / "results" / "continual",
                   help="folder of <run>/n_iter<n>/seed<seed>.json records (the table's source)")
    p.add_argument("--redo", action="store_true", help="measure runs that have a record again")
    p.add_argument("--list", action="store_true", help="print the plan (index, run, seed, n_iter) and exit")
    p.add_argument("--index", type=int, help="measure only this entry of the plan (e.g. $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--table-only", action="store_true", help="render the table from --records without running")
    p.add_argument("--out", type=Path, help="Markdown file; the PNG goes beside it")
    args = p.parse_args()
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        p.error("--jobs and --threads must be at least 1")
    jobs = plan(args.runs, args.seeds, args.n_iter_scale)
    if args.list:
        for i, job in enumerate(jobs):
            print(f"{i}\t{job.run}\tseed {job.seed}\tn_iter {job.n_iter}")
        return
    if args.index is not None:
        if not 0 <= args.index < len(jobs):
            p.error(f"--index {args.index}: the plan has {len(jobs)} entries (0..{len(jobs) - 1}); see --list")
        jobs = [jobs[args.index]]
    threads = args.threads or default_threads(args.jobs)
    pending = [] if args.table_only else [j for j in jobs if args.redo or not j.record(args.records).is_file()]
    if pending:
        print(f"{len(pending)} run(s) to measure ({len(jobs) - len(pending)} recorded already), {args.jobs} at once, "
              f"{threads} thread(s) each", flush=True)
        wall = run_jobs(pending, args.records, parallel=args.jobs, threads=threads, pickle=args.pickle,
                        codes=args.codes)
        print(f"measured {len(pending)} run(s) in {wall / 60:.1f} min", flush=True)
    records = load_records(args.records)
    if not records:
        raise SystemExit(f"no records in {args.records}: run without --table-only first")
    print(render(records, args.out))


if __name__ == "__main__":
    main()
