"""Synaptic Intelligence (SI), and the path-integral bookkeeping it shares with masking + SI.

Each step: omega += (theta_after - theta_before) * (-g), g the gradient of the task loss alone (or of the
whole loss).  At task end: Omega += max(0, omega / ((theta_end - theta_start)^2 + xi)), omega <- 0,
theta_prev <- theta_end.  Penalty: lambda sum Omega (theta - theta_prev)^2, its gradient in closed form
(`QuadraticPenalty`), added after the backward pass so that .grad first holds the task loss's alone.
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
        self._reg_grads = None

    def start_task(self, task: int, data: Task) -> None:
        if self.active:
            self.si.start_task()

    def loss(self, x, y, task):
        if not self.active:
            return super().loss(x, y, task)
        reg = self.regulariser(task)
        if self.cfg.params.si_task_loss_only and reg.requires_grad:  # kept out of the path integral's gradient
            self._reg_grads = torch.autograd.grad(reg, self.si.params, retain_graph=True, allow_unused=True)
        loss = self.task_loss(x, y, task) + reg
        return loss + self.penalty.evaluate(self.cfg.params.si_lambda) if self.penalty.active else loss

    def before_update(self, task: int) -> None:
        """.grad holds the task loss's (+ the regulariser's) gradient here; the SI penalty's is added now."""
        if not self.active:
            return
        if not self.cfg.params.si_task_loss_only:
            self.penalty.add_gradient()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.si.params]
        if self._reg_grads is not None:
            grads = [g if r is None else g - r for g, r in zip(grads, self._reg_grads)]
            self._reg_grads = None
        self.si.before_update(grads)
        if self.cfg.params.si_task_loss_only:
            self.penalty.add_gradient()

    def after_update(self, task: int) -> None:
        if self.active:
            self.si.after_update()

    def end_task(self, task: int, data: Task) -> None:
        if self.active:
            self.si.end_task()
            self.penalty.set(self.si.importance)
