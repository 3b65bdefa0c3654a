"""Bring-your-own dataset: a folder of audio plus a CSV listing path, label and (optionally) split and device.

The delimiter is detected; paths are relative to the root (or absolute).  Classes are the sorted
labels found, unless `classes` fixes their order (then any other label is rejected).  Without a
split column every file goes to `default_split`.  The default target rate is the most common rate
among the files, read from their headers.
"""
from __future__ import annotations

import collections
import csv
from pathlib import Path

import soundfile as sf

from ..records import Rejection, Scan, SourceFile, drop_duplicates, drop_missing, drop_unknown_labels
from . import SourceError, select_splits


def _read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{csv_path}: cannot read the CSV ({exc})") from None
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return list(reader.fieldnames or []), rows


def _common_rate(files: list[SourceFile]) -> int | None:
    rates = collections.Counter()
    for f in files:
        try:
            rates[sf.info(str(f.path)).samplerate] += 1
        except (sf.LibsndfileError, RuntimeError, OSError):
            continue  # rejected with its reason when the audio is read
    if not rates:
        return None
    top = max(rates.values())
    return max(rate for rate, n in rates.items() if n == top)


def scan(root: Path, csv_file: Path, *, path_column: str = "path", label_column: str = "label",
         split_column: str | None = None, device_column: str | None = None, classes: list[str] | None = None,
         default_split: str = "train", splits: list[str] | None = None, name: str = "csv",
         sample_rate: int | None = None) -> Scan:
    root = Path(root)
    csv_path = csv_file if Path(csv_file).is_absolute() else root / csv_file
    if not csv_path.is_file():
        raise SourceError(f"{csv_path}: CSV not found (--csv is relative to --root unless absolute)")
    columns, rows = _read_rows(csv_path)
    for option, column in (("--path-column", path_column), ("--label-column", label_column),
                           ("--split-column", split_column), ("--device-column", device_column)):
        if column is not None and column not in columns:
            raise SourceError(f"{csv_path}: no column {column!r} ({option}); columns are {', '.join(columns)}")
    rejected, by_split = [], collections.defaultdict(list)
    for line, row in enumerate(rows, start=2):
        rel = row[path_column]
        split = row[split_column] if split_column else default_split
        if not rel:
            rejected.append(Rejection(split, f"{csv_path.name}:{line}", "empty path"))
        elif not row[label_column]:
            rejected.append(Rejection(split, rel, "empty label"))
        elif not split:
            rejected.append(Rejection("", rel, f"empty split (column {split_column!r})"))
        else:
            path = Path(rel) if Path(rel).is_absolute() else root / rel
            by_split[split].append(SourceFile(path.absolute(), rel, row[label_column], split,
                                              device=row[device_column] or None if device_column else None))
    class_list = list(classes) if classes else sorted({f.label for fs in by_split.values() for f in fs})
    devices = sorted({f.device for fs in by_split.values() for f in fs if f.device})
    result = Scan(name, class_list, devices, {}, 0, rejected)
    for split in select_splits(by_split, splits, csv_path):
        files, dups = drop_duplicates(by_split[split])
        files, missing = drop_missing(files, csv_path.name)
        files, unknown = drop_unknown_labels(files, class_list)
        result.rejected += dups + missing + unknown
        result.splits[split] = files
    rate = sample_rate or _common_rate([f for fs in result.splits.values() for f in fs])
    if rate is None:
        raise SourceError(f"{csv_path}: none of the listed files has a readable audio header")
    result.sample_rate = rate
    return result
