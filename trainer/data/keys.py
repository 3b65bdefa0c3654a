"""A batch's sample keys, decoded from the samples' JSON members only when someone asks.

The training loop never reads keys, so it should not pay for them: the DALI reader hands over one
dense byte array per batch (each row a JSON member, zero-padded) and the keys are parsed on access.

Generic batch code rebuilds sequences from their items (torch's pin-memory step, which runs only where CUDA
is, does `type(batch)([pin(x) for x in batch])`): each item is a `Key`, a str that keeps its JSON member, so
`Keys(list(keys))` is the same batch with the same metadata.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Iterable, Iterator

import numpy as np


def _dense(members: list[bytes]) -> np.ndarray:
    """JSON members as the rows of a zero-padded [batch, bytes] uint8 array (the DALI reader's layout)."""
    rows = np.zeros((len(members), max((len(m) for m in members), default=0)), dtype=np.uint8)
    for row, member in zip(rows, members):
        row[:len(member)] = np.frombuffer(member, dtype=np.uint8)
    return rows


def _member_of(key: str) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"Keys are built from str keys, not {type(key).__name__} ({key!r})")
    return json.dumps({"key": key}).encode()


class Key(str):
    """A sample key that carries its sample's JSON member."""

    member: bytes

    def __new__(cls, member: bytes) -> "Key":
        key = super().__new__(cls, json.loads(member)["key"])
        key.member = member
        return key

    def __reduce__(self):
        return Key, (self.member,)


class Keys(Sequence):
    """Sequence of str over the rows of a [batch, bytes] uint8 array of JSON members.

    Also built from items: `Key`s keep their metadata; a plain str becomes the member {"key": str}.
    """

    def __init__(self, rows: np.ndarray | Iterable[str]):
        if not isinstance(rows, np.ndarray):
            rows = _dense([key.member if isinstance(key, Key) else _member_of(key) for key in rows])
        elif rows.ndim != 2 or rows.dtype != np.uint8:
            raise TypeError(f"Keys wants a [batch, bytes] uint8 array of JSON members, not {rows.dtype} {rows.shape}")
        self._rows = rows
        self._cache: list[Key] | None = None

    @classmethod
    def from_members(cls, members: list[bytes]) -> "Keys":
        """From the JSON members themselves (readers that have them as bytes)."""
        return cls(_dense(members))

    def _keys(self) -> list[Key]:
        if self._cache is None:
            self._cache = [Key(row.tobytes().rstrip(b"\0")) for row in self._rows]
        return self._cache

    def pin_memory(self) -> "Keys":
        """Host metadata: nothing to pin (torch's pin-memory step asks every batch member for this first)."""
        return self

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
