"""Split AudioSet: the published pickle (read from a local path), a synthetic stand-in, and the 10 tasks.

The pickle is a list `[x (N, 10, 128) uint8 VGGish codes, y (N,) class ids, train_ind, test_ind]`.
Tasks: the 100 classes permuted with a seed (42) and cut into rows of `classes_per_task`; labels are
re-mapped to 0..classes_per_task-1; `val_size` samples of each task's train part are split off,
stratified by class, as its validation set.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FRAMES, CODES = 10, 128


class DataError(ValueError):
    """A pickle that is not the Split AudioSet layout; the message names the file and the part."""


@dataclass
class Task:
    index: int
    classes: list[int]  # original class ids, in label order
    train_x: torch.Tensor  # uint8 [n, 10, 128]
    train_y: torch.Tensor  # int64 labels 0..k-1
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(x, y, train_ind, test_ind)` from the published pickle, checked for shapes, types and index ranges."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (data.pickle should name audioset_data_balanced.pickle)")
    try:
        with path.open("rb") as f:
            obj = pickle.load(f)
    except Exception as exc:  # unpickling errors come in many types; all mean "not this file"
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        raise DataError(f"{path}: expected a list [x, y, train_ind, test_ind], found {type(obj).__name__}"
                        + (f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else ""))
    x, y, train_ind, test_ind = (np.asarray(v) for v in obj)
    if x.ndim != 3 or x.shape[1:] != (FRAMES, CODES):
        raise DataError(f"{path}: x has shape {x.shape}; expected (N, {FRAMES}, {CODES}) VGGish codes")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x has dtype {x.dtype}; expected uint8 codes")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y has shape {y.shape} and dtype {y.dtype}; expected ({len(x)},) integer class ids")
    for name, ind in (("train_ind", train_ind), ("test_ind", test_ind)):
        if ind.ndim != 1 or not np.issubdtype(ind.dtype, np.integer) or (ind.size and (ind.min() < 0 or ind.max() >= len(x))):
            raise DataError(f"{path}: {name} must be a 1-D array of integer indexes into x (0..{len(x) - 1})")
    if np.intersect1d(train_ind, test_ind).size:
        raise DataError(f"{path}: train_ind and test_ind overlap")
    return x, y.astype(np.int64), train_ind.astype(np.int64), test_ind.astype(np.int64)


def synthetic(seed: int = 0, num_classes: int = 100, train_per_class: int = 800, test_per_class: int = 200, *,
              atoms: int = 12, atoms_per_class: int = 3, atom_codes: int = 12, background_atoms: int = 2,
              max_shift: int = 4, signal: float = 1.5, noise: float = 2.5,
              codes: str = "vggish") -> tuple[np.ndarray, ...]:
    """A stand-in with the pickle's shapes, sizes and dtype, its classes built from one shared basis.

    `atoms` spectral atoms (each a non-negative profile over `atom_codes` of the 128 codes; atoms overlap) form
    the basis; a class is `atoms_per_class` of them, each with its own temporal envelope over the 10 frames (a
    random walk).  As audio classes share spectral components, every atom serves about num_classes *
    atoms_per_class / atoms classes spread over all tasks: what is learnt for one task serves others (transfer)
    and a new task re-purposes the units the old heads read (interference).  A sample scales each envelope by
    its own gain with a per-frame jitter, adds `background_atoms` random atoms with random envelopes (other
    sounds in the clip), is rotated in time by up to `max_shift` frames (events are not aligned with the clip)
    and sits on background noise codes.

    `codes` sets the scale.  "vggish" (default): as the released embeddings are made, each of the 128 codes is
    whitened (here: standardised over the data set, as PCA whitening leaves each component at unit variance),
    clipped to +-2 and mapped onto 0..255 with the postprocessor's truncating cast, so a code sits around 128 with
    a spread of about 60 and ~2% of the values at each end; the LSTM sees them raw, as the published code feeds
    them.  "small": the sum itself rounded (mean ~4, std ~3), the scale of this project's tables before 2026-12
    (`benchmarks/results/continual_small.md`), kept to reproduce them.
    """
    if codes not in QUANTISERS:
        raise DataError(f"synthetic codes={codes!r}: choose one of {sorted(QUANTISERS)} (data.synthetic_codes)")
    rng = np.random.default_rng(seed)
    basis = np.zeros((atoms, CODES), np.float32)
    for a in range(atoms):
        basis[a, rng.choice(CODES, atom_codes, replace=False)] = rng.uniform(0.5, 1.5, atom_codes)
    members = np.stack([rng.choice(atoms, atoms_per_class, replace=False) for _ in range(num_classes)])
    y = np.repeat(np.arange(num_classes), train_per_class + test_per_class)
    envelopes = _random_walks(rng, (num_classes, atoms_per_class))
    gains = (rng.uniform(0.6, 1.4, (len(y), atoms_per_class, 1))
             * (1 + rng.normal(0, 0.3, (len(y), atoms_per_class, FRAMES))))
    # [N, 10, 128] float32 is 0.5 GB: every step below works in place or in one reused buffer (same values, bit
    # for bit, as the expression form; a third of the time)
    x = rng.standard_normal((len(y), FRAMES, CODES), dtype=np.float32)
    x *= noise
    x += 3.0
    term = np.empty_like(x)
    for j in range(atoms_per_class):  # activation [N, frames] of each sample's j-th class atom times its profile
        activation = signal * (envelopes[y, j] * gains[:, j]).astype(np.float32)
        x += np.multiply(activation[:, :, None], basis[members[y, j]][:, None, :], out=term)
    for _ in range(background_atoms):
        activation = signal * _random_walks(rng, (len(y),))
        x += np.multiply(activation[:, :, None], basis[rng.integers(0, atoms, len(y))][:, None, :], out=term)
    del term
    rotated = (np.arange(FRAMES)[None, :] - rng.integers(0, max_shift + 1, len(y))[:, None]) % FRAMES
    x = np.take_along_axis(x, rotated[:, :, None], 1)
    x = QUANTISERS[codes](x)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    train_ind, test_ind = [], []
    for c in range(num_classes):
        rows = np.flatnonzero(y == c)
        train_ind.append(rows[:train_per_class])
        test_ind.append(rows[train_per_class:])
    return x, y, np.sort(np.concatenate(train_ind)), np.sort(np.concatenate(test_ind))


def _vggish_codes(x: np.ndarray) -> np.ndarray:
    """Whitened per code, then the VGGish postprocessor's quantisation: clip to [-2, 2], scale onto [0, 255],
    truncate to uint8 (so 255 is reached by the clipped values only).  In place on the float array."""
    rows = x.reshape(-1, CODES)
    mean = rows.sum(0, dtype=np.float64) / len(rows)
    std = np.sqrt(np.einsum("ij,ij->j", rows, rows, dtype=np.float64) / len(rows) - mean ** 2)  # 15x x.std's speed
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
    np.clip(x, -VGGISH_CLIP, VGGISH_CLIP, out=x)
    x += VGGISH_CLIP
    x *= 255.0 / (2 * VGGISH_CLIP)
    return x.astype(np.uint8)


def _small_codes(x: np.ndarray) -> np.ndarray:
    np.rint(x, out=x)
    return np.clip(x, 0, 255, out=x).astype(np.uint8)


VGGISH_CLIP = 2.0  # the AudioSet release's QUANTIZE_MIN_VAL / MAX_VAL, in standard deviations
QUANTISERS = {"vggish": _vggish_codes, "small": _small_codes}


def _random_walks(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Non-negative envelopes over the frames: 1 + a Gaussian random walk (step std 0.5), clipped at 0."""
    return np.clip(1.0 + np.cumsum(rng.normal(0.0, 0.5, (*shape, FRAMES)), -1), 0.0, None).astype(np.float32)


def make_tasks(x: np.ndarray, y: np.ndarray, train_ind: np.ndarray, test_ind: np.ndarray, *, num_tasks: int = 10,
               classes_per_task: int = 10, seed: int = 42, val_size: int = 500) -> list[Task]:
    classes = np.unique(y)
    if len(classes) < num_tasks * classes_per_task:
        raise DataError(f"{len(classes)} classes in the data; {num_tasks} tasks x {classes_per_task} classes "
                        "need more: lower num_tasks or classes_per_task")
    order = np.random.RandomState(seed).permutation(classes)[:num_tasks * classes_per_task]
    rng = np.random.RandomState(seed)
    tasks = []
    for t, row in enumerate(order.reshape(num_tasks, classes_per_task)):
        remap = {int(c): i for i, c in enumerate(row)}
        train = train_ind[np.isin(y[train_ind], row)]
        test = test_ind[np.isin(y[test_ind], row)]
        val = _stratified(train, y, val_size, rng)
        train = np.setdiff1d(train, val)
        label = lambda idx: torch.tensor([remap[int(c)] for c in y[idx]], dtype=torch.int64)  # noqa: E731
        tasks.append(Task(t, [int(c) for c in row], torch.from_numpy(x[train]), label(train),
                          torch.from_numpy(x[val]), label(val), torch.from_numpy(x[test]), label(test)))
    return tasks


def _stratified(indices: np.ndarray, y: np.ndarray, size: int, rng: np.random.RandomState) -> np.ndarray:
    """`size` of `indices`, spread over classes in proportion (largest remainders)."""
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    if size >= len(indices):
        raise DataError(f"val_size={size} leaves no training data (a task has {len(indices)} train samples)")
    labels, counts = np.unique(y[indices], return_counts=True)
    share = counts * size / counts.sum()
    take = np.floor(share).astype(int)
    take[np.argsort(share - take)[::-1][:size - take.sum()]] += 1
    return np.sort(np.concatenate([rng.choice(indices[y[indices] == c], k, replace=False)
                                   for c, k in zip(labels, take)]))
