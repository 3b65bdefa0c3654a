"""The slow-learner recipe: parameter groups (representation vs heads) and the per-epoch schedule.

SIT gives every parameter whose name contains no `head` (the representation) a low learning rate
and the heads (`head.*`, `head_dist.*`) a high one; both groups follow the same LambdaLR factor, so
their ratio holds at every step (DeepSpeed's own WarmupLR would overwrite per-group rates).
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

METHODS = ("sit", "seq_ft", "standard_ft")


def exp_warmup_linear_down(warm_up_len: int, ramp_down_len: int, ramp_down_start: int,
                           last_lr_value: float) -> Callable[[float], float]:
    """The reference's epoch -> lr factor: exponential warm-up times a linear ramp down to `last_lr_value`.

    up(e) = exp(-5 (1 - clip(e, 0.5, W) / W)^2) for e < W, else 1;
    down(e) = 1 for e <= S; last + (1 - last) (L - e + S) / L while e - S < L; else last.
    """
    def factor(epoch: float) -> float:
        up = 1.0
        if epoch < warm_up_len:
            phase = 1.0 - min(max(epoch, 0.5), warm_up_len) / warm_up_len
            up = math.exp(-5.0 * phase * phase)
        if epoch <= ramp_down_start:
            down = 1.0
        elif epoch - ramp_down_start < ramp_down_len:
            down = last_lr_value + (1.0 - last_lr_value) * (ramp_down_len - epoch + ramp_down_start) / ramp_down_len
        else:
            down = last_lr_value
        return up * down

    return factor


def param_groups(model: nn.Module, method: str, *, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """Optimizer groups: `sit` -> representation at `lr`, heads at `head_lr`; baselines -> one group at `lr`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if method != "sit":
        return [{"name": "all", "params": [p for _, p in named], "lr": lr, "weight_decay": weight_decay}]
    heads = [p for n, p in named if "head" in n]
    representation = [p for n, p in named if "head" not in n]
    if not heads:
        raise ValueError("the model has no parameter named *head*: the slow learner needs separate heads")
    return [{"name": "representation", "params": representation, "lr": lr, "weight_decay": weight_decay},
            {"name": "head", "params": heads, "lr": head_lr, "weight_decay": weight_decay}]
