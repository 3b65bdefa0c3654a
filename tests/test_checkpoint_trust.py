"""What resume trusts: real DeepSpeed checkpoints (one CPU rank, ZeRO 0 and 2) sealed, damaged and tampered with.

A planted pickle must be refused wherever it sits (DeepSpeed's module states, its ZeRO optimizer partitions, our
RNG files), by verification and, should a file get past it, by the load itself, and nothing of it may run.  A
truncated, altered or unsealed newest tag is set aside with a WARNING and the previous one resumes.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from trainer import checkpoint, checkpoint_files, reshard
from trainer.checkpoint_files import MANIFEST, NoGoodCheckpointError, UnsafeCheckpointError, safe_load, seal

from .helpers import cut_short, flip_bit


class _Payload:
    """Unpickling it creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _engine(zero: int, seed: int = 0):
    import deepspeed

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": zero}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, dist_init_required=False, config=config)
    return engine


def _step(engine) -> None:
    loss = engine(torch.randn(2, 4)).square().mean()
    engine.backward(loss)
    engine.step()


def _save(engine, root: Path, step: int, zero: int) -> str:
    tag = checkpoint.tag_name(0, step)
    checkpoint.save(engine, root, tag, {"progress": {"global_step": step}}, 0, 1, checkpoint.Position(1, zero))
    return tag


def _weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def _plant(path: Path, marker: Path) -> None:
    state = safe_load(path)
    state["planted"] = _Payload(marker)
    torch.save(state, path)


@pytest.mark.parametrize("zero,kind", [(0, "mp_rank_00_model_states.pt"), (2, "mp_rank_00_model_states.pt"),
                                       (2, "zero_pp_rank_0_mp_rank_00_optim_states.pt"), (0, "rng_rank00000.pt")])
def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, group, zero, kind):
    engine = _engine(zero)
    _step(engine)
    root, marker = tmp_path / "checkpoints", tmp_path / "marker"
    tag = _save(engine, root, 1, zero)
    assert checkpoint.load(engine, root, 0, 1).tag == tag  # the untouched checkpoint loads under weights_only

    _plant(root / tag / kind, marker)
    seal(root / tag, 0, 1)  # whoever planted it re-wrote the manifest too: the checksums agree
    with pytest.raises(NoGoodCheckpointError, match=f"{kind} pickles .*pathlib.*never unpickled"):
        checkpoint.load(engine, root, 0, 1)
    assert not marker.exists()

    # and a file that got past verification (moved back, unsealed checks skipped): the load itself refuses it
    (root / f"{tag}.damaged").replace(root / tag)
    if kind.startswith("rng"):
        loads = [lambda: safe_load(root / tag / kind)]
    else:
        checkpoint_files.weights_only_engine(engine)
        loads = [lambda: engine.load_checkpoint(str(root), tag=tag)]
        if kind.startswith("zero"):
            loads.append(lambda: reshard.consolidate(root / tag))
    for load in loads:
        with pytest.raises(UnsafeCheckpointError, match=f"{kind}: refused"):
            load()
    assert not marker.exists()


@pytest.mark.parametrize("damage,fault", [
    (cut_short, "has \\d+ bytes, the manifest \\d+ \\(cut short"),
    (flip_bit, "checksum mismatch"),
    (lambda path: (path.parent / MANIFEST).unlink(), "manifest.json is missing: the checkpoint was cut short"),
])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumes(tmp_path, group, caplog, damage, fault):
    engine = _engine(2)
    root = tmp_path / "checkpoints"
    _step(engine)
    first = _save(engine, root, 1, 2)
    expected = _weights(engine)
    _step(engine)
    newest = _save(engine, root, 2, 2)
    damage(root / newest / "zero_pp_rank_0_mp_rank_00_optim_states.pt")

    fresh = _engine(2, seed=1)
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        resumed = checkpoint.load(fresh, root, 0, 1)
    assert (resumed.tag, resumed.set_aside, resumed.client_state["progress"]["global_step"]) == (first, 1, 1)
    for name, value in _weights(fresh).items():
        assert torch.equal(value, expected[name]), name
    assert any(f"checkpoint {root / newest} is damaged" in r.message for r in caplog.records)
    assert re.search(fault, caplog.text), caplog.text
    assert checkpoint_files.tags(root) == [first]
    assert re.search(fault, (root / f"{newest}.damaged" / "faults.txt").read_text())  # kept, with its fault


def test_no_checkpoint_that_verifies_is_an_error_naming_the_fault(tmp_path, group):
    engine = _engine(0)
    root = tmp_path / "checkpoints"
    tag = _save(engine, root, 1, 0)
    flip_bit(root / tag / "mp_rank_00_model_states.pt")
    with pytest.raises(NoGoodCheckpointError, match="no checkpoint under .* verifies .*run cannot resume.*"
                                                    "mp_rank_00_model_states.pt: checksum mismatch"):
        checkpoint.load(engine, root, 0, 1)
    assert checkpoint.load(engine, tmp_path / "elsewhere", 0, 1) is None  # no checkpoint at all: a new run


def test_the_manifest_lists_every_file_with_its_size_and_checksum(tmp_path, group):
    import json

    import xxhash

    engine = _engine(2)
    root = tmp_path / "checkpoints"
    tag = _save(engine, root, 1, 2)
    files = json.loads((root / tag / MANIFEST).read_text())["files"]
    on_disk = sorted(p.name for p in (root / tag).iterdir() if p.name != MANIFEST)
    assert sorted(files) == on_disk == sorted(["mp_rank_00_model_states.pt", "position.json", "rng_rank00000.pt",
                                               "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
    for name, entry in files.items():
        data = (root / tag / name).read_bytes()
        assert entry == {"bytes": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}


def test_each_rank_owns_its_own_files():
    assert [checkpoint_files.owner(n) for n in ("rng_rank00003.pt", "zero_pp_rank_12_mp_rank_00_optim_states.pt",
                                                "bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt",
                                                "mp_rank_00_model_states.pt", "position.json")] == [3, 12, 2, 0, 0]


def test_pruning_keeps_the_newest_tags_and_never_touches_damaged_ones(tmp_path):
    for name in ("e0001-s000000003", "e0002-s000000006", "e0003-s000000009", "e0002-s000000006.damaged"):
        (tmp_path / name).mkdir()
    checkpoint.prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0002-s000000006", "e0002-s000000006.damaged",
                                                          "e0003-s000000009"]


def test_the_command_line_verifies_a_folder_and_seals_a_tag_written_before_sealing(tmp_path, group, capsys):
    engine = _engine(0)
    root = tmp_path / "checkpoints"
    tag = _save(engine, root, 1, 0)
    (root / tag / MANIFEST).unlink()  # as a checkpoint of an earlier version is
    assert checkpoint_files.main(["verify", str(root)]) == 2
    assert f"{tag}: DAMAGED" in capsys.readouterr().out
    assert checkpoint_files.main(["seal", str(root / tag)]) == 0
    assert checkpoint_files.main(["verify", str(root)]) == 0
    assert f"{tag}: verifies" in capsys.readouterr().out
    assert checkpoint.load(engine, root, 0, 1).tag == tag
    assert checkpoint_files.main(["seal", str(root / tag)]) == 1  # never over an existing seal
