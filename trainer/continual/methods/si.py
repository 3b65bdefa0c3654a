"""Synaptic Intelligence (SI), and the path-integral bookkeeping it shares with masking + SI.

Each step: omega += delta * (-g).  As published with `si_task_loss_only`, g is the gradient of the task loss
alone and delta the step Adam would take from g alone (its moments advanced by g, not the penalty's gradient,
the clipping or the weight decay; the optimizer itself is left untouched: published `calc_delta_theta`);
otherwise g is the whole loss's gradient and delta the update the optimizer actually made.  At task end:
Omega += max(0, omega / ((theta_end - theta_start)^2 + xi)), omega <- 0, theta_prev <- theta_end.
Penalty: lambda sum Omega (theta - theta_prev)^2, its gradient in closed form (`QuadraticPenalty`), added after
the backward pass (as the orthogonal regulariser's is), so that .grad first holds the task loss's alone.
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

    def add(self, steps: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """omega += steps * (-grads), one fused call per step rather than 3 ops per tensor."""
        torch._foreach_addcmul_(self.omega, steps, [g.detach() for g in grads], value=-1.0)

    def before_update(self, grads: list[torch.Tensor]) -> None:
        """Record the gradient and the weights; `after_update` integrates the update the optimizer makes."""
        self._grads = [g.detach().clone() for g in grads]
        self._before = [p.detach().clone() for p in self.params]

    def after_update(self) -> None:
        self.add(torch._foreach_sub([p.detach() for p in self.params], self._before), self._grads)

    def end_task(self) -> None:
        for imp, w, p, start in zip(self.importance, self.omega, self.params, self._start):
            imp.add_(torch.clamp(w / ((p.detach() - start) ** 2 + self.xi), min=0))
            w.zero_()


@torch.no_grad()
def adam_step_preview(optimizer: torch.optim.Adam, params: list[torch.Tensor], grads: list[torch.Tensor],
                      ) -> list[torch.Tensor]:
    """The change torch's Adam (no amsgrad) would make to `params` if `grads` were their whole gradient, from its
    current moments and step count, leaving its state as it is.  Weight decay is not part of it: the step is the
    task loss's alone (the published step adds the decay out of place, so it is not part of theirs either)."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    steps = []
    for p, grad in zip(params, grads):
        group, state = group_of[id(p)], optimizer.state.get(p, {})
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        if state:  # the step count stays a tensor: reading it on a GPU would wait for the device every iteration
            t = state["step"] + 1
            m = state["exp_avg"] * beta1 + (1 - beta1) * grad
            v = state["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad
        else:
            t, m, v = torch.ones((), device=grad.device), (1 - beta1) * grad, (1 - beta2) * grad * grad
        bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
        steps.append(m.div_(v.sqrt_().div_(bias2.sqrt()).add_(eps)).mul_(-lr / bias1))
    return steps


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

    def before_update(self, task: int, optimizer: torch.optim.Optimizer) -> None:
        """.grad holds the task loss's gradient here; the regulariser's and the SI penalty's are added now, after
        the path integral has read it (or before, with params.si_task_loss_only false)."""
        if not self.active:
            return super().before_update(task, optimizer)
        if self.cfg.params.si_task_loss_only:
            grads = self._grads()
            self.si.add(adam_step_preview(optimizer, self.si.params, grads), grads)
        super().before_update(task, optimizer)
        self.penalty.add_gradient()
        if not self.cfg.params.si_task_loss_only:
            self.si.before_update(self._grads())

    def _grads(self) -> list[torch.Tensor]:
        return [torch.zeros_like(p) if p.grad is None else p.grad for p in self.si.params]

    def after_update(self, task: int) -> None:
        if self.active and not self.cfg.params.si_task_loss_only:
            self.si.after_update()

    def end_task(self, task: int, data: Task) -> None:
        if self.active:
            self.si.end_task()
            self.penalty.set(self.si.importance)
