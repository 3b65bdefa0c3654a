"""Learning without forgetting across stages: the previous model's outputs on this stage's clips, distilled into
the previous head.

The teacher is the previous stage's whole model, frozen and in evaluation mode; it reads the same log-mels as the
student (after MixStyle), so the two see one input.  The term is lambda T^2 KL(softmax(z_old / T) ||
softmax(z / T)), z the carried head's logits on the current features, averaged over the clips: Li & Hoiem's
modified cross-entropy up to the teacher's entropy, a constant (same gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Retention


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over rows of KL(softmax(teacher / T) || softmax(student / T))."""
    target = F.log_softmax(teacher.float() / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(F.log_softmax(student.float() / temperature, dim=-1), target,
                                       log_target=True, reduction="batchmean")


class LwF(Retention):
    name = "lwf"

    def __init__(self, head: nn.Module, teacher: nn.Module, strength: float, temperature: float, bf16: bool):
        self.head, self.teacher = head, teacher
        self.strength, self.temperature, self.bf16 = strength, temperature, bf16

    def loss(self, mel, logits, features, mixed):
        n = len(mixed.labels)
        with torch.no_grad(), torch.autocast(mel.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            target = self.teacher(mel[:n])[0]
        kd = distillation(self.head(features[:n].float()), target, self.temperature)
        return super().loss(mel, logits, features, mixed) + self.strength * kd

    def describe(self) -> str:
        return f"lwf (lambda {self.strength:g}, T {self.temperature:g})"
