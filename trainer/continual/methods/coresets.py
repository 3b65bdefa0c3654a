"""Coresets with distillation: replay stored inputs of old tasks against the soft targets of a frozen teacher.

After each task `coreset_size` random train inputs are kept.  While training task t > 0, a replay batch
of `batch_size` inputs split over the old tasks is added, as the published code splits it: batch_size //
(old tasks) each, and the remainder one more each for that many old tasks drawn anew every batch (64 over
3 old tasks: 22 / 21 / 21).  The targets are the old heads' outputs of the network as it was at the start
of task t; loss -T^2 sum softmax(z_old / T) log softmax(z / T) per old task (mean over its samples),
summed over old tasks, times replay_distill_reg.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import Task
from .base import Method


class Coresets(Method):
    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.store: torch.Tensor | None = None  # the coresets concatenated, task after task
        self.store_tasks: torch.Tensor | None = None
        self.sizes: list[int] = []  # inputs kept per old task
        self._first: torch.Tensor | None = None  # per old task: its first store index ...
        self._span: torch.Tensor | None = None  # ... and coreset size
        self.targets: torch.Tensor | None = None  # soft targets of every stored input, fixed during a task
        self.gen = torch.Generator().manual_seed(cfg.train.seed + 2)

    def start_task(self, task: int, data: Task) -> None:
        """The network as it is now is the frozen teacher of this task: its soft targets for the fixed coreset
        inputs are computed once here instead of by a frozen copy at every iteration."""
        if self.store is None:
            return
        temp = self.cfg.params.distill_temperature
        with torch.no_grad():
            self.net.eval()
            logits = torch.cat([self.net(self.store[i:i + 2000], self.store_tasks[i:i + 2000])
                                for i in range(0, len(self.store), 2000)])
            self.net.train()
            self.targets = F.softmax(self.per_sample_heads(logits, self.store_tasks) / temp, dim=1)

    def replay_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One replay batch: indices into the store (uniform within each old task's coreset, old tasks in order) and
        each sample's weight 1 / (its old task's samples in the batch)."""
        n, b = len(self.sizes), self.cfg.train.batch_size
        counts = torch.full((n,), b // n)
        counts[torch.randperm(n, generator=self.gen)[:b - n * (b // n)]] += 1
        slots = torch.arange(n).repeat_interleave(counts)
        idx = self._first[slots] + (torch.rand(len(slots), generator=self.gen) * self._span[slots]).long()
        return idx.to(self.device), (1.0 / counts[slots]).to(self.device)

    def loss(self, x, y, task):
        if self.store is None:
            return super().loss(x, y, task)
        idx, weight = self.replay_indices()
        old, temp = self.store_tasks[idx], self.cfg.params.distill_temperature
        # the new task's batch and the replay go through the network in one forward
        out = self.net(torch.cat([x, self.store[idx]]), torch.cat([torch.full((len(x),), task, device=self.device), old]))
        loss = F.cross_entropy(out[:len(x), self.head(task)], y) + self.regulariser(task)
        log_p = F.log_softmax(self.per_sample_heads(out[len(x):], old) / temp, dim=1)
        distill = -temp ** 2 * ((self.targets[idx] * log_p).sum(1) * weight).sum()  # mean per old task, summed
        return loss + self.cfg.params.replay_distill_reg * distill

    def end_task(self, task: int, data: Task) -> None:
        size = min(self.cfg.params.coreset_size, len(data.train_x))
        kept = data.train_x[torch.randperm(len(data.train_x), generator=self.gen)[:size]].to(self.device)
        self.store = kept if self.store is None else torch.cat([self.store, kept])
        self.sizes.append(size)
        sizes = torch.tensor(self.sizes)
        self.store_tasks = torch.arange(len(sizes)).repeat_interleave(sizes).to(self.device)
        self._first, self._span = torch.cumsum(sizes, 0) - sizes, sizes
