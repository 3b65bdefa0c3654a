"""Predict with trained runs: the DCASE system-output file, optionally the logits (teacher logits), and the metrics
when the clips have labels.

    python launch/predict.py --model runs/tau/<run> --shards data/shards/tau22 --split test --out test.csv
    python launch/predict.py --model runs/tau/a runs/tau/b --folder /data/eval/audio --out submission.csv  # ensemble
    python launch/predict.py --model runs/tau/<run> --csv /data/TAU-eval/evaluation_setup/test.csv \
        --root /data/TAU-eval --out submission.csv
    python launch/predict.py --model runs/tau/a runs/tau/b --shards data/shards/tau22 --split split25 \
        --out teacher.csv --logits teacher.npz                                  # teacher logits for distillation
    torchrun --nproc_per_node 4 launch/predict.py ...                           # several GPUs: every clip once

Exit status: 0 done, 2 bad input (the message names the file or option).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer import distributed
from trainer.inference import load_trained
from trainer.predict import Inputs, predict, write_logits, write_submission
from trainer.report import metrics_table


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, type=Path, help="run folders or model.pt files (several: ensemble)")
    p.add_argument("--shards", type=Path, help="packed dataset folder (with manifest.json)")
    p.add_argument("--split", help="split of --shards")
    p.add_argument("--clip-seconds", default="model", help="--shards: crop/pad length, 'model' (the run's) or 'whole'")
    p.add_argument("--folder", type=Path, help="a folder of audio files")
    p.add_argument("--csv", type=Path, help="a CSV listing audio files (DCASE: filename[, scene_label])")
    p.add_argument("--root", type=Path, help="--csv paths are relative to this (default: the CSV's folder)")
    p.add_argument("--path-column")
    p.add_argument("--label-column")
    p.add_argument("--device-column")
    p.add_argument("--out", type=Path, required=True, help="system output (tab-separated)")
    p.add_argument("--logits", type=Path, help="also write keys, names, classes and logits (.npz)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="loader threads / workers per rank (default: the CPUs but one)")
    p.add_argument("--precision", choices=["bf16", "fp32"], help="default: the first run's train.precision")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    distributed.setup_logging()
    try:
        clip = {"model": "model", "whole": None}.get(args.clip_seconds, args.clip_seconds)
        inputs = Inputs(shards=args.shards, split=args.split, clip_seconds=clip if clip in ("model", None)
                        else float(clip), folder=args.folder, csv=args.csv, root=args.root,
                        path_column=args.path_column, label_column=args.label_column, device_column=args.device_column)
        inputs.check()
        d = distributed.setup(args.device)
        models = [load_trained(path, d.device) for path in args.model]
        prediction = predict(models, inputs, d=d, batch_size=args.batch_size, num_workers=args.workers,
                             precision=args.precision)
        if d.is_main:
            write_submission(args.out, prediction)
            if args.logits:
                write_logits(args.logits, prediction, models)
            metrics = prediction.metrics()
            if metrics:
                print(metrics_table({f"{args.split or 'clips'} (n={metrics['num_samples']})": metrics}), flush=True)
            print(f"{len(prediction.names)} clips predicted by {len(models)} run(s): {args.out}"
                  + (f", logits {args.logits}" if args.logits else ""), flush=True)
        return 0
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()


if __name__ == "__main__":
    distributed.exit_process(main())
