"""Write one split's samples into WebDataset tar shards, each with its DALI index and checksum.

Tar headers carry fixed owner, mode and mtime so the same samples give byte-identical shards.
The DALI index (the `wds2idx` v1.2 text format: one line per sample listing each member's
extension, data offset, size and name) is written from offsets known while writing, so a 100 GB
dataset is not read a second time to index it.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


INDEX_VERSION = "v1.2"
_BLOCK = 512
# Every tar member header gets these, whoever packs and whenever.
_TAR_USER = "audio"
_TAR_MODE = 0o444
_TAR_MTIME = 0


@dataclass
class ShardInfo:
    """One finished shard as listed in manifest.json (paths relative to the dataset folder)."""

    path: str
    index: str
    num_samples: int
    bytes: int
    sha256: str


class _HashingFile:
    """Write-only file that hashes and counts what passes through it."""

    def __init__(self, path: Path):
        self._fh = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


LABELS_EXTENSION = "labels"


def labels_member(label_index: int, device_index: int) -> bytes:
    """The `.labels` member: label_index and device_index as little-endian int32 (what the GPU loader reads)."""
    return struct.pack("<2i", label_index, device_index)


def read_labels_member(data: bytes) -> tuple[int, int]:
    if len(data) != 8:
        raise ValueError(f"a .labels member holds 8 bytes (two int32), found {len(data)}")
    return struct.unpack("<2i", data)


def sample_json(meta: dict) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): identical metadata gives identical shards."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class ShardSink:
    """Append samples to `<folder>/shard-NNNNNN.tar`, starting a new shard past a size or count limit."""

    def __init__(self, folder: Path, rel_folder: str, *, max_bytes: int, max_samples: int | None = None):
        self.folder = folder
        self.rel_folder = rel_folder
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.shards: list[ShardInfo] = []
        self._writer = None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: `members` maps extension (no dot) to bytes, e.g. {"flac": ..., "json": ...}."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} contains '.' or '/'")
        if self._writer is not None and self._full():
            self._finish()
        if self._writer is None:
            self._start()
        self._tar.write({"__key__": key, **members})
        # Recover each member's data offset from the stream position: TarWriter appends members in
        # sorted extension order, each a 512-byte header plus data padded to whole blocks.
        end = self._tar.tarstream.offset
        line = []
        for ext in sorted(members, reverse=True):
            size = len(members[ext])
            start = end - _padded(size)
            line.insert(0, f"{ext} {start} {size} {key}.{ext}")
            end = start - _BLOCK  # the member's header
        self._index_lines.append(" ".join(line))

    def close(self) -> list[ShardInfo]:
        if self._writer is not None:
            self._finish()
        return self.shards

    def _full(self) -> bool:
        if self.max_samples is not None and len(self._index_lines) >= self.max_samples:
            return True
        return self._tar.tarstream.offset >= self.max_bytes

    def _start(self) -> None:
        # Imported here: webdataset pulls in torch (~1 s), which packing worker processes never need.
        import webdataset as wds

        name = f"shard-{len(self.shards):06d}"
        self._name = name
        self._writer = _HashingFile(self.folder / f"{name}.tar")
        self._tar = wds.TarWriter(self._writer, user=_TAR_USER, group=_TAR_USER, mode=_TAR_MODE,
                                  encoder=False, mtime=_TAR_MTIME)
        self._index_lines: list[str] = []

    def _finish(self) -> None:
        self._tar.close()
        self._writer.close()
        index = f"{INDEX_VERSION} {len(self._index_lines)}\n" + "\n".join(self._index_lines) + "\n"
        (self.folder / f"{self._name}.idx").write_text(index)
        self.shards.append(ShardInfo(
            path=f"{self.rel_folder}/{self._name}.tar",
            index=f"{self.rel_folder}/{self._name}.idx",
            num_samples=len(self._index_lines),
            bytes=self._writer.size,
            sha256=self._writer.sha256.hexdigest(),
        ))
        self._writer = None


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def iter_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a shard, in order (members of a key are adjacent)."""
    key, members = None, {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            base, ext = member.name.split(".", 1)
            if base != key and members:
                yield key, members
                members = {}
            key = base
            members[ext] = tar.extractfile(member).read()
    if members:
        yield key, members


def index_from_tar(path: Path) -> str:
    """Rebuild a shard's DALI index by reading the tar's own headers (an independent check of the writer)."""
    lines: list[list[str]] = []
    last = None
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            base, ext = member.name.split(".", 1)
            if base != last:
                lines.append([])
                last = base
            lines[-1].append(f"{ext} {member.offset_data} {member.size} {member.name}")
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(" ".join(parts) + "\n" for parts in lines)
