"""The waveform augmentation's cost, side by side: the device impulse-response convolution with FFTs over N + K - 1
points against the 7-smooth length `fast_fft_size` picks; and the TAU stage's whole augmentation (`WaveAugment`:
roll, impulse responses, gain) against its per-step formulation (an int64 index per sample for the roll, each
row's response transformed again every step), which gives the same output for the same draws.

    python benchmarks/augment.py [--out benchmarks/results/augment.md]     # CPU here; adds CUDA rows on a GPU
    python benchmarks/augment.py --tiny --out /tmp/augment.md               # a smoke test

Each row: one batch of clips (what `WaveAugment` does every training step with dir_prob > 0: every row convolved,
the chosen ones kept), the median of `--repeats` timed calls after two warm-up calls.
"""
from __future__ import annotations

import datetime
import functools
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from machine import device_name, source_commit
from bench import arguments, median_seconds
from gpu_step import tau_augment_module
from trainer.data.augment import WaveAugment, fast_fft_size, fft_convolve

RATE = 44100


def factors(n: int) -> str:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return " x ".join(map(str, out + ([n] if n > 1 else [])))


def per_step(module: WaveAugment, audio: torch.Tensor, devices: torch.Tensor) -> torch.Tensor:
    """`WaveAugment.forward` as it ran until 2026-12-04, the draws in the same order: the roll through a b x n int64
    index, each row's response gathered and transformed every step."""
    b, n = audio.shape
    shift = torch.randint(-module.roll, module.roll + 1, (b, 1), device=audio.device)
    audio = audio.gather(1, (torch.arange(n, device=audio.device) - shift) % n)
    chosen = (devices == module.dir_device) & (torch.rand(b, device=audio.device) < module.dir_prob)
    irs = module.irs[torch.randint(len(module.irs), (b,), device=audio.device)]
    audio = torch.where(chosen[:, None], fft_convolve(audio, irs)[:, :n], audio)
    gain = (torch.rand(b, 1, device=audio.device) * 2 - 1) * module.gain_db
    return audio * 10.0 ** (gain / 20.0)


def whole_augmentation(device: torch.device, clip: float, batch: int, repeats: int) -> list:
    """One row: the TAU augmentation on a batch, WaveAugment against `per_step`, after checking they agree."""
    torch.manual_seed(0)
    module = tau_augment_module(device, RATE)
    audio = torch.randn(batch, int(clip * RATE), device=device)
    devices = torch.randint(6, (batch,), device=device)
    runs = (module, functools.partial(per_step, module))
    outputs = []
    for run in runs:
        torch.manual_seed(1)
        outputs.append(run(audio, devices))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-5)  # the same augmentation
    ours, before = (median_seconds(lambda f=f: f(audio, devices), repeats, device) for f in runs)
    return [device_name(device, threads=device.type == "cpu"), f"{clip:g} s x {batch}", f"{1e3 * before:.2f}",
            f"{1e3 * ours:.2f}", f"{before / ours:.2f}"]


def main() -> None:
    ap = arguments(__doc__, "augment.md", "small batches, few repeats", 7)
    args = ap.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    repeats = 2 if args.tiny else args.repeats
    rows = []
    for device in devices:
        cpu = device.type == "cpu"
        sizes = ((1.0, 32 if cpu else 256), (10.0, 4 if cpu else 64)) if not args.tiny else ((1.0, 4), (10.0, 2))
        for clip, batch in sizes:
            for ir in (0.05, 0.25, 0.5):
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(batch, int(clip * RATE), generator=gen).to(device)
                h = torch.randn(batch, int(ir * RATE), generator=gen).to(device)
                size = x.shape[1] + h.shape[1] - 1
                exact, fast = (median_seconds(lambda f=f: fft_convolve(x, h, f), repeats, device)
                               for f in (False, True))
                rows.append([device_name(device, threads=cpu), f"{clip:g} s x {batch}", f"{ir:g} s",
                             f"{size} = {factors(size)}", f"{fast_fft_size(size)} = {factors(fast_fft_size(size))}",
                             f"{1e3 * exact:.2f}", f"{1e3 * fast:.2f}", f"{exact / fast:.2f}"])
                print(rows[-1], flush=True)
    whole = [whole_augmentation(device, clip, batch, repeats) for device in devices
             for clip, batch in (((1.0, 32 if device.type == "cpu" else 256), (10.0, 4 if device.type == "cpu" else 64))
                                 if not args.tiny else ((1.0, 4), (10.0, 2)))]
    text = (f"# The waveform augmentation: the convolution's FFT length, and the TAU augmentation per step\n\nMeasured "
            f"{datetime.date.today().isoformat()} (project at {source_commit(Path(__file__).resolve().parent.parent)}) "
            f"with `python benchmarks/augment.py {' '.join(sys.argv[1:])}`: `fft_convolve` on one batch, median of "
            f"{repeats} calls after two warm-up calls, both lengths side by side.\n\n"
            + tabulate(rows, headers=["device", "clips", "response", "N + K - 1", "FFT length used", "ms, exact",
                                      "ms, 7-smooth", "speed-up"], tablefmt="github") + "\n"
            + "\n## The TAU augmentation per step: WaveAugment against its per-step formulation\n\nconfigs/tau.yaml's "
              "roll, impulse-response probability and gain, 66 synthetic 0.25-s responses (MicIRP's count), devices "
              "drawn from TAU's six; both give the same output for the same draws (checked before timing). Per-step: "
              "the roll through an int64 index per sample and each row's response transformed every step; WaveAugment: "
              "the roll as a window of the clip played twice and the responses' spectra computed once per FFT "
              "length.\n\n"
            + tabulate(whole, headers=["device", "clips", "ms, per-step", "ms, WaveAugment", "speed-up"],
                       tablefmt="github") + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
