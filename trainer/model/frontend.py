"""PaSST's log-mel front-end (the reference's AugmentMelSTFT), on CPU or GPU, always in fp32.

pre-emphasis -> STFT (n_fft 1024, hop 320, 800-sample Hann window, periodic=False, centred) ->
power -> Kaldi mel banks (triangles linear in mel = 1127 ln(1 + f/700), no area normalisation;
padded to 513 bins) -> log(x + 1e-5) -> in training, per-sample frequency and time masks (value 0)
-> (x + 4.5) / 5.

In training the mel banks' edges are jittered once per batch:
fmin + randint(fmin_aug_range), fmax + fmax_aug_range // 2 - randint(fmax_aug_range).
The reference applied one SpecAugment mask to the whole batch; here every sample gets its own.

The jittered banks are computed on the input's device from device-side random edges
(`kaldi_mel_banks`, the arithmetic of torchaudio's `compliance.kaldi.get_mel_banks` for tensors of
edges), so a training batch never waits on the host: torchaudio builds them on the CPU, ~38 ms per
batch on the H100 machine's host, and the random draw would need the device's value.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import nn


@dataclass
class FrontendConfig:
    """Mel front-end settings (defaults: DCASE fine-tuning at 32 kHz)."""

    sample_rate: int = 32000  # input rate in Hz
    n_mels: int = 128  # mel bins
    n_fft: int = 1024  # FFT size
    win_length: int = 800  # Hann window length (non-periodic)
    hop_length: int = 320  # STFT hop
    preemphasis: float = 0.97  # y[n] = x[n+1] - c x[n]
    fmin: float = 0.0  # lowest mel-bank edge in eval (Hz)
    fmax: float | None = None  # highest edge in eval (Hz); None: sample_rate / 2 - fmax_aug_range / 2
    fmin_aug_range: int = 1  # training: fmin + randint(fmin_aug_range)
    fmax_aug_range: int = 1000  # training: fmax + range // 2 - randint(range)
    freqm: int = 48  # training: frequency-mask width is uniform in [0, freqm)
    timem: int = 20  # training: time-mask width is uniform in [0, timem)
    log_offset: float = 1e-5  # log(mel + log_offset)
    norm_shift: float = 4.5  # output = (log-mel + norm_shift) / norm_scale
    norm_scale: float = 5.0

    @property
    def eval_fmax(self) -> float:
        return self.fmax if self.fmax is not None else self.sample_rate // 2 - self.fmax_aug_range // 2


# The settings tables of reference/passt.md.
PRESETS = {
    "dcase32k": FrontendConfig(sample_rate=32000, timem=20, fmin_aug_range=1, fmax_aug_range=1000),
    "audioset32k": FrontendConfig(sample_rate=32000, timem=192, fmin_aug_range=10, fmax_aug_range=2000),
    "sit44k": FrontendConfig(sample_rate=44100, timem=20, fmin_aug_range=1, fmax_aug_range=1000),
}


def fft_bin_mels(n_fft: int, sample_rate: float) -> torch.Tensor:
    """Mel value of each FFT bin below Nyquist, float32 [n_fft // 2], as Kaldi's bank code computes it."""
    freqs = (sample_rate / n_fft) * torch.arange(n_fft / 2)
    return 1127.0 * (1.0 + freqs / 700.0).log()


def kaldi_mel_banks(n_mels: int, fft_mels: torch.Tensor, sample_rate: float, fmin: torch.Tensor,
                    fmax: torch.Tensor) -> torch.Tensor:
    """Kaldi triangles for tensors of band edges: fmin, fmax [...] -> [..., n_mels, n_fft // 2 + 1].

    torchaudio's `get_mel_banks` (no VTLN) for Python floats, done with tensors on their device: the edges'
    mel values in float64 (Kaldi's scalar arithmetic), rounded to float32 before the triangle arithmetic
    (torchaudio's), so the banks agree to float32 rounding.  `fft_mels` is `fft_bin_mels(n_fft, rate)`;
    fmax <= 0 counts down from Nyquist (Kaldi's convention); the Nyquist column is zero.
    """
    nyquist = 0.5 * sample_rate
    fmin, fmax = fmin.double(), fmax.double()
    fmax = torch.where(fmax <= 0, fmax + nyquist, fmax)
    mel_low = 1127.0 * torch.log(1.0 + fmin / 700.0)
    mel_high = 1127.0 * torch.log(1.0 + fmax / 700.0)
    delta = ((mel_high - mel_low) / (n_mels + 1)).float()[..., None, None]
    low = mel_low.float()[..., None, None]
    index = torch.arange(n_mels, device=fft_mels.device, dtype=torch.float32)[:, None]
    left = low + index * delta
    center = low + (index + 1.0) * delta
    right = low + (index + 2.0) * delta
    up = (fft_mels - left) / (center - left)
    down = (right - fft_mels) / (right - center)
    return nn.functional.pad(torch.minimum(up, down).clamp_min(0.0), (0, 1))


def check_band_edges(cfg: FrontendConfig) -> None:
    """The extreme jittered edges must satisfy Kaldi's 0 <= fmin < fmax <= Nyquist."""
    nyquist = cfg.sample_rate / 2
    lowest_fmax = cfg.eval_fmax + cfg.fmax_aug_range // 2 - (cfg.fmax_aug_range - 1)
    highest_fmax = cfg.eval_fmax + cfg.fmax_aug_range // 2
    highest_fmin = cfg.fmin + cfg.fmin_aug_range - 1
    if lowest_fmax <= 0:
        lowest_fmax += nyquist
        highest_fmax += nyquist
    if not (0 <= cfg.fmin and highest_fmin < nyquist and highest_fmax <= nyquist and highest_fmin < lowest_fmax):
        raise ValueError(f"mel band edges out of range at sample_rate={cfg.sample_rate}: fmin {cfg.fmin}..{highest_fmin} "
                         f"and fmax {lowest_fmax:g}..{highest_fmax:g} must satisfy 0 <= fmin < fmax <= "
                         f"{nyquist:g} (Nyquist); change frontend.fmin / fmax / fmin_aug_range / fmax_aug_range")


class MelFrontend(nn.Module):
    """Waveforms [B, L] -> normalised log-mel [B, 1, n_mels, frames]; augmentation only in training."""

    def __init__(self, config: FrontendConfig = FrontendConfig()):
        super().__init__()
        self.config = c = config
        if c.fmin_aug_range < 1 or c.fmax_aug_range < 1:
            raise ValueError("fmin_aug_range and fmax_aug_range must be >= 1 (1 means no jitter)")
        check_band_edges(c)
        self.register_buffer("window", torch.hann_window(c.win_length, periodic=False), persistent=False)
        self.register_buffer("fft_mels", fft_bin_mels(c.n_fft, float(c.sample_rate)), persistent=False)
        self.register_buffer("eval_banks", self.banks(torch.tensor(c.fmin), torch.tensor(c.eval_fmax)),
                             persistent=False)

    def frames(self, samples: int) -> int:
        """Output frames for a clip of `samples` (pre-emphasis drops one sample; the STFT is centred)."""
        return (samples - 1) // self.config.hop_length + 1

    def banks(self, fmin: torch.Tensor, fmax: torch.Tensor) -> torch.Tensor:
        """Kaldi mel banks [..., n_mels, n_fft // 2 + 1] for band edges in Hz (tensors), on this module's device."""
        c = self.config
        device = self.window.device
        return kaldi_mel_banks(c.n_mels, self.fft_mels, float(c.sample_rate), fmin.to(device), fmax.to(device))

    def _banks(self) -> torch.Tensor:
        c = self.config
        if not self.training:
            return self.eval_banks
        device = self.window.device
        fmin = c.fmin + torch.randint(c.fmin_aug_range, (), device=device)
        fmax = c.eval_fmax + c.fmax_aug_range // 2 - torch.randint(c.fmax_aug_range, (), device=device)
        return self.banks(fmin, fmax)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"MelFrontend expects waveforms [batch, samples], got shape {tuple(wave.shape)}")
        c = self.config
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = wave.float()
            x = x[:, 1:] - c.preemphasis * x[:, :-1]
            spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window,
                              center=True, pad_mode="reflect", normalized=False, return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2
            mel = torch.matmul(self._banks(), power)
            mel = torch.log(mel + c.log_offset).unsqueeze(1)
            if self.training:
                if c.freqm:
                    mel = AF.mask_along_axis_iid(mel, c.freqm, 0.0, axis=2)
                if c.timem:
                    mel = AF.mask_along_axis_iid(mel, c.timem, 0.0, axis=3)
            return (mel + c.norm_shift) / c.norm_scale
