"""`verify`: check a packed dataset against its manifest, down to decoding every sample.

Per shard: presence, size and SHA-256; the DALI index against one rebuilt from the tar's headers;
every sample has audio and JSON; every clip decodes to the length, rate and label its JSON states.
Per split: sample, class and device counts against the manifest; keys unique.  Shards are checked
in parallel worker processes.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import tarfile
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .audio import decode
from .manifest import REJECTED, load_manifest
from .shards import index_from_tar, iter_samples, read_labels_member


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_shard(job: tuple[Path, dict, dict, str]) -> tuple[list[str], list[str], Counter, Counter]:
    """Problems, keys, class counts and device counts of one shard."""
    folder, shard, manifest, split = job
    problems, keys, classes, devices = [], [], Counter(), Counter()
    tar_path, idx_path = folder / shard["path"], folder / shard["index"]
    where = shard["path"]
    if not tar_path.is_file():
        return [f"{where}: missing"], keys, classes, devices
    if tar_path.stat().st_size != shard["bytes"]:
        problems.append(f"{where}: {tar_path.stat().st_size} bytes, manifest says {shard['bytes']}")
    if _sha256(tar_path) != shard["sha256"]:
        problems.append(f"{where}: SHA-256 differs from the manifest (corrupted or modified)")
    try:
        rebuilt = index_from_tar(tar_path)
    except (tarfile.TarError, ValueError) as exc:
        return problems + [f"{where}: not a readable tar ({exc})"], keys, classes, devices
    if not idx_path.is_file():
        problems.append(f"{shard['index']}: missing DALI index")
    elif idx_path.read_text() != rebuilt:
        problems.append(f"{shard['index']}: does not match the tar's contents (re-pack, or rebuild with wds2idx)")
    ext = manifest["audio_extension"]
    try:
        samples = list(iter_samples(tar_path))
    except (tarfile.TarError, OSError) as exc:
        return problems + [f"{where}: read failed ({exc})"], keys, classes, devices
    for key, members in samples:
        keys.append(key)
        here = f"{where}:{key}"
        labels_ext = manifest["labels_extension"]
        if not {ext, "json", labels_ext} <= set(members):
            problems.append(f"{here}: has {sorted(members)}, needs {ext}, json and {labels_ext}")
            continue
        try:
            meta = json.loads(members["json"])
            audio, rate = decode(members[ext], manifest["audio_format"])
            numeric = read_labels_member(members[labels_ext])
        except Exception as exc:  # any decoder failure is a finding, not a crash of verify
            problems.append(f"{here}: cannot decode ({exc})")
            continue
        if numeric != (meta.get("label_index"), meta.get("device_index")):
            problems.append(f"{here}: .{labels_ext} says (label_index, device_index) = {numeric}, JSON says "
                            f"({meta.get('label_index')}, {meta.get('device_index')})")
        if rate not in (None, manifest["sample_rate"]):
            problems.append(f"{here}: sample rate {rate}, manifest says {manifest['sample_rate']}")
        if len(audio) != meta.get("num_samples"):
            problems.append(f"{here}: {len(audio)} samples decoded, JSON says {meta.get('num_samples')}")
        label = meta.get("label")
        if label not in manifest["classes"] or manifest["classes"].index(label) != meta.get("label_index"):
            problems.append(f"{here}: label {label!r} / label_index {meta.get('label_index')} "
                            "disagree with the manifest's classes")
        if meta.get("split") != split:
            problems.append(f"{here}: JSON says split {meta.get('split')!r}, shard is in {split!r}")
        classes[label] += 1
        devices[meta.get("device") or "unknown"] += 1
    if len(samples) != shard["num_samples"]:
        problems.append(f"{where}: {len(samples)} samples, manifest says {shard['num_samples']}")
    return problems, keys, classes, devices


def verify(folder: Path, workers: int = 1, progress: bool = False) -> tuple[list[str], int]:
    """All problems found (empty when the dataset is sound) and the number of samples checked."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    problems = [] if (folder / REJECTED).is_file() else [f"{REJECTED}: missing"]
    jobs = [(folder, shard, manifest, split)
            for split, info in manifest["splits"].items() for shard in info["shards"]]
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = list(tqdm((pool.imap if pool else map)(_check_shard, jobs), total=len(jobs), unit="shard",
                            desc="verify", disable=not progress))
    finally:
        if pool:
            pool.terminate()
    checked = 0
    per_split: dict[str, tuple[list[str], Counter, Counter]] = {}
    for (_, _, _, split), (found, keys, classes, devices) in zip(jobs, results):
        problems += found
        checked += len(keys)
        all_keys, all_classes, all_devices = per_split.setdefault(split, ([], Counter(), Counter()))
        all_keys += keys
        all_classes.update(classes)
        all_devices.update(devices)
    for split, info in manifest["splits"].items():
        keys, classes, devices = per_split.get(split, ([], Counter(), Counter()))
        if len(keys) != info["num_samples"]:
            problems.append(f"split {split}: {len(keys)} samples in shards, manifest says {info['num_samples']}")
        dups = [k for k, n in Counter(keys).items() if n > 1]
        if dups:
            problems.append(f"split {split}: duplicate keys {', '.join(sorted(dups)[:5])}")
        if "class_counts" in info and {c: n for c, n in info["class_counts"].items() if n} != dict(classes):
            problems.append(f"split {split}: class counts differ from the manifest")
        if "device_counts" in info and info["device_counts"] != dict(devices):
            problems.append(f"split {split}: device counts differ from the manifest")
    return problems, checked
