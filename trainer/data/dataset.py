"""A packed dataset as the loaders use it: its manifest, loaded and checked once, and the checks of a request
(a split, a clip length, device impulse responses) that the config validation and `make_loader` share.
"""
from __future__ import annotations

from pathlib import Path

from data_shards.manifest import MANIFEST, ManifestError, load_manifest


class DatasetError(ValueError):
    """A request a packed dataset cannot serve: `setting` is the argument to change, `value` what it was."""

    def __init__(self, setting: str, value, problem: str):
        self.setting, self.value, self.problem = setting, value, problem
        super().__init__(f"{setting}={value!r}: {problem}")

    def named(self, key: str) -> str:
        """The same message with a config key in place of the argument's name."""
        return f"{key}={self.value!r}: {self.problem}"


def open_dataset(folder: str | Path) -> dict:
    """The manifest of the packed dataset in `folder`, checked by `load_manifest`."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise DatasetError("shards", str(folder), f"no packed dataset at {folder}; pack it with: python -m "
                           f"data_shards pack <cochlscene|tau22|csv> --root <raw folder> --out {folder.parent}")
    try:
        return load_manifest(folder)
    except ManifestError as exc:
        raise DatasetError("shards", str(folder), str(exc)) from None


def check_request(folder: Path, manifest: dict, split: str, *, training: bool, clip_seconds: float | None,
                  dir_prob: float) -> None:
    """Raise DatasetError unless `split` exists, training has a clip length and device impulse responses have
    device-a clips to convolve."""
    if split not in manifest["splits"]:
        hint = "; a validation split is held out at pack time with --val-fraction" if split == "val" else ""
        raise DatasetError("split", split, f"{folder} has splits {', '.join(manifest['splits'])}{hint}")
    if training and clip_seconds is None:
        raise DatasetError("clip_seconds", None, "training needs a fixed clip length (the random crop)")
    if dir_prob > 0 and "a" not in manifest["devices"]:
        raise DatasetError("dir_prob", dir_prob, f"{folder} has no device-a clips to convolve with impulse responses; "
                           "set it to 0")
