"""Audio decoding per CPU core, FLAC against raw pcm16, and the bytes each costs: what sizes a node's cores.

    python benchmarks/decode.py [--out benchmarks/results/decode.md]        # any machine, ~3 min on 2 cores
    python benchmarks/decode.py --tiny --out /tmp/decode.md                 # a smoke test

The corpus is `gpu_corpus`'s (pink noise plus a class tone, 44.1 kHz, packed by the real packer as FLAC and
as pcm16), smaller.  Each row is the DALI CPU pipeline of training (read, decode, random crop; no augmentation,
no mel) with one thread and with all of this machine's cores, the median of `--repeats` epochs after a warm-up
epoch, side by side in one run; bytes per clip are the shards' bytes over their clips.  The GPU call
(`gpu.py`'s loader section) measures the same rows on the lent machine's cores.
"""
from __future__ import annotations

import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

import gpu_corpus
from bench import arguments
from machine import device_name, source_commit
from trainer.data import make_loader
from trainer.data.dataset import open_dataset

FORMATS = ("flac", "pcm16")


def decode_rate(folder: Path, batch: int, threads: int, epochs: int = 1, warmup: bool = True) -> float:
    """Clips/s of the training DALI pipeline on the CPU alone (read, decode, crop), median over `epochs` epochs
    after a warm-up one (warmup=False: the first epoch is timed, pipeline start-up included, at a tenth of a
    second or so)."""
    loader = make_loader(folder, "train", batch_size=batch, training=True, backend="dali", device="cpu",
                         num_workers=threads)

    def epoch() -> float:
        start, n = time.perf_counter(), 0
        for item in loader:
            n += item["audio"].shape[0]
        return n / (time.perf_counter() - start)

    if warmup:
        epoch()
    return statistics.median(epoch() for _ in range(epochs))


def bytes_per_clip(folder: Path) -> float:
    split = open_dataset(folder)["splits"]["train"]
    return sum(shard["bytes"] for shard in split["shards"]) / split["num_samples"]


def summary(rows: dict, target: float | None = None, whose: str = "") -> list[str]:
    """The reading: pcm16 against FLAC per core and per byte, and the cores one GPU needs to be fed 3x `target`
    1-s clips/s (`whose` target it is, for the line)."""
    lines = []
    for clips in ("1 s", "10 s"):
        flac, pcm = rows.get((clips, "flac")), rows.get((clips, "pcm16"))
        if not (flac and pcm):
            continue
        lines.append(f"- {clips} clips: pcm16 decodes **{pcm['per_core'] / flac['per_core']:.1f}x** the clips per core "
                     f"of FLAC ({pcm['per_core']:.0f} vs {flac['per_core']:.0f} clips/s) at **"
                     f"{pcm['bytes'] / flac['bytes']:.2f}x** the bytes per clip ({pcm['bytes'] / 1024:.0f} vs "
                     f"{flac['bytes'] / 1024:.0f} KiB)")
        if target and clips == "1 s":
            lines.append(f"- cores per GPU for 3x headroom at {target:.0f} 1-s clips/s ({whose}): "
                         f"FLAC **{3 * target / flac['per_core']:.0f}**, pcm16 **{3 * target / pcm['per_core']:.1f}** "
                         f"(decode alone, at this machine's one-thread rate)")
    return lines


def main() -> None:
    ap = arguments(__doc__, "decode.md", "a few clips", 3)
    ap.add_argument("--target", type=float, default=9800.0,
                    help="clips/s one GPU's trainer should consume (1-s clips); default: the 5x goal on the H200")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    specs = gpu_corpus.sizes(True) if args.tiny else [gpu_corpus.SetSpec("short", 4096, 1.0, 10, 16, True),
                                                      gpu_corpus.SetSpec("long", 448, 10.0, 13, 4, False)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = gpu_corpus.make_corpus(Path(tmp), tiny=args.tiny, workers=cores, specs=specs)
        rows, table = {}, []
        for name, clips, batch in (("short", "1 s", 64), ("long", "10 s", 8)):
            for fmt in FORMATS:
                folder = corpus["sets"][name]["shards"][fmt]
                one = decode_rate(folder, batch, 1, args.repeats)
                every = decode_rate(folder, batch, cores, args.repeats)
                rows[clips, fmt] = {"per_core": one, "bytes": bytes_per_clip(folder)}
                table.append([clips, fmt, batch, f"{one:.0f}", f"{every:.0f}", f"{every / one:.2f}",
                              f"{rows[clips, fmt]['bytes'] / 1024:.1f}"])
                print(table[-1], flush=True)
    train = {s.name: s.count - 2 * s.held_out for s in specs}
    text = (f"# Decoding per CPU core: FLAC against pcm16\n\nMeasured {datetime.date.today().isoformat()} on "
            f"{device_name(torch.device('cpu'))} (project at {source_commit(Path(__file__).resolve().parent.parent)}) "
            f"with `python benchmarks/decode.py {' '.join(sys.argv[1:])}`: the "
            f"training DALI pipeline on the CPU (read, decode, random crop), {train['short']} 1-s and {train['long']} "
            f"10-s 44.1 kHz 16-bit clips (`gpu_corpus`: pink noise + tone), median of {args.repeats} epochs after a "
            "warm-up epoch, side by side.\n\n"
            + tabulate(table, headers=["clips", "format", "batch", "clips/s, 1 thread", f"clips/s, {cores} threads",
                                       "scaling", "KiB / clip"], tablefmt="github")
            + "\n\n" + "\n".join(summary(rows, args.target, "the 5x goal on the H200")) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
