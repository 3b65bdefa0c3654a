"""Coresets with distillation: replay stored inputs of old tasks against a frozen copy's soft targets.

After each task `coreset_size` random train inputs are kept.  While training task t > 0, a replay batch
of `batch_size` inputs split over the old tasks is added; the targets are the old heads' outputs of a copy
of the network frozen at the start of task t; loss -T^2 sum softmax(z_old / T) log softmax(z / T) per old
task (mean over its samples), summed over old tasks, times replay_distill_reg.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..data import Task
from .base import Method


class Coresets(Method):
    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.coresets: list[torch.Tensor] = []
        self.frozen = None
        self.gen = torch.Generator().manual_seed(cfg.train.seed + 2)

    def start_task(self, task: int, data: Task) -> None:
        self.frozen = copy.deepcopy(self.net).eval().requires_grad_(False) if self.coresets else None

    def loss(self, x, y, task):
        loss = super().loss(x, y, task)
        if self.frozen is None:
            return loss
        temp, per_task = self.cfg.params.distill_temperature, max(1, self.cfg.train.batch_size // len(self.coresets))
        picks = [inputs[torch.randint(len(inputs), (per_task,), generator=self.gen)] for inputs in self.coresets]
        batch = torch.cat(picks).to(self.device)
        tasks = torch.arange(len(picks), device=self.device).repeat_interleave(per_task)
        with torch.no_grad():
            frozen = self.frozen(batch, tasks)  # one forward over all old tasks' replay samples
        current = self.net(batch, tasks)
        distill = torch.zeros((), device=self.device)
        for old in range(len(picks)):
            rows, head = slice(old * per_task, (old + 1) * per_task), self.head(old)
            target = F.softmax(frozen[rows, head] / temp, dim=1)
            log_p = F.log_softmax(current[rows, head] / temp, dim=1)
            distill = distill - temp ** 2 * (target * log_p).sum(1).mean()
        return loss + self.cfg.params.replay_distill_reg * distill

    def end_task(self, task: int, data: Task) -> None:
        size = min(self.cfg.params.coreset_size, len(data.train_x))
        self.coresets.append(data.train_x[torch.randperm(len(data.train_x), generator=self.gen)[:size]].clone())
