"""What a run writes about itself while it trains: CSV (always), TensorBoard (always), W&B (when enabled).

`steps.csv` has one row per optimizer step (epoch, step, loss, the lr of every parameter group,
samples/s); `epochs.csv` one row per epoch (train loss, validation metrics, lr factor).  Only rank 0
writes; the other ranks get a `RunLog` that does nothing.  On resume, rows past the checkpoint are
dropped first, so the files read as if the run had never stopped.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

STEPS, EPOCHS = "steps.csv", "epochs.csv"


def truncate_csv(path: Path, column: str, keep_below: int) -> None:
    """Keep the rows whose `column` is < keep_below (rows logged after the checkpoint we resume from)."""
    if path.is_file() and path.stat().st_size:
        frame = pd.read_csv(path)
        frame[frame[column] < keep_below].to_csv(path, index=False)


class RunLog:
    def __init__(self, folder: Path, enabled: bool, *, group_names: list[str], resume_step: int = 0,
                 resume_epoch: int = 0, wandb_project: str | None = None, config: dict | None = None):
        self.enabled = enabled
        self.folder = folder
        self.step_fields = ["epoch", "step", "loss"] + [f"lr_{g}" for g in group_names] + ["samples_per_s"]
        self.epoch_fields = ["epoch", "train_loss", "lr_factor", "val_accuracy", "val_macro_accuracy", "val_log_loss",
                             "peak_memory_gib"]
        self._tb = self._wandb = None
        if not enabled:
            return
        truncate_csv(folder / STEPS, "step", resume_step)
        truncate_csv(folder / EPOCHS, "epoch", resume_epoch)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(folder / "tensorboard"), purge_step=resume_step or None)
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("run.wandb=true needs the wandb package: pip install wandb") from None
            self._wandb = wandb.init(project=wandb_project, name=f"{folder.parent.name}/{folder.name}",
                                     id=f"{folder.parent.name}-{folder.name}", resume="allow", config=config,
                                     dir=str(folder))

    def _append(self, name: str, fields: list[str], row: dict) -> None:
        path = self.folder / name
        new = not path.is_file() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def step(self, epoch: int, step: int, loss: float, lrs: dict[str, float], samples_per_s: float) -> None:
        if not self.enabled:
            return
        row = {"epoch": epoch, "step": step, "loss": loss, **{f"lr_{g}": v for g, v in lrs.items()},
               "samples_per_s": samples_per_s}
        self._append(STEPS, self.step_fields, row)
        self._tb.add_scalar("train/loss", loss, step)
        self._tb.add_scalar("train/samples_per_s", samples_per_s, step)
        for group, lr in lrs.items():
            self._tb.add_scalar(f"lr/{group}", lr, step)
        if self._wandb:
            self._wandb.log({"train/loss": loss, "train/samples_per_s": samples_per_s,
                             **{f"lr/{g}": v for g, v in lrs.items()}}, step=step)

    def epoch(self, epoch: int, step: int, train_loss: float, lr_factor: float, val: dict | None,
              peak_memory_gib: float | None) -> None:
        """One epoch's row; `val` None (no validation split) leaves the validation columns empty."""
        if not self.enabled:
            return
        val = val or {"accuracy": None, "macro_accuracy": None, "log_loss": None, "per_device": {}}
        row = {"epoch": epoch, "train_loss": train_loss, "lr_factor": lr_factor, "val_accuracy": val["accuracy"],
               "val_macro_accuracy": val["macro_accuracy"], "val_log_loss": val["log_loss"],
               "peak_memory_gib": peak_memory_gib}
        self._append(EPOCHS, self.epoch_fields, row)
        scalars = {"val/accuracy": val["accuracy"], "val/macro_accuracy": val["macro_accuracy"],
                   "val/log_loss": val["log_loss"], "train/epoch_loss": train_loss}
        scalars.update({f"val_device/{k}": v for k, v in val["per_device"].items() if v is not None})
        for name, value in scalars.items():
            if value is not None:
                self._tb.add_scalar(name, value, step)
        self._tb.flush()
        if self._wandb:
            self._wandb.log({k: v for k, v in scalars.items() if v is not None} | {"epoch": epoch}, step=step)

    def close(self) -> None:
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.finish()
