"""Masking: a fixed random binary mask over the hidden units per task (h = o tanh(m c)), alone or with SI."""
from __future__ import annotations

import torch

from .si import SI


class Masking(SI):
    """Per task, int(H * fraction) hidden units switched off; SI's penalty too when params.si_lambda > 0."""

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        h, off = cfg.net.hidden, int(cfg.net.hidden * cfg.params.mask_fraction)
        gen = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.masks = []
        for _ in range(cfg.data.num_tasks):
            mask = torch.ones(h)
            mask[torch.randperm(h, generator=gen)[:off]] = 0.0
            self.masks.append(mask.to(device))

    def outputs(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.net(x, task, mask=self.masks[task])
