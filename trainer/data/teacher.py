"""Teacher logits for knowledge distillation, served in a batch's key order.

`launch/predict.py --logits teacher.npz` over a training split (evaluation mode: no augmentation) stores the
(ensembled) logits of every clip by key; a student's training loop then asks for its batch:

    teacher = TeacherLogits("teacher.npz", classes=loader.classes, device="cuda")
    for batch in loader:
        soft_targets = teacher(batch["key"]).softmax(-1)
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


class TeacherLogits:
    def __init__(self, path: str | Path, *, classes: list[str] | None = None, device: str | torch.device = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no teacher logits; write them with launch/predict.py --logits")
        with np.load(path, allow_pickle=False) as data:
            keys, self.classes = data["keys"].tolist(), data["classes"].tolist()
            self.logits = torch.from_numpy(data["logits"]).to(device)
        if classes is not None and list(classes) != self.classes:
            raise ValueError(f"{path} holds logits over {', '.join(self.classes)}; the student's classes are "
                             f"{', '.join(classes)}")
        self.path = path
        self.rows = {key: i for i, key in enumerate(keys)}

    def __len__(self) -> int:
        return len(self.rows)

    def __call__(self, keys: Sequence[str]) -> torch.Tensor:
        """[len(keys), classes] logits, row i for keys[i]."""
        try:
            rows = [self.rows[k] for k in keys]
        except KeyError:
            missing = [k for k in keys if k not in self.rows]
            raise KeyError(f"{self.path} has no logits for {len(missing)} of the batch's keys (e.g. "
                           f"{', '.join(missing[:3])}): predict the same split the student trains on") from None
        return self.logits[torch.tensor(rows, device=self.logits.device)]
