"""Trainer throughput per ZeRO stage: the real `launch/train.py` on the demo shards, side by side.

    torchrun --standalone --nproc_per_node 8 benchmarks/train.py            # GPUs: PaSST-S, global batch 256
    python benchmarks/train.py --ranks 2 --model passt_mini --global-batch 32 --micro-batch 8 \
        --out benchmarks/results/train.md                                   # CPU: 2 gloo ranks (spawned here)

Each stage trains `--epochs` epochs of the demo CochlScene shards (packed on first use) with the
stage's config plus the overrides below; samples/s is the median of the per-step rates in steps.csv
(the first `--warmup` steps dropped), peak GPU memory comes from epochs.csv, and MFU = samples/s x
3 x forward FLOPs per sample / (ranks x the device's bf16 peak).
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate

from machine import device_name
from model import peak_flops
from trainer.config import load_config
from trainer.demo import ensure_demo_shards
from trainer.model.frontend import MelFrontend
from trainer.model.passt import create_model, flops_per_sample

REPO = Path(__file__).resolve().parent.parent


def run_stage(args, zero: int, runs: Path) -> Path:
    overrides = [f"model.name={args.model}", f"train.zero_stage={zero}", f"train.global_batch={args.global_batch}",
                 f"train.micro_batch={args.micro_batch}", f"train.epochs={args.epochs}",
                 f"train.precision={args.precision}", f"run.out={runs}", f"run.name=zero{zero}",
                 f"data.clip_seconds={args.clip_seconds}", "run.keep_checkpoints=1"]
    cmd = [str(REPO / "launch" / "train.py"), "--stage", "cochl", "--demo", *overrides]
    if "WORLD_SIZE" in os.environ:  # already under torchrun: this process is one rank of the run
        raise SystemExit("run benchmarks/train.py itself with python; it starts torchrun for each stage")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}"]
    subprocess.run(launcher + cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    return runs / "cochl" / f"zero{zero}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpus = torch.cuda.device_count()
    p.add_argument("--ranks", type=int, default=gpus or 2)
    p.add_argument("--model", default="passt_s" if gpus else "passt_mini")
    p.add_argument("--global-batch", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=None, help="default: global batch / ranks (no accumulation)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--zero", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    args.micro_batch = args.micro_batch or args.global_batch // args.ranks
    ensure_demo_shards(REPO / "data" / "demo" / "shards")
    cfg = load_config("cochl", [f"model.name={args.model}"], demo=True)
    frames = MelFrontend(cfg.frontend).frames(int(args.clip_seconds * cfg.frontend.sample_rate))
    model = create_model(args.model, 13, s_patchout_f=cfg.model.s_patchout_f)
    train_flops = 3 * flops_per_sample(model.config, min(frames, model.config.window_frames), training=True)
    device = torch.device("cuda" if gpus else "cpu")
    peak = peak_flops(device_name(device)) if gpus else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for zero in args.zero:
            run = run_stage(args, zero, Path(tmp))
            steps = pd.read_csv(run / "steps.csv")
            rate = steps["samples_per_s"].iloc[args.warmup:].median()
            memory = pd.read_csv(run / "epochs.csv")["peak_memory_gib"].max()
            mfu = f"{100 * rate * train_flops / (args.ranks * peak):.1f}" if peak else "n/a"
            rows.append([zero, len(steps), f"{rate:.1f}", f"{rate / args.ranks:.1f}",
                         f"{memory:.2f}" if memory == memory else "n/a", mfu])
    table = tabulate(rows, headers=["ZeRO", "steps", "samples/s", "per rank", "peak GiB", "MFU %"], tablefmt="github")
    where = device_name(device, threads=False)
    text = (f"## {args.model} on {args.ranks} x {where}\n\nMeasured {datetime.date.today()}, torch {torch.__version__}, "
            f"with `python benchmarks/train.py {' '.join(sys.argv[1:])}`: the demo CochlScene stage, "
            f"global batch {args.global_batch} = {args.micro_batch} micro x "
            f"{args.global_batch // (args.micro_batch * args.ranks)} accumulation x {args.ranks} ranks, "
            f"{args.clip_seconds:g}-s crops ({min(frames, model.config.window_frames)} frames), {args.precision}, "
            f"median of per-step rates after {args.warmup} warm-up steps.\n\n{table}\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
