"""One module per dataset layout.  Each exposes `scan(root, ...) -> Scan` and never reads audio samples."""
from __future__ import annotations

from typing import Iterable

AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


class SourceError(Exception):
    """The dataset folder as a whole is unusable (wrong root, missing metadata): nothing can be packed."""


def select_splits(available: Iterable[str], requested: list[str] | None, root) -> list[str]:
    """The splits to pack, in the source's order; an unknown requested split is an error."""
    available = list(available)
    if not available:
        raise SourceError(f"{root}: no split found to pack")
    if requested is None:
        return available
    unknown = [s for s in requested if s not in available]
    if unknown:
        raise SourceError(f"--splits names {', '.join(unknown)}, not found in {root} "
                          f"(available: {', '.join(available)})")
    return [s for s in available if s in requested]
