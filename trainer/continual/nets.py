"""The main network of the Split AudioSet experiments: 128 -> LSTM(H) -> Linear(H -> heads), last-step logits.

Weights live in a flat, named dict (`MainNet.shapes` gives names and shapes), so a method can own them
(`nn.Parameter`s of the module) or supply them (a hypernetwork's output) through `forward(..., params=)`.
The LSTM runs as torch's fused kernel; `lstm_explicit` is the same cell written out in tensor ops, used
where per-sample gradients are vectorised (EWC's Fisher under `vmap`) and as the tests' reference.

Unit masks implement h = o * tanh(m * c) with binary m.  For m_j = 0 that output is 0 at every step, so
the masked unit reaches nothing; the fused kernel gets the same function by zeroing column j of W_hh and
of the output layer, and the masked unit's own weights then get exactly zero gradient, as in the cell.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .data import CODES


class MainNet(nn.Module):
    def __init__(self, hidden: int = 32, outputs: int = 100, task_inputs: int = 0, orthogonal_init: bool = False):
        super().__init__()
        self.hidden, self.outputs, self.task_inputs = hidden, outputs, task_inputs
        self.lstm = nn.LSTM(CODES + task_inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)
        self.reset_parameters(orthogonal_init)

    def reset_parameters(self, orthogonal_init: bool = False) -> None:
        """kaiming-uniform(a=sqrt(5)) weights, U(+/- 1/sqrt(fan_in)) biases; optionally orthogonal W_hh blocks."""
        for weight, bias in ((self.lstm.weight_ih_l0, self.lstm.bias_ih_l0), (self.lstm.weight_hh_l0, self.lstm.bias_hh_l0),
                             (self.head.weight, self.head.bias)):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(bias, -bound, bound)
        if orthogonal_init:
            with torch.no_grad():
                for block in self.lstm.weight_hh_l0.chunk(4, 0):
                    nn.init.orthogonal_(block)

    @property
    def shapes(self) -> dict[str, torch.Size]:
        return {name: p.shape for name, p in self.named_parameters()}

    def num_weights(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def inputs(self, x: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """uint8 codes [B, 10, 128] -> float input (raw codes, no normalisation), + task one-hot if configured
        (`task`: one task for the batch, or one per sample)."""
        x = x.float()
        if self.task_inputs:
            tasks = torch.as_tensor(task, device=x.device).expand(x.shape[0])
            onehot = F.one_hot(tasks, self.task_inputs).float()[:, None, :].expand(-1, x.shape[1], -1)
            x = torch.cat([x, onehot], dim=-1)
        return x

    def forward(self, x: torch.Tensor, task: int | torch.Tensor, *, params: dict[str, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """All output units at the last step, [B, outputs]; `params` replaces the module's own weights."""
        if params is None and mask is None:  # the fused module as it is: no weight swapping
            h, _ = self.lstm(self.inputs(x, task))
            return self.head(h[:, -1])
        p = dict(self.named_parameters()) if params is None else params
        w_hh, w_out = p["lstm.weight_hh_l0"], p["head.weight"]
        if mask is not None:
            w_hh, w_out = w_hh * mask[None, :], w_out * mask[None, :]
        lstm = {"weight_ih_l0": p["lstm.weight_ih_l0"], "weight_hh_l0": w_hh, "bias_ih_l0": p["lstm.bias_ih_l0"],
                "bias_hh_l0": p["lstm.bias_hh_l0"]}
        h, _ = functional_call(self.lstm, lstm, (self.inputs(x, task),))
        return F.linear(h[:, -1], w_out, p["head.bias"])


def lstm_explicit(params: dict[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The same network in tensor ops: x float [B, T, D] -> last-step outputs [B, outputs]; h = o tanh(m c)."""
    w_ih, w_hh = params["lstm.weight_ih_l0"], params["lstm.weight_hh_l0"]
    hidden = w_hh.shape[1]
    gates_x = x @ w_ih.T + params["lstm.bias_ih_l0"] + params["lstm.bias_hh_l0"]
    h = x.new_zeros(*x.shape[:-2], hidden)
    c = torch.zeros_like(h)
    for t in range(x.shape[-2]):
        i, f, g, o = (gates_x[..., t, :] + h @ w_hh.T).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c if mask is None else mask * c)
    return h @ params["head.weight"].T + params["head.bias"]


def head_slice(task: int, classes_per_task: int, multi_head: bool) -> slice:
    """Task t's output units: [k t, k t + k) with multiple heads, the shared first k units otherwise."""
    start = task * classes_per_task if multi_head else 0
    return slice(start, start + classes_per_task)


def orthogonal_penalty(w_hh: torch.Tensor) -> torch.Tensor:
    """sum over the 4 gate blocks of ||W W^T - I||_F^2 (through autograd: for weights a hypernetwork outputs)."""
    return _gram_minus_identity(w_hh).square().sum()


@torch.no_grad()
def orthogonal_penalty_and_grad(w_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same penalty, detached, and its gradient 4 (W W^T - I) W per block in closed form (G is symmetric:
    d||G||^2 = 2 <G, dW W^T + W dW^T> = 4 <G W, dW>), two batched products instead of an autograd graph."""
    gram = _gram_minus_identity(w_hh)
    blocks = w_hh.view(4, w_hh.shape[1], w_hh.shape[1])
    return gram.square().sum(), torch.bmm(gram, blocks).mul_(4.0).view_as(w_hh)


def _gram_minus_identity(w_hh: torch.Tensor) -> torch.Tensor:
    blocks = w_hh.view(4, w_hh.shape[1], w_hh.shape[1])
    return torch.baddbmm(torch.eye(w_hh.shape[1], device=w_hh.device).neg().expand(4, -1, -1), blocks,
                         blocks.transpose(1, 2))
