"""DALI reader of a manifest's split: webdataset reader + CPU audio decode, crop / pad on the device.

`audio_pipeline` is the pure graph; `pipeline_arguments` turns a manifest, a split and loader
settings into its arguments; `DaliReader` runs it for exactly the batches an `EpochPlan` asks for and
hands waveforms, labels (both on the pipeline's device) and the batch's keys to the loader.  The same
graph runs with `device="cpu"` on machines without a GPU (CI) and `device="gpu"` for training.

Nothing per sample happens in Python: labels come from each sample's numeric `.labels` member,
and the JSON members are padded into one dense array per batch from which keys are decoded only
when asked for.  Raw pcm16 shards need no decoding: the int16 samples cross to the GPU (half the
bytes of float32) and are converted there.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
import nvidia.dali.math as dmath

from data_shards.manifest import shard_paths

from .epoch import EpochPlan, training_order
from .keys import Keys
from .subset import Subset, split_index, write_indexes

_DECODE_ERROR = re.compile(r"Error decoding file (?P<tar>.+?):(?P<offset>\d+):(?P<member>[^\s.]+)\.\S+")


class CorruptSampleError(RuntimeError):
    """A sample whose audio cannot be decoded; names the shard and key."""


@pipeline_def
def audio_pipeline(*, paths: list[str], index_paths: list[str], ext: str, labels_ext: str, audio_format: str,
                   source_rate: int, sample_rate: int, crop: int | None, training: bool, shard_id: int,
                   num_shards: int, device: str, crop_source=None):
    """Reads the index files' samples in their order (training: the epoch's order, `epoch.training_order`);
    `crop_source(batch_info)` gives the training crops' positions as fractions in [0, 1), one per sample."""
    audio, labels, meta = fn.readers.webdataset(
        paths=paths, index_paths=index_paths, ext=[ext, labels_ext, "json"], missing_component_behavior="error",
        shard_id=shard_id, num_shards=num_shards, random_shuffle=False, stick_to_shard=not training,
        pad_last_batch=not training, name="reader")
    labels = fn.reinterpret(labels, dtype=types.INT32)  # [label_index, device_index]
    meta = fn.pad(meta, fill_value=0)  # one dense [B, longest] byte array per batch
    if audio_format == "pcm16":
        wave = fn.reinterpret(audio, dtype=types.INT16)  # raw samples: converted after the copy, on the device
    else:
        wave, _ = fn.decoders.audio(audio, dtype=types.FLOAT, downmix=True, sample_rate=float(sample_rate))
    if device == "gpu":
        wave, labels = wave.gpu(), labels.gpu()
    if audio_format == "pcm16":
        wave = fn.cast(wave, dtype=types.FLOAT) * (1.0 / 32768.0)
        if source_rate != sample_rate:
            wave = fn.audio_resample(wave, in_rate=float(source_rate), out_rate=float(sample_rate))
    if crop is None:
        return fn.pad(wave, axes=[0]), labels, meta  # whole clips, zero-padded to the longest in the batch
    if training:
        span = dmath.max(wave.shape(dtype=types.FLOAT) - crop, 0.0)
        fraction = fn.external_source(source=crop_source, batch=True, batch_info=True, dtype=types.FLOAT)
        start = dmath.min(dmath.floor(fraction * (span + 1.0)), span)
    else:
        start = fn.constant(fdata=[0.0])
    wave = fn.slice(wave, start, fn.constant(fdata=[float(crop)]), axes=[0], normalized_anchor=False,
                    normalized_shape=False, out_of_bounds_policy="pad",
                    fill_values=0.0)
    return wave, labels, meta


def pipeline_arguments(folder: Path, manifest: dict, split: str, plan: EpochPlan, *, sample_rate: int,
                       crop: int | None, device: str, shards: tuple[list[Path], list[Path]] | None = None) -> dict:
    """shards: (tars, index files) to read instead of the split's own (a `Subset`'s, or one rank's epoch: then
    they hold this rank's samples only)."""
    tars, indexes = shards or shard_paths(folder, manifest, split)
    own = shards is not None and plan.training
    return dict(paths=[str(p) for p in tars], index_paths=[str(p) for p in indexes],
                ext=manifest["audio_extension"], labels_ext=manifest["labels_extension"],
                audio_format=manifest["audio_format"],
                source_rate=manifest["sample_rate"], sample_rate=sample_rate, crop=crop, training=plan.training,
                shard_id=0 if own else plan.rank, num_shards=1 if own else plan.world_size, device=device)


def crop_fractions(seed: int, epoch: int, rank: int, batch: int, size: int) -> np.ndarray:
    """Where each training crop of a batch starts, as a fraction of the clip's slack: a pure function of the
    batch's place in the epoch, so a resumed epoch crops as the uninterrupted one did."""
    return np.random.default_rng([seed, epoch, rank, 1, batch]).random(size, dtype=np.float32)


class DaliReader:
    """Runs the pipeline for exactly the plan's batches per epoch.  Training epochs read index files of this
    rank's samples in the epoch's order (`training_order`, written to a folder the reader owns) with crops drawn
    per batch: an epoch resumed at batch k reads from batch k on, exactly what the uninterrupted epoch read there,
    and nothing before it.  With a `subset` (an interrupted epoch continued on another number of ranks) the
    same happens over the subset's samples."""

    def __init__(self, folder: Path, manifest: dict, split: str, plan: EpochPlan, *, sample_rate: int,
                 crop: int | None, device: str, seed: int, num_threads: int = 2, subset: Subset | None = None):
        self.plan = plan
        self.folder = folder
        self.device = device
        self.seed = seed
        self._tars = shard_paths(folder, manifest, split)[0]
        self._settings = dict(folder=folder, manifest=manifest, split=split, plan=plan, sample_rate=sample_rate,
                              crop=crop, device="gpu" if device == "cuda" else "cpu")
        shards = None
        if plan.training or subset is not None:
            self._index_dir = tempfile.TemporaryDirectory(prefix="epoch-index-")  # removed with the reader
        if plan.training:
            self._samples = subset.samples if subset is not None else split_index(folder, manifest, split)
            self._shards = np.array([s.shard for s in self._samples], dtype=np.int64)
        elif subset is not None:
            shards = subset.write_indexes(Path(self._index_dir.name))
        self._kwargs = pipeline_arguments(**self._settings, shards=shards)
        self._pipe_args = dict(batch_size=plan.batch_size, num_threads=num_threads,
                               device_id=torch.cuda.current_device() if device == "cuda" else None,
                               prefetch_queue_depth=2)

    def _epoch_arguments(self, epoch: int, skip: int) -> dict:
        """The training pipeline's inputs for `epoch` from batch `skip` on: its index files and crop source."""
        p = self.plan
        order = training_order(self._shards, p, self.seed, epoch)[skip * p.batch_size:]
        for old in Path(self._index_dir.name).iterdir():  # an epoch's files (~100 bytes a sample) go with it
            shutil.rmtree(old)
        folder = Path(self._index_dir.name) / f"epoch{epoch}"
        folder.mkdir()
        shards = write_indexes([self._samples[i] for i in order], self._tars, folder)
        crops = lambda info: crop_fractions(self.seed, epoch, p.rank, skip + info.iteration, p.batch_size)  # noqa: E731
        return {**pipeline_arguments(**self._settings, shards=shards), "crop_source": crops}

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, Keys]]:
        """The epoch's (waveforms, labels [B, 2] int32, keys) from batch `skip` on (resuming mid-epoch: training
        reads nothing before it)."""
        seed = int(np.random.SeedSequence([self.seed, epoch, self.plan.rank]).generate_state(1)[0] >> 1)
        if self.plan.training:
            kwargs, first = self._epoch_arguments(epoch, skip), skip
        else:
            kwargs, first = self._kwargs, 0
        pipe = audio_pipeline(**self._pipe_args, seed=seed, **kwargs)
        pipe.build()
        for index in range(first, self.plan.batches):
            try:
                wave, labels, meta = pipe.run()
            except RuntimeError as exc:
                raise self._explain(exc) from None
            if index >= skip:
                yield self._to_torch(wave), self._to_torch(labels), Keys(np.array(meta.as_tensor()))

    def _to_torch(self, output) -> torch.Tensor:
        """A copy of a dense DALI output as a torch tensor on the reader's device (DALI reuses its buffers)."""
        if self.device != "cuda":
            return torch.from_numpy(np.array(output.as_tensor()))
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        dense = output.as_tensor()
        out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device="cuda")
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
        return out

    def _explain(self, exc: RuntimeError) -> Exception:
        found = _DECODE_ERROR.search(str(exc))
        if not found:
            return exc
        return CorruptSampleError(
            f"corrupt audio in shard {found['tar']} (key {found['member']}, byte offset {found['offset']}); "
            f"check the dataset with: python -m data_shards verify {self.folder}")
