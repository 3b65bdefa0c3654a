"""Checkpoints: DeepSpeed state + per-rank RNG, pruning, the consolidated `model.pt`, and pre-emption signals.

A checkpoint tag `e<epoch>-s<step>` holds the engine (module, optimizer / ZeRO partitions, LR
scheduler) and a client state with the data position (`epoch`, `step_in_epoch`), `global_step` and the
model-selection history.  Each rank also stores its RNG states (torch, CUDA, NumPy, Python), and rank 0
a `position.json`: the world size and ZeRO stage that wrote the tag and, mid-epoch, the keys of the samples
the epoch has trained on, so that another number of ranks can continue it (`reshard`).  The tag is sealed
by its `manifest.json` once every rank's files are on disk; resume takes the newest tag that verifies and
loads nothing that could run code (`checkpoint_files`).
"""
from __future__ import annotations

import json
import logging
import random
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data_shards.atomic import atomic_path, write_atomic

from . import reshard
from .checkpoint_files import NoGoodCheckpointError, newest_good, safe_load, seal, set_aside, tags, weights_only_engine
from .configtools import ConfigError

log = logging.getLogger(__name__)

POSITION = "position.json"


def tag_name(epoch: int, global_step: int) -> str:
    return f"e{epoch:04d}-s{global_step:09d}"


def rng_state() -> dict:
    """The RNG states as tensors, numbers and lists only, so that `torch.load(weights_only=True)` reads them back
    (a run folder is data: resuming from it must not unpickle arbitrary objects).  CUDA's (of the current device)
    only where this process has started CUDA, as a GPU run has: asking would start it, and a CPU run's checkpoint
    holds the same states on a GPU machine as on one without."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(gauss)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])  # lazy: applied when (if) this process starts CUDA


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Position:
    """Who wrote a checkpoint, and which samples of the epoch in progress it had trained on."""

    world_size: int
    zero_stage: int
    excluded: list[str] = field(default_factory=list)  # keys left out of the epoch's current part (trained before)
    seen: list[str] = field(default_factory=list)  # keys the current part has trained on, all ranks


@dataclass
class Resumed:
    client_state: dict
    position: Position
    tag: str = ""  # the tag resumed from
    set_aside: int = 0  # newer tags that failed verification (moved to <tag>.damaged)


def save(engine, root: Path, tag: str, client_state: dict, rank: int, world_size: int, position: Position) -> None:
    """Collective: every rank calls it (`position` matters on rank 0 only)."""
    (root / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), root / tag / f"rng_rank{rank:05d}.pt")
    if rank == 0:
        write_atomic(root / tag / POSITION, json.dumps(asdict(position)).encode())
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state)
    seal(root / tag, rank, world_size)


def read_position(tag_dir: Path, zero_stage: int) -> Position:
    """The tag's `position.json`; for tags written before it existed, the world size from the RNG files."""
    if (tag_dir / POSITION).is_file():
        return Position(**json.loads((tag_dir / POSITION).read_text()))
    return Position(world_size=len(list(tag_dir.glob("rng_rank*.pt"))), zero_stage=zero_stage)


def newest_verified(root: Path, rank: int, world_size: int) -> tuple[str | None, int]:
    """Collective: the newest tag under `root` that verifies (None: the run has no checkpoint) and how many newer
    ones were damaged (set aside with a WARNING each).  Raises NoGoodCheckpointError when none verifies."""
    verdict = newest_good(root, rank, world_size)
    if rank == 0:
        for tag, kept in set_aside(root, verdict).items():
            log.warning("checkpoint %s is damaged, skipped and kept as %s: %s", root / tag, kept,
                        "; ".join(verdict.skipped[tag]))
    dist.barrier()
    if verdict.tag is None and verdict.skipped:
        raise NoGoodCheckpointError(
            f"no checkpoint under {root} verifies ({len(verdict.skipped)} damaged, set aside as <tag>.damaged with "
            f"their faults in faults.txt); the run cannot resume. Restore the folder from a copy, or start a new run "
            f"(another run.name). First fault: {verdict.skipped[next(iter(verdict.skipped))][0]}")
    return verdict.tag, len(verdict.skipped)


def load(engine, root: Path, rank: int, world_size: int) -> Resumed | None:
    """Restore the newest good checkpoint under `root` (collective), on its own or another number of ranks."""
    tag, damaged = newest_verified(root, rank, world_size)
    if tag is None:
        return None
    position = read_position(root / tag, engine.zero_optimization_stage())
    if position.zero_stage != engine.zero_optimization_stage():
        raise ConfigError(f"{root / tag} was written at ZeRO stage {position.zero_stage}; resume it with "
                           f"train.zero_stage={position.zero_stage}")
    weights_only_engine(engine)
    if position.world_size != world_size:  # RNG states belong to the old ranks: the trainer re-seeds
        return Resumed(reshard.load(engine, root, tag), position, tag, damaged)
    path, client_state = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint in {root / tag}, which verified; report this with the "
                           "folder")
    rng_file = root / tag / f"rng_rank{rank:05d}.pt"
    if rng_file.is_file():
        set_rng_state(safe_load(rng_file))
    else:
        log.warning("%s has no RNG state for rank %d", root / tag, rank)
    return Resumed(client_state, position, tag, damaged)


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` tags (rank 0, after the save)."""
    for old in tags(root)[keep:]:
        shutil.rmtree(root / old, ignore_errors=True)


def cpu_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict as fp32 copies on the CPU (what model.pt holds)."""
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in module.state_dict().items()}


def export_model(module: torch.nn.Module, path: Path, classes: list[str], config: dict,
                 previous_head: dict | None = None) -> Path:
    """The hand-off file: fp32 state dict (official key names), class list and the resolved config; with
    retain.keep_head, the previous stage's head as carried (`previous_head`: state_dict, classes, model)."""
    state = cpu_weights(module)
    extra = {"previous_head": previous_head} if previous_head else {}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "classes": list(classes), "config": config, **extra}, tmp)
    return path


class Preemption:
    """Remembers SIGTERM / SIGUSR1 (SLURM's time-limit and pre-emption signals) until the next step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> "Preemption":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.received = signum
        log.warning("received %s: checkpointing at the end of this step", signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
