"""Train a method through the task sequence and fill the accuracy matrix.

A[t, j] = test accuracy (%) on task j after training task t (every task, also the future ones).
during = mean of diag(A); final = mean of A's last row; backward transfer = mean over j < T-1 of
A[T-1, j] - A[j, j]; forgetting = mean over j < T-1 of max_{t<T-1} A[t, j] - A[T-1, j].
The run folder gets the resolved config, `log.csv` (loss every 100 iterations, validation checks),
`summary.json` and `accuracy_matrix.png`.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from data_shards.atomic import atomic_path

from ..distributed import resolve_device
from ..plots import heatmap_png
from ..configtools import to_yaml
from .config import ContinualConfig
from .data import Task, load_pickle, make_tasks, synthetic
from .methods import METHODS, Method

log = logging.getLogger(__name__)


def load_tasks(cfg: ContinualConfig) -> list[Task]:
    d = cfg.data
    arrays = load_pickle(d.pickle) if d.pickle else synthetic(d.synthetic_seed, codes=d.synthetic_codes)
    return make_tasks(*arrays, num_tasks=d.num_tasks, classes_per_task=d.classes_per_task, seed=d.split_seed,
                      val_size=d.val_size)


@torch.no_grad()
def validation(method: Method, x: torch.Tensor, y: torch.Tensor, task: int, batch: int = 2000) -> tuple[float, float]:
    """Accuracy (%) and mean cross-entropy of the task's head on (x, y)."""
    method.net.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        logits, labels = method.logits(x[i:i + batch].to(method.device), task), y[i:i + batch].to(method.device)
        correct += (logits.argmax(1) == labels).sum().item()
        loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    method.net.train()
    return 100.0 * correct / max(1, len(x)), loss / max(1, len(x))


def accuracy(method: Method, x: torch.Tensor, y: torch.Tensor, task: int, batch: int = 2000) -> float:
    """Accuracy (%) of the task's head on (x, y)."""
    return validation(method, x, y, task, batch)[0]


def draw_rows(sizes: torch.Tensor, tasks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each entry of `tasks`, a uniform row of that task's train set in the concatenation of all of them
    (`sizes`: each task's number of train samples, in order)."""
    starts = torch.cumsum(sizes, 0) - sizes
    return starts[tasks] + (torch.rand(tasks.shape, generator=gen) * sizes[tasks]).long()


def transfer_metrics(matrix: np.ndarray) -> dict:
    t = len(matrix)
    diag = np.diag(matrix[:, :t]) if t else np.zeros(0)
    last = matrix[-1, :t]
    out = {"during_accuracy": float(diag.mean()), "final_accuracy": float(last.mean())}
    if t > 1:
        out["backward_transfer"] = float(np.mean(last[:-1] - diag[:-1]))
        out["forgetting"] = float(np.mean(matrix[:-1, :t - 1].max(axis=0) - last[:-1]))
    else:
        out["backward_transfer"] = out["forgetting"] = 0.0
    return out


class Runner:
    def __init__(self, cfg: ContinualConfig, tasks: list[Task] | None = None):
        if cfg.method not in METHODS:
            raise ValueError(f"method {cfg.method!r} is not one of {', '.join(METHODS)}")
        self.cfg = cfg
        # The raw codes (0..255) saturate the LSTM's gates, so the backward pass produces denormal floats, which x86
        # CPUs process on a slow path; they are flushed to zero.  The flag is per thread and torch's worker threads
        # copy it when they start, so it is set before this process's first tensor work.
        torch.set_flush_denormal(cfg.train.flush_denormals)
        if cfg.train.threads:  # several runs side by side on one machine: each its share of the cores
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        self.tasks = tasks if tasks is not None else load_tasks(cfg)
        self.method = METHODS[cfg.method](cfg, self.device)
        self.gen = torch.Generator().manual_seed(cfg.train.seed)
        self.log_rows: list[dict] = []

    def _optimizer(self, task: int) -> torch.optim.Optimizer:
        t = self.cfg.train
        return torch.optim.Adam(self.method.param_groups(task), lr=t.lr, betas=(0.9, 0.999), weight_decay=t.weight_decay,
                                fused=True)

    def _step(self, opt, loss: torch.Tensor, task: int, it: int, bar: tqdm) -> None:
        """One update of iteration `it` (0-based) of `task` (-1: joint); the loss is logged every 100."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self.method.before_update(task, opt)
        if self.cfg.train.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                           self.cfg.train.clip_grad_norm)
        opt.step()
        self.method.after_update(task)
        bar.update(1)
        if (it + 1) % 100 == 0:
            self.log_rows.append({"task": task, "iteration": it + 1, "loss": loss.item()})

    def _rows(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's inputs and labels on the device (index_select: ~4x faster than x[idx] on a CPU)."""
        return x.index_select(0, idx).to(self.device), y.index_select(0, idx).to(self.device)

    def train_task(self, t: int, bar: tqdm) -> None:
        cfg, task, m = self.cfg, self.tasks[t], self.method
        m.start_task(t, task)
        opt = self._optimizer(t)
        # best-model restore as published: a snapshot whenever the validation accuracy or the validation loss
        # improves on its own best so far; the latest snapshot is restored at the task's end
        best, best_acc, best_loss = None, -1.0, float("inf")
        batches = torch.randint(len(task.train_x), (cfg.n_iter, cfg.train.batch_size), generator=self.gen)
        for it, idx in enumerate(batches):
            loss = m.loss(*self._rows(task.train_x, task.train_y, idx), t)
            self._step(opt, loss, t, it, bar)
            if cfg.train.use_best_models and (it + 1) % cfg.train.best_every == 0:
                acc, val_loss = validation(m, task.val_x, task.val_y, t)
                self.log_rows.append({"task": t, "iteration": it + 1, "val_accuracy": acc, "val_loss": val_loss})
                if acc > best_acc or val_loss < best_loss:
                    best, best_acc, best_loss = m.snapshot(), max(acc, best_acc), min(val_loss, best_loss)
        if best is not None:
            m.restore(best)
        m.end_task(t, task)

    def joint_train_set(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every task's train inputs and labels concatenated in task order, and each task's number of samples."""
        return (torch.cat([t.train_x for t in self.tasks]), torch.cat([t.train_y for t in self.tasks]),
                torch.tensor([len(t.train_x) for t in self.tasks]))

    def train_joint(self, bar: tqdm) -> None:
        cfg, m = self.cfg, self.method
        opt = self._optimizer(-1)
        xs, ys, sizes = self.joint_train_set()
        total, block, b = cfg.n_iter * len(self.tasks), 1000, cfg.train.batch_size
        for first in range(0, total, block):  # samples drawn for `block` iterations at a time: fewer small calls
            n = min(block, total - first)
            tasks = torch.randint(len(self.tasks), (n, b), generator=self.gen)
            rows = draw_rows(sizes, tasks, self.gen)
            for it, (task, idx) in enumerate(zip(tasks, rows), start=first):
                loss = m.joint_loss(*self._rows(xs, ys, idx), task.to(self.device))
                self._step(opt, loss, -1, it, bar)

    def run(self) -> dict:
        cfg, n = self.cfg, len(self.tasks)
        rows, stopped, started = [], None, time.perf_counter()
        total = cfg.n_iter * n
        with tqdm(total=total, desc=cfg.run, unit="it", disable=None, dynamic_ncols=True) as bar:
            if self.method.joint:
                self.train_joint(bar)
                rows.append([accuracy(self.method, t.test_x, t.test_y, t.index) for t in self.tasks])
            else:
                for t in range(n):
                    self.train_task(t, bar)
                    rows.append([accuracy(self.method, task.test_x, task.test_y, task.index) for task in self.tasks])
                    log.info("after task %d: during %.2f%%, mean over tasks 0..%d %.2f%%", t, rows[-1][t], t,
                             np.mean(rows[-1][:t + 1]))
                    if 0 < cfg.train.during_acc_criterion and rows[-1][t] < cfg.train.during_acc_criterion:
                        stopped = f"task {t} during accuracy {rows[-1][t]:.2f}% < {cfg.train.during_acc_criterion}%"
                        log.warning("stopping: %s", stopped)
                        break
        matrix = np.array(rows)
        if self.method.joint:
            result = {"during_accuracy": float(matrix[0].mean()), "final_accuracy": float(matrix[0].mean()),
                      "backward_transfer": 0.0, "forgetting": 0.0}
        else:
            result = transfer_metrics(matrix)
        return {"method": cfg.run, "algorithm": cfg.method, "accuracy_matrix": matrix.tolist(), **result,
                "stopped_early": stopped, "tasks": [t.classes for t in self.tasks], "n_iter": cfg.n_iter,
                "seconds": round(time.perf_counter() - started, 1), "device": str(self.device),
                "num_weights": self.method.net.num_weights()}


def run_and_save(cfg: ContinualConfig, tasks: list[Task] | None = None) -> Path:
    """Run, then write the run folder; returns it."""
    folder = Path(cfg.out) / cfg.run / (cfg.name or time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(to_yaml(cfg))
    runner = Runner(cfg, tasks)
    summary = runner.run()
    pd.DataFrame(runner.log_rows).to_csv(folder / "log.csv", index=False)
    matrix = np.array(summary["accuracy_matrix"])
    labels = [f"T{j}" for j in range(matrix.shape[1])]
    heatmap_png(matrix, folder / "accuracy_matrix.png", rows=[f"after T{t}" for t in range(len(matrix))] if
                not runner.method.joint else ["joint"], cols=labels, fmt="{:.0f}",
                title=f"{cfg.run}: during {summary['during_accuracy']:.1f}%, final {summary['final_accuracy']:.1f}%",
                xlabel="tested on task", ylabel="trained through")
    with atomic_path(folder / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return folder
