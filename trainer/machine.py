"""The machine a run or benchmark ran on, for the header of every results table."""
from __future__ import annotations

import platform
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
