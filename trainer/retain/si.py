"""Synaptic intelligence across stages: the path integral recorded in the previous stage, a penalty in this one.

The previous stage (`retain.record`) accumulates, at every optimizer step, omega += -g * delta, g the step's
gradient of the loss and delta the update the optimizer made (the Split AudioSet SI's bookkeeping without
`si_task_loss_only`).  Each rank sees only its own micro-batches' gradient, so a gradient hook sums the rank's
share (the loss DeepSpeed differentiates is already divided by the accumulation) and omega is averaged over the
ranks whenever it is read: g is linear, so the mean of the ranks' -g_r * delta is -mean(g_r) * delta, the step's
gradient.  When the kept model is exported, Omega = max(0, omega / ((theta - theta_start)^2 + xi)) is written
beside it; this stage adds c sum Omega (theta - theta*)^2.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .base import Anchored


class PathIntegral:
    """SI's running omega for every trainable weight of `module`, with the weights the stage started from."""

    def __init__(self, module: nn.Module, xi: float, state: dict | None = None):
        self.xi = xi
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self.grads = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.before = {name: p.detach().clone() for name, p in self.params.items()}
        self.omega = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.start = {name: p.detach().clone() for name, p in self.params.items()}
        if state:  # resumed: the averaged omega and the stage's start, from the checkpoint
            for name in self.params:
                self.omega[name].copy_(state["omega"][name])
                self.start[name].copy_(state["start"][name])
        self.hooks = [p.register_hook(self._adder(name)) for name, p in self.params.items()]

    def _adder(self, name: str):
        def add(grad: torch.Tensor) -> None:
            self.grads[name].add_(grad)
        return add

    @torch.no_grad()
    def after_step(self) -> None:
        """Integrate the step the optimizer just made, and start summing the next step's gradient."""
        for name, p in self.params.items():
            self.omega[name].addcmul_(self.grads[name], p.detach() - self.before[name], value=-1.0)
            self.before[name].copy_(p.detach())
            self.grads[name].zero_()

    @torch.no_grad()
    def _average(self) -> None:
        """Every rank's omega becomes the ranks' mean (collective); later steps add to the mean, which keeps it exact."""
        if dist.is_initialized() and dist.get_world_size() > 1:
            for w in self.omega.values():
                dist.all_reduce(w)
                w.div_(dist.get_world_size())

    def state(self) -> dict:
        """What a checkpoint keeps (collective): omega (the same on every rank) and the stage's starting weights."""
        self._average()
        return {"omega": {n: w.detach().cpu().clone() for n, w in self.omega.items()},
                "start": {n: w.detach().cpu().clone() for n, w in self.start.items()}}

    @torch.no_grad()
    def importance(self) -> dict[str, torch.Tensor]:
        """Omega at the weights as they are now (collective), on the CPU."""
        self._average()
        return {name: torch.clamp(self.omega[name] / ((p.detach() - self.start[name]) ** 2 + self.xi), min=0).cpu()
                for name, p in self.params.items()}

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


class SI(Anchored):
    name = "si"

    def __init__(self, module: nn.Module, previous_state: dict, importance: dict, c: float):
        super().__init__(module, previous_state, importance, c)
        self.c = c

    def describe(self) -> str:
        return f"si (c {self.c:g}, {len(self.names)} tensors anchored)"
