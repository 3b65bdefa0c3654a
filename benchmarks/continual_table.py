"""Every Split AudioSet run of configs/continual/ side by side with the published numbers (Markdown + PNG).

    python benchmarks/continual_table.py --out benchmarks/results/continual.md          # all runs, published n_iter
    python benchmarks/continual_table.py --runs ewc si --out benchmarks/results/continual.md
    python benchmarks/continual_table.py --table-only --out benchmarks/results/continual.md

Each run goes through the user's command, `python launch/continual.py method=<run>`, in a fresh process
(its YAML: the published hyperparameters, on the synthetic stand-in unless --pickle names the real data),
timed from process start to exit.  Its record (summary, wall time, machine, date) is kept in
--records/<run>.json, so runs can be measured one session at a time; the table is rendered from every
record there, in the published table's order.  --n-iter-scale shortens the runs by one factor.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from machine import device_name
from trainer.continual.config import load_continual_config

REPO = Path(__file__).resolve().parents[1]
# reference/continual.md: during / final accuracy (%) of the published runs (None: not reported).
PUBLISHED = {
    "multitask": (None, 77.0), "from_scratch": (79.0, 79.0), "finetune": (72.0, 51.0), "hnet": (None, 72.65),
    "ewc": (None, 67.5), "ewc_task_id": (71.74, 66.35), "si": (None, 67.0), "masking": (None, 55.0),
    "masking_si": (None, 65.0), "coresets": (None, 72.5), "coresets_500": (None, 73.5), "slow_learner": (None, None),
}


def fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def measure(run: str, n_iter: int, pickle: str | None) -> dict:
    """One run through launch/continual.py in its own process; its summary plus the wall time."""
    # the code measured is the code at the start: edits made while a run goes on must not be credited to it
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / "launch" / "continual.py"), f"method={run}", f"n_iter={n_iter}",
                   f"out={out}", "name=bench", *([f"data.pickle={pickle}"] if pickle else [])]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        summary = json.loads((Path(out) / run / "bench" / "summary.json").read_text())
    return {**summary, "wall_seconds": round(wall, 1), "command": f"python launch/continual.py method={run} n_iter={n_iter}",
            "machine": device_name(torch.device("cpu")) if summary["device"] == "cpu" else summary["device"],
            "date": str(datetime.date.today()), "torch": torch.__version__, "data": pickle or "synthetic stand-in",
            "commit": commit}


def render(records: list[dict], out: Path | None) -> str:
    rows = []
    for r in records:
        published_iter = load_continual_config([f"method={r['method']}"]).n_iter
        iterations = r["n_iter"] * (len(r["accuracy_matrix"]) if r["algorithm"] != "multitask" else len(r["tasks"]))
        during, final = PUBLISHED[r["method"]]
        rows.append([r["method"], r["n_iter"], published_iter, f"{r['during_accuracy']:.1f}",
                     f"{r['final_accuracy']:.1f}", fmt(during), fmt(final), f"{r['backward_transfer']:.1f}",
                     f"{r['wall_seconds'] / 60:.1f}", f"{1e3 * r['seconds'] / iterations:.2f}",
                     r["stopped_early"] or ""])
    headers = ["run", "n_iter/task", "published n_iter", "during %", "final %", "published during",
               "published final", "BWT", "wall min", "ms/iter", "stopped early"]
    machines = sorted({f"{r['machine']}, torch {r['torch']}" for r in records})
    dates = sorted({r["date"] for r in records})
    text = (f"## Split AudioSet, 10 tasks x 10 classes, on {'; '.join(machines)}\n\n"
            f"Measured {', '.join(dates)} on {', '.join(sorted({r['data'] for r in records}))}: each row is "
            f"`python launch/continual.py method=<run> n_iter=<n_iter/task>` in its own process, timed from start "
            f"to exit (`python benchmarks/continual_table.py`).\n\n{tabulate(rows, headers=headers, tablefmt='github')}\n")
    if out:
        out.write_text(text)
        plot([(r["method"], r["during_accuracy"], r["final_accuracy"], PUBLISHED[r["method"]][1]) for r in records],
             out.with_suffix(".png"))
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    p.add_argument("--n-iter-scale", type=float, default=1.0)
    p.add_argument("--pickle", help="the published audioset_data_balanced.pickle (default: synthetic stand-in)")
    p.add_argument("--records", type=Path, default=REPO / "benchmarks" / "results" / "continual",
                   help="folder of one <run>.json per measured run (the table's source)")
    p.add_argument("--table-only", action="store_true", help="render the table from --records without running")
    p.add_argument("--out", type=Path, help="Markdown file; the PNG goes beside it")
    args = p.parse_args()
    args.records.mkdir(parents=True, exist_ok=True)
    for run in [] if args.table_only else args.runs:
        n_iter = max(1, round(load_continual_config([f"method={run}"]).n_iter * args.n_iter_scale))
        record = measure(run, n_iter, args.pickle)
        tmp = args.records / f".{run}.json.tmp"
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(args.records / f"{run}.json")
        print(f"{run}: n_iter {n_iter}, {record['wall_seconds'] / 60:.1f} min, during {record['during_accuracy']:.1f}%, "
              f"final {record['final_accuracy']:.1f}%", flush=True)
    records = [json.loads((args.records / f"{run}.json").read_text()) for run in PUBLISHED
               if (args.records / f"{run}.json").is_file()]
    if not records:
        raise SystemExit(f"no records in {args.records}: run without --table-only first")
    print(render(records, args.out))


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in results]
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
    ax.bar(pos - 0.27, [r[1] for r in results], 0.27, label="during (this run)")
    ax.bar(pos, [r[2] for r in results], 0.27, label="final (this run)")
    ax.bar(pos + 0.27, [r[3] or 0 for r in results], 0.27, label="final (published)")
    ax.set_xticks(pos, names, rotation=30, ha="right")
    ax.set_ylabel("accuracy %")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
