"""Pack a scanned dataset into shards: shuffle, encode in worker processes, write, then publish.

Everything is written into `<out>/.<name>.partial/` and renamed to `<out>/<name>/` only after the
manifest is complete, so an interrupted pack never leaves a folder that looks finished.  Workers
encode clips in parallel but results are written in a fixed order, so the same sources, options and
seed give byte-identical shards whatever the number of workers.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import PACKER_VERSION
from .audio import FORMATS, Encoded, encode_job
from .atomic import write_atomic
from .manifest import MANIFEST, REJECTED
from .records import Rejection, Scan, SourceFile, assign_keys, hold_out
from .shards import LABELS_EXTENSION, ShardSink, labels_member, sample_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackOptions:
    """How to pack; every field is a command-line option of `python -m data_shards pack`."""

    out: Path  # parent folder; the dataset goes to <out>/<name>/
    name: str | None = None  # dataset folder name (default: the source's name)
    sample_rate: int | None = None  # target rate in Hz (default: the dataset's native rate)
    audio_format: str = "flac"  # flac | wav | pcm16
    shard_bytes: int = 256 * 2**20  # start a new shard once a shard reaches this size
    shard_samples: int | None = None  # ... or this many samples
    workers: int = 1  # encoding processes (1: encode in the main process)
    seed: int = 0  # shuffle seed
    overwrite: bool = False  # replace an existing packed dataset
    val_fraction: float | None = None  # hold out this fraction of train's recordings as split 'val'
    keep_lists_whole: bool = False  # held-out recordings leave 'train' only; the other lists stay as published


@dataclass
class PackResult:
    folder: Path
    manifest: dict
    rejected: list[Rejection]


def _shuffled(files: list[SourceFile], seed: int, split: str) -> list[SourceFile]:
    """A permutation that depends only on the file set, the seed and the split name."""
    ordered = sorted(files, key=lambda f: f.source)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    return [ordered[i] for i in rng.permutation(len(ordered))]


def _metadata(src: SourceFile, key: str, enc: Encoded, scan: Scan) -> dict:
    return {
        "key": key,
        "label": src.label,
        "label_index": scan.classes.index(src.label),
        "split": src.split,
        "source": src.source,
        "identifier": src.identifier,
        "device": src.device,
        "device_index": scan.devices.index(src.device) if src.device in scan.devices else -1,
        "city": src.city,
        "sample_rate": enc.sample_rate,
        "num_samples": enc.num_samples,
        "duration": round(enc.duration, 6),
        "bits": enc.bits,
        "original_sample_rate": enc.original_sample_rate,
        "original_channels": enc.original_channels,
        "conversions": enc.conversions,
    }


def _prepare(folder: Path, partial: Path, overwrite: bool) -> None:
    if (folder / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds a packed dataset; pass --overwrite to replace it")
    if folder.exists() and not (folder / MANIFEST).exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not a packed dataset; choose another --out/--name "
                              "or pass --overwrite to replace it")
    if partial.exists():
        log.info("removing %s left by an interrupted pack", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)


def _publish(partial: Path, folder: Path) -> None:
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    partial.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _rejected_csv(rejected: list[Rejection]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["split", "source", "reason"])
    writer.writerows((r.split, r.source, r.reason) for r in rejected)
    return buf.getvalue().encode("utf-8")


def pack(scan: Scan, options: PackOptions) -> PackResult:
    """Pack every split of `scan`; returns the published folder, its manifest and all rejections."""
    if options.audio_format not in FORMATS:
        raise ValueError(f"audio format {options.audio_format!r} is not one of {', '.join(FORMATS)}")
    if options.val_fraction:
        scan = hold_out(scan, options.val_fraction, options.seed, keep_lists_whole=options.keep_lists_whole)
    name = options.name or scan.dataset
    folder = Path(options.out) / name
    partial = Path(options.out) / f".{name}.partial"
    _prepare(folder, partial, options.overwrite)
    sample_rate = options.sample_rate or scan.sample_rate
    keys = assign_keys(f.source for files in scan.splits.values() for f in files)
    rejected = list(scan.rejected)
    conversions: Counter[str] = Counter()
    durations: list[float] = []
    splits = {}
    pool = (multiprocessing.get_context("spawn").Pool(options.workers) if options.workers > 1 else None)
    try:
        with logging_redirect_tqdm(), tqdm(total=scan.num_files(), unit="clip", desc=f"pack {name}",
                                           disable=None) as bar:
            for split, files in scan.splits.items():
                order = _shuffled(files, options.seed, split)
                jobs = [(f.path, sample_rate, options.audio_format) for f in order]
                results = pool.imap(encode_job, jobs, chunksize=4) if pool else map(encode_job, jobs)
                sink = ShardSink(partial / split, split, max_bytes=options.shard_bytes,
                                 max_samples=options.shard_samples)
                seconds = 0.0
                classes: Counter[str] = Counter()
                devices: Counter[str] = Counter()
                for src, result in zip(order, results):
                    bar.update(1)
                    if isinstance(result, str):
                        rejected.append(Rejection(split, src.source, result))
                        log.warning("rejected %s (%s): %s", src.source, split, result)
                        continue
                    key = keys[src.source]
                    meta = _metadata(src, key, result, scan)
                    sink.write(key, {FORMATS[options.audio_format]: result.data, "json": sample_json(meta),
                                     LABELS_EXTENSION: labels_member(meta["label_index"], meta["device_index"])})
                    conversions.update(c.split(" ")[0] for c in result.conversions)
                    seconds += result.duration
                    classes[src.label] += 1
                    devices[src.device or "unknown"] += 1
                    durations.append(result.duration)
                shards = sink.close()
                splits[split] = {
                    "num_samples": sum(s.num_samples for s in shards),
                    "seconds": round(seconds, 3),
                    "class_counts": {c: classes[c] for c in scan.classes},
                    "device_counts": dict(sorted(devices.items())),
                    "val_removed": scan.val_removed.get(split, 0),
                    "val_overlap": scan.val_overlap.get(split, 0),
                    "shards": [asdict(s) for s in shards],
                }
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # an interrupted pack leaves nothing behind
        raise
    finally:
        if pool:
            pool.terminate()
    manifest = {
        "packer_version": PACKER_VERSION,
        "dataset": name,
        "source": scan.dataset,
        "classes": scan.classes,
        "devices": scan.devices,
        "sample_rate": sample_rate,
        "clip_seconds": _typical(durations),
        "audio_format": options.audio_format,
        "audio_extension": FORMATS[options.audio_format],
        "labels_extension": LABELS_EXTENSION,
        "splits": splits,
        "num_rejected": len(rejected),
        "conversions": dict(sorted(conversions.items())),
        "options": {"seed": options.seed, "shard_bytes": options.shard_bytes, "shard_samples": options.shard_samples,
                    "val_fraction": options.val_fraction, "keep_lists_whole": options.keep_lists_whole},
    }
    write_atomic(partial / REJECTED, _rejected_csv(rejected))
    write_atomic(partial / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    _publish(partial, folder)
    return PackResult(folder, manifest, rejected)


def _typical(durations: list[float]) -> float | None:
    """The clip length most clips have (the loader's default crop length)."""
    if not durations:
        return None
    return round(statistics.mode(round(d, 3) for d in durations), 3)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))
