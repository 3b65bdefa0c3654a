"""The previous stage as this one sees it: its model.pt (weights, classes, config), its packed dataset and the
importance files it left beside model.pt (`retain.record`).  Everything is checked when the config is validated,
so that a wrong combination stops before any heavy work with the key to change.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..configtools import ConfigError
from ..data.dataset import DatasetError, open_dataset
from ..inference import read_model_file
from ..model.passt import PaSST, create_model
from . import FISHER_FILE, SI_FILE

IMPORTANCE = {"ewc": FISHER_FILE, "si": SI_FILE}


@dataclass
class Previous:
    """An earlier stage's exported model and where its data lives."""

    file: Path  # its model.pt
    saved: dict  # model.pt's dict: state_dict (fp32, official keys), classes, config
    config: "Config"  # noqa: F821 (its resolved stage config)
    data: Path  # its packed dataset (retain.previous_data, or the one its config names)
    manifest: dict

    @property
    def classes(self) -> list[str]:
        return list(self.saved["classes"])

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.saved["state_dict"]

    def head(self, device: torch.device) -> nn.Sequential:
        return frozen_head(self.state, device)

    def model(self, device: torch.device) -> PaSST:
        """The whole previous model, frozen and in evaluation mode (LwF's teacher)."""
        model = create_model(self.config.model.name, len(self.classes), **self.config.model.passt_settings())
        model.load_state_dict(self.state)
        return model.to(device).eval().requires_grad_(False)

    def importance(self, method: str) -> dict[str, torch.Tensor]:
        """The per-parameter importance `method` (ewc | si) penalises with, from the file beside model.pt."""
        from ..checkpoint_files import safe_load

        saved = safe_load(self.file.parent / IMPORTANCE[method])
        return saved["importance"]


def frozen_head(state: dict[str, torch.Tensor], device: torch.device) -> nn.Sequential:
    """A PaSST state dict's classifier head (LayerNorm + Linear: `head.0`, `head.1`), frozen: nothing trains it."""
    width, classes = state["head.1.weight"].shape[1], state["head.1.weight"].shape[0]
    head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))
    head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
    return head.to(device).eval().requires_grad_(False)


def needs_previous(cfg) -> bool:
    return cfg.retain.keep_head or cfg.retain.method != "none"


def open_previous(cfg) -> Previous:
    """The stage `cfg.init_from` came from, checked against `cfg`; ConfigError naming the key to change."""
    r, what = cfg.retain, (f"retain.method={cfg.retain.method}" if cfg.retain.method != "none"
                           else "retain.keep_head=true")
    if not cfg.init_from:
        raise ConfigError(f"{what} needs init_from to be the previous stage's runs/<stage>/<run>/model.pt, got null")
    try:
        file, saved, config = read_model_file(cfg.init_from, mmap=True)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(f"{what} needs init_from to be the previous stage's model.pt: {exc}") from None
    for key in ("sample_rate", "n_mels"):
        if getattr(config.frontend, key) != getattr(cfg.frontend, key):
            raise ConfigError(f"frontend.{key}={getattr(cfg.frontend, key)}, but the previous stage ({file}) was "
                              f"trained at {getattr(config.frontend, key)}: its head reads the same front-end; set "
                              f"frontend.{key}={getattr(config.frontend, key)}")
    data = Path(r.previous_data) if r.previous_data else config.data.folder
    try:
        manifest = open_dataset(data)
    except DatasetError as exc:
        raise ConfigError(f"retain.previous_data={r.previous_data}: the previous stage's dataset {data} cannot be read "
                          f"({exc.problem}); give its packed folder") from None
    needed = [config.data.test_split] + ([config.data.train_split] if r.method == "replay" else [])
    missing = [s for s in needed if s not in manifest["splits"]]
    if missing:
        raise ConfigError(f"retain.previous_data: {data} has no split {missing[0]!r}, which the previous stage "
                          f"({file}) used; give the dataset it was trained on")
    if manifest["classes"] != list(saved["classes"]):
        raise ConfigError(f"retain.previous_data: {data} lists other classes than the previous stage's model "
                          f"({file}); give the dataset it was trained on")
    if r.method in IMPORTANCE and not (file.parent / IMPORTANCE[r.method]).is_file():
        raise ConfigError(f"retain.method={r.method} needs {file.parent / IMPORTANCE[r.method]}, which the previous "
                          "stage writes when it runs with retain.record=true; train it again with that setting")
    return Previous(file, saved, config, data, manifest)
