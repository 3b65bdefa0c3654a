"""Every Split AudioSet run of configs/continual/ side by side with the published numbers (Markdown + PNG).

    python benchmarks/continual_table.py                                  # published iteration counts
    python benchmarks/continual_table.py --n-iter-scale 0.02 --out benchmarks/results/continual.md

Each run uses its YAML (the published hyperparameters) on the synthetic stand-in unless --pickle names
the real data; --n-iter-scale shortens every run by the same factor.  The table reports during / final
accuracy, backward transfer, wall time and ms per iteration, and the time a full run at the published
iteration count takes at that rate.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from machine import device_name
from trainer.continual.config import CONFIGS, load_continual_config
from trainer.continual.runner import Runner, load_tasks

# reference/continual.md: during / final accuracy (%) of the published runs (None: not reported).
PUBLISHED = {
    "multitask": (None, 77.0), "from_scratch": (79.0, 79.0), "finetune": (72.0, 51.0), "hnet": (None, 72.65),
    "ewc": (None, 67.5), "ewc_task_id": (71.74, 66.35), "si": (None, 67.0), "masking": (None, 55.0),
    "masking_si": (None, 65.0), "coresets": (None, 72.5), "coresets_500": (None, 73.5), "slow_learner": (None, None),
}


def fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(PUBLISHED))
    p.add_argument("--n-iter-scale", type=float, default=1.0)
    p.add_argument("--pickle", help="the published audioset_data_balanced.pickle (default: synthetic stand-in)")
    p.add_argument("--out", type=Path, help="Markdown file; the PNG goes beside it")
    args = p.parse_args()
    extra = [f"data.pickle={args.pickle}"] if args.pickle else []
    tasks = load_tasks(load_continual_config(["method=finetune", *extra]))
    rows, plotted = [], []
    for run in args.runs:
        published_iter = load_continual_config([f"method={run}"]).n_iter
        n_iter = max(1, round(published_iter * args.n_iter_scale))
        cfg = load_continual_config([f"method={run}", f"n_iter={n_iter}", *extra])
        started = time.perf_counter()
        result = Runner(cfg, tasks).run()
        seconds = time.perf_counter() - started
        iterations = n_iter * cfg.data.num_tasks
        per_iter = 1e3 * seconds / iterations
        during, final = PUBLISHED[run]
        rows.append([run, n_iter, f"{result['during_accuracy']:.1f}", f"{result['final_accuracy']:.1f}", fmt(during),
                     fmt(final), f"{result['backward_transfer']:.1f}", f"{seconds:.0f}", f"{per_iter:.2f}",
                     f"{per_iter * published_iter * cfg.data.num_tasks / 60e3:.1f}",
                     result["stopped_early"] or ""])
        plotted.append((run, result["during_accuracy"], result["final_accuracy"], final))
        print(rows[-1], flush=True)
    headers = ["run", "n_iter/task", "during %", "final %", "published during", "published final", "BWT",
               "seconds", "ms/iter", "est. min at published n_iter", "stopped early"]
    table = tabulate(rows, headers=headers, tablefmt="github")
    data = args.pickle or "the synthetic stand-in"
    text = (f"## Split AudioSet, 10 tasks x 10 classes, on {device_name(torch.device('cpu'))}\n\n"
            f"Measured {datetime.date.today()}, torch {torch.__version__}, with `python benchmarks/continual_table.py "
            f"{' '.join(sys.argv[1:])}` on {data}.\n\n{table}\n")
    print(text)
    if args.out:
        args.out.write_text(text)
        plot(plotted, args.out.with_suffix(".png"))


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
