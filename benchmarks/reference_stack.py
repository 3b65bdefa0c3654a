"""The stack audio researchers train PaSST with today, for side-by-side timing (written here from its
description; the model and its mel front-end are the `hear21passt` package's own classes).

- data: a torch `Dataset` of WAV files decoded with soundfile in DataLoader worker processes
  (shuffled, pinned memory, whole batches), waveforms copied to the GPU per batch;
- front-end: hear21passt's `AugmentMelSTFT` (its Kaldi mel banks are built on the CPU each batch);
- model: hear21passt's `PaSST` with PaSST-S's shape (768 wide, 12 blocks, 16x16 patches, stride 10, cls +
  dist tokens, frequency patchout 6) and its explicit-softmax attention;
- optimisation: Adam over fp32 weights, bf16 autocast, the loss read every step (as training scripts and
  Lightning's per-step logging do).

    pip install '.[bench]'    # hear21passt + timm (the lent GPU machines have timm already)
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class WavClips(Dataset):
    """(waveform float32 [samples], label) per WAV file, cropped or zero-padded to `samples`."""

    def __init__(self, paths: list[Path], labels: list[int], samples: int):
        self.paths, self.labels, self.samples = paths, labels, samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        wave, _ = sf.read(str(self.paths[index]), dtype="float32")
        wave = wave[:self.samples]
        if len(wave) < self.samples:
            wave = np.pad(wave, (0, self.samples - len(wave)))
        return torch.from_numpy(wave), self.labels[index]


def build(num_classes: int, sample_rate: int, tiny: bool, device: torch.device):
    """hear21passt's mel front-end and PaSST (PaSST-S shape, or a 32-wide 2-block one with `tiny`)."""
    from hear21passt.models.passt import PaSST
    from hear21passt.models.preprocess import AugmentMelSTFT

    width = dict(embed_dim=32, depth=2, num_heads=2) if tiny else dict(embed_dim=768, depth=12, num_heads=12)
    model = PaSST(img_size=(128, 998), patch_size=16, stride=(10, 10), in_chans=1, num_classes=num_classes,
                  distilled=True, s_patchout_t=0, s_patchout_f=6, **width)
    mel = AugmentMelSTFT(n_mels=128, sr=sample_rate, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=20,
                         fmin=0.0, fmax=None, fmin_aug_range=1, fmax_aug_range=1000)
    return mel.to(device).train(), model.to(device).train()


def _step(mel, model, optimizer, wave, label, device) -> float:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits, _ = model(mel(wave).unsqueeze(1))
        loss = F.cross_entropy(logits.float(), label)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(paths: list[Path], labels: list[int], *, num_classes: int, sample_rate: int, samples: int, batch: int,
            workers: int, steps: int, warmup: int, tiny: bool, device: torch.device) -> dict:
    """samples/s of the whole step (data from WAV files) and of the model step alone (a batch already on the GPU)."""
    torch.manual_seed(0)
    mel, model = build(num_classes, sample_rate, tiny, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-3)
    loader = DataLoader(WavClips(paths, labels, samples), batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0)
    if len(loader) < 1:
        raise ValueError(f"reference stack: {len(paths)} clips make no batch of {batch}")

    def batches():
        while True:
            yield from loader

    data = batches()
    for _ in range(warmup):
        wave, label = next(data)
        _step(mel, model, optimizer, wave.to(device, non_blocking=True), label.to(device, non_blocking=True), device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        wave, label = next(data)
        _step(mel, model, optimizer, wave.to(device, non_blocking=True), label.to(device, non_blocking=True), device)
    _sync(device)
    whole = batch * steps / (time.perf_counter() - start)

    wave = torch.randn(batch, samples, device=device) * 0.1
    label = torch.randint(num_classes, (batch,), device=device)
    for _ in range(warmup):
        _step(mel, model, optimizer, wave, label, device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        _step(mel, model, optimizer, wave, label, device)
    _sync(device)
    model_only = batch * steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"whole": whole, "model": model_only, "workers": workers, "peak_gib": peak}
