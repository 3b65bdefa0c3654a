"""CochlScene (zenodo 7080122): `<root>/{Train,Val,Test}/<Scene>/<Scene>_<user>_<rec>_<idx>.wav`.

13 scenes, 10-s mono 44.1 kHz clips, no device or city.  The identifier `<user>_<rec>` is kept so
that recordings of one contributor can be held together when re-splitting.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..records import Rejection, Scan, SourceFile, drop_missing, drop_unknown_labels
from . import AUDIO_SUFFIXES, SourceError, select_splits

CLASSES = ["Bus", "Cafe", "Car", "CrowdedIndoor", "Elevator", "Kitchen", "Park", "ResidentialArea",
           "Restaurant", "Restroom", "Street", "Subway", "SubwayStation"]
SPLIT_FOLDERS = {"train": "Train", "val": "Val", "test": "Test"}
SAMPLE_RATE = 44100
CLIP_SECONDS = 10.0
_NAME = re.compile(r"^[^_]+_(?P<user>[^_]+)_(?P<rec>[^_]+)_[^_]+$")


def identifier(stem: str) -> str:
    """`<user>_<rec>` from `<Scene>_<user>_<rec>_<idx>`; the whole stem for names off that pattern."""
    m = _NAME.match(stem)
    return f"{m['user']}_{m['rec']}" if m else stem


def scan(root: Path, splits: list[str] | None = None) -> Scan:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder (--root must be the CochlScene folder holding Train/, Val/, Test/)")
    present = [s for s, folder in SPLIT_FOLDERS.items() if (root / folder).is_dir()]
    if not present:
        raise SourceError(f"{root}: no Train/, Val/ or Test/ folder; --root must be the CochlScene folder that holds them")
    result = Scan("cochlscene", list(CLASSES), [], {}, SAMPLE_RATE)
    for split in select_splits(present, splits, root):
        files = []
        for path in sorted((root / SPLIT_FOLDERS[split]).rglob("*")):
            if path.is_dir():
                continue
            rel = path.relative_to(root).as_posix()
            inner = path.relative_to(root / SPLIT_FOLDERS[split]).parts
            if len(inner) != 2:
                result.rejected.append(Rejection(split, rel, "not directly inside a <Scene>/ folder"))
            elif path.suffix.lower() not in AUDIO_SUFFIXES:
                result.rejected.append(Rejection(split, rel, f"not an audio file (extension {path.suffix or 'none'!r})"))
            else:
                files.append(SourceFile(path.absolute(), rel, inner[0], split, identifier=identifier(path.stem)))
        files, missing = drop_missing(files, f"{SPLIT_FOLDERS[split]}/")  # only dangling links: the tree listed them
        files, unknown = drop_unknown_labels(files, CLASSES)
        result.rejected += missing + unknown
        result.splits[split] = files
    return result
