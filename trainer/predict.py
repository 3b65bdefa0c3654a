"""Predictions of a trained model or an ensemble of runs: the DCASE system-output file, the logits (the teacher
logits of knowledge distillation) and, when the clips have labels, the trainer's metrics.

Inputs are a packed split (the project's loader, evaluation mode: no augmentation), a folder of audio files
or a CSV listing files (`data.files`).  Every clip is predicted exactly once across ranks; rank 0 writes.
An ensemble averages the runs' logits; probabilities are the softmax of that average.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from data_shards.atomic import atomic_path

from .data import make_loader
from .data.dataset import open_dataset
from .data.files import csv_files, file_batches, folder_files
from .data.loader import default_workers
from .distributed import Dist
from .inference import TrainedModel, check_ensemble, infer
from .metrics import classification_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """Where the clips come from: exactly one of a packed split, a folder of audio files, or a CSV of files."""

    shards: Path | None = None  # packed dataset folder (with manifest.json) ...
    split: str | None = None  # ... and its split
    clip_seconds: float | None | str = "model"  # shards: crop / pad length; "model": the run's data.clip_seconds
    folder: Path | None = None  # a folder of audio files (recursively)
    csv: Path | None = None  # a CSV listing files (DCASE: filename[, scene_label])
    root: Path | None = None  # the CSV's paths are relative to this (default: the CSV's folder)
    path_column: str | None = None
    label_column: str | None = None
    device_column: str | None = None

    def check(self) -> None:
        given = [name for name, value in (("--shards", self.shards), ("--folder", self.folder), ("--csv", self.csv))
                 if value is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one input: --shards DIR --split NAME, --folder DIR or --csv FILE "
                             f"(got {', '.join(given) or 'none'})")
        if self.shards is not None and not self.split:
            raise ValueError("--shards needs --split (e.g. test)")


@dataclass
class Prediction:
    names: list[str]  # the output's filename column: the clip's source path (shards) or its listed name
    keys: list[str]  # sample keys (shards) or names (files)
    classes: list[str]
    logits: np.ndarray  # [N, classes] float32, averaged over the runs
    labels: np.ndarray  # [N], -1 where unknown
    devices: np.ndarray  # [N], -1 where unknown
    device_names: list[str]

    @property
    def probabilities(self) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits).double(), dim=1).numpy()

    def metrics(self) -> dict | None:
        """The trainer's metrics when every clip has a label, else None."""
        if len(self.labels) == 0 or (self.labels < 0).any():
            return None
        return classification_metrics(torch.from_numpy(self.logits), torch.from_numpy(self.labels),
                                      torch.from_numpy(self.devices), self.classes, self.device_names)


def _batches(inputs: Inputs, model: TrainedModel, *, batch_size: int, num_workers: int | None,
             d: Dist) -> tuple[Iterable[dict], list[str], bool]:
    """The batches of this rank, the device names, and whether the labels index the model's classes."""
    rate = model.sample_rate
    if inputs.shards is not None:
        manifest = open_dataset(inputs.shards)
        seconds = model.config.data.clip_seconds if inputs.clip_seconds == "model" else inputs.clip_seconds
        loader = make_loader(inputs.shards, inputs.split, batch_size=batch_size, training=False, device=str(d.device),
                             rank=d.rank, world_size=d.world_size, sample_rate=rate, clip_seconds=seconds,
                             num_workers=num_workers, manifest=manifest)
        same = manifest["classes"] == model.classes
        if not same:
            log.warning("%s is labelled with other classes than the model's: no metrics", inputs.shards)
        return loader, manifest["devices"], same
    workers = default_workers() if num_workers is None else num_workers
    if inputs.folder is not None:
        files, devices = folder_files(inputs.folder, rate), []
    else:
        files, devices = csv_files(inputs.csv, rate, root=inputs.root, classes=model.classes,
                                   path_column=inputs.path_column, label_column=inputs.label_column,
                                   device_column=inputs.device_column)
    batches = file_batches(files, sample_rate=rate, batch_size=batch_size, device=d.device, rank=d.rank,
                           world_size=d.world_size, num_workers=workers)
    return batches, devices, True


def predict(models: list[TrainedModel], inputs: Inputs, *, d: Dist, batch_size: int = 64,
            num_workers: int | None = None, precision: str | None = None) -> Prediction:
    """Collective: every rank predicts its share; every rank returns the whole prediction, in input order."""
    inputs.check()
    check_ensemble(models)
    first = models[0]
    batches, device_names, labelled = _batches(inputs, first, batch_size=batch_size, num_workers=num_workers, d=d)
    bf16 = (precision or first.config.train.precision) == "bf16"
    out = infer([m.classifier for m in models], batches, bf16=bf16, device=d.device, keys=True)
    order = np.argsort([m.get("index", i) for i, m in enumerate(out.metadata)], kind="stable")
    labels = out.labels.numpy() if labelled else np.full(len(order), -1)
    return Prediction(names=[out.metadata[i]["source"] for i in order], keys=[out.metadata[i]["key"] for i in order],
                      classes=first.classes, logits=out.logits.numpy()[order], labels=labels[order],
                      devices=out.devices.numpy()[order], device_names=device_names)


def write_submission(path: Path, prediction: Prediction) -> None:
    """DCASE system output: tab-separated `filename`, `scene_label` (the most probable class), then one probability
    column per class in the task's class order."""
    lines = ["\t".join(["filename", "scene_label", *prediction.classes])]
    for name, probs in zip(prediction.names, prediction.probabilities):
        lines.append("\t".join([name, prediction.classes[int(probs.argmax())], *(f"{p:.6f}" for p in probs)]))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def write_logits(path: Path, prediction: Prediction, models: list[TrainedModel]) -> None:
    """keys, names (source paths), classes, logits (the runs' mean), labels (-1: unknown) and the runs, as .npz
    readable without pickle (`data.teacher.TeacherLogits` serves them to a student's batches)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(prediction.keys), names=np.array(prediction.names),
                     classes=np.array(prediction.classes), logits=prediction.logits.astype(np.float32),
                     labels=prediction.labels.astype(np.int64), models=np.array([str(m.path) for m in models]))
