"""The quadratic penalty of EWC and SI, sum_i w_i (theta_i - anchor_i)^2, with its gradient in closed form.

Both methods pay it every iteration over every weight; through autograd it costs ~10 small ops per tensor
forward and backward, more than the LSTM step itself on a CPU.  Here it is a handful of fused `_foreach`
calls: `evaluate` returns the (detached) value for the loss that is logged, `add_gradient` adds
scale * 2 w (theta - anchor) to the weights' .grad after the backward pass of the rest of the loss.
"""
from __future__ import annotations

import torch


class QuadraticPenalty:
    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.anchor: list[torch.Tensor] = []
        self.root: list[torch.Tensor] = []  # sqrt(w): the value is sum ||sqrt(w) (theta - anchor)||^2
        self._grads: list[torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        return bool(self.root)

    def set(self, weights: list[torch.Tensor]) -> None:
        """New weights w (non-negative); the anchor becomes the current parameters."""
        self.root = torch._foreach_sqrt([w.detach().clamp(min=0) for w in weights])
        self.anchor = [p.detach().clone() for p in self.params]

    def evaluate(self, scale: float) -> torch.Tensor:
        """scale * sum w (theta - anchor)^2, detached; remembers its gradient for `add_gradient`."""
        scaled = torch._foreach_mul(torch._foreach_sub([p.detach() for p in self.params], self.anchor), self.root)
        value = scale * torch.stack(torch._foreach_norm(scaled)).square().sum()
        torch._foreach_mul_(scaled, self.root)
        torch._foreach_mul_(scaled, 2.0 * scale)
        self._grads = scaled
        return value

    def add_gradient(self) -> None:
        """Add the gradient of the last `evaluate` to the weights' .grad (call after backward)."""
        if self._grads is None:
            return
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        torch._foreach_add_([p.grad for p in self.params], self._grads)
        self._grads = None
