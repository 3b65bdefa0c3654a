"""The `retain.*` part of a training stage, as the engine uses it.

Set-up (before DeepSpeed, while the model holds the weights the stage starts from): the previous stage's model
file, its frozen head and test loader, and the method that protects it (`method`: its micro-batches and loss).
With `retain.record`, the stage also leaves what a later stage's EWC and SI need beside its model.pt: SI's
importance whenever the kept model is exported (the path integral runs during training and is kept in every
checkpoint), the Fisher at the end, at the kept weights.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from data_shards.atomic import atomic_path

from ..checkpoint import cpu_weights
from ..config import replay_clips
from ..data import make_loader
from ..data.subset import split_index
from ..model.passt import create_model
from . import FISHER_FILE, SI_FILE
from .base import Retention
from .ewc import EWC, empirical_fisher
from .lwf import LwF
from .previous import Previous, needs_previous, open_previous
from .replay import Replay, choose, load_coreset
from .si import SI, PathIntegral

log = logging.getLogger(__name__)


class RetainStage:
    def __init__(self, cfg, model: nn.Module, *, rank: int, world_size: int, device: torch.device,
                 loader_settings: dict):
        self.cfg, self.device, self.settings = cfg, device, loader_settings
        self.previous: Previous | None = open_previous(cfg) if needs_previous(cfg) else None
        self.head = self.previous.head(device) if self.previous else None
        self.method = self._method(model, rank, world_size)
        self.test_loader = None
        if self.previous and cfg.retain.keep_head:
            p = self.previous
            self.test_loader = make_loader(p.data, p.config.data.test_split, batch_size=cfg.train.eval_batch,
                                           training=False, seed=cfg.train.seed, **{
                                               **loader_settings, "clip_seconds": p.config.data.clip_seconds,
                                               "manifest": p.manifest})
        self.recorder: PathIntegral | None = None

    def _method(self, model: nn.Module, rank: int, world_size: int) -> Retention:
        cfg, r, p = self.cfg, self.cfg.retain, self.previous
        if r.method == "ewc":
            return EWC(model, p.state, p.importance("ewc"), r.ewc_lambda)
        if r.method == "si":
            return SI(model, p.state, p.importance("si"), r.si_c)
        if r.method == "lwf":
            return LwF(self.head, p.model(self.device), r.lwf_lambda, r.lwf_temperature,
                       cfg.train.precision == "bf16")
        if r.method == "replay":
            rate = cfg.frontend.sample_rate
            coreset = load_coreset(p, r.replay_size, cfg.train.seed, sample_rate=rate,
                                   backend=self.settings["backend"], num_workers=self.settings["num_workers"])
            return Replay(self.head, coreset, replay_clips(cfg),
                          int(round(cfg.data.clip_seconds * rate)), seed=cfg.train.seed, rank=rank,
                          world=world_size, device=self.device)
        return Retention()

    def describe(self) -> str:
        """The log line's part: what is kept and how."""
        parts = []
        if self.previous:
            parts.append(f"previous stage {self.previous.config.stage} ({len(self.previous.classes)} classes, "
                         f"{self.previous.file})" + (": head kept frozen" if self.head is not None
                                                      and self.cfg.retain.keep_head else ""))
        if self.method.name != "none":
            parts.append(self.method.describe())
        if self.cfg.retain.record:
            parts.append("recording fisher.pt and si.pt")
        return "; ".join(parts) or "no previous stage kept"

    def exported_head(self) -> dict | None:
        """The carried head as model.pt records it (`previous_head`), when it is kept."""
        if self.head is None or not self.cfg.retain.keep_head:
            return None
        return {"state_dict": cpu_weights(self.head), "classes": self.previous.classes,
                "model": str(self.previous.file)}

    # --- recording (retain.record) ----------------------------------------------------------------

    def start_recording(self, module: nn.Module, state: dict | None) -> None:
        """The path integral from the weights the engine holds now (after a resume, with the checkpoint's omega)."""
        if self.cfg.retain.record:
            self.recorder = PathIntegral(module, self.cfg.retain.si_xi, state)

    def after_step(self) -> None:
        if self.recorder is not None:
            self.recorder.after_step()

    def client_state(self) -> dict:
        """What a checkpoint keeps of the recording (collective)."""
        return {"path_integral": self.recorder.state()} if self.recorder is not None else {}

    def write_importance(self, folder: Path, is_main: bool) -> None:
        """SI's importance at the weights being exported as model.pt (collective)."""
        if self.recorder is None:
            return
        importance = self.recorder.importance()
        if is_main:
            with atomic_path(folder / SI_FILE) as tmp:
                torch.save({"importance": importance, "xi": self.cfg.retain.si_xi}, tmp)

    def write_fisher(self, module: nn.Module, frontend: nn.Module, folder: Path, is_main: bool,
                     classes: list[str]) -> int:
        """The empirical Fisher of the kept weights (the module holds them) over `retain.fisher_samples` train
        clips, written beside model.pt (collective); returns the clip count."""
        cfg = self.cfg
        keys = [s.key for s in split_index(cfg.data.folder, self.settings["manifest"], cfg.data.train_split)]
        chosen = set(choose(keys, cfg.retain.fisher_samples or len(keys), cfg.train.seed))
        loader = make_loader(cfg.data.folder, cfg.data.train_split, batch_size=cfg.train.eval_batch, training=False,
                             seed=cfg.train.seed, exclude=[k for k in keys if k not in chosen], **self.settings)
        model = create_model(cfg.model.name, len(classes), **cfg.model.passt_settings())
        model.load_state_dict(module.state_dict())  # a plain copy: no engine hooks on its gradients
        model.to(self.device).eval()
        frontend.eval()
        fisher, count = empirical_fisher(model, frontend, loader, device=self.device,
                                         bf16=cfg.train.precision == "bf16")
        if is_main:
            with atomic_path(folder / FISHER_FILE) as tmp:
                torch.save({"importance": {k: v.cpu() for k, v in fisher.items()}, "samples": count}, tmp)
        return count

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
