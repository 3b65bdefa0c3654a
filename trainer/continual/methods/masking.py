"""Masking: a fixed random binary mask over the hidden units per task (h = o tanh(m c)), alone or with SI."""
from __future__ import annotations

import torch

from ..data import Task
from .si import SI


class Masking(SI):
    """Per task, int(H * fraction) hidden units switched off; SI's penalty only when params.si_lambda > 0."""

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        h, off = cfg.net.hidden, int(cfg.net.hidden * cfg.params.mask_fraction)
        gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.masks = []
        for _ in range(cfg.data.num_tasks):
            mask = torch.ones(h)
            mask[torch.randperm(h, generator=gen)[:off]] = 0.0
            self.masks.append(mask.to(device))

    @property
    def uses_si(self) -> bool:
        return self.cfg.params.si_lambda > 0

    def outputs(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.net(x, task, mask=self.masks[task])

    def start_task(self, task: int, data: Task) -> None:
        if self.uses_si:
            super().start_task(task, data)

    def loss(self, x, y, task):
        if self.uses_si:
            return super().loss(x, y, task)
        return self.task_loss(x, y, task) + self.regulariser(task)

    def before_update(self, task: int) -> None:
        if self.uses_si:
            super().before_update(task)

    def after_update(self, task: int) -> None:
        if self.uses_si:
            super().after_update(task)

    def end_task(self, task: int, data: Task) -> None:
        if self.uses_si:
            super().end_task(task, data)
