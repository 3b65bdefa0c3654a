"""The interface every retention method has in the training step, and the quadratic anchor EWC and SI share.

A step asks the method for its micro-batch (`batch`: replay appends coreset clips) and for its loss (`loss`:
this stage's cross-entropy plus the method's term).  Methods act on what the engine already computes (the
log-mels, this stage's logits, the pooled features), so the engine needs no branch per method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Mixed:
    """One training micro-batch as the model sees it."""

    audio: torch.Tensor  # [n + k, samples]: this stage's n clips, then k replayed clips of the previous stage
    labels: torch.Tensor  # [n] this stage's labels
    previous_labels: torch.Tensor | None = None  # [k] the replayed clips' labels (previous stage's classes)


class Retention:
    """retain.method=none: this stage's loss alone (seq_ft and sit differ only in their learning rates)."""

    name = "none"

    def batch(self, batch: dict, epoch: int, micro: int) -> Mixed:
        """The micro-batch `micro` (0-based within `epoch`) as the model reads it."""
        return Mixed(batch["audio"], batch["label"])

    def loss(self, mel: torch.Tensor, logits: torch.Tensor, features: torch.Tensor, mixed: Mixed) -> torch.Tensor:
        return F.cross_entropy(logits[:len(mixed.labels)].float(), mixed.labels)

    def describe(self) -> str:
        return self.name


class Anchored(Retention):
    """scale * sum_i w_i (theta_i - theta*_i)^2 over the weights this stage took over unchanged from the previous one.

    theta* is the weights the stage starts from (the previous stage's model.pt).  Weights this stage created
    (its new heads) are not in it: they have no previous value to hold.  The term goes through autograd, so
    every ZeRO stage reduces its gradient with the rest (it is the same on every rank: the mean keeps it).
    """

    def __init__(self, module: nn.Module, previous_state: dict[str, torch.Tensor], importance: dict[str, torch.Tensor],
                 scale: float):
        self.scale, self.names, self.terms = scale, [], []
        for name, p in module.named_parameters():
            before = previous_state.get(name)
            if (name not in importance or before is None or before.shape != p.shape
                    or not torch.equal(p.detach().cpu(), before.to(p.dtype))):
                continue
            self.names.append(name)
            self.terms.append((p, p.detach().clone(), importance[name].to(p.device, torch.float32)))
        if not self.terms:
            raise ValueError("no weight of this stage's model is both the previous stage's and in its importance "
                             "file: the stage does not start from the model the importance was computed for")

    def penalty(self) -> torch.Tensor:
        return self.scale * sum((w * (p.float() - anchor).square()).sum() for p, anchor, w in self.terms)

    def loss(self, mel, logits, features, mixed):
        return super().loss(mel, logits, features, mixed) + self.penalty()
