"""A corpus seeded with every bad-input case: each problem file named in rejected.csv, the rest packed."""
from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data_shards.__main__ import main
from data_shards import pack as pack_module
from data_shards.audio import decode
from data_shards.manifest import load_manifest
from data_shards.pack import PackOptions, pack
from data_shards.records import assign_keys
from data_shards.sources import SourceError, cochlscene, csv_folder, tau22

from .helpers import read_split

RATE = 44100


def _tone(seconds=1.0, rate=RATE, channels=1, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else x


def _rejections(folder):
    with open(folder / "rejected.csv") as fh:
        return {row["source"]: row["reason"] for row in csv.DictReader(fh)}


@pytest.fixture()
def bad_csv_corpus(tmp_path):
    """A bring-your-own corpus with one file for each problem, plus good files around them."""
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    good = {"a/clip.wav": "dog", "b/clip.wav": "cat", "a/café scène.v2.wav": "dog", "a/stereo.wav": "cat",
            "a/hi_rate.wav": "dog", "a/float.wav": "cat", "b/other.wav": "bird"}
    for rel in good:
        if rel == "a/stereo.wav":
            sf.write(root / rel, _tone(channels=2), RATE, subtype="PCM_16")
        elif rel == "a/hi_rate.wav":
            sf.write(root / rel, _tone(rate=48000), 48000, subtype="PCM_16")
        elif rel == "a/float.wav":
            sf.write(root / rel, _tone(), RATE, subtype="FLOAT")
        else:
            sf.write(root / rel, _tone(freq=300 + 10 * len(rel)), RATE, subtype="PCM_16")
    (root / "a/empty.wav").write_bytes(b"")
    (root / "a/text.wav").write_text("this is not audio\n" * 20)
    sf.write(root / "a/truncated.wav", _tone(), RATE, subtype="PCM_16")
    data = (root / "a/truncated.wav").read_bytes()
    (root / "a/truncated.wav").write_bytes(data[: len(data) // 2])
    sf.write(root / "a/cut.flac", _tone(), RATE, subtype="PCM_16")
    data = (root / "a/cut.flac").read_bytes()
    (root / "a/cut.flac").write_bytes(data[: len(data) // 2])
    os.symlink(root / "nowhere.wav", root / "a/dangling.wav")
    del good["b/other.wav"]  # its label is not among the classes
    rows = [(rel, label) for rel, label in good.items()] + [("b/other.wav", "bird"),
        ("a/empty.wav", "dog"), ("a/text.wav", "dog"), ("a/truncated.wav", "cat"), ("a/cut.flac", "cat"),
        ("a/dangling.wav", "dog"), ("a/missing.wav", "dog"), ("a/clip.wav", "dog"), ("b/clip.wav", "dog"),
        ("a/clip.wav", "bird")]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(root / "labels.csv", index=False)
    return root, good


EXPECTED_REASONS = {
    "a/empty.wav": "empty file",
    "a/text.wav": "not decodable audio",
    "a/truncated.wav": "truncated WAV",
    "a/cut.flac": "not decodable audio",
    "a/dangling.wav": "dangling symbolic link",
    "a/missing.wav": "missing on disk",
    "b/clip.wav": "listed again with label 'dog'",
    "a/clip.wav": "listed again with label 'bird'",
    "b/other.wav": "unknown label 'bird'",
}


def test_bad_csv_corpus_rejects_each_problem_and_packs_the_rest(bad_csv_corpus, tmp_path, capsys):
    root, good = bad_csv_corpus
    out = tmp_path / "out"
    code = main(["pack", "csv", "--root", str(root), "--csv", "labels.csv", "--out", str(out), "--name", "mine",
                 "--classes", "cat,dog", "--workers", "1"])
    assert code == 0
    assert "rejected 10" in capsys.readouterr().out
    folder = out / "mine"
    rejected = pd.read_csv(folder / "rejected.csv")
    assert len(rejected) == 10
    reasons = _rejections(folder)
    for source, reason in EXPECTED_REASONS.items():
        assert reason in " | ".join(rejected.reason[rejected.source == source]), (source, reasons)
    assert "listed more than once" in " | ".join(rejected.reason[rejected.source == "a/clip.wav"])
    samples = {m["source"]: (key, m, audio) for key, m, audio in read_split(folder, "train")}
    assert set(samples) == set(good)
    assert all(m["label"] == good[src] for src, (_, m, _) in samples.items())
    keys = [key for key, _, _ in samples.values()]
    assert len(set(keys)) == len(keys) and all("." not in k and " " not in k and k.isascii() for k in keys)
    assert samples["a/clip.wav"][0] != samples["b/clip.wav"][0]
    stereo_key, stereo, audio = samples["a/stereo.wav"]
    assert stereo["conversions"] == ["downmixed 2->1 channels"] and stereo["original_channels"] == 2
    source, _ = sf.read(root / "a/stereo.wav", dtype="float64")
    np.testing.assert_allclose(decode(audio, "flac")[0], source.mean(axis=1), atol=1 / 32768)
    resampled = samples["a/hi_rate.wav"][1]
    assert resampled["conversions"] == ["resampled 48000->44100 Hz"]
    assert resampled["original_sample_rate"] == 48000 and resampled["num_samples"] == RATE
    assert samples["a/float.wav"][1]["bits"] == 24
    assert load_manifest(folder)["conversions"] == {"downmixed": 1, "quantised": 1, "resampled": 1}


def test_strict_exits_non_zero_when_anything_was_rejected(bad_csv_corpus, tmp_path):
    root, _ = bad_csv_corpus
    args = ["pack", "csv", "--root", str(root), "--csv", "labels.csv", "--out", str(tmp_path), "--workers", "1"]
    assert main(args + ["--strict"]) == 3
    assert (tmp_path / "csv" / "manifest.json").is_file()  # the good files are still packed


def test_cochlscene_tree_with_bad_files(demo_root, tmp_path):
    root = tmp_path / "CochlScene"
    shutil.copytree(demo_root["cochlscene"], root)
    (root / "Train/Library").mkdir()
    sf.write(root / "Train/Library/Library_user9_0_0.wav", _tone(), RATE, subtype="PCM_16")
    (root / "Train/Bus/notes.txt").write_text("recorded on a bus")
    (root / "Train/stray.wav").write_bytes((root / "Train/Library/Library_user9_0_0.wav").read_bytes())
    sf.write(root / "Val/Park/Park_user 7_ü_0.wav", _tone(), RATE, subtype="PCM_16")
    os.symlink(root / "gone.wav", root / "Test/Car/Car_user8_0_0.wav")
    folder = pack(cochlscene.scan(root), PackOptions(out=tmp_path / "out", workers=1)).folder
    reasons = _rejections(folder)
    assert reasons["Train/Library/Library_user9_0_0.wav"].startswith("unknown label 'Library'")
    assert reasons["Train/Bus/notes.txt"].startswith("not an audio file")
    assert reasons["Train/stray.wav"] == "not directly inside a <Scene>/ folder"
    assert reasons["Test/Car/Car_user8_0_0.wav"] == "unreadable: dangling symbolic link"
    assert len(reasons) == 4
    odd = [m for _, m, _ in read_split(folder, "val") if m["source"] == "Val/Park/Park_user 7_ü_0.wav"]
    assert len(odd) == 1 and odd[0]["key"].startswith("Park_user_7_u_0-") and odd[0]["identifier"] == "user 7_ü"


def test_tau_lists_that_disagree_with_meta(demo_root, tmp_path):
    root = tmp_path / "tau"
    shutil.copytree(demo_root["tau22"], root)
    train = pd.read_csv(root / "evaluation_setup/fold1_train.csv", sep="\t")
    meta = pd.read_csv(root / "meta.csv", sep="\t")
    extra = pd.DataFrame([["audio/ghost-paris-1-1-0-a.wav", "airport"], [train.filename[0], "tram"]],
                         columns=["filename", "scene_label"])
    if train.scene_label[0] == "tram":
        extra.loc[1, "scene_label"] = "bus"
    pd.concat([train, extra]).to_csv(root / "evaluation_setup/fold1_train.csv", sep="\t", index=False)
    (root / train.filename[1]).unlink()
    moved = meta.copy()
    moved.loc[moved.filename == train.filename[2], "source_label"] = "zz"
    moved.to_csv(root / "meta.csv", sep="\t", index=False)
    scan = tau22.scan(root, ["train"])
    reasons = {(r.source, r.reason.split(" ")[0]) for r in scan.rejected}
    assert ("audio/ghost-paris-1-1-0-a.wav", "listed") in reasons
    assert any(r.source == train.filename[0] and "meta.csv says" in r.reason for r in scan.rejected)
    assert any(r.source == train.filename[1] and "missing on disk" in r.reason for r in scan.rejected)
    assert any(r.source == train.filename[2] and "unknown device 'zz'" in r.reason for r in scan.rejected)
    assert len(scan.splits["train"]) == len(train) - 2  # the doubly listed file keeps its first listing


def test_whole_dataset_errors_name_the_problem(tmp_path, demo_root):
    with pytest.raises(SourceError, match="meta.csv not found"):
        tau22.scan(tmp_path)
    with pytest.raises(SourceError, match="no Train/, Val/ or Test/"):
        cochlscene.scan(tmp_path)
    with pytest.raises(SourceError, match="--splits names nope"):
        cochlscene.scan(demo_root["cochlscene"], ["train", "nope"])
    (tmp_path / "l.csv").write_text("file,label\nx.wav,a\n")
    with pytest.raises(SourceError, match="no column 'path' \\(--path-column\\)"):
        csv_folder.scan(tmp_path, "l.csv")
    assert main(["info", str(tmp_path)]) == 2


def test_keys_are_unique_dot_free_and_stable():
    sources = ["a/clip.wav", "b/clip.wav", "x/my clip.v2.wav", "x/my_clip_v2.wav", "y/é.wav", "z/plain-1_ok.flac"]
    keys = assign_keys(sources)
    assert keys["z/plain-1_ok.flac"] == "plain-1_ok"
    assert len(set(keys.values())) == len(sources)
    assert all(k.replace("-", "").replace("_", "").isalnum() and k.isascii() for k in keys.values())
    assert keys["x/my clip.v2.wav"].startswith("my_clip_v2-") and keys["y/é.wav"].startswith("e-")
    assert assign_keys(reversed(sources)) == keys


def test_interrupted_pack_leaves_nothing_that_looks_complete(demo_root, tmp_path, monkeypatch):
    scan = tau22.scan(demo_root["tau22"], ["test"])
    done = pack(scan, PackOptions(out=tmp_path, seed=1)).folder
    before = (done / "manifest.json").read_bytes()
    calls = {"n": 0}
    real = pack_module.encode_job

    def dying(job):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr("data_shards.pack.encode_job", dying)
    with pytest.raises(KeyboardInterrupt):
        pack(scan, PackOptions(out=tmp_path, seed=2, overwrite=True))
    assert (done / "manifest.json").read_bytes() == before, "the previous complete pack must survive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tau22"], "no partial folder may remain"
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        pack(scan, PackOptions(out=tmp_path, name="fresh", seed=2))
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        pack(scan, PackOptions(out=tmp_path, seed=2))
    (tmp_path / ".stale.partial").mkdir()
    (tmp_path / ".stale.partial" / "shard-000000.tar").write_bytes(b"half")
    monkeypatch.setattr("data_shards.pack.encode_job", real)
    assert pack(scan, PackOptions(out=tmp_path, name="stale")).folder == tmp_path / "stale"
    assert not (tmp_path / ".stale.partial").exists()
