"""Samples -> per-rank ranges -> batches per epoch: the one place this arithmetic lives.

Training batches come in whole optimizer steps of `accumulation` micro-batches.
Ranks own contiguous ranges of the split (DALI's `shard_id` / `num_shards` convention: rank r reads
global samples [N r // W, N (r + 1) // W)).  Training drops the tail so that every rank yields the
same number of batches (unequal counts hang collectives).  Evaluation pads every rank up to the
largest range, so that across ranks every sample is seen exactly once and the padding is marked.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one epoch."""

    num_samples: int  # samples in the split (all ranks)
    rank: int
    world_size: int
    batch_size: int  # per rank
    training: bool
    start: int  # this rank's first global sample index
    size: int  # samples in this rank's range
    batches: int  # batches every rank yields per epoch
    accumulation: int = 1  # micro-batches per optimizer step (training)

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch (training)."""
        return self.batches // self.accumulation

    @property
    def padding(self) -> int:
        """Padded (invalid) positions this rank yields per epoch in evaluation."""
        return 0 if self.training else self.batches * self.batch_size - self.size


def rank_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


def plan_epoch(num_samples: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
               training: bool, accumulation: int = 1) -> EpochPlan:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if batch_size < 1 or accumulation < 1:
        raise ValueError(f"batch_size and accumulation must be positive, got {batch_size} and {accumulation}")
    start, end = rank_range(num_samples, rank, world_size)
    smallest = num_samples // world_size
    largest = -(-num_samples // world_size)
    if training:
        batches = smallest // (batch_size * accumulation) * accumulation
        if batches == 0:
            raise ValueError(f"the split has {num_samples} samples: fewer than one step of {accumulation} batch(es) of "
                             f"{batch_size} per rank on {world_size} rank(s); lower the batch size or use more data")
    else:
        batches = -(-largest // batch_size)
    return EpochPlan(num_samples, rank, world_size, batch_size, training, start, end - start, batches,
                     accumulation if training else 1)


def training_order(shards: np.ndarray, plan: EpochPlan, seed: int, epoch: int) -> np.ndarray:
    """The global positions rank `plan.rank` trains on in `epoch`, in reading order: the shards of its range in a
    random order, each shard's samples in a random order, cut to the plan's batches (`shards`: the shard of
    every sample of the split, in global order).  A pure function of (seed, epoch, rank): an epoch resumed at
    any batch reads on from the same list, so nothing before that batch is read again.  Reading whole shards
    one after the other keeps the reads local; the pack-time shuffle makes every shard a random draw of the split.
    """
    rng = np.random.default_rng([seed, epoch, plan.rank])
    mine = np.arange(plan.start, plan.start + plan.size)
    owners = shards[mine]
    order = [rng.permutation(mine[owners == shard]) for shard in rng.permutation(np.unique(owners))]
    return np.concatenate(order)[:plan.batches * plan.batch_size]
