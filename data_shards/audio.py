"""Read one source clip, check it, bring it to the shard's rate and channel count, and encode it.

Runs inside packing workers, so it imports torch(audio) only when a clip needs resampling.
Samples that need no conversion are copied as integers, so a 16- or 24-bit source comes back out of
the shard bit for bit.  Anything that is not a complete, decodable audio file raises `AudioError`
with a reason meant for rejected.csv.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

# Shard audio formats: name -> tar member extension.
FORMATS = {"flac": "flac", "wav": "wav", "pcm16": "pcm"}
_SF_FORMAT = {"flac": "FLAC", "wav": "WAV"}
_16_BIT_SUBTYPES = {"PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW"}


class AudioError(Exception):
    """A source file that cannot be packed; the message is the reason recorded in rejected.csv."""


@dataclass
class Encoded:
    """A clip ready for the shard: encoded bytes plus the facts that go into its JSON."""

    data: bytes
    sample_rate: int
    num_samples: int
    bits: int
    original_sample_rate: int
    original_channels: int
    conversions: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


def check_wav_complete(path: Path) -> None:
    """Raise if a RIFF/WAVE file's data chunk claims more bytes than the file holds.

    libsndfile silently returns the frames that are present, so a copy cut short by a failed
    download would otherwise be packed as a shorter clip.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not RIFF/WAVE (e.g. FLAC named .wav): libsndfile decides
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                if pos + 8 + chunk_size > size:
                    raise AudioError(f"truncated WAV: data chunk declares {chunk_size} bytes, "
                                     f"file holds {size - pos - 8}")
                return
            pos += 8 + chunk_size + (chunk_size & 1)
        raise AudioError("WAV file has no complete data chunk")


def _read(path: Path) -> tuple[np.ndarray, int, int]:
    """Decode a file to [frames, channels] integers (when PCM) or floats, with its rate and bit depth."""
    if not path.is_file():
        raise AudioError("file not found")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    if path.suffix.lower() in (".wav", ".wave"):
        check_wav_complete(path)
    try:
        info = sf.info(str(path))
        bits = 16 if info.subtype in _16_BIT_SUBTYPES else 24
        dtype = "int16" if bits == 16 else ("int32" if info.subtype.startswith("PCM") else "float64")
        data, rate = sf.read(str(path), dtype=dtype, always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"not decodable audio ({exc})") from None
    except OSError as exc:
        raise AudioError(f"unreadable file ({exc.strerror or exc})") from None
    if len(data) == 0:
        raise AudioError("no audio frames")
    if info.frames > 0 and len(data) < info.frames:
        raise AudioError(f"truncated: header declares {info.frames} frames, {len(data)} decoded")
    return data, rate, bits


def _to_unit_float(data: np.ndarray) -> np.ndarray:
    if data.dtype == np.int16:
        return data.astype(np.float64) / 32768.0
    if data.dtype == np.int32:  # libsndfile left-aligns 24-bit samples in int32
        return data.astype(np.float64) / 2147483648.0
    return data.astype(np.float64)


def _quantize(x: np.ndarray, bits: int) -> np.ndarray:
    if bits == 16:
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    q = np.clip(np.round(x * 8388608.0), -8388608, 8388607).astype(np.int32)
    return q << 8


def resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Resample [frames, channels] float audio with torchaudio's band-limited sinc interpolation."""
    import torch
    import torchaudio.functional as AF

    torch.set_num_threads(1)  # one clip per worker process; threads would fight the pool
    wave = torch.from_numpy(np.ascontiguousarray(x.T))
    return AF.resample(wave, orig, new).numpy().T


def load_clip(path: Path, *, sample_rate: int, audio_format: str) -> Encoded:
    """Read `path`, downmix to mono and resample to `sample_rate` when needed, encode as `audio_format`.

    The shard keeps the source's bit depth (16, or 24 for anything deeper) except for raw pcm16.
    """
    data, rate, source_bits = _read(path)
    bits = 16 if audio_format == "pcm16" else source_bits
    channels = data.shape[1]
    conversions = []
    if channels != 1:
        conversions.append(f"downmixed {channels}->1 channels")
    if rate != sample_rate:
        conversions.append(f"resampled {rate}->{sample_rate} Hz")
    if data.dtype == np.float64:
        conversions.append(f"quantised floating point to {bits} bits")
    elif bits != source_bits:
        conversions.append(f"requantised {source_bits}->{bits} bits")
    if conversions:
        x = _to_unit_float(data)
        if channels != 1:
            x = x.mean(axis=1, keepdims=True)
        if rate != sample_rate:
            x = resample(x, rate, sample_rate)
        samples = _quantize(x[:, 0], bits)
    else:
        samples = data[:, 0]
    return Encoded(encode(samples, sample_rate, audio_format), sample_rate, len(samples), bits, rate,
                   channels, conversions)


def encode_job(job: tuple[Path, int, str]) -> Encoded | str:
    """Packing worker entry point: (path, sample_rate, audio_format) -> the clip, or the rejection reason.

    Lives here, not in pack.py, so worker processes import only numpy and soundfile.
    """
    path, sample_rate, audio_format = job
    try:
        return load_clip(path, sample_rate=sample_rate, audio_format=audio_format)
    except AudioError as exc:
        return str(exc)


def encode(samples: np.ndarray, sample_rate: int, audio_format: str) -> bytes:
    """Encode mono int16 (16-bit) or left-aligned int32 (24-bit) samples."""
    if audio_format == "pcm16":
        if samples.dtype != np.int16:
            raise ValueError("pcm16 needs int16 samples")
        return samples.astype("<i2").tobytes()
    subtype = "PCM_16" if samples.dtype == np.int16 else "PCM_24"
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=_SF_FORMAT[audio_format], subtype=subtype)
    return buf.getvalue()


def decode(data: bytes, audio_format: str) -> tuple[np.ndarray, int | None]:
    """Decode shard bytes back to float32 samples in [-1, 1) (rate is None for raw pcm16)."""
    if audio_format == "pcm16":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, None
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return samples, rate
