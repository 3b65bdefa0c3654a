"""Plain torch reader of the same shards (CPU decode in DataLoader workers): for machines without DALI
and as the benchmark baseline.

Samples are addressed through the shards' DALI index files (tar, offset, size), so ranks read exactly
the ranges DALI gives them and evaluation yields the same samples, in the same order and with the
same audio, as the DALI pipeline.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_shards.audio import decode
from data_shards.manifest import shard_paths

from .epoch import EpochPlan
from .keys import Keys
from .subset import Subset, split_index


@dataclass(frozen=True)
class Entry:
    tar: str
    audio: tuple[int, int]  # (offset, size) of the audio member
    labels: tuple[int, int]  # ... of the numeric .labels member
    meta: tuple[int, int]  # ... of the JSON member


def read_entries(folder: Path, manifest: dict, split: str, subset: Subset | None = None) -> list[Entry]:
    """Every sample of a split (or of a subset of it) in global order, from the index files."""
    ext, labels = manifest["audio_extension"], manifest["labels_extension"]
    tars = shard_paths(folder, manifest, split)[0]
    entries = []
    for sample in split_index(folder, manifest, split) if subset is None else subset.samples:
        parts = sample.line.split()
        members = {parts[j]: (int(parts[j + 1]), int(parts[j + 2])) for j in range(0, len(parts), 4)}
        entries.append(Entry(str(tars[sample.shard]), members[ext], members[labels], members["json"]))
    return entries


def _read_members(path: str, *spans: tuple[int, int]) -> list[bytes]:
    """The bytes at (offset, size) spans of one tar, through a single open."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.pread(fd, size, offset) for offset, size in spans]
    finally:
        os.close(fd)


class ClipDataset(Dataset):
    """Index (global position, epoch) -> (waveform float32, labels int32 [2], JSON member); crops are seeded per
    sample and epoch."""

    def __init__(self, entries: list[Entry], *, audio_format: str, source_rate: int, sample_rate: int,
                 crop: int | None, training: bool, seed: int):
        self.entries, self.audio_format = entries, audio_format
        self.source_rate, self.sample_rate = source_rate, sample_rate
        self.crop, self.training, self.seed = crop, training, seed

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, bytes]:
        index, epoch = item
        e = self.entries[index]
        meta_bytes, labels_bytes, audio_bytes = _read_members(e.tar, e.meta, e.labels, e.audio)
        meta = json.loads(meta_bytes)
        try:
            wave, _ = decode(audio_bytes, self.audio_format)
        except Exception as exc:  # soundfile raises several types; all mean the same to the user
            raise RuntimeError(f"corrupt audio in shard {e.tar} (key {meta.get('key')}): {exc}; check the dataset "
                               "with python -m data_shards verify") from None
        if wave.ndim > 1:
            wave = wave.mean(axis=1)
        if self.source_rate != self.sample_rate:
            import torchaudio.functional as AF

            wave = AF.resample(torch.from_numpy(wave), self.source_rate, self.sample_rate).numpy()
        if self.crop is not None:
            start = 0
            if self.training and len(wave) > self.crop:
                rng = np.random.default_rng([self.seed, epoch, index])
                start = int(rng.integers(0, len(wave) - self.crop + 1))
            wave = wave[start:start + self.crop]
            if len(wave) < self.crop:
                wave = np.pad(wave, (0, self.crop - len(wave)))
        return np.ascontiguousarray(wave, dtype=np.float32), np.frombuffer(labels_bytes, "<i4"), meta_bytes


def _collate(batch: list[tuple[np.ndarray, np.ndarray, bytes]]) -> tuple[torch.Tensor, torch.Tensor, Keys]:
    length = max(len(w) for w, _, _ in batch)
    audio = torch.zeros(len(batch), length)
    for i, (w, _, _) in enumerate(batch):
        audio[i, :len(w)] = torch.from_numpy(w)
    labels = torch.from_numpy(np.stack([labels for _, labels, _ in batch]))
    return audio, labels, Keys.from_members([meta for _, _, meta in batch])


class TorchReader:
    """Yields exactly `plan.batches` batches per epoch: shuffled within the rank's range in training,
    in order (last sample repeated as padding) in evaluation.  Order and crops depend on (seed, epoch, rank).
    pin_memory: batches into page-locked memory, for a run on the GPU (the copies to it go faster and async)."""

    def __init__(self, folder: Path, manifest: dict, split: str, plan: EpochPlan, *, sample_rate: int,
                 crop: int | None, seed: int, num_workers: int = 2, subset: Subset | None = None,
                 pin_memory: bool = False):
        self.plan, self.seed, self.num_workers, self.pin_memory = plan, seed, num_workers, pin_memory
        self.dataset = ClipDataset(read_entries(folder, manifest, split, subset), audio_format=manifest["audio_format"],
                                   source_rate=manifest["sample_rate"], sample_rate=sample_rate, crop=crop,
                                   training=plan.training, seed=seed + plan.rank)

    def positions(self, epoch: int) -> list[int]:
        p = self.plan
        if p.training:
            order = np.random.default_rng([self.seed, epoch, p.rank]).permutation(p.size)
            return [p.start + int(i) for i in order[:p.batches * p.batch_size]]
        return [p.start + min(i, p.size - 1) for i in range(p.batches * p.batch_size)]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, Keys]]:
        """The epoch's (waveforms, labels [B, 2] int32, keys) after the first `skip` batches (resuming mid-epoch)."""
        items = [(i, epoch) for i in self.positions(epoch)][skip * self.plan.batch_size:]
        batches = [items[b:b + self.plan.batch_size] for b in range(0, len(items), self.plan.batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=_collate,
                            pin_memory=self.pin_memory, persistent_workers=False)
        yield from loader
