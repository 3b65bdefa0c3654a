"""Elastic weight consolidation across stages: the Fisher at the end of the previous stage, a penalty in this one.

The previous stage (`retain.record`) computes the empirical Fisher at its kept weights: the mean over its train
clips (unaugmented, as evaluation reads them) of the squared per-sample gradient of the true-label NLL, as the
Split AudioSet EWC does per task.  Ranks split the clips and sum; the file beside model.pt holds the mean.  This
stage adds (lambda / 2) sum F (theta - theta*)^2, theta* the weights it starts from.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .base import Anchored


def empirical_fisher(model: nn.Module, frontend: nn.Module, batches: Iterable[dict], *, device: torch.device,
                     bf16: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Mean over the batches' valid clips, across ranks, of the squared gradient of -log p(y | x) of each clip
    alone, for every trainable weight of `model` (in evaluation mode: no patchout, no dropout)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = torch.zeros((), dtype=torch.float64, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for batch in batches:
        with torch.no_grad():
            mel = frontend(batch["audio"])
        for i in torch.nonzero(batch["valid"]).flatten().tolist():
            with autocast:
                logits, _ = model(mel[i:i + 1])
            loss = F.cross_entropy(logits.float(), batch["label"][i:i + 1])
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)  # head_dist: unused
            for t, g in zip(total.values(), grads):
                if g is not None:
                    t.addcmul_(g.float(), g.float())
            count += 1
    if dist.is_initialized():
        for t in (*total.values(), count):
            dist.all_reduce(t)
    n = int(count.item())
    if n == 0:
        raise ValueError("the Fisher was asked for over no clips")
    return {name: t / n for name, t in total.items()}, n


class EWC(Anchored):
    name = "ewc"

    def __init__(self, module: nn.Module, previous_state: dict, fisher: dict, strength: float):
        super().__init__(module, previous_state, fisher, strength / 2)
        self.strength = strength

    def describe(self) -> str:
        return f"ewc (lambda {self.strength:g}, {len(self.names)} tensors anchored)"
