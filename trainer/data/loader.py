"""`make_loader`: one interface over the DALI and torch readers of a manifest's split.

The training loop sees dicts with `audio` [B, L] float32 on the requested device, `label` and
`device` int64 [B] on that device, `key` (a sequence of str, decoded only when read) and, in
evaluation, `valid` bool [B] (False only for padding that keeps ranks in step).  Waveform
augmentation (roll, DIR, gain) is applied here, in training, whatever the backend.  Nothing here
waits for the device: labels arrive as tensors and the padding mask is built where it is used.
"""
from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch

from ..distributed import local_world_size
from .augment import WaveAugment, load_impulse_responses
from .dataset import check_request, open_dataset
from .epoch import EpochPlan, plan_epoch
from .subset import Subset

BACKENDS = ("dali", "torch")


class Loader:
    """Iterating gives one epoch of `len(loader)` batches; each new iteration is the next epoch.

    `batches(epoch, skip)` gives a chosen epoch from its `skip`-th batch on (resuming mid-epoch): the
    skipped batches are neither read nor augmented, so the caller's RNG state is untouched by them.
    """

    def __init__(self, reader, plan: EpochPlan, augment: WaveAugment, device: torch.device, classes: list[str],
                 devices: list[str]):
        self.reader, self.plan, self.augment, self.device = reader, plan, augment, device
        self.classes, self.devices = classes, devices
        self.epoch = 0

    def __len__(self) -> int:
        return self.plan.batches

    def __iter__(self) -> Iterator[dict]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.batches(epoch)

    def batches(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        position = skip * self.plan.batch_size
        for audio, labels, keys in self.reader.epoch(epoch, skip):
            audio = audio.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True).long()
            batch = {"label": labels[:, 0], "device": labels[:, 1], "key": keys}
            size = audio.shape[0]
            if self.plan.training:
                batch["audio"] = self.augment(audio, batch["device"])
            else:
                batch["audio"] = audio
                batch["valid"] = torch.arange(position, position + size, device=self.device) < self.plan.size
            position += size
            yield batch


def default_workers(local_ranks: int | None = None) -> int:
    """Loader threads per rank when `num_workers` is not given: every CPU this rank may use but one.

    Measured on the H100 machine (16 cores, DALI GPU pipeline, 44.1 kHz FLAC): 4 / 8 / 14 threads read
    3.5k / 5.8k / 7.9k 1-s clips/s and 0.5k / 0.9k / 1.2k 10-s clips/s, against a PaSST-S step of
    ~5k and ~0.6k samples/s: FLAC needs all the cores it can get (pcm16 shards need none for decoding).
    The CPUs are the process's affinity set, shared by the node's `local_ranks` (default: as the launcher
    says) unless the launcher already bound each rank to its own CPUs (a smaller set than the machine's).
    """
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    if mine >= (os.cpu_count() or mine):
        mine //= max(1, local_world_size() if local_ranks is None else local_ranks)
    return max(1, mine - 1)


def make_loader(shards: str | Path, split: str, *, batch_size: int, training: bool, backend: str = "dali",
                device: str = "cpu", rank: int = 0, world_size: int = 1, sample_rate: int | None = None,
                clip_seconds: float | None | str = "auto", roll: int = 0, dir_prob: float = 0.0,
                dir_folder: str | Path | None = None, gain_db: float = 0.0, seed: int = 0, num_workers: int | None = None,
                accumulation: int = 1, manifest: dict | None = None,
                exclude: Collection[str] = (), max_steps: int | None = None) -> Loader:
    """A loader of `split` of the packed dataset in `shards` (the folder holding manifest.json).

    sample_rate: output rate (default: the shards'); clip_seconds: crop / pad length ("auto": the
    manifest's typical clip length; None: whole clips, padded to the longest in the batch);
    roll: maximum circular shift in samples; dir_prob: probability of convolving a device-a clip with
    a random impulse response from `dir_folder`; gain_db: uniform gain in [-gain_db, gain_db] dB.
    Augmentations act only in training.  accumulation: training epochs hold whole optimizer steps of this
    many batches.  num_workers: DALI CPU threads or DataLoader workers (None: `default_workers()`).
    manifest: the dataset's manifest when the caller has loaded it already (`dataset.open_dataset`).
    exclude: keys of samples to leave out (an interrupted epoch continued over the samples it has not yet
    trained on); max_steps: training epochs stop after this many optimizer steps (the interrupted epoch's rest).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    folder = Path(shards)
    manifest = manifest or open_dataset(folder)
    seconds = manifest.get("clip_seconds") if clip_seconds == "auto" else clip_seconds
    check_request(folder, manifest, split, training=training, clip_seconds=seconds, dir_prob=dir_prob)
    rate = sample_rate or manifest["sample_rate"]
    crop = None if seconds is None else int(round(seconds * rate))
    subset = Subset(folder, manifest, split, exclude) if exclude else None
    num_samples = len(subset) if subset is not None else manifest["splits"][split]["num_samples"]
    plan = plan_epoch(num_samples, batch_size, rank=rank, world_size=world_size, training=training,
                      accumulation=accumulation)
    if max_steps is not None:
        if not training or plan.steps < max_steps:
            raise ValueError(f"{num_samples} samples of split {split!r} hold {plan.steps} step(s) per rank, fewer than "
                             f"the {max_steps} asked for")
        plan = replace(plan, batches=max_steps * accumulation)
    torch_device = torch.device(device)
    num_workers = default_workers() if num_workers is None else num_workers
    if backend == "dali":
        from .dali import DaliReader  # DALI is Linux-only; the torch backend must work without it

        reader = DaliReader(folder, manifest, split, plan, sample_rate=rate, crop=crop, device=torch_device.type,
                            seed=seed, num_threads=max(1, num_workers), subset=subset)
    else:
        from .torch_loader import TorchReader

        reader = TorchReader(folder, manifest, split, plan, sample_rate=rate, crop=crop, seed=seed,
                             num_workers=num_workers, subset=subset, pin_memory=torch_device.type == "cuda")
    irs, dir_device = None, -1
    if dir_prob > 0:
        irs = load_impulse_responses(dir_folder or "", rate)
        dir_device = manifest["devices"].index("a")
    augment = WaveAugment(roll, dir_prob, irs, dir_device, gain_db).to(torch_device).train(training)
    return Loader(reader, plan, augment, torch_device, manifest["classes"], manifest["devices"])
