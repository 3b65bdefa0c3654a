"""Per-rank RNG states: saved as plain tensors and numbers, restored exactly, never unpickled from objects."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import checkpoint


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), random.random()


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    checkpoint.seed_everything(123)
    np.random.randn(1)  # leaves a cached Gaussian in NumPy's state, which must survive too
    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    checkpoint.seed_everything(7)
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/should-never-exist-audio-sit"),))


def test_a_tampered_rng_file_is_refused_not_unpickled(tmp_path, monkeypatch):
    tag = checkpoint.tag_name(1, 5)
    (tmp_path / tag).mkdir()
    (tmp_path / checkpoint.LATEST).write_text(tag)
    torch.save({"torch": _Payload()}, tmp_path / tag / "rng_rank00000.pt")

    class Engine:
        def load_checkpoint(self, *args, **kwargs):
            return str(tmp_path / tag), {"progress": {}}

    with pytest.raises(RuntimeError, match="is not a plain RNG state .* remove .*latest to start over"):
        checkpoint.load(Engine(), tmp_path, rank=0)
    assert not Path("/tmp/should-never-exist-audio-sit").exists()
