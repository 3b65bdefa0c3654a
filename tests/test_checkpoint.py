"""Per-rank RNG states saved as plain tensors and numbers and restored exactly; the ZeRO stage a checkpoint needs."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import checkpoint
from trainer.checkpoint_files import seal
from trainer.configtools import ConfigError

from .helpers import pretend_gpus


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


def test_cuda_rng_state_is_saved_only_where_the_process_has_started_cuda(monkeypatch):
    """Asking CUDA for its RNG state starts CUDA: a CPU run's checkpoint holds none, on a GPU machine too; a GPU
    run's holds it."""
    pretend_gpus(monkeypatch, 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a: pytest.fail("CUDA was started by rng_state"))
    assert "cuda" not in checkpoint.rng_state()
    cuda_state = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a: cuda_state)
    assert torch.equal(checkpoint.rng_state()["cuda"], cuda_state)


class _Engine:
    def __init__(self, tag: Path, zero_stage: int = 0):
        self.tag, self.zero_stage = tag, zero_stage

    def zero_optimization_stage(self) -> int:
        return self.zero_stage


def test_a_checkpoint_resumes_only_at_the_zero_stage_that_wrote_it(tmp_path, group):
    tag = checkpoint.tag_name(0, 3)
    (tmp_path / tag).mkdir()
    (tmp_path / tag / checkpoint.POSITION).write_text('{"world_size": 2, "zero_stage": 2}')
    seal(tmp_path / tag, rank=0, world_size=1)
    with pytest.raises(ConfigError, match="written at ZeRO stage 2; resume it with train.zero_stage=2"):
        checkpoint.load(_Engine(tmp_path / tag, zero_stage=1), tmp_path, rank=0, world_size=1)
