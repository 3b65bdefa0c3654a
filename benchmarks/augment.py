"""The device impulse-response convolution of the waveform augmentation: FFTs over N + K - 1 points against the
7-smooth length `fast_fft_size` picks, side by side.

    python benchmarks/augment.py [--out benchmarks/results/augment.md]     # CPU here; adds CUDA rows on a GPU
    python benchmarks/augment.py --tiny --out /tmp/augment.md               # a smoke test

Each row: one batch of clips convolved with as many impulse responses (what `WaveAugment` does every training step
with dir_prob > 0: every row, the chosen ones kept), the median of `--repeats` timed calls after two warm-up calls.
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from machine import device_name, source_commit
from bench import arguments, median_seconds
from trainer.data.augment import fast_fft_size, fft_convolve

RATE = 44100


def factors(n: int) -> str:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return " x ".join(map(str, out + ([n] if n > 1 else [])))


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
    text = (f"# Impulse-response convolution: exact FFT length against the 7-smooth one\n\nMeasured "
            f"{datetime.date.today().isoformat()} (project at {source_commit(Path(__file__).resolve().parent.parent)}) "
            f"with `python benchmarks/augment.py {' '.join(sys.argv[1:])}`: `fft_convolve` on one batch, median of "
            f"{repeats} calls after two warm-up calls, both lengths side by side.\n\n"
            + tabulate(rows, headers=["device", "clips", "response", "N + K - 1", "FFT length used", "ms, exact",
                                      "ms, 7-smooth", "speed-up"], tablefmt="github") + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
