"""Synaptic Intelligence (SI), and the path-integral bookkeeping it shares with masking + SI.

Each step: omega += (theta_after - theta_before) * (-g), g the gradient of the task loss alone (or of the
whole loss).  At task end: Omega += max(0, omega / ((theta_end - theta_start)^2 + xi)), omega <- 0,
theta_prev <- theta_end.  Penalty: lambda sum Omega (theta - theta_prev)^2, its gradient in closed form
(`QuadraticPenalty`), added after the backward pass (as the orthogonal regulariser's is), so that .grad
first holds the task loss's alone.
"""
from __future__ import annotations

import torch

from ..data import Task
from .base import Method
from .quadratic import QuadraticPenalty


class PathIntegral:
    """SI's importance estimate for a list of tensors."""

    def __init__(self, params: list[torch.Tensor], xi: float):
        self.params, self.xi = params, xi
        self.omega = [torch.zeros_like(p) for p in params]
        self.importance = [torch.zeros_like(p) for p in params]
        self._start = self._before = self._grads = None

    def start_task(self) -> None:
        self._start = [p.detach().clone() for p in self.params]

    def before_update(self, grads: list[torch.Tensor]) -> None:
        self._grads = torch._foreach_neg([g.detach() for g in grads])
        self._before = [p.detach().clone() for p in self.params]

    def after_update(self) -> None:
        step = torch._foreach_sub([p.detach() for p in self.params], self._before)
        torch._foreach_addcmul_(self.omega, step, self._grads)  # one fused call per step, not 3 ops per tensor

    def end_task(self) -> None:
        for imp, w, p, start in zip(self.importance, self.omega, self.params, self._start):
            imp.add_(torch.clamp(w / ((p.detach() - start) ** 2 + self.xi), min=0))
            w.zero_()


class SI(Method):
    """With params.si_lambda = 0 the penalty is off and no path integral is kept (plain fine-tuning)."""

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.active = cfg.params.si_lambda > 0
        self.si = PathIntegral(list(self.net.parameters()), cfg.params.si_xi)
        self.penalty = QuadraticPenalty(self.si.params)  # theta_prev: the weights at the end of the last task

    def start_task(self, task: int, data: Task) -> None:
        if self.active:
            self.si.start_task()

    def loss(self, x, y, task):
        loss = super().loss(x, y, task)  # autograd reaches the task loss only: the rest is added in before_update
        return loss + self.penalty.evaluate(self.cfg.params.si_lambda) if self.active and self.penalty.active else loss

    def before_update(self, task: int) -> None:
        """.grad holds the task loss's gradient here; the regulariser's and the SI penalty's are added now, after
        the path integral has read it (or before, with params.si_task_loss_only false)."""
        if not self.active:
            return super().before_update(task)
        if self.cfg.params.si_task_loss_only:
            self.si.before_update(self._grads())
        super().before_update(task)
        self.penalty.add_gradient()
        if not self.cfg.params.si_task_loss_only:
            self.si.before_update(self._grads())

    def _grads(self) -> list[torch.Tensor]:
        return [torch.zeros_like(p) if p.grad is None else p.grad for p in self.si.params]

    def after_update(self, task: int) -> None:
        if self.active:
            self.si.after_update()

    def end_task(self, task: int, data: Task) -> None:
        if self.active:
            self.si.end_task()
            self.penalty.set(self.si.importance)
