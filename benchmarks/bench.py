"""What the measuring scripts share: the clock (the median wall time of a call after warm-up, the device
synchronised around each call) and the command line (--tiny, --repeats, --out into benchmarks/results/)."""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"


def median_seconds(call: Callable[[], object], repeats: int, device: torch.device, warmup: int = 2) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def arguments(doc: str, result: str, tiny: str, repeats: int) -> argparse.ArgumentParser:
    """--tiny (`tiny` says what it shrinks), --repeats (default `repeats`), --out (default results/`result`)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help=f"{tiny}: a smoke test")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--out", type=Path, default=RESULTS / result)
    return ap
