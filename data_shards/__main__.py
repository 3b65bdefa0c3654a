"""python -m data_shards {pack,verify,info,demo}: pack datasets into shards, check them, summarise them."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from .audio import FORMATS
from .info import summary
from .manifest import ManifestError
from .pack import PackOptions, default_workers, pack
from .records import Scan
from .sources import SourceError, cochlscene, csv_folder, demo, tau22
from .verify import verify

log = logging.getLogger("data_shards")


def _size(text: str) -> int:
    """'256MB', '1GiB', '500k' or plain bytes -> bytes."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 256MB, 1GB, 1000000)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_shards", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="pack a dataset folder into WebDataset shards")
    pk.add_argument("source", choices=["cochlscene", "tau22", "csv", "demo"])
    pk.add_argument("--root", type=Path, required=True, help="dataset folder (demo: where to generate the corpus)")
    pk.add_argument("--out", type=Path, required=True, help="parent folder; the dataset goes to OUT/NAME/")
    pk.add_argument("--name", help="dataset folder name (default: the source name)")
    pk.add_argument("--splits", type=lambda s: s.split(","), help="comma-separated splits to pack (default: all)")
    pk.add_argument("--sample-rate", type=int, help="target rate in Hz, resampled with torchaudio (default: native)")
    pk.add_argument("--format", dest="audio_format", choices=list(FORMATS), default="flac")
    pk.add_argument("--shard-size", type=_size, default=256 * 2**20, help="new shard past this size (default 256MB)")
    pk.add_argument("--shard-samples", type=int, help="... or past this many samples")
    pk.add_argument("--workers", type=int, default=default_workers(), help="encoding processes")
    pk.add_argument("--seed", type=int, default=0, help="shuffle seed (and demo generation seed)")
    pk.add_argument("--val-fraction", type=float, default=None,
                    help="datasets without a 'val' split: hold out this fraction of the train split's recordings "
                         "(whole identifiers, per class) as 'val' (default: none; demo: 0.25)")
    pk.add_argument("--keep-lists-whole", action="store_true",
                    help="with --val-fraction: the held-out recordings leave 'train' only and the other lists "
                         "(TAU's split5..split100) stay as published, for the reference protocol, which trains on "
                         "them whole (the trainer refuses to validate on 'val' while training on a list it shares)")
    pk.add_argument("--overwrite", action="store_true", help="replace an existing packed dataset")
    pk.add_argument("--strict", action="store_true", help="exit with status 3 if any file was rejected")
    csv = pk.add_argument_group("csv source")
    csv.add_argument("--csv", type=Path, help="the CSV listing the files (relative to --root unless absolute)")
    csv.add_argument("--path-column", default="path")
    csv.add_argument("--label-column", default="label")
    csv.add_argument("--split-column", help="column naming each file's split (default: all go to 'train')")
    csv.add_argument("--device-column", help="column naming each file's recording device")
    csv.add_argument("--classes", type=lambda s: s.split(","), help="comma-separated class order; other labels are rejected")
    dm = pk.add_argument_group("demo source")
    dm.add_argument("--demo-scale", type=float, default=1.0, help="multiply the demo's clip counts")
    vf = sub.add_parser("verify", help="check shards against their manifest and decode every sample")
    vf.add_argument("folder", type=Path)
    vf.add_argument("--workers", type=int, default=default_workers())
    nf = sub.add_parser("info", help="summarise a packed dataset")
    nf.add_argument("folder", type=Path)
    gn = sub.add_parser("demo", help="only generate the demo corpus (CochlScene and TAU22 layouts)")
    gn.add_argument("--root", type=Path, required=True)
    gn.add_argument("--seed", type=int, default=0)
    gn.add_argument("--demo-scale", type=float, default=1.0)
    return p


def _scans(args) -> list[Scan]:
    if args.source == "cochlscene":
        return [cochlscene.scan(args.root, args.splits)]
    if args.source == "tau22":
        return [tau22.scan(args.root, args.splits)]
    if args.csv is None:
        raise SourceError("the csv source needs --csv FILE (path, label and optional split columns)")
    return [csv_folder.scan(args.root, args.csv, path_column=args.path_column, label_column=args.label_column,
                            split_column=args.split_column, device_column=args.device_column,
                            classes=args.classes, splits=args.splits, name=args.name or "csv",
                            sample_rate=args.sample_rate)]


def _pack(args) -> int:
    options = PackOptions(out=args.out, name=args.name, sample_rate=args.sample_rate, audio_format=args.audio_format,
                          shard_bytes=args.shard_size, shard_samples=args.shard_samples, workers=args.workers,
                          seed=args.seed, overwrite=args.overwrite, val_fraction=args.val_fraction,
                          keep_lists_whole=args.keep_lists_whole)
    if args.source == "demo":
        folders = demo.generate(args.root, seed=args.seed, size=demo.DemoSize().scaled(args.demo_scale))
        log.info("demo corpus in %s", args.root)
        results = demo.pack_demo(folders, options, splits=args.splits, val_fraction=demo.VAL_FRACTION if args.val_fraction is None
                                   else args.val_fraction)
    else:
        results = [pack(scan, replace(options, val_fraction=None if "val" in scan.splits else args.val_fraction))
                   for scan in _scans(args)]
    rejected = 0
    for result in results:
        rejected += len(result.rejected)
        counts = ", ".join(f"{s} {i['num_samples']}" for s, i in result.manifest["splits"].items())
        print(f"packed {result.folder}: {counts}; rejected {len(result.rejected)}"
              + (f" (see {result.folder / 'rejected.csv'})" if result.rejected else ""))
    return 3 if args.strict and rejected else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "pack":
            return _pack(args)
        if args.command == "verify":
            problems, checked = verify(args.folder, args.workers, progress=True)
            for problem in problems:
                print(f"FAIL {problem}")
            print(f"{'FAILED' if problems else 'OK'}: {checked} samples checked in {args.folder}, "
                  f"{len(problems)} problem(s)")
            return 1 if problems else 0
        if args.command == "info":
            print(summary(args.folder))
            return 0
        folders = demo.generate(args.root, seed=args.seed, size=demo.DemoSize().scaled(args.demo_scale))
        print("\n".join(f"{k}: {v}" for k, v in folders.items()))
        return 0
    except (SourceError, ManifestError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
