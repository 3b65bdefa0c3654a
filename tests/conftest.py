"""Shared fixtures: a tiny demo corpus in the real layouts, packed once per test session; per-test isolation."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from data_shards.pack import PackOptions, pack
from data_shards.sources import cochlscene, demo, tau22

from trainer.stack import load_faults

from .helpers import TINY


def pytest_configure(config):
    """Stop at once, in one line per fault, when torch's compiled companions do not load (not at every module).

    Under pytest-xdist each worker gets its share of the cores for torch's threads: N workers with all the
    cores each would oversubscribe the machine (the ranks the tests start use one thread each already).
    """
    if hasattr(config, "workerinput"):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // config.workerinput["workercount"]))
        return
    faults = load_faults()
    if faults:
        pytest.exit("the installed stack is broken: " + "; ".join(faults), returncode=3)


@pytest.fixture(autouse=True)
def _isolated():
    """Each test starts from the same state whichever tests ran before it in this process (xdist decides that):

    - an in-process run exports RANK / WORLD_SIZE / MASTER_* (distributed.setup does, for DeepSpeed); the
      processes a later test starts must not inherit a rank and a port that belong to nobody;
    - the global RNGs are seeded, so random inputs do not depend on the order the tests ran in.
    """
    saved = dict(os.environ)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


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


@pytest.fixture
def group(monkeypatch):
    """A one-rank gloo process group in this process (what the collective checkpoint code needs), removed after."""
    from trainer import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(distributed.free_port()))
    info = distributed.setup("cpu")
    yield info
    distributed.teardown()
