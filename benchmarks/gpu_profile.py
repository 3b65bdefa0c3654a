"""Where a training step's time goes, for gpu.py: the bare model step under torch.profiler, and the trainer's own
profile (`run.profile_steps`) beside it, kernel time by category with the lever each category calls for.

The capture and the categories are the trainer's (`trainer/profiling.py`): on a GPU the device's kernels and copies
are timed and what the step's wall time leaves uncovered is idle (launch gaps, host work the device waited for); on
a CPU (--tiny) the ATen operators' own time stands in for kernels, so the section runs anywhere.  The trainer's
columns against the model step's show what the whole trainer adds (the loader's GPU work, the engine, host waits).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from tabulate import tabulate

from trainer.profiling import IDLE, LABELS, Capture, top_kernels_table

LEVERS = {  # what a large share of a category calls for, and the gpu.py row that measures it
    "loader (DALI)": "the loader's GPU stage shares the training GPU: rows `eager, + TAU waveform augmentation` and "
                     "the trainer's own columns here against the model step's",
    "attention": "little at 60-130 tokens: SDPA's flash kernel already runs (FlashAttention adds nothing over compile)",
    "GEMM": "kernel choice and precision: rows `compiled, max-autotune`, `compiled, FP8 MLP Linears`",
    "STFT + mel": "the front-end inside the compiled graph: row `compiled waveform to loss`; in the trainer's "
                  "columns also the TAU augmentation's impulse-response convolution: row `eager, + TAU waveform "
                  "augmentation`",
    "optimizer": "fused Adam runs already (one fused call per parameter group); nothing cheaper keeps Adam",
    "communication": "one GPU: nothing to reduce (`skip_lone_reduction`); several: the ZeRO stage, `train.md`",
    "copies / gathers": "patchout gathers only the kept patches, before the embedding GEMM (against the reference's "
                        "way: row `eager, patch embedding as a Conv2d over every patch`); casts fused into their "
                        "consumers: rows `compiled`, `compiled waveform to loss`",
    "norm / GELU / elementwise": "fewer memory passes between GEMMs: rows `compiled` (inductor's fusions), "
                                 "`eager, Liger LayerNorm`",
    "other": "read the kernel names (CATEGORIES in trainer/profiling.py)",
    IDLE: "launch gaps: row `compiled, CUDA graphs`; host waits: `benchmarks/host_reads.py`",
}


def profile_step(step: Callable[[], None], device: torch.device, steps: int, trace: Path) -> dict:
    """Milliseconds per step by category (and idle), over `steps` profiled steps after the caller's warm-up; the
    trace into `trace` (.json.gz)."""
    capture = Capture(device)
    capture.start()
    try:
        for _ in range(steps):
            step()
        summary = capture.stop(steps)
    except BaseException:
        capture.abandon()  # the rows after this one are not to run under a profiler
        raise
    capture.profiler.export_chrome_trace(str(trace))
    return summary


def markdown(results: dict[str, dict], device: str, intro: str) -> str:
    """One column per profiled step (ms per step and share of its wall time), one row per category with the lever
    a large share of it calls for; then each column's longest kernels (what a category's share is made of)."""
    rows = []
    for label in LABELS:
        cells = []
        for r in results.values():
            ms = r["by_category"].get(label, 0.0)
            cells.append(f"{ms:.2f} ({100 * ms / r['wall_ms']:.0f}%)")
        rows.append([label, *cells, LEVERS[label]])
    rows.append(["**step wall time**", *(f"**{r['wall_ms']:.2f}**" for r in results.values()), ""])
    kernels = "".join(f"\n## {label}: the {len(r['top'])} longest kernels\n\n{top_kernels_table(r)}"
                      for label, r in results.items())
    return (f"# Where the step's time goes: {device}\n\n{intro}\n\n"
            + tabulate(rows, headers=["kernel time, ms per step (% of wall)", *results, "the lever it calls for"],
                       tablefmt="github", disable_numparse=True) + "\n" + kernels)
