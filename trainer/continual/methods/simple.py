"""The reference points: a fresh network per task (from scratch), joint training (multitask), and the slow
learner (representation at a low learning rate, heads at a high one)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import Task
from .base import Method


class FromScratch(Method):
    """Re-initialise before every task; each task is tested with the network trained on it."""

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.per_task: dict[int, dict[str, torch.Tensor]] = {}

    def start_task(self, task: int, data: Task) -> None:
        self.net.reset_parameters(self.cfg.net.orthogonal_init)

    def end_task(self, task: int, data: Task) -> None:
        self.per_task[task] = {k: v.detach().clone() for k, v in self.net.named_parameters()}

    def outputs(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if not self.net.training and task in self.per_task:
            return self.net(x, task, params=self.per_task[task])
        return self.net(x, task)


class Multitask(Method):
    """All tasks at once: n_iter x num_tasks iterations, every sample's task drawn uniformly (the upper bound)."""

    joint = True

    def joint_loss(self, x: torch.Tensor, y: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.per_sample_heads(self.net(x, tasks), tasks), y) + self.regulariser(-1)


class SlowLearner(Method):
    """Fine-tuning with two learning rates: the LSTM (representation) at train.lr, the heads at params.head_lr."""

    def param_groups(self, task: int) -> list[dict]:
        return [{"params": list(self.net.lstm.parameters())},
                {"params": list(self.net.head.parameters()), "lr": self.cfg.params.head_lr}]

