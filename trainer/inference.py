"""Trained models as waveform -> logits modules, and the logits of one or several of them over a loader's batches
with every sample counted once across ranks: what the trainer's evaluation, `launch/predict.py` and the
exporter share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from . import distributed
from .config import Config
from .model.frontend import MelFrontend
from .model.passt import PaSST, create_model

MODEL_FILE = "model.pt"


class WaveformClassifier(nn.Module):
    """Mel front-end + PaSST: waveforms [B, samples] -> logits [B, classes]; long clips are windowed in eval."""

    def __init__(self, frontend: MelFrontend, model: PaSST):
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(self.frontend(wave))[0]


@dataclass
class TrainedModel:
    """A run's exported model with what it was trained with."""

    path: Path  # the model.pt it came from
    classifier: WaveformClassifier  # in evaluation mode
    classes: list[str]
    config: Config  # the resolved stage config of the run

    @property
    def sample_rate(self) -> int:
        return self.config.frontend.sample_rate


def read_model_file(path: str | Path, *, mmap: bool = False) -> tuple[Path, dict, Config]:
    """A run folder's or a model.pt's file, its saved dict (state_dict, classes, config, ...) and its typed config."""
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such model file; give a run folder (runs/<stage>/<run>/) or its {MODEL_FILE}")
    saved = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(saved, dict) or not {"state_dict", "classes", "config"} <= set(saved):
        raise ValueError(f"{file} is not a trained model of this project (a dict with state_dict, classes and "
                         "config, as runs/<stage>/<run>/model.pt)")
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved["config"]))
    except OmegaConfBaseException as exc:
        raise ValueError(f"{file}: its config does not fit this version's schema ({str(exc).splitlines()[0]})") from None
    return file, saved, config


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A run folder (`runs/<stage>/<run>/`) or its `model.pt`, rebuilt as a WaveformClassifier in eval mode."""
    file, saved, config = read_model_file(path)
    model = create_model(config.model.name, len(saved["classes"]), **config.model.passt_settings())
    model.load_state_dict(saved["state_dict"])
    classifier = WaveformClassifier(MelFrontend(config.frontend), model).to(device).eval()
    return TrainedModel(file, classifier, list(saved["classes"]), config)


def check_ensemble(models: Sequence[TrainedModel]) -> None:
    """Ensembled runs must predict the same classes, in the same order, from audio at the same rate."""
    first = models[0]
    for other in models[1:]:
        if other.classes != first.classes:
            raise ValueError(f"cannot ensemble {other.path} ({len(other.classes)} classes: {', '.join(other.classes)}) "
                             f"with {first.path} ({len(first.classes)} classes: {', '.join(first.classes)})")
        if other.sample_rate != first.sample_rate:
            raise ValueError(f"cannot ensemble {other.path} ({other.sample_rate} Hz) with {first.path} "
                             f"({first.sample_rate} Hz): their front-ends read different sample rates")


@dataclass
class Outputs:
    """Logits of a whole split (every rank holds all of it), in the split's order."""

    logits: torch.Tensor  # [N, classes] float32
    labels: torch.Tensor  # [N] int64, -1 where unknown
    devices: torch.Tensor  # [N] int64, -1 where unknown
    metadata: list[dict] | None  # each sample's JSON (shards) or file facts (key, source, ...), when asked for


@torch.no_grad()
def infer(models: Sequence[Callable[[torch.Tensor], torch.Tensor]], batches: Iterable[dict], *, bf16: bool,
          device: torch.device, keys: bool = False) -> Outputs:
    """Mean logits of `models` over `batches` (the loader's dicts); padding (`valid` False) dropped across ranks.

    Logits are averaged, not probabilities (an ensemble).  Collective when a process group exists.
    """
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    logits, labels, devices, valid, metadata = [], [], [], [], []
    for batch in batches:
        with autocast:
            out = sum(model(batch["audio"]).float() for model in models) / len(models)
        logits.append(out)
        labels.append(batch["label"])
        devices.append(batch["device"])
        valid.append(batch["valid"])
        if keys:
            metadata += [batch["key"].metadata(i) for i in range(len(batch["key"]))]
    keep = distributed.gather_cat(torch.cat(valid))
    logits, labels, devices = (distributed.gather_cat(torch.cat(x))[keep].cpu() for x in (logits, labels, devices))
    if keys:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, metadata)
        metadata = [m for part in parts for m in part]
        metadata = [m for m, k in zip(metadata, keep.tolist()) if k]
    return Outputs(logits, labels, devices, metadata if keys else None)
