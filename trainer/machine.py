"""The machine a run or benchmark ran on, for the header of every results table."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def device_name(device: torch.device, threads: bool = True) -> str:
    """GPU name, or the CPU model (with the threads torch uses, when that matters to the benchmark)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                return f"{model} ({torch.get_num_threads()} threads)" if threads else model
    except OSError:
        pass
    return platform.processor() or "CPU"


# What the benchmarks write; a second benchmark run after a first one measures the same code.
RESULTS = "benchmarks/results"


def source_commit(repo: Path) -> str:
    """The checkout's commit, `-dirty` when tracked code has changed since (the code a result was measured with).

    Changes under `benchmarks/results/` do not count: the benchmarks write there themselves.
    """
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    commit = head.stdout.strip()
    if not commit:
        return "unknown"
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                              f":(exclude){RESULTS}"], cwd=repo, capture_output=True, text=True)
    return f"{commit}-dirty" if changed.stdout.strip() else commit
