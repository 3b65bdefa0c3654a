"""Generate a small corpus in the exact layouts of CochlScene and TAU22 Mobile, with learnable scenes.

Each scene has a spectral signature (three resonant bands, a spectral tilt), a temporal one
(amplitude-modulation rate and depth) and an event process (bursts in a scene-specific band); every
clip jitters these so that classes overlap but remain separable.  TAU clips are 24-bit and come as
1-s segments of recordings captured by several devices at once: the same scene audio is coloured by
each device's frequency response (a, b, c real; s1-s6 simulated; s4-s6 only in the test split), and
train / test recordings come from different locations, as in the real set.  A `MicIRP/` folder of
synthetic impulse responses stands in for the device-impulse-response set.  Deterministic by seed.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ..pack import PackOptions, PackResult, pack
from . import cochlscene, tau22

COCHL_FOLDER = "CochlScene"
TAU_FOLDER = "TAU-urban-acoustic-scenes-2022-mobile-development"
IR_FOLDER = "MicIRP"
_MARKER = ".demo-complete.json"
WHOLE_TAU = "tau22_whole"  # the demo's TAU with whole split lists (the reference protocol's data)
VAL_FRACTION = 0.25  # the TAU demo has no validation split: this share of its train recordings becomes one
_CITIES = ["barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "paris", "prague", "stockholm", "vienna"]
_TRAIN_DEVICES = ["b", "c", "s1", "s2", "s3"]
_TEST_DEVICES = ["b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]


@dataclass(frozen=True)
class DemoSize:
    """How much demo data to write (the real sets have ~76k and ~230k clips)."""

    cochl_train: int = 24  # CochlScene clips per scene in Train/ (8 left the demo's CochlScene runs undertrained)
    cochl_val: int = 4  # ... in Val/
    cochl_test: int = 6  # ... in Test/
    cochl_seconds: float = cochlscene.CLIP_SECONDS  # clip length (the real set: 10 s)
    tau_train_recordings: int = 4  # TAU recordings (locations) per scene in the train split
    tau_test_recordings: int = 2  # ... in the test split
    tau_segments: int = 4  # 1-s clips cut from each recording (the real set: 10)
    tau_devices_per_recording: int = 2  # devices besides a that capture each recording

    def scaled(self, factor: float) -> "DemoSize":
        """Multiply every clip count by `factor` (at least one of each)."""
        grow = lambda n: max(1, int(round(n * factor)))  # noqa: E731
        return DemoSize(grow(self.cochl_train), grow(self.cochl_val), grow(self.cochl_test), self.cochl_seconds,
                        grow(self.tau_train_recordings), grow(self.tau_test_recordings), self.tau_segments,
                        self.tau_devices_per_recording)


def _signatures(rng: np.random.Generator, n: int) -> list[dict]:
    """Draw one sound signature per scene, spread so that scenes differ in several ways at once."""
    sigs = []
    for c in range(n):
        sigs.append({
            "centres": np.sort(rng.uniform(math.log2(120), math.log2(9000), 3)),  # octaves
            "widths": rng.uniform(0.25, 0.8, 3),
            "gains": rng.uniform(0.3, 1.0, 3),
            "tilt": rng.uniform(-4.0, -1.0),  # dB per octave of the broadband floor
            "am_rate": 0.5 + 7.5 * c / max(1, n - 1) + rng.uniform(-0.3, 0.3),
            "am_depth": rng.uniform(0.1, 0.7),
            "event_rate": rng.uniform(0.2, 3.0),
            "event_band": rng.uniform(math.log2(300), math.log2(6000)),
        })
    return sigs


def _device_responses(freqs: np.ndarray) -> dict[str, np.ndarray]:
    """Linear magnitude responses of the TAU devices (a flat; the others clearly coloured)."""
    octave = np.log2(np.maximum(freqs, 20.0) / 1000.0)
    lowcut = lambda fc, order=2: 1.0 / np.sqrt(1.0 + (fc / np.maximum(freqs, 1.0)) ** (2 * order))  # noqa: E731
    highcut = lambda fc, order=2: 1.0 / np.sqrt(1.0 + (freqs / fc) ** (2 * order))  # noqa: E731
    db = lambda x: 10.0 ** (x / 20.0)  # noqa: E731
    return {
        "a": np.ones_like(freqs),
        "b": lowcut(250.0) * db(2.0 * np.clip(octave, 0, None)),
        "c": highcut(7000.0),
        "s1": db(-3.0 * octave),
        "s2": db(2.5 * octave) * lowcut(150.0),
        "s3": 1.0 - 0.8 * np.exp(-0.5 * ((octave - 0.6) / 0.3) ** 2),
        "s4": lowcut(600.0, 3),
        "s5": highcut(3500.0, 3),
        "s6": lowcut(300.0) * highcut(5000.0) * (1.0 + 2.0 * np.exp(-0.5 * ((octave - 1.2) / 0.15) ** 2)),
    }


def _synthesize(rng: np.random.Generator, sig: dict, sr: int, seconds: float,
                responses: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """One clip of a scene: coloured noise x amplitude modulation + events, once per device response."""
    n = int(round(sr * seconds))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    octs = np.log2(np.maximum(freqs, 20.0))
    centres = sig["centres"] + rng.uniform(-0.15, 0.15, 3)
    gains = sig["gains"] * 10.0 ** (rng.uniform(-3, 3, 3) / 20.0)
    env = 0.05 * 10.0 ** (sig["tilt"] * (octs - math.log2(1000.0)) / 20.0)
    for c, w, g in zip(centres, sig["widths"], gains):
        env = env + g * np.exp(-0.5 * ((octs - c) / w) ** 2)
    env[freqs < 20.0] = 0.0
    spectrum = np.fft.rfft(rng.standard_normal(n)) * env
    t = np.arange(n) / sr
    am = 1.0 + sig["am_depth"] * np.sin(2 * np.pi * sig["am_rate"] * t + rng.uniform(0, 2 * np.pi))
    events = np.zeros(n)
    band = np.exp(-0.5 * ((octs - sig["event_band"]) / 0.3) ** 2)
    for _ in range(rng.poisson(sig["event_rate"] * seconds)):
        start = rng.integers(0, n)
        length = min(n - start, int(sr * rng.uniform(0.02, 0.15)))
        events[start:start + length] += rng.uniform(2, 6) * np.exp(-np.arange(length) / (0.2 * length + 1))
    event_noise = np.fft.rfft(rng.standard_normal(n)) * band
    level = 10.0 ** (rng.uniform(-28, -16) / 20.0)
    clips = []
    for response in responses or [np.ones_like(freqs)]:
        x = np.fft.irfft(spectrum * response, n) * am + np.fft.irfft(event_noise * response, n) * events
        x *= level / (np.sqrt(np.mean(x ** 2)) + 1e-12)
        clips.append(np.clip(x, -0.99, 0.99))
    return clips


def _write_cochlscene(root: Path, size: DemoSize, rng: np.random.Generator) -> None:
    sigs = _signatures(rng, len(cochlscene.CLASSES))
    counts = {"Train": size.cochl_train, "Val": size.cochl_val, "Test": size.cochl_test}
    user = 0
    for folder, count in counts.items():
        for scene, sig in zip(cochlscene.CLASSES, sigs):
            (root / folder / scene).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                user += 1  # one contributor per clip: contributors never straddle splits
                (x,) = _synthesize(rng, sig, cochlscene.SAMPLE_RATE, size.cochl_seconds)
                sf.write(root / folder / scene / f"{scene}_user{user:04d}_{i % 3}_{i}.wav", x,
                         cochlscene.SAMPLE_RATE, subtype="PCM_16")


def _write_tau(root: Path, size: DemoSize, rng: np.random.Generator) -> None:
    sr = tau22.SAMPLE_RATE
    sigs = _signatures(rng, len(tau22.CLASSES))
    responses = _device_responses(np.fft.rfftfreq(int(sr * tau22.CLIP_SECONDS), 1.0 / sr))
    (root / "audio").mkdir(parents=True, exist_ok=True)
    meta, lists = [], {"train": [], "test": []}
    train_recordings: dict[str, list[list[str]]] = {}
    for s, (scene, sig) in enumerate(zip(tau22.CLASSES, sigs)):
        for r in range(size.tau_train_recordings + size.tau_test_recordings):
            split = "train" if r < size.tau_train_recordings else "test"
            pool = _TRAIN_DEVICES if split == "train" else _TEST_DEVICES
            devices = ["a"] + sorted(rng.choice(pool, size.tau_devices_per_recording, replace=False).tolist(),
                                     key=tau22.DEVICES.index)
            city = _CITIES[(s + r) % len(_CITIES)]
            location = 100 * s + r
            identifier = f"{city}-{location}"
            names = []
            for seg in range(size.tau_segments):
                clips = _synthesize(rng, sig, sr, tau22.CLIP_SECONDS, [responses[d] for d in devices])
                for device, x in zip(devices, clips):
                    name = f"audio/{scene}-{city}-{location}-{1000 * s + r}-{seg}-{device}.wav"
                    sf.write(root / name, x, sr, subtype="PCM_24")
                    meta.append((name, scene, identifier, device))
                    lists[split].append((name, scene))
                    names.append(name)
            if split == "train":
                train_recordings.setdefault(scene, []).append(names)
    tsv = dict(sep="\t", index=False)
    pd.DataFrame(meta, columns=tau22.META_COLUMNS).to_csv(root / "meta.csv", **tsv)
    (root / "evaluation_setup").mkdir(exist_ok=True)
    pd.DataFrame(lists["train"], columns=["filename", "scene_label"]).to_csv(root / "evaluation_setup/fold1_train.csv", **tsv)
    test = pd.DataFrame(lists["test"], columns=["filename", "scene_label"])
    test.to_csv(root / "evaluation_setup/fold1_evaluate.csv", **tsv)
    test[["filename"]].to_csv(root / "evaluation_setup/fold1_test.csv", **tsv)
    # Low-resource lists keep whole recordings, per scene, each smaller list a subset of the larger.
    (root / "split_setup").mkdir(exist_ok=True)
    label_of = dict(lists["train"])
    for split in tau22.LOW_RESOURCE:
        percent = int(split.removeprefix("split"))
        names = [n for recs in train_recordings.values()
                 for rec in recs[:max(1, round(len(recs) * percent / 100))] for n in rec]
        pd.DataFrame({"filename": names, "scene_label": [label_of[n] for n in names]}).to_csv(
            root / "split_setup" / f"{split}.csv", **tsv)
    test.to_csv(root / "split_setup/test.csv", **tsv)


def _write_impulse_responses(root: Path, rng: np.random.Generator, count: int = 6) -> None:
    root.mkdir(parents=True, exist_ok=True)
    sr = tau22.SAMPLE_RATE
    for i in range(count):
        n = int(sr * rng.uniform(0.01, 0.05))
        ir = rng.standard_normal(n) * np.exp(-np.arange(n) / (n * rng.uniform(0.05, 0.3)))
        ir[0] = 1.0
        sf.write(root / f"ir_{i:02d}.wav", 0.9 * ir / np.max(np.abs(ir)), sr, subtype="PCM_16")


def generate(root: Path, *, seed: int = 0, size: DemoSize = DemoSize()) -> dict[str, Path]:
    """Write the demo corpus under `root` (skipped when an identical one is already complete).

    Returns the dataset folders: {"cochlscene": ..., "tau22": ..., "impulse_responses": ...}.
    """
    root = Path(root)
    folders = {"cochlscene": root / COCHL_FOLDER, "tau22": root / TAU_FOLDER, "impulse_responses": root / IR_FOLDER}
    wanted = {"seed": seed, "size": asdict(size)}
    marker = root / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folders
    marker.unlink(missing_ok=True)
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    _write_cochlscene(folders["cochlscene"], size, np.random.default_rng(rng.integers(2**63)))
    _write_tau(folders["tau22"], size, np.random.default_rng(rng.integers(2**63)))
    _write_impulse_responses(folders["impulse_responses"], np.random.default_rng(rng.integers(2**63)))
    marker.write_text(json.dumps(wanted))  # written last: a half-written corpus is regenerated
    return folders


def pack_demo(folders: dict[str, Path], options: PackOptions, *, splits: list[str] | None = None,
              val_fraction: float = VAL_FRACTION) -> list[PackResult]:
    """Pack a generated corpus (`generate`'s folders) into `options.out`/{cochlscene,tau22,tau22_whole}; a dataset
    without a `val` split gets one: `val_fraction` of its train recordings, held out per class.  `tau22_whole` is
    TAU packed for the reference protocol: the same hold-out, the low-resource lists kept whole."""
    results = []
    for scan in (cochlscene.scan(folders["cochlscene"], splits), tau22.scan(folders["tau22"], splits)):
        results.append(pack(scan, replace(options, name=None,
                                          val_fraction=None if "val" in scan.splits else val_fraction)))
    whole = tau22.scan(folders["tau22"], splits)
    if "train" in whole.splits:  # the validation recordings come out of it
        results.append(pack(whole, replace(options, name=WHOLE_TAU, val_fraction=val_fraction, keep_lists_whole=True)))
    return results
