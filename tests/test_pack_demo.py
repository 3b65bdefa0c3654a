"""Packing the demo corpora: every source file in exactly one shard of its split, exact audio, exact metadata."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from data_shards.audio import decode
from data_shards.manifest import load_manifest
from data_shards.pack import PackOptions, pack
from data_shards.shards import index_from_tar
from data_shards.sources import cochlscene, tau22
from data_shards.sources.tau22 import device_of

from .helpers import TINY, read_split


def test_demo_corpus_has_the_real_layouts(demo_root):
    coch = demo_root["cochlscene"]
    for folder, count in (("Train", TINY.cochl_train), ("Val", TINY.cochl_val), ("Test", TINY.cochl_test)):
        assert sorted(p.name for p in (coch / folder).iterdir()) == sorted(cochlscene.CLASSES)
        wavs = sorted((coch / folder / "Bus").glob("*.wav"))
        assert len(wavs) == count
        info = sf.info(str(wavs[0]))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (44100, 1, "PCM_16", 441000)
        assert wavs[0].name.startswith("Bus_user")
    tau = demo_root["tau22"]
    meta = pd.read_csv(tau / "meta.csv", sep="\t")
    assert list(meta.columns) == ["filename", "scene_label", "identifier", "source_label"]
    info = sf.info(str(tau / meta.filename[0]))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (44100, 1, "PCM_24", 44100)
    assert all(device_of(f) == d for f, d in zip(meta.filename, meta.source_label))
    train = pd.read_csv(tau / "evaluation_setup/fold1_train.csv", sep="\t")
    test = pd.read_csv(tau / "evaluation_setup/fold1_evaluate.csv", sep="\t")
    devices = meta.set_index("filename").source_label
    assert not set(devices[train.filename]) & {"s4", "s5", "s6"}
    assert {"s4", "s5", "s6"} & set(devices[test.filename])
    ids = meta.set_index("filename").identifier
    assert not set(ids[train.filename]) & set(ids[test.filename]), "a location straddles train and test"
    nested = [set(pd.read_csv(tau / f"split_setup/split{p}.csv", sep="\t").filename) for p in (5, 10, 25, 50, 100)]
    assert all(a <= b for a, b in zip(nested, nested[1:])) and nested[-1] == set(train.filename)


def test_every_source_file_lands_once_in_its_split(packed, demo_root):
    tau = demo_root["tau22"]
    meta = pd.read_csv(tau / "meta.csv", sep="\t").set_index("filename")
    lists = {"train": "evaluation_setup/fold1_train.csv", "test": "evaluation_setup/fold1_evaluate.csv",
             **{f"split{p}": f"split_setup/split{p}.csv" for p in (5, 10, 25, 50, 100)}}
    manifest = load_manifest(packed["tau22"])
    assert list(manifest["splits"]) == list(lists)
    for split, rel in lists.items():
        samples = read_split(packed["tau22"], split)
        sources = [m["source"] for _, m, _ in samples]
        expected = pd.read_csv(tau / rel, sep="\t").filename.tolist()
        assert sorted(sources) == sorted(expected)
        assert len(set(k for k, _, _ in samples)) == len(samples) == manifest["splits"][split]["num_samples"]
        for key, m, _ in samples:
            row = meta.loc[m["source"]]
            assert (m["label"], m["device"], m["identifier"]) == (row.scene_label, row.source_label, row.identifier)
            assert m["city"] == row.identifier.split("-")[0]
            assert manifest["classes"][m["label_index"]] == m["label"]
            assert manifest["devices"][m["device_index"]] == m["device"]
            assert m["split"] == split and m["key"] == key and "." not in key
    coch = demo_root["cochlscene"]
    for split, folder in cochlscene.SPLIT_FOLDERS.items():
        samples = read_split(packed["cochlscene"], split)
        expected = {p.relative_to(coch).as_posix(): p.parent.name for p in (coch / folder).rglob("*.wav")}
        assert {m["source"]: m["label"] for _, m, _ in samples} == expected
        assert len(samples) == len(expected)


def test_shards_are_shuffled_and_split_by_size(packed):
    manifest = load_manifest(packed["tau22"])
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 1 and all(s["num_samples"] <= 7 for s in shards)
    labels = [m["label_index"] for _, m, _ in read_split(packed["tau22"], "train")]
    assert labels != sorted(labels), "samples must be shuffled across shards at pack time"


def test_decoded_audio_equals_source_bit_for_bit(packed, demo_root):
    for dataset, bits in (("tau22", 24), ("cochlscene", 16)):
        for _, meta, audio in read_split(packed[dataset], "test")[:6]:
            decoded, rate = decode(audio, "flac")
            source, source_rate = sf.read(demo_root[dataset] / meta["source"], dtype="float32")
            assert rate == source_rate == 44100 and meta["bits"] == bits
            np.testing.assert_array_equal(decoded, source)


def test_index_files_match_dali_wds2idx(packed, tmp_path):
    shard = packed["tau22"] / load_manifest(packed["tau22"])["splits"]["test"]["shards"][0]["path"]
    reference = tmp_path / "ref.idx"
    subprocess.run([sys.executable, "-c", "import sys, wds2idx; sys.argv = ['wds2idx'] + sys.argv[1:]; wds2idx.main()",
                    str(shard), str(reference)], check=True, capture_output=True)
    assert shard.with_suffix(".idx").read_text() == reference.read_text() == index_from_tar(shard)


def test_dali_reads_the_shards_through_the_index_files(packed):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    folder = packed["tau22"]
    manifest = load_manifest(folder)
    shards = manifest["splits"]["test"]["shards"]
    expected = {m["key"]: (m, audio) for _, m, audio in read_split(folder, "test")}

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def reader():
        audio, meta = fn.readers.webdataset(
            paths=[str(folder / s["path"]) for s in shards], index_paths=[str(folder / s["index"]) for s in shards],
            ext=["flac", "json"], missing_component_behavior="error", pad_last_batch=True, name="reader")
        decoded, rate = fn.decoders.audio(audio, dtype=types.FLOAT, downmix=True)
        return decoded, rate, meta

    pipe = reader()
    pipe.build()
    n = pipe.reader_meta("reader")["epoch_size"]
    assert n == len(expected)
    seen = {}
    for _ in range(-(-n // 4)):
        decoded, rates, metas = pipe.run()
        for i in range(len(metas)):
            meta = json.loads(bytes(np.array(metas.at(i))))
            seen.setdefault(meta["key"], (np.array(decoded.at(i)), float(np.array(rates.at(i)))))
    assert set(seen) == set(expected)
    for key, (wave, rate) in seen.items():
        reference, _ = decode(expected[key][1], "flac")
        assert rate == 44100
        np.testing.assert_allclose(wave, reference, atol=1e-6)


def test_packing_twice_gives_byte_identical_shards(demo_root, tmp_path):
    scan = tau22.scan(demo_root["tau22"], ["test", "split5"])
    a = pack(scan, PackOptions(out=tmp_path / "a", shard_samples=5, workers=1, seed=11)).folder
    b = pack(scan, PackOptions(out=tmp_path / "b", shard_samples=5, workers=2, seed=11)).folder
    c = pack(scan, PackOptions(out=tmp_path / "c", shard_samples=5, workers=1, seed=12)).folder
    digest = lambda folder: {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                             for p in sorted(folder.rglob("*")) if p.is_file()}
    assert digest(a) == digest(b)
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    assert digest(a) != digest(c), "another seed must give another order"
    assert sorted(m["key"] for _, m, _ in read_split(a, "test")) == sorted(m["key"] for _, m, _ in read_split(c, "test"))


@pytest.mark.parametrize("audio_format", ["wav", "pcm16"])
def test_other_formats_and_resampling(demo_root, tmp_path, audio_format):
    scan = tau22.scan(demo_root["tau22"], ["test"])
    folder = pack(scan, PackOptions(out=tmp_path, audio_format=audio_format, sample_rate=32000, seed=1)).folder
    manifest = load_manifest(folder)
    assert manifest["sample_rate"] == 32000 and manifest["audio_format"] == audio_format
    assert manifest["conversions"]["resampled"] == manifest["splits"]["test"]["num_samples"]
    assert manifest["clip_seconds"] == 1.0
    for _, meta, audio in read_split(folder, "test")[:3]:
        decoded, rate = decode(audio, audio_format)
        assert len(decoded) == meta["num_samples"] == 32000 and rate in (None, 32000)
        assert "resampled 44100->32000 Hz" in meta["conversions"]
        assert meta["bits"] == (16 if audio_format == "pcm16" else 24)
        source, _ = sf.read(demo_root["tau22"] / meta["source"], dtype="float64")
        expected = AF.resample(torch.from_numpy(source), 44100, 32000).numpy()
        tolerance = 1 / 32768 if audio_format == "pcm16" else 1 / 2**23
        np.testing.assert_allclose(decoded, expected, atol=tolerance)


def test_validation_hold_out_is_disjoint_by_recording(trainable, packed):
    """--val-fraction: whole recordings (identifiers) per class leave train and the low-resource lists."""
    held = {s: read_split(trainable / "tau22", s) for s in ("train", "val", "test", "split5", "split100")}
    ids = {s: {m["identifier"] for _, m, _ in rows} for s, rows in held.items()}
    assert ids["val"] and not ids["val"] & (ids["train"] | ids["split5"] | ids["split100"] | ids["test"])
    assert {m["label"] for _, m, _ in held["val"]} == set(load_manifest(trainable / "tau22")["classes"])
    assert all(m["split"] == "val" for _, m, _ in held["val"])
    original = {s: {k for k, _, _ in read_split(packed["tau22"], s)} for s in ("train", "test")}
    assert {k for k, _, _ in held["test"]} == original["test"]  # test untouched
    assert {k for k, _, _ in held["train"]} | {k for k, _, _ in held["val"]} == original["train"]
    assert load_manifest(trainable / "tau22")["options"]["val_fraction"] == 0.5
