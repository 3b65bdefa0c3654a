"""Batch augmentations in torch (GPU or CPU, same code): waveform roll, device impulse responses, gain,
and frequency MixStyle on log-mels.  All are identity in eval mode.

Both loader backends deliver plain waveform batches and share these modules, so augmentation is
identical whichever backend reads the shards.
"""
from __future__ import annotations

import functools
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import nn


def load_impulse_responses(folder: str | Path, sample_rate: int) -> torch.Tensor:
    """All WAV/FLAC files of `folder` as mono float32 at `sample_rate`, zero-padded to the longest: [N, K]."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".wav", ".flac")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no impulse responses (*.wav, *.flac) in {folder}: set the DIR folder "
                                "to the MicIRP set, or set dir_prob=0")
    irs = []
    for path in files:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        ir = torch.from_numpy(data.mean(axis=1))
        if rate != sample_rate:
            ir = AF.resample(ir, rate, sample_rate)
        irs.append(ir)
    return nn.utils.rnn.pad_sequence(irs, batch_first=True)


class WaveAugment(nn.Module):
    """Per-sample roll, device-impulse-response convolution (device-a clips only) and gain."""

    def __init__(self, roll: int = 0, dir_prob: float = 0.0, impulse_responses: torch.Tensor | None = None,
                 dir_device: int = 0, gain_db: float = 0.0):
        super().__init__()
        if dir_prob > 0 and impulse_responses is None:
            raise ValueError("dir_prob > 0 needs impulse responses (the MicIRP folder)")
        self.roll = roll
        self.dir_prob = dir_prob
        self.dir_device = dir_device
        self.gain_db = gain_db
        self.register_buffer("irs", impulse_responses if impulse_responses is not None else torch.zeros(0, 1),
                             persistent=False)
        self._spectra: tuple[int, torch.Tensor] | None = None  # (FFT length, rfft of every response over it)

    def forward(self, audio: torch.Tensor, device: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return audio
        b, n = audio.shape
        if self.roll:
            # Row i starts (n - shift_i) mod n samples into the clip played twice: a window of a view, where an
            # index per sample (b x n int64, built and read every step) costs several memory passes more.
            shift = torch.randint(-self.roll, self.roll + 1, (b, 1), device=audio.device)
            start = (n - shift.view(-1)) % n
            audio = torch.cat([audio, audio], 1).unfold(1, n, 1)[torch.arange(b, device=audio.device), start]
        if self.dir_prob > 0:
            # Every row is convolved and the chosen ones kept: a few FFTs more, but no host sync on how many
            # were chosen (boolean indexing waits for the device).
            chosen = (device == self.dir_device) & (torch.rand(b, device=audio.device) < self.dir_prob)
            size = fast_fft_size(n + self.irs.shape[1] - 1)
            responses = self.response_spectra(size)[torch.randint(len(self.irs), (b,), device=audio.device)]
            convolved = torch.fft.irfft(torch.fft.rfft(audio, size) * responses, size)[:, :n]
            audio = torch.where(chosen[:, None], convolved, audio)
        if self.gain_db:
            gain = (torch.rand(b, 1, device=audio.device) * 2 - 1) * self.gain_db
            audio = audio * 10.0 ** (gain / 20.0)
        return audio

    def response_spectra(self, size: int) -> torch.Tensor:
        """The responses' rfft over `size` points, computed when the FFT length (the clip length) or the device
        changes, not every step: they are fixed, and their FFT was a third of the convolution's."""
        if self._spectra is None or self._spectra[0] != size or self._spectra[1].device != self.irs.device:
            self._spectra = (size, torch.fft.rfft(self.irs, size))
        return self._spectra[1]


def fft_convolve(x: torch.Tensor, h: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Full linear convolution of rows of x [B, N] with rows of h [B, K] -> [B, N + K - 1], via rfft over
    `fast_fft_size(N + K - 1)` points (fast=False: exactly N + K - 1, for comparison)."""
    size = x.shape[-1] + h.shape[-1] - 1
    n = fast_fft_size(size) if fast else size
    return torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(h, n), n)[..., :size]


@functools.lru_cache(maxsize=64)
def fast_fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c 7^d >= n.  cuFFT and pocketfft are fastest on such lengths and fall back to
    several times slower algorithms on a large prime factor, which N + K - 1 often has (a 1-s clip at 44.1 kHz and
    a 0.25-s response: 55124 = 4 x 13781; 1.3-8.1x slower on the CPU, `benchmarks/results/augment.md`)."""
    best = 1 << max(0, (n - 1).bit_length())  # the power of two
    odd = [1]
    for p in (3, 5, 7):
        odd = [m * p**k for m in odd for k in range(best.bit_length()) if m * p**k < best]
    for m in odd:
        size = m << max(0, (-(-n // m) - 1).bit_length())  # m times the smallest power of two reaching n
        best = min(best, size)
    return best


class FreqMixStyle(nn.Module):
    """Frequency MixStyle on [B, C, F, T]: with probability p per batch, mix per-bin statistics between samples.

    mu, sig over (channel, time) per sample and bin (unbiased variance, sig = sqrt(var + eps), detached);
    lam ~ Beta(alpha, alpha) per sample; perm a random permutation of the batch.  The coin, lam and perm are
    drawn on the input's device and the batch is mixed whatever the coin says, then kept or not with
    `torch.where`: the host never waits for a random number.
    """

    def __init__(self, p: float = 0.4, alpha: float = 0.4, eps: float = 1e-6):
        super().__init__()
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        b = x.shape[0]
        apply = torch.rand((), device=x.device) < self.p
        concentration = torch.full((b, 1, 1, 1), self.alpha, device=x.device)
        lam = torch.distributions.Beta(concentration, concentration, validate_args=False).sample().to(x.dtype)
        perm = torch.randperm(b, device=x.device)
        return torch.where(apply, mix_statistics(x, lam, perm, self.eps), x)


def mix_statistics(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, eps: float) -> torch.Tensor:
    """x re-normalised with per-bin statistics mixed between each sample (weight lam) and sample perm[i]."""
    mu = x.mean(dim=(1, 3), keepdim=True).detach()
    sig = (x.var(dim=(1, 3), keepdim=True) + eps).sqrt().detach()
    # gather, not mu[perm]: inductor's pattern for x[randperm(n)] crashes compiling it (pytorch#183988), which
    # would keep MixStyle out of a compiled graph
    index = perm.view(-1, 1, 1, 1).expand_as(mu)
    mixed_sig = lam * sig + (1 - lam) * sig.gather(0, index)
    mixed_mu = lam * mu + (1 - lam) * mu.gather(0, index)
    return (x - mu) / sig * mixed_sig + mixed_mu
