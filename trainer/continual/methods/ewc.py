"""Online EWC: a running empirical Fisher and one anchor, a quadratic penalty on every weight.

After task t: F_t = mean over the task's train samples of the squared per-sample gradient of the true-label
NLL on the task's own head (vectorised with torch.func.vmap over the explicit LSTM), then
F <- F_t + gamma F (gamma applied once per task) and theta* <- theta.  Penalty: (lambda / 2) sum F (theta - theta*)^2,
with its gradient in closed form (`QuadraticPenalty`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from ..data import Task
from ..nets import lstm_explicit
from .base import Method
from .quadratic import QuadraticPenalty


def empirical_fisher(net, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, task: int, head: slice,
                     chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Mean squared per-sample gradient of -log p(y | x) on `head`, for every weight in `params`."""
    def nll(p, xi, yi):
        out = lstm_explicit(p, net.inputs(xi[None], task))[:, head]
        return F.cross_entropy(out, yi[None])

    per_sample = vmap(grad(nll), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    detached = {k: v.detach() for k, v in params.items()}
    for start in range(0, len(x), chunk):
        grads = per_sample(detached, x[start:start + chunk], y[start:start + chunk])
        for k, g in grads.items():
            total[k] += (g ** 2).sum(0)
    return {k: v / len(x) for k, v in total.items()}


class OnlineEWC(Method):
    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self.fisher: dict[str, torch.Tensor] | None = None
        self.penalty = QuadraticPenalty(list(self.named_weights().values()))

    def loss(self, x, y, task):
        loss = super().loss(x, y, task)
        if not self.penalty.active:
            return loss
        return loss + self.penalty.evaluate(0.5 * self.cfg.params.ewc_lambda)  # its gradient: before_update

    def before_update(self, task: int, optimizer: torch.optim.Optimizer) -> None:
        super().before_update(task, optimizer)
        self.penalty.add_gradient()

    def end_task(self, task: int, data: Task) -> None:
        x, y = data.train_x.to(self.device), data.train_y.to(self.device)
        new = empirical_fisher(self.net, self.named_weights(), x, y, task, self.head(task))
        gamma = self.cfg.params.ewc_gamma
        self.fisher = new if self.fisher is None else {k: new[k] + gamma * self.fisher[k] for k in new}
        self.penalty.set([self.fisher[k] for k in self.named_weights()])  # anchor theta* <- theta
