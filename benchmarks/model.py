"""PaSST forward+backward throughput, peak memory and model FLOP utilisation (MFU).

    python benchmarks/model.py                       # GPU: PaSST-S; CPU: passt_mini
    python benchmarks/model.py --model passt_s --batches 64 128 256 --out benchmarks/results/model.md

Input: 1-s 44.1 kHz clips as log-mel (128 x 138 frames), frequency patchout 6, bf16 autocast,
SDPA vs plain attention.  One step = forward + backward of the loss (no optimizer step).  Times are
medians over `--steps` steps after `--warmup`, taken after device synchronisation.  Training FLOPs =
3 x forward FLOPs counted from the layer shapes (`trainer.model.passt.flops_per_sample`); MFU divides
the achieved rate by the device's dense bf16 peak (known for H100 / H200; CPUs have none listed).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

from machine import device_name
from trainer.model.passt import MODELS, count_parameters, create_model, flops_per_sample

# Dense bf16 tensor-core peaks (FLOP/s) of the SXM parts.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_name: str, attention: str, batch: int, frames: int, device: torch.device, steps: int,
            warmup: int) -> dict:
    torch.manual_seed(0)
    model = create_model(model_name, 10, s_patchout_f=6, attention=attention).to(device).train()
    mel = torch.randn(batch, 1, 128, frames, device=device)
    target = torch.randint(0, 10, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, _ = model(mel)
            loss = F.cross_entropy(logits.float(), target)
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    flops = 3 * flops_per_sample(model.config, frames, training=True) * batch
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"params": count_parameters(model), "step": step, "samples_s": batch / step, "tflops": flops / step / 1e12,
            "peak_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=list(MODELS), help="default: passt_s on GPU, passt_mini on CPU")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--attention", nargs="+", default=["sdpa", "plain"])
    ap.add_argument("--frames", type=int, default=138, help="mel frames (138 = 1 s at 44.1 kHz, hop 320)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model.md")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_name = args.model or ("passt_s" if device.type == "cuda" else "passt_mini")
    name = device_name(device)
    peak = peak_flops(name) if device.type == "cuda" else None
    rows = []
    for attention in args.attention:
        for batch in args.batches:
            r = measure(model_name, attention, batch, args.frames, device, args.steps, args.warmup)
            rows.append([attention, batch, f"{r['samples_s']:.1f}", f"{r['step'] * 1e3:.1f}", f"{r['tflops']:.3f}",
                         f"{100 * r['tflops'] * 1e12 / peak:.1f}" if peak else "n/a",
                         f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"])
            print(rows[-1], flush=True)
    table = tabulate(rows, headers=["attention", "batch", "samples/s", "step ms", "TFLOP/s", "MFU %", "peak GiB"],
                     tablefmt="github")
    header = (f"## {model_name} ({r['params']:,} parameters) on {name}\n\n"
              f"Measured {datetime.date.today().isoformat()}, torch {torch.__version__}, with "
              f"`python benchmarks/model.py --model {model_name} --batches {' '.join(map(str, args.batches))}`: "
              f"forward + backward, bf16 autocast, {args.frames} frames (1 s at 44.1 kHz), frequency patchout 6, "
              f"median of {args.steps} steps after {args.warmup} warm-up.\n\n")
    section = header + table + "\n"
    print(section)
    previous = args.out.read_text() if args.out.exists() else "# PaSST training-step throughput\n"
    args.out.write_text(previous.rstrip() + "\n\n" + section)


if __name__ == "__main__":
    main()
