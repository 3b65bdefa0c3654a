"""PaSST's log-mel front-end (the reference's AugmentMelSTFT), on CPU or GPU, always in fp32.

pre-emphasis -> STFT (n_fft 1024, hop 320, 800-sample Hann window, periodic=False, centred) ->
power -> Kaldi mel banks from torchaudio (triangles linear in mel = 1127 ln(1 + f/700), no area
normalisation; padded to 513 bins) -> log(x + 1e-5) -> in training, per-sample frequency and time
masks (value 0) -> (x + 4.5) / 5.

In training the mel banks' edges are jittered once per batch:
fmin + randint(fmin_aug_range), fmax + fmax_aug_range // 2 - randint(fmax_aug_range).
The reference applied one SpecAugment mask to the whole batch; here every sample gets its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.compliance.kaldi as kaldi
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


def mel_banks(cfg: FrontendConfig, fmin: float, fmax: float) -> torch.Tensor:
    """Kaldi triangles [n_mels, n_fft // 2 + 1] (the Nyquist column is zero)."""
    banks, _ = kaldi.get_mel_banks(cfg.n_mels, cfg.n_fft, float(cfg.sample_rate), fmin, fmax,
                                   vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0)
    return torch.nn.functional.pad(banks, (0, 1))


class MelFrontend(nn.Module):
    """Waveforms [B, L] -> normalised log-mel [B, 1, n_mels, frames]; augmentation only in training."""

    def __init__(self, sample_rate: int = 32000, **settings):
        super().__init__()
        self.config = FrontendConfig(sample_rate=sample_rate, **settings)
        c = self.config
        if c.fmin_aug_range < 1 or c.fmax_aug_range < 1:
            raise ValueError("fmin_aug_range and fmax_aug_range must be >= 1 (1 means no jitter)")
        self.register_buffer("window", torch.hann_window(c.win_length, periodic=False), persistent=False)
        self.register_buffer("eval_banks", mel_banks(c, c.fmin, c.eval_fmax), persistent=False)

    @classmethod
    def from_config(cls, config: FrontendConfig) -> "MelFrontend":
        fields = {k: v for k, v in config.__dict__.items() if k != "sample_rate"}
        return cls(config.sample_rate, **fields)

    def frames(self, samples: int) -> int:
        """Output frames for a clip of `samples` (pre-emphasis drops one sample; the STFT is centred)."""
        return (samples - 1) // self.config.hop_length + 1

    def _banks(self) -> torch.Tensor:
        c = self.config
        if not self.training:
            return self.eval_banks
        fmin = c.fmin + int(torch.randint(c.fmin_aug_range, (1,)))
        fmax = c.eval_fmax + c.fmax_aug_range // 2 - int(torch.randint(c.fmax_aug_range, (1,)))
        return mel_banks(c, fmin, fmax).to(self.window.device)

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
