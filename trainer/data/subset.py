"""A split's samples as its DALI index files list them, and subsets of them that both readers can read.

The index files (`wds2idx` v1.2: per sample, one `ext offset size <key>.<ext>` group per member) are
the readers' table of contents: the torch reader addresses samples through them, and DALI's reader
reads exactly the samples its index files list.  A `Subset` (the split minus samples already trained
on, when an interrupted epoch continues on another number of ranks) is therefore written as index
files of its own over the same tar shards: no audio is copied.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from data_shards.manifest import shard_paths
from data_shards.shards import INDEX_VERSION


@dataclass(frozen=True)
class IndexedSample:
    shard: int  # position of its shard in the split's list
    key: str
    line: str  # its line of the shard's index file


def split_index(folder: Path, manifest: dict, split: str) -> list[IndexedSample]:
    """Every sample of a split in global order (the concatenation of its shards)."""
    samples = []
    for shard, index in enumerate(shard_paths(folder, manifest, split)[1]):
        for line in index.read_text().splitlines()[1:]:
            samples.append(IndexedSample(shard, line.split(maxsplit=4)[3].split(".", 1)[0], line))
    return samples


class Subset:
    """The samples of `split` whose keys are not in `exclude`, in global order."""

    def __init__(self, folder: Path, manifest: dict, split: str, exclude: Collection[str]):
        self.folder, self.manifest, self.split = Path(folder), manifest, split
        samples = split_index(self.folder, manifest, split)
        exclude = set(exclude)
        unknown = exclude - {s.key for s in samples}
        if unknown:
            raise ValueError(f"{len(unknown)} sample(s) trained on before the interruption (e.g. {sorted(unknown)[0]!r}) "
                             f"are not in split {split!r} of {self.folder}: the dataset changed since the run started; "
                             "restore it, or start a new run (run.name)")
        self.samples = [s for s in samples if s.key not in exclude]

    def __len__(self) -> int:
        return len(self.samples)

    def write_indexes(self, out: Path) -> tuple[list[Path], list[Path]]:
        """Index files of the subset in `out`, one per shard that keeps samples; (tar paths, index paths)."""
        return write_indexes(self.samples, shard_paths(self.folder, self.manifest, self.split)[0], out)


def write_indexes(samples: Sequence[IndexedSample], tars: Sequence[Path], out: Path) -> tuple[list[Path], list[Path]]:
    """Index files in `out` through which DALI reads exactly `samples`, in this order: one per run of consecutive
    samples from one shard (DALI reads a shard's index lines in the order listed); (tar paths, index paths)."""
    out_tars, out_indexes = [], []
    start = 0
    for end in range(1, len(samples) + 1):
        if end < len(samples) and samples[end].shard == samples[start].shard:
            continue
        index = Path(out) / f"{len(out_indexes):06d}-{samples[start].shard:06d}.idx"
        index.write_text(f"{INDEX_VERSION} {end - start}\n" + "\n".join(s.line for s in samples[start:end]) + "\n")
        out_tars.append(tars[samples[start].shard])
        out_indexes.append(index)
        start = end
    return out_tars, out_indexes
