"""manifest.json: the contract between the packer and every reader of the shards.

Readers (the trainer, `verify`, `info`) load it through `load_manifest`, which checks the fields
they rely on and names the file and field when something is off.
"""
from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"
REJECTED = "rejected.csv"
REQUIRED = ("packer_version", "classes", "devices", "sample_rate", "audio_format", "audio_extension",
            "labels_extension", "splits")


class ManifestError(Exception):
    """A dataset folder whose manifest is missing or malformed."""


def load_manifest(folder: Path) -> dict:
    """Read and check `<folder>/manifest.json`."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} not found: pack the dataset first (python -m data_shards pack ...) "
                            "or point at the folder that holds manifest.json")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(missing)} (packed by data_shards "
                            f"{manifest.get('packer_version', '?')}); re-pack the dataset with this version "
                            "(python -m data_shards pack ... --overwrite)")
    for split, info in manifest["splits"].items():
        for field in ("num_samples", "shards"):
            if field not in info:
                raise ManifestError(f"{path}: split {split!r} has no {field!r}")
    return manifest


def shard_paths(folder: Path, manifest: dict, split: str) -> tuple[list[Path], list[Path]]:
    """Absolute tar and index paths of one split, in manifest order."""
    if split not in manifest["splits"]:
        raise ManifestError(f"{Path(folder) / MANIFEST}: no split {split!r} "
                            f"(splits: {', '.join(manifest['splits'])})")
    shards = manifest["splits"][split]["shards"]
    return [Path(folder) / s["path"] for s in shards], [Path(folder) / s["index"] for s in shards]
