"""Replay across stages: a fixed coreset of the previous stage's train clips mixed into every micro-batch.

The coreset (`retain.replay_size` clips drawn once by the seed) is decoded once, whole, into host memory.  Each
training micro-batch carries `k = retain.replay_share x train.micro_batch` coreset clips after this stage's
`micro_batch - k`; a replayed clip is a random crop of this stage's clip length and goes through the previous
stage's frozen head, so what it trains is the shared representation.  The loss is the micro-batch mean, every
clip through its own head.

Which clips a micro-batch draws, and where they are cropped, is a pure function of (seed, epoch, global
micro-batch, rank): the epoch's replay slots, numbered over the global micro-batches (micro x world + rank), read
a stream of seeded permutations of the coreset, and each slot draws its own crop.  So every coreset clip is drawn once before any is drawn twice, an epoch with at
least as many slots as clips draws them all, a resumed epoch draws what it would have, and one rank with
accumulation A x W draws the same global batches as W ranks with accumulation A.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import make_loader
from ..data.subset import split_index
from .base import Mixed, Retention


@dataclass
class Coreset:
    keys: list[str]
    audio: torch.Tensor  # [C, samples] float32 on the host, whole clips (zero-padded to the longest)
    labels: torch.Tensor  # [C] int64: the previous stage's classes


def choose(keys: list[str], size: int, seed: int) -> list[str]:
    """`size` keys drawn without replacement by the seed (all of them when the split is smaller), in split order."""
    if size >= len(keys):
        return list(keys)
    picked = np.sort(np.random.default_rng([seed, 0x5EED]).choice(len(keys), size, replace=False))
    return [keys[i] for i in picked]


def load_coreset(previous, size: int, seed: int, *, sample_rate: int, backend: str, num_workers: int) -> Coreset:
    """Decode the coreset clips of the previous stage's train split (every rank reads all of them)."""
    split = previous.config.data.train_split
    keys = [s.key for s in split_index(previous.data, previous.manifest, split)]
    chosen = set(choose(keys, size, seed))
    loader = make_loader(previous.data, split, batch_size=min(32, len(chosen)), training=False, backend=backend,
                         device="cpu", sample_rate=sample_rate, clip_seconds=None, num_workers=num_workers,
                         manifest=previous.manifest, exclude=[k for k in keys if k not in chosen])
    clips, labels, names = [], [], []
    for batch in loader:
        valid = batch["valid"]
        clips += list(batch["audio"][valid])
        labels.append(batch["label"][valid])
        names += [str(k) for k, v in zip(batch["key"], valid.tolist()) if v]
    length = max(len(c) for c in clips)
    audio = torch.stack([F.pad(c, (0, length - len(c))) for c in clips])
    return Coreset(names, audio, torch.cat(labels))


def draws(size: int, per_batch: int, *, seed: int, epoch: int, micro: int, rank: int, world: int) -> np.ndarray:
    """The coreset indices micro-batch `micro` of rank `rank` replays in `epoch`."""
    slots = (micro * world + rank) * per_batch + np.arange(per_batch)
    out = np.empty(per_batch, dtype=np.int64)
    for block in np.unique(slots // size):
        here = slots // size == block
        out[here] = np.random.default_rng([seed, epoch, int(block), 0x4E9]).permutation(size)[slots[here] % size]
    return out


def crops(room: int, per_batch: int, *, seed: int, epoch: int, micro: int, rank: int, world: int) -> np.ndarray:
    """Where each replayed clip of the micro-batch is cropped (offsets in [0, room)), drawn per global slot."""
    first = (micro * world + rank) * per_batch
    return np.array([np.random.default_rng([seed, epoch, first + i, 0xC40]).integers(room)
                     for i in range(per_batch)], dtype=np.int64)


class Replay(Retention):
    name = "replay"

    def __init__(self, head: nn.Module, coreset: Coreset, per_batch: int, crop: int, *, seed: int, rank: int,
                 world: int, device: torch.device):
        self.head, self.coreset, self.per_batch, self.crop = head, coreset, per_batch, crop
        self.seed, self.rank, self.world, self.device = seed, rank, world, device
        if coreset.audio.shape[1] < crop:
            coreset.audio = F.pad(coreset.audio, (0, crop - coreset.audio.shape[1]))

    def batch(self, batch, epoch, micro):
        picked = draws(len(self.coreset.keys), self.per_batch, seed=self.seed, epoch=epoch, micro=micro,
                       rank=self.rank, world=self.world)
        room = self.coreset.audio.shape[1] - self.crop + 1
        starts = crops(room, self.per_batch, seed=self.seed, epoch=epoch, micro=micro, rank=self.rank, world=self.world)
        clips = torch.stack([self.coreset.audio[i, s:s + self.crop] for i, s in zip(picked, starts)])
        audio = torch.cat([batch["audio"], clips.to(self.device, non_blocking=True)])
        return Mixed(audio, batch["label"], self.coreset.labels[picked].to(self.device, non_blocking=True))

    def loss(self, mel, logits, features, mixed):
        n, k = len(mixed.labels), len(mixed.previous_labels)
        new = F.cross_entropy(logits[:n].float(), mixed.labels, reduction="sum")
        old = F.cross_entropy(self.head(features[n:].float()), mixed.previous_labels, reduction="sum")
        return (new + old) / (n + k)

    def describe(self) -> str:
        return f"replay ({self.per_batch} of every micro-batch from {len(self.coreset.keys)} coreset clips)"
