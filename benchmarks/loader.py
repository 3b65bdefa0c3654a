"""Loader throughput (clips/s) on the packed demo shards: DALI (CPU, and GPU + mel front-end when a GPU
is present) and the torch reader, with 1 and 2 workers, for 1-s (TAU layout) and 10-s (CochlScene
layout) 44.1 kHz clips.

    python benchmarks/loader.py [--shards data/demo/shards] [--repeats 3]

Training mode (shuffle, random crop to the manifest's clip length), no augmentation; each row is the
median over `--repeats` full epochs measured side by side in one run.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch
from machine import device_name
from tabulate import tabulate

from trainer.data import make_loader
from trainer.model.frontend import PRESETS, MelFrontend


def clips_per_second(loader, frontend=None, device="cpu") -> float:
    start = time.perf_counter()
    n = 0
    for batch in loader:
        if frontend is not None:
            frontend(batch["audio"])
        n += len(batch["key"])
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=Path, default=Path("data/demo/shards"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loader.md")
    args = ap.parse_args()
    cases = [("1 s (TAU layout)", args.shards / "tau22", 32), ("10 s (CochlScene layout)", args.shards / "cochlscene", 8)]
    configs = [("dali", "cpu", 1), ("dali", "cpu", 2), ("torch", "cpu", 1), ("torch", "cpu", 2)]
    if torch.cuda.is_available():
        configs += [("dali", "cuda", 2), ("dali", "cuda", 4)]
    rows = []
    for label, folder, batch in cases:
        for backend, device, workers in configs:
            loader = make_loader(folder, "train", batch_size=batch, training=True, backend=backend, device=device,
                                 num_workers=workers)
            frontend = MelFrontend(PRESETS["sit44k"]).to(device).eval() if device == "cuda" else None
            clips_per_second(loader, frontend, device)  # warm-up epoch (pipeline build, worker start)
            rates = [clips_per_second(loader, frontend, device) for _ in range(args.repeats)]
            name = f"{backend}-{'gpu + mel' if device == 'cuda' else 'cpu'}"
            rows.append([label, name, workers, batch, f"{statistics.median(rates):.1f}"])
            print(rows[-1], flush=True)
    table = tabulate(rows, headers=["clips", "reader", "workers / threads", "batch", "clips/s"], tablefmt="github")
    dev = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    text = (f"# Loader throughput\n\nMeasured {datetime.date.today().isoformat()} on {dev} with "
            f"`python benchmarks/loader.py --repeats {args.repeats}` on the demo shards (`make demo`): training mode, "
            f"median of {args.repeats} epochs after a warm-up epoch.\n\n{table}\n")
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
