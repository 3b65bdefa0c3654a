"""A throughput corpus made in seconds: 44.1 kHz 16-bit WAV clips written in parallel, packed by the real packer.

Two sets, in the layouts the stages train on: `short` (1-s clips, 10 classes, TAU devices, so the device
impulse responses apply) and `long` (10-s clips, 13 classes).  The audio is pink noise plus a class tone at
about -20 dBFS: content does not matter for speed, but FLAC must work as hard as on recorded audio, which
white noise would overstate and silence understate.  Each set is packed twice, as FLAC and as raw pcm16,
through `data_shards.pack` (the same code users pack with), and the WAV files stay for the reference stack,
which reads WAV files in DataLoader workers.
"""
from __future__ import annotations

import csv
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
DEVICES = ["a", "b", "c", "s1", "s2", "s3"]


@dataclass(frozen=True)
class SetSpec:
    name: str  # shard dataset name prefix: <name>_flac, <name>_pcm16
    count: int  # clips in all splits
    seconds: float
    classes: int
    held_out: int  # clips in each of val and test
    devices: bool  # TAU-style device labels (device "a" gets impulse responses in training)


def sizes(tiny: bool) -> list[SetSpec]:
    if tiny:
        return [SetSpec("short", 96, 1.0, 10, 16, True), SetSpec("long", 24, 10.0, 13, 4, False)]
    return [SetSpec("short", 16384, 1.0, 10, 256, True), SetSpec("long", 2048, 10.0, 13, 64, False)]


_NOISE: np.ndarray | None = None  # per worker process: 30 s of pink noise that clips are cut from
_TONES: dict[int, np.ndarray] = {}


def _clip(index: int, samples: int, label: int) -> np.ndarray:
    """Pink noise from a random offset of a shared buffer (a fresh FFT per clip would dominate the time)."""
    global _NOISE
    if _NOISE is None:
        n = 30 * RATE
        spectrum = np.fft.rfft(np.random.default_rng(0).standard_normal(n))
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))  # 1/f power: pink
        _NOISE = np.fft.irfft(spectrum, n)
        _NOISE *= 0.1 / _NOISE.std()
    if label not in _TONES:
        _TONES[label] = 0.02 * np.sin(2 * np.pi * (200.0 + 150.0 * label) * np.arange(10 * RATE) / RATE)
    rng = np.random.default_rng(index)
    start = int(rng.integers(0, len(_NOISE) - samples))
    wave = _NOISE[start:start + samples] * rng.uniform(0.5, 1.5) + _TONES[label][:samples]
    return np.clip(wave, -1.0, 1.0 - 2**-15)


def _write(job: tuple[str, int, int, int]) -> None:
    path, index, samples, label = job
    sf.write(path, _clip(index, samples, label), RATE, subtype="PCM_16")


def _rows(spec: SetSpec, folder: Path) -> list[dict]:
    rows = []
    for i in range(spec.count):
        split = "val" if i < spec.held_out else "test" if i < 2 * spec.held_out else "train"
        row = {"path": f"{spec.name}/{spec.name}_{i:06d}.wav", "label": f"class{i % spec.classes:02d}", "split": split}
        if spec.devices:
            row["device"] = DEVICES[i % len(DEVICES)]
        rows.append(row)
    return rows


def _impulse_responses(folder: Path, count: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        n = int(0.25 * RATE)
        ir = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.03 * RATE * (1 + i / 4)))
        ir[0] = 1.0
        sf.write(str(folder / f"ir{i}.wav"), ir / np.abs(ir).max() * 0.9, RATE, subtype="PCM_16")
    return folder


def make_corpus(root: Path, *, tiny: bool, workers: int, specs: list[SetSpec] | None = None) -> dict:
    """WAV files, CSV lists and shards under `root` (the sets `specs`, default `sizes(tiny)`); returns paths and
    timings."""
    from data_shards.pack import PackOptions, pack
    from data_shards.sources import csv_folder

    root = Path(root)
    wav = root / "wav"
    started = time.perf_counter()
    jobs, lists = [], {}
    for spec in specs or sizes(tiny):
        (wav / spec.name).mkdir(parents=True, exist_ok=True)
        rows = _rows(spec, wav)
        samples = int(spec.seconds * RATE)
        jobs += [(str(wav / r["path"]), i, samples, i % spec.classes) for i, r in enumerate(rows)]
        lists[spec.name] = (spec, rows)
        with open(wav / f"{spec.name}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_write, jobs, chunksize=16)
    written = time.perf_counter() - started
    out = {"root": root, "wav": wav, "irs": _impulse_responses(root / "irs"), "sets": {}, "timings": {}}
    for name, (spec, rows) in lists.items():
        scan = csv_folder.scan(wav, Path(f"{name}.csv"), split_column="split",
                               device_column="device" if spec.devices else None, name=name)
        for fmt in ("flac", "pcm16"):
            t = time.perf_counter()
            result = pack(scan, PackOptions(out=root / "shards", name=f"{name}_{fmt}", audio_format=fmt,
                                            workers=workers, shard_bytes=128 * 2**20, overwrite=True))
            if result.rejected:
                raise RuntimeError(f"benchmark corpus {name}: {len(result.rejected)} clips rejected: {result.rejected[:3]}")
            out["timings"][f"pack {name} {fmt}"] = time.perf_counter() - t
        out["sets"][name] = {"spec": spec, "rows": rows,
                             "shards": {fmt: root / "shards" / f"{name}_{fmt}" for fmt in ("flac", "pcm16")}}
    out["timings"]["write wav"] = written
    out["timings"]["total"] = time.perf_counter() - started
    out["clips"] = {name: spec.count for name, (spec, _) in lists.items()}
    return out
