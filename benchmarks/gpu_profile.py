"""Where a training step's time goes: torch.profiler over a few steps, kernel time by category (for gpu.py).

On a GPU the device's kernels and copies are timed (their own time on the device), and what the step's wall
time leaves uncovered is counted as idle: launch gaps and host work the device waited for.  On a CPU (--tiny)
the ATen operators' own time stands in for kernels, so the section runs anywhere; its numbers there say
nothing about a GPU.  A kernel's category comes from its name (the first pattern that matches).
"""
from __future__ import annotations

import re
import time
from typing import Callable

import torch
from tabulate import tabulate
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

CATEGORIES = (  # (category, pattern over the lower-cased kernel / operator name), first match wins
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("GEMM", r"gemm|matmul|cutlass|cublas|xmma|\bmm\b|aten::mm|addmm|bmm|linear|conv"),
    ("STFT + mel", r"fft|stft|spectr|mel"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("communication", r"nccl|allreduce|all_reduce|allgather|all_gather|reduce_scatter|gloo"),
    ("copies / gathers", r"copy|memcpy|memset|\bcat\b|aten::cat|index|gather|scatter|contiguous|clone|randperm"),
    ("norm / GELU / elementwise", r"norm|gelu|elementwise|vectorized|triton|reduce|add|mul|div|sub|exp|log|pow|sqrt|"
                                  r"sum|mean|where|fill|max|clamp|neg|rsqrt|tanh|erf"),
)
IDLE = "idle (gaps, host)"
LEVERS = {  # what a large share of a category calls for, and the gpu.py row that measures it
    "attention": "little at 60-130 tokens: SDPA's flash kernel already runs (FlashAttention adds nothing over compile)",
    "GEMM": "kernel choice and precision: rows `compiled, max-autotune`, `compiled, FP8 MLP Linears`",
    "STFT + mel": "the front-end inside the compiled graph: row `compiled waveform to loss`",
    "optimizer": "fused Adam runs already (one kernel for all parameters); nothing cheaper keeps Adam",
    "communication": "one GPU: nothing to reduce (`skip_lone_reduction`); several: the ZeRO stage, `train.md`",
    "copies / gathers": "patchout gathers only the kept patches, before the embedding GEMM (against the reference's "
                        "way: row `eager, patch embedding as a Conv2d over every patch`); casts fused into their "
                        "consumers: rows `compiled`, `compiled waveform to loss`",
    "norm / GELU / elementwise": "fewer memory passes between GEMMs: rows `compiled` (inductor's fusions), "
                                 "`eager, Liger LayerNorm`",
    "other": "read the kernel names (CATEGORIES in gpu_profile.py)",
    IDLE: "launch gaps: row `compiled, CUDA graphs`; host waits: `benchmarks/host_reads.py`",
}


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def profile_step(step: Callable[[], None], device: torch.device, steps: int) -> dict:
    """Milliseconds per step by category (and idle), over `steps` profiled steps after the caller's warm-up."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)  # noqa: E731
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = (time.perf_counter() - start) * 1e3 / steps
    totals: dict[str, float] = {}
    if device.type == "cuda":
        kernels = [(e.name, e.device_time) for e in prof.events() if e.device_type == DeviceType.CUDA]
    else:
        kernels = [(e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.key.startswith("aten::")]
    for name, micros in kernels:
        totals[category(name)] = totals.get(category(name), 0.0) + micros / 1e3 / steps
    totals[IDLE] = max(0.0, wall - sum(totals.values()))
    return {"wall_ms": wall, "by_category": totals}


def markdown(results: dict[str, dict], device: str, intro: str) -> str:
    """One column per profiled step (ms per step and share of its wall time), one row per category with the lever
    a large share of it calls for."""
    labels = [label for label, _ in CATEGORIES] + ["other", IDLE]
    rows = []
    for label in labels:
        cells = []
        for r in results.values():
            ms = r["by_category"].get(label, 0.0)
            cells.append(f"{ms:.2f} ({100 * ms / r['wall_ms']:.0f}%)")
        rows.append([label, *cells, LEVERS[label]])
    rows.append(["**step wall time**", *(f"**{r['wall_ms']:.2f}**" for r in results.values()), ""])
    return (f"# Where the step's time goes: {device}\n\n{intro}\n\n"
            + tabulate(rows, headers=["kernel time, ms per step (% of wall)", *results, "the lever it calls for"],
                       tablefmt="github", disable_numparse=True) + "\n")
