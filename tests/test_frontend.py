"""The mel front-end against an independent NumPy computation of the same formulas, and its augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from trainer.model.frontend import PRESETS, FrontendConfig, MelFrontend, fft_bin_mels, kaldi_mel_banks


def _numpy_logmel(wave: np.ndarray, sr: int, fmin: float, fmax: float, n_mels=128, n_fft=1024, win=800,
                  hop=320) -> np.ndarray:
    """Written from the formulas alone (float64), sharing no code with the module under test."""
    x = wave[:, 1:] - 0.97 * wave[:, :-1]
    pad = n_fft // 2
    x = np.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left:left + win] = np.hanning(win)  # symmetric = periodic=False
    frames = 1 + (x.shape[1] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.fft.rfft(x[:, idx] * window, axis=-1)  # [B, frames, 513]
    power = spec.real ** 2 + spec.imag ** 2
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(fmin), mel(fmax)
    delta = (hi - lo) / (n_mels + 1)
    bin_mel = mel(np.arange(n_fft // 2) * sr / n_fft)
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        l, c, r = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        banks[m, :-1] = np.maximum(0.0, np.minimum((bin_mel - l) / (c - l), (r - bin_mel) / (r - c)))
    melspec = np.einsum("mk,bfk->bmf", banks, power)
    return ((np.log(melspec + 1e-5) + 4.5) / 5.0)[:, None]


@pytest.mark.parametrize("preset,fmax", [("sit44k", 21550), ("dcase32k", 15500)])
def test_eval_output_matches_numpy(preset, fmax):
    cfg = PRESETS[preset]
    assert cfg.eval_fmax == fmax
    rng = np.random.default_rng(0)
    wave = rng.standard_normal((2, cfg.sample_rate)) * 0.1
    wave[1] *= np.linspace(0, 1, cfg.sample_rate)  # a quiet onset: small energies in the log too
    frontend = MelFrontend(cfg).eval()
    out = frontend(torch.from_numpy(wave).float()).numpy()
    ref = _numpy_logmel(wave.astype(np.float32).astype(np.float64), cfg.sample_rate, 0.0, fmax)
    assert out.shape == ref.shape == (2, 1, 128, frontend.frames(cfg.sample_rate))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_frame_counts():
    assert MelFrontend(FrontendConfig(44100)).frames(44100) == 138
    assert MelFrontend(FrontendConfig(32000)).frames(32000) == 100
    assert MelFrontend(FrontendConfig(44100)).frames(441000) == 1379


def test_training_masks_are_per_sample():
    torch.manual_seed(0)
    frontend = MelFrontend(FrontendConfig(32000, freqm=48, timem=40, fmax_aug_range=1)).train()
    wave = torch.randn(1, 32000).repeat(8, 1) * 0.1
    out = frontend(wave)
    masked = out == 0.9  # mask value 0 before (x + 4.5) / 5
    clean = MelFrontend(FrontendConfig(32000, fmax_aug_range=1)).eval()(wave)
    torch.testing.assert_close(out[~masked], clean[~masked])
    patterns = {tuple(m.flatten().nonzero().flatten().tolist()) for m in masked}
    assert len(patterns) > 4, "each sample must get its own masks"
    for m in masked[:, 0]:
        rows = m.all(dim=1).nonzero().flatten().tolist()
        cols = m.all(dim=0).nonzero().flatten().tolist()
        assert rows == list(range(rows[0], rows[0] + len(rows))) if rows else True
        assert cols == list(range(cols[0], cols[0] + len(cols))) if cols else True
        assert len(rows) < 48 and len(cols) < 40


def test_fmin_fmax_jitter_only_in_training():
    wave = torch.randn(2, 32000) * 0.1
    jitter = MelFrontend(FrontendConfig(32000, freqm=0, timem=0, fmin_aug_range=10, fmax_aug_range=2000))
    torch.manual_seed(1)
    a = jitter.train()(wave)
    b = jitter(wave)
    assert not torch.equal(a, b)
    assert torch.equal(jitter.eval()(wave), jitter(wave))
    still = MelFrontend(FrontendConfig(32000, freqm=0, timem=0, fmin_aug_range=1, fmax_aug_range=1))
    torch.testing.assert_close(still.train()(wave), still.eval()(wave))


EDGES = [(44100, 0.0, 21550.0), (44100, 0.0, 22050.0), (44100, 9.0, 20123.0), (32000, 0.0, 15500.0),
         (32000, 7.0, 14001.0), (16000, 20.0, -400.0)]


@pytest.mark.parametrize("rate,fmin,fmax", EDGES)
def test_device_banks_equal_torchaudios_kaldi_banks(rate, fmin, fmax):
    ref, _ = kaldi.get_mel_banks(128, 1024, float(rate), fmin, fmax, 100.0, -500.0, 1.0)
    ours = kaldi_mel_banks(128, fft_bin_mels(1024, float(rate)), float(rate), torch.tensor(fmin), torch.tensor(fmax))
    assert ours.shape == (128, 513) and ours.dtype == torch.float32
    torch.testing.assert_close(ours[:, :-1], ref, rtol=1e-5, atol=1e-7)
    assert not ours[:, -1].any()  # the Nyquist column


def test_banks_are_vectorised_over_band_edges():
    rate = 44100.0
    fmin = torch.tensor([0.0, 9.0, 3.0])
    fmax = torch.tensor([21550.0, 20123.0, 22050.0])
    batched = kaldi_mel_banks(128, fft_bin_mels(1024, rate), rate, fmin, fmax)
    assert batched.shape == (3, 128, 513)
    for i in range(3):
        ref, _ = kaldi.get_mel_banks(128, 1024, rate, float(fmin[i]), float(fmax[i]), 100.0, -500.0, 1.0)
        torch.testing.assert_close(batched[i, :, :-1], ref, rtol=1e-5, atol=1e-7)


def test_training_output_uses_the_drawn_band_edges():
    """Masks off: a training batch equals the NumPy log-mel with the Kaldi banks of the edges the module drew."""
    rate = 32000
    frontend = MelFrontend(FrontendConfig(rate, freqm=0, timem=0, fmin_aug_range=10, fmax_aug_range=2000)).train()
    wave = torch.randn(2, rate) * 0.1
    for seed in range(3):
        torch.manual_seed(seed)
        out = frontend(wave).numpy()
        torch.manual_seed(seed)
        fmin = 0.0 + int(torch.randint(10, ()))
        fmax = frontend.config.eval_fmax + 1000 - int(torch.randint(2000, ()))
        ref = _numpy_logmel(wave.double().numpy(), rate, fmin, fmax)
        # float32 module against a float64 reference: over inputs, single values of the 25,600 reach 3e-5 apart;
        # an edge 1 Hz off moves values by 3e-3 (fmax) to 0.28 (fmin), so this still pins the edges drawn
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=5e-5)


def test_band_edges_beyond_nyquist_are_a_config_error():
    with pytest.raises(ValueError, match="frontend.fmin / fmax"):
        MelFrontend(FrontendConfig(32000, fmax=16000, fmax_aug_range=1000))
    with pytest.raises(ValueError, match="0 <= fmin < fmax"):
        MelFrontend(FrontendConfig(32000, fmin=16500))


def test_fp32_inside_autocast():
    frontend = MelFrontend(FrontendConfig(44100)).eval()
    wave = torch.randn(2, 44100) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(wave.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, frontend(wave.bfloat16().float()))


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        MelFrontend(FrontendConfig(32000))(torch.randn(32000))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    wave = torch.randn(4, 44100) * 0.1
    frontend = MelFrontend(FrontendConfig(44100)).eval()
    cpu = frontend(wave)
    gpu = frontend.cuda()(wave.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
