"""make_loader: shapes, labels, exact per-rank epochs, DALI == torch in eval, augmentations, corrupt samples."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_shards.manifest import load_manifest
from data_shards.pack import PackOptions, pack
from data_shards.sources import cochlscene
from trainer.data import make_loader
from trainer.data.augment import FreqMixStyle, WaveAugment, fast_fft_size, fft_convolve, load_impulse_responses
from trainer.data.epoch import plan_epoch, training_order

from .helpers import pretend_gpus, read_split

BACKENDS = ["dali", "torch"]


def test_epoch_plan_arithmetic():
    p = [plan_epoch(10, 2, rank=r, world_size=3, training=False) for r in range(3)]
    assert [(x.start, x.size) for x in p] == [(0, 3), (3, 3), (6, 4)]
    assert {x.batches for x in p} == {2} and [x.padding for x in p] == [1, 1, 0]
    t = [plan_epoch(10, 2, rank=r, world_size=3, training=True) for r in range(3)]
    assert {x.batches for x in t} == {1}
    # 100 samples on 3 ranks: 33 per rank -> 8 batches of 4 -> 2 whole steps of 3 batches = 6 batches
    a = plan_epoch(100, 4, rank=1, world_size=3, training=True, accumulation=3)
    assert (a.batches, a.steps, a.accumulation) == (6, 2, 3)
    assert plan_epoch(100, 4, rank=1, world_size=3, training=False, accumulation=3).accumulation == 1
    with pytest.raises(ValueError, match="fewer than one step of 1 batch\\(es\\) of 8 per rank"):
        plan_epoch(10, 8, rank=0, world_size=2, training=True)
    with pytest.raises(ValueError, match="fewer than one step of 3 batch"):
        plan_epoch(20, 4, rank=0, world_size=2, training=True, accumulation=3)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        plan_epoch(10, 2, rank=2, world_size=2, training=True)


def test_training_order_reads_whole_shards_in_a_seeded_order():
    shards = np.repeat(np.arange(6), [5, 7, 7, 7, 7, 3])  # 36 samples in 6 shards
    plan = plan_epoch(36, 4, rank=1, world_size=2, training=True)  # rank 1: samples 18..35, 4 batches of 4
    order = training_order(shards, plan, seed=3, epoch=0)
    assert len(order) == len(set(order)) == 16 and set(order) <= set(range(18, 36))
    runs = [shards[order[i]] for i in range(16) if i == 0 or shards[order[i]] != shards[order[i - 1]]]
    assert len(runs) == len(set(runs))  # each shard read in one go
    assert np.array_equal(order, training_order(shards, plan, seed=3, epoch=0))
    assert not np.array_equal(order, training_order(shards, plan, seed=3, epoch=1))
    assert not np.array_equal(order, training_order(shards, plan, seed=4, epoch=0))


@pytest.mark.parametrize("affinity,machine,local,env,expected", [
    (16, 16, None, {}, 15),  # one rank owns the machine: all cores but the training loop's
    (16, 16, None, {"LOCAL_WORLD_SIZE": "4"}, 3),  # torchrun, 4 ranks share 16 cores
    (16, 16, None, {"LOCAL_SIZE": "8"}, 1),  # the deepspeed launcher
    (16, 16, None, {"SLURM_NTASKS_PER_NODE": "4(x2)"}, 3),  # srun, 4 tasks on each of 2 nodes
    (4, 16, None, {"SLURM_NTASKS_PER_NODE": "4"}, 3),  # srun bound each task to its 4 CPUs already
    (2, 2, 1, {}, 1),
])
def test_default_loader_threads(monkeypatch, affinity, machine, local, env, expected):
    from trainer.data.loader import default_workers

    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr("os.cpu_count", lambda: machine)
    assert default_workers(local) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_have_the_contract_shapes_and_manifest_labels(packed, backend):
    folder = packed["tau22"]
    truth = {m["key"]: m for _, m, _ in read_split(folder, "test")}
    loader = make_loader(folder, "test", batch_size=5, training=False, backend=backend, num_workers=1)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(truth) // 5)
    for b in batches:
        assert b["audio"].dtype == torch.float32 and b["audio"].shape == (5, 44100)
        assert b["label"].dtype == b["device"].dtype == torch.int64 and b["valid"].dtype == torch.bool
        for key, label, device, valid in zip(b["key"], b["label"], b["device"], b["valid"]):
            if valid:
                assert int(label) == truth[key]["label_index"] and int(device) == truth[key]["device_index"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [2, 3])
def test_eval_covers_every_key_once_and_training_is_even_across_ranks(packed, backend, world):
    folder = packed["tau22"]
    keys = {m["key"] for _, m, _ in read_split(folder, "test")}
    seen, counts, train_counts = Counter(), set(), set()
    for rank in range(world):
        loader = make_loader(folder, "test", batch_size=4, training=False, backend=backend, rank=rank,
                             world_size=world, num_workers=1)
        batches = list(loader)
        counts.add(len(batches))
        for b in batches:
            seen.update(k for k, v in zip(b["key"], b["valid"]) if v)
        train = make_loader(folder, "train", batch_size=4, training=True, backend=backend, rank=rank,
                            world_size=world, num_workers=1)
        train_counts.add((len(train), len(list(train)), len(list(train))))
    assert set(seen) == keys and set(seen.values()) == {1}
    assert len(counts) == 1 and len(train_counts) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_subset_leaves_out_the_excluded_keys_and_stops_after_max_steps(packed, backend):
    """What an epoch continued on another number of ranks reads: the split minus the keys trained on, shared by
    the ranks (each key once), for exactly the steps asked."""
    folder = packed["tau22"]
    split = {m["key"] for _, m, _ in read_split(folder, "train")}
    trained = sorted(split)[::3]
    rest = set(split) - set(trained)
    seen = Counter()
    for rank in range(2):
        loader = make_loader(folder, "train", batch_size=2, training=True, backend=backend, rank=rank, world_size=2,
                             num_workers=1, exclude=trained, max_steps=2, accumulation=2)
        batches = list(loader)
        assert len(batches) == 4  # 2 steps of 2 micro-batches
        for b in batches:
            seen.update(b["key"])
            assert set(b["key"]) <= rest
    assert sum(seen.values()) == 16 and set(seen.values()) == {1}, (len(split), len(rest))
    per_rank = len(rest) // 2 // 4  # whole steps of 2 micro-batches of 2 in one rank's share of the subset
    with pytest.raises(ValueError, match=f"hold {per_rank} step\\(s\\) per rank, fewer than the {per_rank + 1} asked"):
        make_loader(folder, "train", batch_size=2, training=True, backend=backend, rank=0, world_size=2,
                    num_workers=1, exclude=trained, max_steps=per_rank + 1, accumulation=2)
    with pytest.raises(ValueError, match="'gone'\\) are not in split 'train'.*the dataset changed"):
        make_loader(folder, "train", batch_size=2, training=True, backend=backend, num_workers=1, exclude=["gone"])


def test_subset_audio_is_the_samples_own(packed):
    """Subset index files point DALI at the right bytes: eval-mode reads of a subset equal the torch reader's."""
    folder = packed["tau22"]
    keys = [m["key"] for _, m, _ in read_split(folder, "test")]
    exclude = keys[1::2]
    from trainer.data.subset import Subset

    subset = Subset(folder, load_manifest(folder), "test", exclude)
    assert len(subset) == len(keys) - len(exclude)
    a = [b for b in make_loader(folder, "test", batch_size=3, training=False, backend="dali", exclude=exclude)]
    b = [b for b in make_loader(folder, "test", batch_size=3, training=False, backend="torch", exclude=exclude,
                                num_workers=1)]
    assert [k for x in a for k, v in zip(x["key"], x["valid"]) if v] == keys[0::2]
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        torch.testing.assert_close(x["audio"], y["audio"], rtol=0, atol=1e-5)


def test_dali_cpu_and_torch_reader_agree_in_eval(packed):
    for name, seconds in (("tau22", "auto"), ("cochlscene", None)):
        a = list(make_loader(packed[name], "test", batch_size=3, training=False, backend="dali", clip_seconds=seconds))
        b = list(make_loader(packed[name], "test", batch_size=3, training=False, backend="torch", clip_seconds=seconds,
                             num_workers=1))
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x["key"] == y["key"]
            torch.testing.assert_close(x["audio"], y["audio"], rtol=0, atol=1e-5)
            assert torch.equal(x["valid"], y["valid"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_crops_and_reshuffles_each_epoch(packed, backend):
    loader = make_loader(packed["cochlscene"], "train", batch_size=4, training=True, backend=backend,
                         clip_seconds=1.0, num_workers=1, seed=5)
    first, second = list(loader), list(loader)
    assert all(b["audio"].shape == (4, 44100) and "valid" not in b for b in first)
    assert [b["key"] for b in first] != [b["key"] for b in second]
    if backend == "dali":  # each epoch's index files replace the last one's: nothing piles up over a long run
        assert [p.name for p in Path(loader.reader._index_dir.name).iterdir()] == ["epoch1"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_resumed_epoch_reads_on_from_its_batch_and_nothing_before(packed, tmp_path, backend):
    """`batches(epoch, skip=k)` are the uninterrupted epoch's batches from k on, bit for bit (samples and crops),
    and the batches before k are never read: their audio is destroyed in the shards and the resumed epoch still
    decodes (rank 1 of 2, so that the rank's range is not the split's start)."""
    folder = tmp_path / "cochlscene"
    shutil.copytree(packed["cochlscene"], folder)
    kwargs = dict(batch_size=3, training=True, backend=backend, clip_seconds=1.0, num_workers=1, seed=9, rank=1,
                  world_size=2)
    whole = list(make_loader(folder, "train", **kwargs).batches(2))
    skip = len(whole) // 2 + 1
    skipped = {key for batch in whole[:skip] for key in batch["key"]}
    destroyed = 0
    for shard in load_manifest(folder)["splits"]["train"]["shards"]:
        data = bytearray((folder / shard["path"]).read_bytes())
        for line in (folder / shard["index"]).read_text().splitlines()[1:]:
            parts = line.split()
            members = {parts[j]: (int(parts[j + 1]), int(parts[j + 2])) for j in range(0, len(parts), 4)}
            if parts[3].split(".")[0] in skipped:
                offset, size = members["flac"]
                data[offset:offset + size] = b"\x55" * size
                destroyed += 1
        (folder / shard["path"]).write_bytes(bytes(data))
    assert destroyed == len(skipped) == skip * 3
    resumed = list(make_loader(folder, "train", **kwargs).batches(2, skip=skip))
    assert len(resumed) == len(whole) - skip > 0
    for expected, got in zip(whole[skip:], resumed):
        assert list(got["key"]) == list(expected["key"])
        assert torch.equal(got["audio"], expected["audio"]) and torch.equal(got["label"], expected["label"])


@pytest.fixture(scope="module")
def pcm16(demo_root, tmp_path_factory) -> Path:
    """The CochlScene demo (16-bit sources) packed as raw pcm16, with the `packed` fixture's seed and shard size."""
    out = tmp_path_factory.mktemp("pcm16")
    return pack(cochlscene.scan(demo_root["cochlscene"]),
                PackOptions(out=out, audio_format="pcm16", shard_samples=7, workers=1, seed=3)).folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcm16_and_flac_shards_give_the_same_batches(packed, pcm16, backend):
    assert load_manifest(pcm16)["audio_extension"] == "pcm"
    for split, training in (("test", False), ("train", True)):
        kwargs = dict(batch_size=3, training=training, backend=backend, clip_seconds=2.0, seed=4, num_workers=1)
        flac = list(make_loader(packed["cochlscene"], split, **kwargs))
        raw = list(make_loader(pcm16, split, **kwargs))
        assert len(flac) == len(raw) > 1
        for a, b in zip(flac, raw):
            assert list(a["key"]) == list(b["key"])
            assert torch.equal(a["label"], b["label"]) and torch.equal(a["device"], b["device"])
            assert torch.equal(a["audio"], b["audio"])  # 16-bit sources: both formats are lossless


def test_a_training_epoch_parses_no_json_unless_keys_are_read(packed, monkeypatch):
    loader = make_loader(packed["tau22"], "train", batch_size=4, training=True, num_workers=1)
    calls = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **k: calls.append(1) or real(*a, **k))
    batches = list(loader)
    assert calls == [] and len(batches) == len(loader)
    keys = list(batches[0]["key"])
    assert len(calls) == 4 and all(isinstance(k, str) for k in keys)
    assert batches[0]["label"].dtype == torch.int64 and batches[0]["label"].shape == (4,)


def test_roll_is_a_circular_shift_and_gain_a_constant_factor():
    torch.manual_seed(0)
    x = torch.randn(6, 1000)
    rolled = WaveAugment(roll=50).train()(x, torch.zeros(6, dtype=torch.int64))
    for row, out in zip(x, rolled):
        shifts = [s for s in range(-50, 51) if torch.equal(torch.roll(row, s), out)]
        assert len(shifts) == 1
    gained = WaveAugment(gain_db=6.0).train()(x, torch.zeros(6, dtype=torch.int64))
    ratio = gained / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5)
    db = 20 * torch.log10(ratio[:, 0])
    assert (db.abs() <= 6.0 + 1e-4).all() and db.std() > 0.1
    assert torch.equal(WaveAugment(roll=50, gain_db=6).eval()(x, torch.zeros(6, dtype=torch.int64)), x)


def test_dir_only_touches_device_a_and_is_a_truncated_convolution(demo_root):
    irs = load_impulse_responses(demo_root["impulse_responses"], 44100)
    assert irs.shape[0] == 6
    torch.manual_seed(1)
    x = torch.randn(8, 4000)
    devices = torch.tensor([0, 1, 0, 2, 0, 3, 0, 4])
    out = WaveAugment(dir_prob=1.0, impulse_responses=irs, dir_device=0).train()(x, devices)
    for i in range(8):
        if devices[i] != 0:
            assert torch.equal(out[i], x[i])
            continue
        candidates = [np.convolve(x[i].double().numpy(), ir.double().numpy())[:4000] for ir in irs]
        assert any(np.allclose(out[i].numpy(), c, atol=1e-4) for c in candidates)
    full = fft_convolve(x[:1], irs[:1])
    assert full.shape[-1] == 4000 + irs.shape[1] - 1
    assert torch.equal(WaveAugment(dir_prob=1.0, impulse_responses=irs).eval()(x, devices), x)
    with pytest.raises(FileNotFoundError, match="no impulse responses"):
        load_impulse_responses(demo_root["tau22"], 44100)


def test_the_augmentation_equals_its_formula_for_its_draws_at_any_clip_length():
    """Roll, response and gain recomputed from the module's draws (in its order: shift, coin, response, gain) with
    torch.roll and a direct convolution; a second clip length checks that the responses' cached spectra follow
    the FFT length."""
    gen = torch.Generator().manual_seed(0)
    irs = torch.randn(5, 300, generator=gen) * torch.exp(-torch.arange(300) / 50)
    module = WaveAugment(roll=40, dir_prob=0.6, impulse_responses=irs, dir_device=1, gain_db=3.0).train()
    convolved = []
    for n in (1000, 1500, 1000):
        x = torch.randn(16, n, generator=gen)
        devices = torch.arange(16) % 2
        torch.manual_seed(n)
        out = module(x, devices)
        torch.manual_seed(n)
        shift = torch.randint(-40, 41, (16, 1))
        chosen = (devices == 1) & (torch.rand(16) < 0.6)
        which = torch.randint(5, (16,))
        gain = 10.0 ** ((torch.rand(16, 1) * 2 - 1) * 3.0 / 20.0)
        for i in range(16):
            row = torch.roll(x[i].double(), int(shift[i]))
            if chosen[i]:
                row = torch.from_numpy(np.convolve(row.numpy(), irs[which[i]].double().numpy())[:n])
            torch.testing.assert_close(out[i].double(), row * gain[i].double(), rtol=0, atol=1e-5)
        convolved.append(int(chosen.sum()))
    assert all(convolved) and sum(convolved) < 3 * int((devices == 1).sum())  # both sides of the coin, each length


def test_the_convolution_pads_its_ffts_to_the_next_7_smooth_length_and_stays_exact():
    def smooth(n):
        for p in (2, 3, 5, 7):
            while n % p == 0:
                n //= p
        return n == 1

    rng = np.random.default_rng(0)
    for n in [*range(1, 400), *rng.integers(400, 700_000, 300).tolist(), 55124, 463049]:
        expected = next(m for m in range(n, 2 * n + 1) if smooth(m))
        assert fast_fft_size(n) == expected, n
    assert fast_fft_size(55124) == 55125  # 1 s at 44.1 kHz and a 0.25-s response: 4 x 13781 otherwise
    x, h = torch.randn(2, 44100, dtype=torch.float64), torch.randn(2, 11025, dtype=torch.float64)
    full = fft_convolve(x, h)
    assert full.shape == (2, 55124)
    for i in range(2):
        np.testing.assert_allclose(full[i].numpy(), np.convolve(x[i].numpy(), h[i].numpy()), atol=1e-9)
    torch.testing.assert_close(full, fft_convolve(x, h, fast=False), rtol=0, atol=1e-9)


def test_mixstyle_matches_the_formula():
    x = torch.randn(5, 1, 16, 30) * 3 + 1
    torch.manual_seed(3)
    out = FreqMixStyle(p=1.0, alpha=0.4).train()(x)
    torch.manual_seed(3)  # the module's draws, in its order: coin, lam, perm
    torch.rand(())
    lam = torch.distributions.Beta(torch.full((5, 1, 1, 1), 0.4), torch.full((5, 1, 1, 1), 0.4)).sample()
    perm = torch.randperm(5).numpy()
    lam = lam.double().numpy()
    xn = x.double().numpy()
    mu = xn.mean(axis=(1, 3), keepdims=True)
    sig = np.sqrt(xn.var(axis=(1, 3), keepdims=True, ddof=1) + 1e-6)
    expected = (xn - mu) / sig * (lam * sig + (1 - lam) * sig[perm]) + lam * mu + (1 - lam) * mu[perm]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(FreqMixStyle(p=1.0).eval()(x), x)
    assert torch.equal(FreqMixStyle(p=0.0).train()(x), x)


def test_mixstyle_mixes_a_fraction_p_of_batches_and_leaves_the_rest_untouched():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 10)
    module = FreqMixStyle(p=0.4).train()
    outcomes = [module(x) for _ in range(400)]
    untouched = sum(torch.equal(o, x) for o in outcomes)
    assert 0.5 < untouched / 400 < 0.7  # 1 - p = 0.6; +/- 0.1 is > 4 standard deviations


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_corrupt_sample_is_an_error_naming_shard_and_key(packed, tmp_path, backend):
    folder = tmp_path / "tau22"
    shutil.copytree(packed["tau22"], folder)
    shard = load_manifest(folder)["splits"]["test"]["shards"][0]
    line = (folder / shard["index"]).read_text().splitlines()[2].split()
    offset, size, member = int(line[1]), int(line[2]), line[3]
    data = bytearray((folder / shard["path"]).read_bytes())
    data[offset + 64:offset + size - 64] = b"\x55" * (size - 128)
    (folder / shard["path"]).write_bytes(bytes(data))
    loader = make_loader(folder, "test", batch_size=4, training=False, backend=backend, num_workers=0)
    with pytest.raises(RuntimeError, match=rf"corrupt audio in shard .*{shard['path']}.*{member.split('.')[0]}"):
        list(loader)


def test_bad_arguments_fail_fast(packed):
    with pytest.raises(ValueError, match="split='nope': .*tau22 has splits train, test, split5"):
        make_loader(packed["tau22"], "nope", batch_size=2, training=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        make_loader(packed["tau22"], "test", batch_size=2, training=False, backend="tf")
    with pytest.raises(ValueError, match="fewer than one step"):
        make_loader(packed["tau22"], "test", batch_size=10_000, training=True)
    with pytest.raises(ValueError, match="dir_prob=0.5: .*cochlscene has no device-a clips"):
        make_loader(packed["cochlscene"], "train", batch_size=2, training=True, dir_prob=0.5, dir_folder=".")


def test_resampling_when_the_config_rate_differs_from_the_shards(packed):
    out = {}
    for backend in BACKENDS:
        batches = list(make_loader(packed["tau22"], "test", batch_size=4, training=False, backend=backend,
                                   sample_rate=32000, num_workers=1))
        assert all(b["audio"].shape == (4, 32000) for b in batches)
        out[backend] = torch.cat([b["audio"] for b in batches])
    # DALI's and torchaudio's resamplers differ in filter design, not in content
    a, b = out["dali"][:, 1000:-1000], out["torch"][:, 1000:-1000]
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert corr.min() > 0.99


@pytest.mark.parametrize("device,pinned", [("cpu", False), ("cuda", True)])
def test_the_torch_reader_pins_batches_only_for_a_run_on_the_gpu(packed, monkeypatch, device, pinned):
    """Page-locked batches serve only copies to a GPU: a CPU run on a GPU machine (the suite's runs there) must not
    pay for pinning every batch (a copy, and CUDA's host allocator), a GPU run must pin.  The machine shows a GPU
    here; what the DataLoader is asked for is checked."""
    from trainer.data import torch_loader

    pretend_gpus(monkeypatch, 1)
    monkeypatch.setattr(WaveAugment, "to", lambda self, device: self)  # the loader's augmentation stays here
    asked = []

    def loader(*args, pin_memory, **kwargs):
        asked.append(pin_memory)
        return torch.utils.data.DataLoader(*args, pin_memory=False, **kwargs)

    monkeypatch.setattr(torch_loader, "DataLoader", loader)
    built = make_loader(packed["tau22"], "test", batch_size=3, training=False, backend="torch", num_workers=0,
                        device=device)
    assert next(iter(built.reader.epoch(0)))[0].shape[0] == 3
    assert asked == [pinned]


def test_keys_survive_torchs_pin_memory_step(packed, monkeypatch):
    """In a GPU run the torch reader's DataLoader pins every batch, rebuilding each Sequence from its items;
    a CPU run skips that step, so it is applied here by hand (tensors 'pinned' in place: no CUDA to pin with)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)
    folder = packed["tau22"]
    truth = {m["key"]: m for _, m, _ in read_split(folder, "test")}
    loader = make_loader(folder, "test", batch_size=3, training=False, backend="torch", num_workers=1)
    audio, labels, keys = next(iter(loader.reader.epoch(0)))
    pinned = pin_memory((audio, labels, keys))
    assert pinned[2] == keys and len(pinned[2]) == 3
    assert [pinned[2].metadata(i) for i in range(3)] == [truth[k] for k in keys]
    # any generic rebuild from the items (the step torch took before Keys knew how to pin) keeps the metadata
    rebuilt = type(keys)([k for k in keys])
    assert rebuilt == keys and [rebuilt.metadata(i) for i in range(3)] == [truth[k] for k in keys]
    assert pin_memory({"key": keys})["key"].metadata(2) == truth[keys[2]]
