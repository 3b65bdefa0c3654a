"""DCASE Task 1 metrics: accuracy, macro class accuracy, log loss, per-class and per-device accuracy,
device groups (real a/b/c, seen simulated s1-s3, unseen s4-s6) and the confusion matrix."""
from __future__ import annotations

import numpy as np
import torch

DEVICE_GROUPS = {"real": ("a", "b", "c"), "seen": ("s1", "s2", "s3"), "unseen": ("s4", "s5", "s6")}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, devices: torch.Tensor, classes: list[str],
                           device_names: list[str]) -> dict:
    """Metrics of one evaluation pass; `devices` index `device_names` (-1: unknown device).

    Classes or devices without samples get None rather than a made-up value; macro accuracy averages
    the classes that have samples.
    """
    logits, labels, devices = logits.double().cpu(), labels.cpu(), devices.cpu()
    pred = logits.argmax(dim=1)
    correct = (pred == labels).double()
    log_prob = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    per_class = {name: (correct[labels == i].mean().item() if (labels == i).any() else None)
                 for i, name in enumerate(classes)}
    present = [v for v in per_class.values() if v is not None]
    per_device = {name: (correct[devices == i].mean().item() if (devices == i).any() else None)
                  for i, name in enumerate(device_names)}
    groups = {}
    for group, members in DEVICE_GROUPS.items():
        ids = [device_names.index(d) for d in members if d in device_names]
        mask = torch.isin(devices, torch.tensor(ids, dtype=devices.dtype)) if ids else torch.zeros_like(correct, dtype=torch.bool)
        if mask.any():
            groups[group] = correct[mask].mean().item()
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), pred.numpy()), 1)
    return {
        "num_samples": int(len(labels)),
        "accuracy": correct.mean().item(),
        "macro_accuracy": float(np.mean(present)) if present else None,
        "log_loss": (-log_prob.mean()).item(),
        "per_class": per_class,
        "per_device": per_device,
        "device_groups": groups,
        "confusion": confusion.tolist(),
    }
