"""The built-in demo corpus for `launch/train.py --demo`: generated and packed on first use, by one process."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from data_shards.manifest import ManifestError, load_manifest

from .distributed import launcher_rank

log = logging.getLogger(__name__)

DATASETS = ("cochlscene", "tau22", "tau22_whole")


def _packed(shards: Path) -> bool:
    """Both demo datasets are there, packed by a data_shards whose manifest this one reads."""
    try:
        return all(load_manifest(shards / name) for name in DATASETS)
    except ManifestError:
        return False


def ensure_demo_shards(shards: Path, *, timeout_s: float = 1800.0) -> None:
    """Pack the demo corpus into `shards` (raw audio beside it, in `../raw`) unless it is there already,
    packed by a compatible version (an older pack is re-packed: the demo is generated, nothing is lost).

    Runs before the process group exists: rank 0 packs (publishing is atomic), the others wait for the
    manifests.
    """
    ready = lambda: _packed(shards)  # noqa: E731
    if ready():
        return
    if launcher_rank() == 0:
        from data_shards.pack import PackOptions, default_workers
        from data_shards.sources import demo

        log.info("packing the demo corpus into %s (first use)", shards)
        demo.pack_demo(demo.generate(shards.parent / "raw"),
                       PackOptions(out=shards, workers=default_workers(), overwrite=True))
        if not ready():
            raise RuntimeError(f"packing the demo corpus into {shards} left no readable manifests; try: make demo")
        return
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to pack the demo corpus into {shards}")
        time.sleep(1.0)
