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


def source_commit(repo: Path) -> str:
    """The checkout's commit, `-dirty` when tracked files have changed since (the code a result was measured with)."""
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"
