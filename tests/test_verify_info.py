"""`verify` finds corruption; `info` summarises; the CLI's exit codes."""
from __future__ import annotations

import json
import shutil
import struct

import pytest

from data_shards.__main__ import main
from data_shards.manifest import ManifestError, load_manifest
from data_shards.verify import verify


@pytest.fixture()
def copy(packed, tmp_path):
    folder = tmp_path / "tau22"
    shutil.copytree(packed["tau22"], folder)
    return folder


def test_verify_passes_on_a_clean_pack(packed):
    for folder in packed.values():
        problems, checked = verify(folder, workers=2)
        assert problems == []
        assert checked == sum(s["num_samples"] for s in load_manifest(folder)["splits"].values())


def test_verify_catches_a_flipped_byte_in_audio(copy):
    shard = load_manifest(copy)["splits"]["test"]["shards"][1]
    path = copy / shard["path"]
    data = bytearray(path.read_bytes())
    line = (copy / shard["index"]).read_text().splitlines()[2]  # second sample
    ext, offset, size = line.split()[:3]
    data[int(offset) + int(size) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems, _ = verify(copy)
    assert any(shard["path"] in p and "SHA-256" in p for p in problems)
    assert main(["verify", str(copy), "--workers", "1"]) == 1


def test_verify_catches_a_stale_index_and_a_missing_shard(copy):
    manifest = load_manifest(copy)
    idx = copy / manifest["splits"]["test"]["shards"][0]["index"]
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([lines[0]] + lines[2:] + [lines[1]]) + "\n")
    (copy / manifest["splits"]["split5"]["shards"][0]["path"]).unlink()
    problems, _ = verify(copy)
    assert any("does not match the tar" in p for p in problems)
    assert any(p.endswith(": missing") for p in problems)
    assert any(p.startswith("split split5:") and "manifest says" in p for p in problems)


def test_verify_catches_numeric_labels_that_disagree_with_the_json(copy):
    shard = load_manifest(copy)["splits"]["test"]["shards"][0]
    line = (copy / shard["index"]).read_text().splitlines()[1].split()
    members = {line[i]: (int(line[i + 1]), int(line[i + 2])) for i in range(0, len(line), 4)}
    offset, size = members["labels"]
    path = copy / shard["path"]
    data = bytearray(path.read_bytes())
    label, device = struct.unpack("<2i", data[offset:offset + size])
    data[offset:offset + size] = struct.pack("<2i", label + 1, device)
    path.write_bytes(bytes(data))
    problems, _ = verify(copy)
    assert any(".labels says (label_index, device_index) = " f"({label + 1}, {device}), JSON says ({label}, {device})" in p
               for p in problems), problems


def test_shards_of_an_older_packer_are_refused_with_what_to_do(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["labels_extension"]
    manifest["packer_version"] = "1.0.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"labels_extension \(packed by data_shards 1.0.0\); re-pack"):
        load_manifest(copy)


def test_verify_catches_a_manifest_that_lies(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    counts = manifest["splits"]["test"]["class_counts"]
    first = next(iter(counts))
    counts[first] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems, _ = verify(copy)
    assert problems == ["split test: class counts differ from the manifest"]


def test_info_prints_class_split_table_devices_and_hours(packed, capsys):
    assert main(["info", str(packed["tau22"])]) == 0
    out = capsys.readouterr().out
    manifest = load_manifest(packed["tau22"])
    assert "| class" in out and "| device" in out and "hours" in out
    for name in manifest["classes"] + manifest["devices"] + list(manifest["splits"]):
        assert name in out
    hours = manifest["splits"]["train"]["seconds"] / 3600
    assert f"{hours:.3f}" in out


def test_pack_refuses_an_existing_dataset_without_overwrite(packed, demo_root, capsys):
    out = packed["cochlscene"].parent
    before = (packed["cochlscene"] / "manifest.json").read_bytes()
    code = main(["pack", "cochlscene", "--root", str(demo_root["cochlscene"]), "--out", str(out), "--workers", "1"])
    assert code == 2
    assert "already holds a packed dataset; pass --overwrite" in capsys.readouterr().err
    assert (packed["cochlscene"] / "manifest.json").read_bytes() == before


def test_a_wrong_root_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["pack", "tau22", "--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "meta.csv not found" in capsys.readouterr().err
