"""Packing throughput (clips/s and audio-hours/s) on the demo corpus for 1 and 2 worker processes.

    python benchmarks/pack.py [--repeats 3] [--scale 1.0] [--out benchmarks/results/pack.md]

Each configuration is packed `--repeats` times side by side in one run; the table shows medians.
The work per clip is the real one: read and check the WAV, (resample,) encode FLAC, write tar + index
+ SHA-256.  Workers encode in parallel; the main process writes the shards in a fixed order.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine import device_name
from tabulate import tabulate

from data_shards.pack import PackOptions, pack
from data_shards.sources import cochlscene, demo, tau22


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="demo size multiplier")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pack.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = demo.generate(Path(tmp) / "raw", size=demo.DemoSize().scaled(args.scale))
        cochl = cochlscene.scan(folders["cochlscene"])
        tau = tau22.scan(folders["tau22"], ["train", "test"])
        cases = [("CochlScene layout (10 s, 16-bit)", cochl, None),
                 ("TAU22 layout (1 s, 24-bit; train+test)", tau, None),
                 ("CochlScene layout, resampled to 32 kHz", cochl, 32000),
                 ("TAU22 layout, resampled to 32 kHz", tau, 32000)]
        rows = []
        for label, scan, rate in cases:
            for workers in args.workers:
                times = []
                for r in range(args.repeats):
                    start = time.perf_counter()
                    result = pack(scan, PackOptions(out=Path(tmp) / f"out-{workers}-{r}", workers=workers,
                                                    sample_rate=rate, overwrite=True))
                    times.append(time.perf_counter() - start)
                clips = sum(s["num_samples"] for s in result.manifest["splits"].values())
                hours = sum(s["seconds"] for s in result.manifest["splits"].values()) / 3600
                t = statistics.median(times)
                rows.append([label, workers, clips, f"{hours:.3f}", f"{t:.2f}", f"{clips / t:.1f}", f"{hours / t:.4f}",
                             f"{hours * 3600 / t:.0f}x"])
    table = tabulate(rows, headers=["corpus", "workers", "clips", "audio h", "median s", "clips/s", "audio-h/s",
                                    "x real time"], tablefmt="github")
    header = (f"# Packing throughput\n\nMeasured {datetime.date.today().isoformat()} on {device_name(torch.device('cpu'), threads=False)} "
              f"({os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}) with "
              f"`python benchmarks/pack.py --repeats {args.repeats} --scale {args.scale}`: FLAC output, "
              f"median of {args.repeats} packs per row, worker start-up included.\n\n")
    args.out.write_text(header + table + "\n")
    print(header + table)


if __name__ == "__main__":
    main()
