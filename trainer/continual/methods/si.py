"""Synaptic Intelligence (SI), and the path-integral bookkeeping it shares with masking + SI.

Each step: omega += (theta_after - theta_before) * (-g), g the gradient of the task loss alone (or of the
whole loss).  At task end: Omega += max(0, omega / ((theta_end - theta_start)^2 + xi)), omega <- 0,
theta_prev <- theta_end.  Penalty: lambda sum Omega (theta - theta_prev)^2.
"""
from __future__ import annotations

import torch

from ..data import Task
from .base import Method


class PathIntegral:
    """SI's importance estimate for a list of tensors."""

    def __init__(self, params: list[torch.Tensor], xi: float):
        self.params, self.xi = params, xi
        self.omega = [torch.zeros_like(p) for p in params]
        self.importance = [torch.zeros_like(p) for p in params]
        self.prev = [p.detach().clone() for p in params]
        self._start = self._before = self._grads = None

    def start_task(self) -> None:
        self._start = [p.detach().clone() for p in self.params]

    def before_update(self, grads: list[torch.Tensor]) -> None:
        self._grads = [g.detach().clone() for g in grads]
        self._before = [p.detach().clone() for p in self.params]

    def after_update(self) -> None:
        for w, p, before, g in zip(self.omega, self.params, self._before, self._grads):
            w.add_((p.detach() - before) * -g)

    def end_task(self) -> None:
        for imp, w, p, start in zip(self.importance, self.omega, self.params, self._start):
            imp.add_(torch.clamp(w / ((p.detach() - start) ** 2 + self.xi), min=0))
            w.zero_()
        self.prev = [p.detach().clone() for p in self.params]

    def penalty(self) -> torch.Tensor:
        return sum((imp * (p - prev) ** 2).sum() for imp, p, prev in zip(self.importance, self.params, self.prev))


class SI(Method):
    """With params.si_lambda = 0 the penalty is off and no path integral is kept (plain fine-tuning)."""

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.active = cfg.params.si_lambda > 0
        self.si = PathIntegral(list(self.net.parameters()), cfg.params.si_xi)
        self._task_grads = None

    def start_task(self, task: int, data: Task) -> None:
        if self.active:
            self.si.start_task()

    def loss(self, x, y, task):
        if not self.active:
            return super().loss(x, y, task)
        task_loss = self.task_loss(x, y, task)
        if self.cfg.params.si_task_loss_only:
            self._task_grads = torch.autograd.grad(task_loss, self.si.params, retain_graph=True, allow_unused=True)
        return task_loss + self.regulariser(task) + self.cfg.params.si_lambda * self.si.penalty()

    def before_update(self, task: int) -> None:
        if not self.active:
            return
        grads = self._task_grads if self.cfg.params.si_task_loss_only else [p.grad for p in self.si.params]
        self.si.before_update([torch.zeros_like(p) if g is None else g for p, g in zip(self.si.params, grads)])

    def after_update(self, task: int) -> None:
        if self.active:
            self.si.after_update()

    def end_task(self, task: int, data: Task) -> None:
        if self.active:
            self.si.end_task()
