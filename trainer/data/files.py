"""Audio files that were never packed (an unlabelled evaluation set, a folder of recordings, a CSV list) as
batches in the loader's layout, for prediction.

Files are decoded with soundfile in DataLoader workers, downmixed and resampled as the packer does
(torchaudio's sinc interpolation).  They are sorted by length and batched only with clips of the same
length, so nothing is padded and a long clip goes whole through the model's windowing.  Each rank takes a
contiguous share; a shorter share is padded with `valid=False` rows so that ranks stay in step.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from .epoch import rank_range
from .keys import Keys

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")


@dataclass(frozen=True)
class AudioFile:
    path: Path  # where it is read from
    name: str  # how the output names it: relative to the folder, or as the CSV lists it
    samples: int  # length at the target rate
    label: int = -1  # class index, -1 when unknown
    device: int = -1  # device index, -1 when unknown


def _length(path: Path, sample_rate: int) -> int:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ValueError(f"cannot read audio file {path}: {exc}") from None
    if info.frames <= 0:
        raise ValueError(f"audio file {path} holds no samples")
    return info.frames if info.samplerate == sample_rate else math.ceil(info.frames * sample_rate / info.samplerate)


def folder_files(folder: Path, sample_rate: int) -> list[AudioFile]:
    """Every audio file under `folder` (recursively), named by its path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of audio files")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"{folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return [AudioFile(p, p.relative_to(folder).as_posix(), _length(p, sample_rate)) for p in paths]


def csv_files(csv: Path, sample_rate: int, *, root: Path | None = None, classes: list[str],
              path_column: str | None = None, label_column: str | None = None,
              device_column: str | None = None) -> tuple[list[AudioFile], list[str]]:
    """The files a CSV lists (delimiter detected; paths relative to `root`, default the CSV's folder) and the
    device names found.  Columns default to DCASE's: `filename` (or `path`), `scene_label` (or `label`) if present."""
    csv = Path(csv)
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: no such CSV")
    header = next(iter(csv.read_text(encoding="utf-8-sig").splitlines()), "")
    delimiter = next((d for d in ("\t", ",", ";") if d in header), "\t")  # DCASE's test.csv has one column
    table = pd.read_csv(csv, sep=delimiter, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    columns = list(table.columns)

    def pick(given: str | None, defaults: tuple[str, ...], what: str, required: bool) -> str | None:
        if given is not None and given not in columns:
            raise ValueError(f"{csv}: no column {given!r} for the {what}; columns are {', '.join(columns)}")
        found = given or next((c for c in defaults if c in columns), None)
        if required and found is None:
            raise ValueError(f"{csv}: no {what} column ({' or '.join(defaults)}); name it with --path-column")
        return found

    path_col = pick(path_column, ("filename", "path"), "file path", True)
    label_col = pick(label_column, ("scene_label", "label"), "label", False)
    device_col = pick(device_column, (), "device", False)
    devices = sorted(set(table[device_col])) if device_col else []
    root = Path(root) if root is not None else csv.parent
    files = []
    for line, row in enumerate(table.to_dict("records"), start=2):
        name = row[path_col]
        label = -1
        if label_col and row[label_col]:
            if row[label_col] not in classes:
                raise ValueError(f"{csv}:{line}: label {row[label_col]!r} is not one of the model's classes "
                                 f"({', '.join(classes)})")
            label = classes.index(row[label_col])
        path = Path(name) if Path(name).is_absolute() else root / name
        if not path.is_file():
            raise FileNotFoundError(f"{csv}:{line}: {path} not found (paths are relative to {root}; set --root)")
        device = devices.index(row[device_col]) if device_col else -1
        files.append(AudioFile(path, name, _length(path, sample_rate), label, device))
    if not files:
        raise ValueError(f"{csv} lists no files")
    return files, devices


class _Decoded(Dataset):
    def __init__(self, files: list[AudioFile], sample_rate: int):
        self.files, self.sample_rate = files, sample_rate

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        f = self.files[index]
        try:
            data, rate = sf.read(str(f.path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise ValueError(f"cannot decode audio file {f.path}: {exc}") from None
        wave = torch.from_numpy(data.mean(axis=1))
        if rate != self.sample_rate:
            import torchaudio.functional as AF

            wave = AF.resample(wave, rate, self.sample_rate)
        return wave[:f.samples], index


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, list[int]]:
    return torch.stack([w for w, _ in items]), [i for _, i in items]


def file_batches(files: list[AudioFile], *, sample_rate: int, batch_size: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0) -> Iterator[dict]:
    """This rank's share of `files` as loader-style batches: audio, label, device, key (name and source), valid."""
    order = sorted(range(len(files)), key=lambda i: (files[i].samples, files[i].name))
    start, end = rank_range(len(files), rank, world_size)
    mine = order[start:end]
    batches, current = [], []
    for i in mine:
        if current and (len(current) == batch_size or files[current[0]].samples != files[i].samples):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    padding = -(-len(files) // world_size) - len(mine)  # rows short of the largest share
    if padding:
        batches.append([order[0]] * padding)
    loader = DataLoader(_Decoded(files, sample_rate), batch_sampler=batches, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    for n, (audio, indices) in enumerate(loader):
        pad = padding and n == len(batches) - 1
        chosen = [files[i] for i in indices]
        meta = [json.dumps({"key": files[i].name, "source": files[i].name, "index": i}).encode() for i in indices]
        yield {"audio": audio.to(device, non_blocking=True),
               "label": torch.tensor([f.label for f in chosen], device=device),
               "device": torch.tensor([f.device for f in chosen], device=device),
               "key": Keys.from_members(meta),
               "valid": torch.full((len(chosen),), not pad, dtype=torch.bool, device=device)}
