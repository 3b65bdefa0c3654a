"""Shared fixtures: a tiny demo corpus in the real layouts, packed once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_shards.pack import PackOptions, pack
from data_shards.sources import cochlscene, demo, tau22

from trainer.stack import load_faults

from .helpers import TINY


def pytest_configure(config):
    """Stop at once, in one line per fault, when torch's compiled companions do not load (not at every module)."""
    faults = [] if hasattr(config, "workerinput") else load_faults()
    if faults:
        pytest.exit("the installed stack is broken: " + "; ".join(faults), returncode=3)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> dict[str, Path]:
    return demo.generate(tmp_path_factory.mktemp("demo_raw"), seed=7, size=TINY)


@pytest.fixture(scope="session")
def packed(demo_root, tmp_path_factory) -> dict[str, Path]:
    """The demo packed with small shards (several per split) and 2 worker processes."""
    out = tmp_path_factory.mktemp("demo_shards")
    folders = {}
    for scan in (cochlscene.scan(demo_root["cochlscene"]), tau22.scan(demo_root["tau22"])):
        result = pack(scan, PackOptions(out=out, shard_samples=7, workers=2, seed=3))
        folders[scan.dataset] = result.folder
    return folders


@pytest.fixture(scope="session")
def trainable(demo_root, tmp_path_factory) -> Path:
    """Both demo datasets packed as the trainer expects them: TAU with a 'val' split held out of train."""
    out = tmp_path_factory.mktemp("train_shards")
    demo.pack_demo(demo_root, PackOptions(out=out, shard_samples=7, workers=2, seed=3), val_fraction=0.5)
    return out
