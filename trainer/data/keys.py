"""A batch's sample keys, decoded from the samples' JSON members only when someone asks.

The training loop never reads keys, so it should not pay for them: the DALI reader hands over one
dense byte array per batch (each row a JSON member, zero-padded) and the keys are parsed on access.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Iterator

import numpy as np


class Keys(Sequence):
    """Sequence of str over the rows of a [batch, bytes] uint8 array of JSON members."""

    def __init__(self, rows: np.ndarray):
        self._rows = rows
        self._cache: list[str] | None = None

    @classmethod
    def from_members(cls, members: list[bytes]) -> "Keys":
        """From the JSON members themselves (readers that have them as bytes)."""
        rows = np.zeros((len(members), max((len(m) for m in members), default=0)), dtype=np.uint8)
        for row, member in zip(rows, members):
            row[:len(member)] = np.frombuffer(member, dtype=np.uint8)
        return cls(rows)

    def _keys(self) -> list[str]:
        if self._cache is None:
            self._cache = [json.loads(row.tobytes().rstrip(b"\0"))["key"] for row in self._rows]
        return self._cache

    def metadata(self, index: int) -> dict:
        """The whole JSON member of sample `index`."""
        return json.loads(self._rows[index].tobytes().rstrip(b"\0"))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index):
        return self._keys()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Keys({self._keys()!r})"
