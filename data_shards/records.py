"""What a source scan produces: the clips to pack, the files it refused, and the dataset's facts.

Every source module (cochlscene, tau22, csv_folder, ...) turns a folder into a `Scan`; the packer
never looks at a dataset's layout itself.  Keys are derived here, in one place, so that the same
source file gets the same key in every split and every pack.
"""
from __future__ import annotations

import collections
import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class SourceFile:
    """One clip to pack, as listed by a source."""

    path: Path  # absolute path of the audio file
    source: str  # path relative to the dataset root (POSIX form): how users find the file again
    label: str  # class name; must be one of Scan.classes
    split: str  # shard split it goes to (train, val, test, split5, ...)
    identifier: str | None = None  # recording / location id (recordings must not straddle splits)
    device: str | None = None  # recording device (TAU: a, b, c, s1..s6)
    city: str | None = None


@dataclass(frozen=True)
class Rejection:
    """A file that was not packed, and why (written to rejected.csv)."""

    split: str
    source: str
    reason: str


@dataclass
class Scan:
    """A dataset as a source module sees it, before any audio is read."""

    dataset: str  # source name recorded in the manifest (cochlscene, tau22, csv)
    classes: list[str]  # fixed class order: label_index = classes.index(label)
    devices: list[str]  # fixed device order (empty when the dataset has no device metadata)
    splits: dict[str, list[SourceFile]]
    sample_rate: int  # the dataset's native rate: the default target rate of the shards
    rejected: list[Rejection] = field(default_factory=list)
    val_removed: dict[str, int] = field(default_factory=dict)  # per split: clips of held-out recordings taken out
    val_overlap: dict[str, int] = field(default_factory=dict)  # per split: clips of held-out recordings left in

    def num_files(self) -> int:
        return sum(len(files) for files in self.splits.values())


def sanitize(stem: str) -> str:
    """Fold a file stem to the key alphabet [A-Za-z0-9_-] (no dots: DALI splits keys at the first dot)."""
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    return _UNSAFE.sub("_", ascii_stem).strip("_") or "clip"


def assign_keys(sources: Iterable[str]) -> dict[str, str]:
    """Map each source path to a unique, dot-free sample key.

    The key is the file stem when that is already safe and unique; otherwise the folded stem plus
    8 hex digits of the SHA-1 of the source path.  The result depends only on the set of paths, so
    a file keeps its key across splits and across packs.
    """
    unique = sorted(set(sources))
    stems = {src: Path(src).stem for src in unique}
    folded = {src: sanitize(stem) for src, stem in stems.items()}
    counts = collections.Counter(folded.values())
    keys = {}
    for src in unique:
        key = folded[src]
        if key != stems[src] or counts[key] > 1:
            key = f"{key}-{hashlib.sha1(src.encode('utf-8')).hexdigest()[:8]}"
        keys[src] = key
    if len(set(keys.values())) != len(keys):  # a folded stem that happens to equal another's key+hash
        raise RuntimeError("sample keys are not unique after disambiguation; please report this dataset layout")
    return keys


def drop_duplicates(files: list[SourceFile]) -> tuple[list[SourceFile], list[Rejection]]:
    """Keep the first listing of each source file in a split; reject repeats with the reason."""
    first: dict[str, SourceFile] = {}
    kept, rejected = [], []
    for f in files:
        seen = first.get(f.source)
        if seen is None:
            first[f.source] = f
            kept.append(f)
        elif seen.label != f.label:
            rejected.append(Rejection(f.split, f.source, f"listed again with label {f.label!r}; "
                                      f"the first listing ({seen.label!r}) was packed"))
        else:
            rejected.append(Rejection(f.split, f.source, "listed more than once in this split; packed once"))
    return kept, rejected


def drop_missing(files: list[SourceFile], listed_in: str) -> tuple[list[SourceFile], list[Rejection]]:
    """Reject listed files that do not exist on disk (naming the list that mentioned them)."""
    kept, rejected = [], []
    for f in files:
        if f.path.is_file():
            kept.append(f)
        elif f.path.is_symlink():
            rejected.append(Rejection(f.split, f.source, "unreadable: dangling symbolic link"))
        else:
            rejected.append(Rejection(f.split, f.source, f"listed in {listed_in} but missing on disk"))
    return kept, rejected


def drop_unknown_labels(files: list[SourceFile], classes: list[str]) -> tuple[list[SourceFile], list[Rejection]]:
    """Reject files whose label is not one of the dataset's classes."""
    known = set(classes)
    kept, rejected = [], []
    for f in files:
        if f.label in known:
            kept.append(f)
        else:
            rejected.append(Rejection(f.split, f.source, f"unknown label {f.label!r} (classes: {', '.join(classes)})"))
    return kept, rejected


def hold_out(scan: Scan, fraction: float, seed: int, *, source: str = "train", name: str = "val",
             keep_lists_whole: bool = False) -> Scan:
    """Move a seeded `fraction` of `source`'s recordings (identifiers), per class, into a new split `name`.

    Whole identifiers move, so segments of one recording never straddle training and validation.
    The held-out recordings also leave every other split except `test` (TAU's low-resource lists
    are subsets of its train list), so the validation split is disjoint from all training data.
    With `keep_lists_whole` they leave `source` only: the other lists stay as published (the reference
    protocol trains on them whole) and the clips they share with `name` are counted in `val_overlap`.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if name in scan.splits:
        raise ValueError(f"{scan.dataset} already has a split {name!r}; no hold-out needed")
    if source not in scan.splits:
        raise ValueError(f"{scan.dataset} has no split {source!r} to hold validation data out of")
    by_class: dict[str, set[str]] = collections.defaultdict(set)
    for f in scan.splits[source]:
        by_class[f.label].add(f.identifier or f.source)
    rng = random.Random(f"{seed}:{scan.dataset}:{name}")
    held: set[str] = set()
    for label in sorted(by_class):
        ids = sorted(by_class[label])
        count = max(1, round(fraction * len(ids))) if len(ids) > 1 else 0
        held.update(rng.sample(ids, count))
    splits, removed, overlap = {}, {}, {}
    for split, files in scan.splits.items():
        kept = files
        if split != "test" and (split == source or not keep_lists_whole):
            kept = [f for f in files if (f.identifier or f.source) not in held]
        splits[split] = kept
        removed[split] = len(files) - len(kept)
        overlap[split] = sum((f.identifier or f.source) in held for f in kept)
    splits[name] = [replace(f, split=name) for f in scan.splits[source] if (f.identifier or f.source) in held]
    return replace(scan, splits=splits, val_removed=removed, val_overlap=overlap)
