"""What a finished run leaves for people and for the next stage: `summary.json`, the confusion matrices as PNG,
the results table on stdout and the `runs/<stage>/latest` link (the next stage's default `init_from`).

The trainer trains and evaluates; this module only writes down what it found (rank 0, once per run).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tabulate import tabulate

from data_shards.atomic import atomic_path

from .config import Config, selection
from .plots import confusion_png

SUMMARY = "summary.json"


def write(run_dir: Path, cfg: Config, best_epoch: int, global_steps: int, val: dict | None, test: dict,
          classes: list[str], world_size: int, previous: dict | None = None, compiled: dict | None = None) -> None:
    """summary.json, confusion_{val,test}.png, the `latest` link, and the results table printed.

    `selection` says what the kept model was chosen on (split, metric, best or last epoch) and `on_test` marks
    a choice made on the test split, whose test metrics are optimistic.  `previous` (retain.keep_head): the previous
    stage's test metrics before and after this stage, and the forgetting (accuracy before - after).  `compiled`:
    whether the model ran compiled (`compiled`) and, when compiling failed, why (`compile_error`)."""
    summary = {"stage": cfg.stage, "run_dir": str(run_dir), "protocol": cfg.protocol, "method": cfg.optim.method,
               "dataset": cfg.data.dataset, "train_split": cfg.data.train_split, "val_split": cfg.data.val_split,
               "test_split": cfg.data.test_split, "select_metric": cfg.train.select_metric,
               "selection": selection(cfg), "seed": cfg.train.seed, "best_epoch": best_epoch, "epochs": cfg.train.epochs,
               "global_steps": global_steps, "world_size": world_size, "global_batch": cfg.train.global_batch,
               **(compiled or {"compiled": False, "compile_error": None}), "classes": classes, "val": val,
               "test": test, "previous": previous}
    with atomic_path(run_dir / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    for split, metrics in (("val", val), ("test", test)):
        if metrics is None:
            continue
        confusion_png(metrics["confusion"], classes, run_dir / f"confusion_{split}.png",
                      f"{cfg.stage} {split} ({getattr(cfg.data, split + '_split')}), accuracy {metrics['accuracy']:.3f}")
    point_latest(run_dir)
    print(results_table(val, test), flush=True)
    print(f"run directory: {run_dir}", flush=True)


def point_latest(run_dir: Path) -> None:
    """runs/<stage>/latest -> the newest finished run (what the next stage's init_from names by default)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    tmp.replace(link)


def results_table(val: dict | None, test: dict) -> str:
    """The final metrics, validation (best epoch) next to test."""
    columns = {f"val (n={val['num_samples']})": val} if val else {}
    return metrics_table({**columns, f"test (n={test['num_samples']})": test})


def metrics_table(columns: dict[str, dict]) -> str:
    """Metrics (`metrics.classification_metrics` results) side by side, one column per heading."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    ms = list(columns.values())
    rows = [["accuracy %", *(pct(m["accuracy"]) for m in ms)],
            ["macro class accuracy %", *(pct(m["macro_accuracy"]) for m in ms)],
            ["log loss", *(f"{m['log_loss']:.4f}" for m in ms)]]
    for group in ("real", "seen", "unseen"):
        if any(group in m["device_groups"] for m in ms):
            rows.append([f"devices {group} %", *(pct(m["device_groups"].get(group)) for m in ms)])
    rows += [[f"class {name} %", *(pct(m["per_class"][name]) for m in ms)] for name in ms[0]["per_class"]]
    return tabulate(rows, headers=["metric", *columns], disable_numparse=True,
                    colalign=("left", *("right" for _ in ms)))
