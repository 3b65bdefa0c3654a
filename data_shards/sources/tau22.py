"""TAU Urban Acoustic Scenes 2022 Mobile, development set (zenodo 6337421).

`<root>/meta.csv` (tab-separated: filename, scene_label, identifier, source_label) describes every
clip; `evaluation_setup/fold1_{train,evaluate}.csv` are the official train / test lists and the DCASE
2024 low-resource lists `split{5,10,25,50,100}.csv` and `test.csv` (looked for in the root,
`split_setup/` and `evaluation_setup/`) become further splits.  Device, city and identifier go into
each sample's metadata.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..records import Rejection, Scan, SourceFile, drop_duplicates, drop_missing
from . import SourceError, select_splits

log = logging.getLogger(__name__)

CLASSES = ["airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
           "street_pedestrian", "street_traffic", "tram"]
DEVICES = ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]
SAMPLE_RATE = 44100
CLIP_SECONDS = 1.0
META_COLUMNS = ["filename", "scene_label", "identifier", "source_label"]
LOW_RESOURCE = ["split5", "split10", "split25", "split50", "split100"]
_LIST_FOLDERS = ["", "split_setup", "evaluation_setup"]


def device_of(filename: str) -> str:
    """`audio/airport-lisbon-1000-40000-0-a.wav` -> `a` (the part after the last '-')."""
    return Path(filename).stem.rsplit("-", 1)[-1]


def _read_table(path: Path, required: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not a readable tab-separated file ({exc})") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(table.columns)}); "
                          "TAU lists are tab-separated with a header row")
    return table


def _find_list(root: Path, name: str) -> Path | None:
    for folder in _LIST_FOLDERS:
        if (root / folder / name).is_file():
            return root / folder / name
    return None


def _split_lists(root: Path) -> dict[str, Path]:
    """Split name -> list file, in packing order."""
    lists = {}
    for split, name in (("train", "fold1_train.csv"), ("test", "fold1_evaluate.csv")):
        if (root / "evaluation_setup" / name).is_file():
            lists[split] = root / "evaluation_setup" / name
    for split in LOW_RESOURCE:
        found = _find_list(root, f"{split}.csv")
        if found:
            lists[split] = found
    dcase_test = _find_list(root, "test.csv")
    if dcase_test:
        if "test" not in lists:
            lists["test"] = dcase_test
        elif set(_read_table(dcase_test, ["filename"]).filename) == set(_read_table(lists["test"], ["filename"]).filename):
            log.info("%s lists the same clips as %s: packed once as split 'test'", dcase_test, lists["test"])
        else:
            lists["dcase24_test"] = dcase_test
    return lists


def scan(root: Path, splits: list[str] | None = None) -> Scan:
    root = Path(root)
    meta_path = root / "meta.csv"
    if not meta_path.is_file():
        raise SourceError(f"{meta_path} not found: --root must be the TAU development folder holding meta.csv, "
                          "audio/ and evaluation_setup/")
    meta = _read_table(meta_path, META_COLUMNS).drop_duplicates("filename").set_index("filename")
    lists = _split_lists(root)
    if not lists:
        raise SourceError(f"{root}: no split lists found (evaluation_setup/fold1_train.csv, fold1_evaluate.csv, "
                          "split*.csv, test.csv)")
    result = Scan("tau22", list(CLASSES), list(DEVICES), {}, SAMPLE_RATE)
    for split in select_splits(lists, splits, root):
        list_path = lists[split]
        table = _read_table(list_path, ["filename"])
        files = []
        for row in table.itertuples(index=False):
            name = row.filename
            if name not in meta.index:
                result.rejected.append(Rejection(split, name, f"listed in {list_path.name} but not in meta.csv"))
                continue
            info = meta.loc[name]
            listed_label = getattr(row, "scene_label", info.scene_label) or info.scene_label
            device = info.source_label or device_of(name)
            reason = None
            if listed_label != info.scene_label:
                reason = f"{list_path.name} says {listed_label!r} but meta.csv says {info.scene_label!r}"
            elif info.scene_label not in CLASSES:
                reason = f"unknown label {info.scene_label!r} (classes: {', '.join(CLASSES)})"
            elif device not in DEVICES:
                reason = f"unknown device {device!r} (devices: {', '.join(DEVICES)})"
            if reason:
                result.rejected.append(Rejection(split, name, reason))
                continue
            files.append(SourceFile((root / name).absolute(), name, info.scene_label, split,
                                    identifier=info.identifier, device=device,
                                    city=info.identifier.split("-", 1)[0] or None))
        files, dups = drop_duplicates(files)
        files, missing = drop_missing(files, list_path.name)
        result.rejected += dups + missing
        result.splits[split] = files
    return result
