"""What resume trusts in a checkpoint tag: loads that cannot run code, and a manifest that vouches for every file.

Loading.  Every checkpoint file is read with `torch.load(weights_only=True)`: tensors, containers and numbers,
plus the few DeepSpeed types its ZeRO optimizer files pickle (`allowed()`).  Anything else (a crafted
`__reduce__`, another program's objects) is refused before any of it runs.  DeepSpeed's own loads go through
the same loader (`weights_only_engine` replaces its checkpoint engine, which unpickles anything).

Sealing.  A tag is complete when its `manifest.json` exists: written by rank 0, atomically and synced, only after
every rank has synced the files it wrote and sent their sizes and xxh3-128 checksums (~5 GiB/s on one core,
7x sha256).  A node crash, a full disk or a copy cut short leaves a tag without a manifest, or with files that
disagree with it.

Verifying.  Before a resume each rank checks its share of the newest tag's files (size, checksum, and the
pickled types of each .pt file, read without unpickling); a tag with any fault is moved aside as
`<tag>.damaged` with a WARNING naming the file and the fault, and the next newest is tried.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import xxhash

from data_shards.atomic import atomic_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CHECKSUM = "xxh3_128"
DAMAGED = ".damaged"
TAG = re.compile(r"^e\d{4,}-s\d{9,}$")
_RANK_FILE = re.compile(r"(?:^rng_rank|zero_pp_rank_)0*(\d+)(?:\.pt$|_)")  # files a rank other than 0 may write
_CHUNK = 8 * 2**20


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holding objects other than tensors, containers, numbers and the `allowed()` types."""


class NoGoodCheckpointError(RuntimeError):
    """Every checkpoint of a run failed verification: the run cannot resume (exit status 2, never requeued)."""


def allowed() -> list:
    """The non-tensor types DeepSpeed's checkpoint files pickle (ZeRO 1/2 optimizer partitions: the stage, the
    loss scaler, and where each parameter's fragment lies in the flat partition)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def _names(types: list) -> set[str]:
    return {f"{t.__module__}.{t.__qualname__}" for t in types}


def safe_load(path: str | Path, map_location=None):
    """`torch.load` that unpickles tensors, containers, numbers and the `allowed()` types only."""
    with torch.serialization.safe_globals(allowed()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(f"{path}: refused, it pickles objects that are never unpickled here (a crafted "
                                        f"or foreign file): {str(exc).splitlines()[0]}") from None


def weights_only_engine(engine) -> None:
    """Route the engine's checkpoint loads through `safe_load` (its saves are unchanged)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        weights_only = True

        def load(self, path: str, map_location=None):
            return safe_load(path, map_location)

    if getattr(engine.checkpoint_engine, "weights_only", False):
        return
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise RuntimeError(f"DeepSpeed's checkpoint engine is {type(engine.checkpoint_engine).__name__}; only its "
                           "torch engine is supported (remove the checkpoint engine settings from the DeepSpeed JSON)")
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)


def digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def owner(name: str) -> int:
    """The rank that writes a file of a tag: per-rank RNG and ZeRO files their rank's, everything else rank 0's."""
    found = _RANK_FILE.search(name)
    return int(found.group(1)) if found else 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _gather(mine, world_size: int) -> list:
    """Every rank's `mine` (collective); one process without a process group (the command line) has only its own."""
    if world_size == 1 and not dist.is_initialized():
        return [mine]
    everyone = [None] * world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def seal(tag_dir: Path, rank: int, world_size: int, every_file: bool = False) -> None:
    """Collective, after every rank has written its files: sync and checksum them, then (rank 0) the manifest.
    `every_file`: this process takes all of them (vouching for a tag from the command line)."""
    mine = {}
    for path in sorted(p for p in tag_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.name != MANIFEST and (every_file or owner(path.name) == rank):
            _fsync(path)
            mine[path.name] = {"bytes": path.stat().st_size, CHECKSUM: digest(path)}
    everyone = _gather(mine, world_size)
    if rank == 0:
        files = {name: entry for part in everyone for name, entry in sorted(part.items())}
        with atomic_path(tag_dir / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"version": 1, "world_size": world_size, "files": files}, indent=1) + "\n")
        _fsync(tag_dir)  # the rename itself reaches the disk
    if dist.is_initialized():
        dist.barrier()


def manifest_files(tag_dir: Path) -> dict[str, dict]:
    """The files a tag's manifest lists; raises ValueError naming the fault when there is no usable manifest."""
    path = tag_dir / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} is missing: the checkpoint was cut short before every rank's files were synced")
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
    return files


def file_faults(tag_dir: Path, files: dict[str, dict]) -> list[str]:
    """What is wrong with these files of the tag (empty: nothing)."""
    faults, safe = [], _names(allowed())
    for name, entry in files.items():
        path = tag_dir / name
        if not path.is_file():
            faults.append(f"{path} is missing")
        elif path.stat().st_size != entry["bytes"]:
            faults.append(f"{path} has {path.stat().st_size} bytes, the manifest {entry['bytes']} (cut short or "
                          "overwritten)")
        elif digest(path) != entry[CHECKSUM]:
            faults.append(f"{path}: checksum mismatch ({CHECKSUM}), its bytes changed after it was written")
        elif path.suffix == ".pt":
            try:
                unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - safe
            except Exception as exc:  # a zip or pickle that does not parse: damaged either way
                faults.append(f"{path} does not parse as a torch checkpoint ({type(exc).__name__}: {exc})")
                continue
            if unsafe:
                faults.append(f"{path} pickles {', '.join(sorted(unsafe))}, which are never unpickled here (a crafted "
                              "or foreign file)")
    return faults


@dataclass
class Verdict:
    tag: str | None  # the newest tag that passed, None when there is none
    skipped: dict[str, list[str]]  # damaged tags (newest first) -> their faults


def tags(root: Path) -> list[str]:
    """The tags under `root`, newest first (names sort by epoch, then step)."""
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if p.is_dir() and TAG.match(p.name)), reverse=True)


def newest_good(root: Path, rank: int, world_size: int) -> Verdict:
    """Collective: every rank checks its share of each tag's files, newest tag first, until one passes."""
    skipped = {}
    for tag in tags(root):
        try:
            files = manifest_files(root / tag)
            share = {name: entry for i, (name, entry) in enumerate(sorted(files.items())) if i % world_size == rank}
            mine = file_faults(root / tag, share)
        except ValueError as exc:
            mine = [str(exc)]
        faults = [fault for part in _gather(mine, world_size) for fault in part]
        if not faults:
            return Verdict(tag, skipped)
        skipped[tag] = faults
    return Verdict(None, skipped)


def set_aside(root: Path, verdict: Verdict) -> dict[str, str]:
    """Rank 0: move the damaged tags out of the tag namespace (kept, with their faults, for inspection); returns
    each one's new name."""
    moved = {}
    for tag, faults in verdict.skipped.items():
        target, n = root / f"{tag}{DAMAGED}", 1
        while target.exists():  # the same step damaged before (a rerun that crashed at the same place)
            target, n = root / f"{tag}{DAMAGED}{n}", n + 1
        (root / tag).replace(target)
        (target / "faults.txt").write_text("\n".join(faults) + "\n")
        moved[tag] = target.name
    return moved


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.checkpoint_files", description=(
        "verify: check a run's checkpoints as resume would (exit 0 when one verifies). seal: vouch for a tag you "
        "trust that has no manifest (written before checkpoints were sealed): its files as they are now."))
    parser.add_argument("action", choices=["verify", "seal"])
    parser.add_argument("folder", type=Path, help="verify: a run's checkpoints/ folder; seal: one tag folder in it")
    args = parser.parse_args(argv)
    if args.action == "seal":
        if (args.folder / MANIFEST).is_file():
            print(f"{args.folder} is sealed already")
            return 1
        seal(args.folder, 0, 1, every_file=True)
        print(f"sealed {args.folder}: {len(manifest_files(args.folder))} files")
        return 0
    verdict = newest_good(args.folder, 0, 1)
    for tag, faults in verdict.skipped.items():
        print(f"{tag}: DAMAGED\n  " + "\n  ".join(faults))
    if verdict.tag is None:
        print(f"no checkpoint under {args.folder} verifies" if verdict.skipped else f"no checkpoints in {args.folder}")
        return 2
    print(f"{verdict.tag}: verifies (resume would start here)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
