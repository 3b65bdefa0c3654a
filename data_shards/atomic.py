"""Files that appear whole or not at all: written under a hidden temporary name beside the target, flushed to
disk, then renamed over it.  A reader (or a resumed run after a pre-emption) never sees half a file.

One helper for every kind of writer: text, `torch.save`, `savefig`, a tar index...

    with atomic_path(run_dir / "summary.json") as tmp:
        tmp.write_text(...)
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` when the block succeeds, removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
