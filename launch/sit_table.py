"""The SIT result table in one command: Standard FT / Seq-FT / SIT x TAU splits x seeds, trained and aggregated.

    python launch/sit_table.py --name main                                   # the seed's table, 3 seeds
    python launch/sit_table.py --name ref protocol=reference                 # the reference code's protocol
    python launch/sit_table.py --name main --slurm -- --partition=gpu        # the same graph as SLURM jobs
    python launch/sit_table.py --name main --table-only                      # aggregate what has finished
    python launch/sit_table.py --demo                                        # 3 methods x 2 splits x 2 seeds, CPU
    python launch/sit_table.py --demo --name demo_reference protocol=reference
    python launch/sit_table.py --demo --name demo_forgetting --methods seq_ft sit ewc si lwf replay --seeds 0 1 2

Runs go to <root>/<name>/runs/<stage>/<run>/; table.md, table.csv, table.png (and, with forgetting measured,
tradeoff.png: TAU accuracy against the CochlScene accuracy kept) to <root>/<name>/.  Finished
runs are skipped and interrupted ones resumed, so the same command continues a table.  `key=value` overrides
go to every run (`protocol=project|reference` picks the preset).  --demo also writes
benchmarks/results/sit_table_<name>.{md,png} (sit_table_demo by default) and sit_table_<name>_tradeoff.png.
Exit status: 0 all runs finished, 1 some failed, 2 bad arguments, 75 a run was pre-empted (run again).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from trainer.machine import device_name, source_commit
from trainer.table import execute, results
from trainer.table.plan import METHODS, SPLITS, Table, TableSpec

DEMO = {"name": "demo", "methods": list(METHODS[:3]), "splits": [50, 100], "seeds": [0, 1]}
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"  # --demo: sit_table_<name>.{md,png}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", help="the table's folder under --root (demo: demo)")
    p.add_argument("--root", type=Path, default=Path("runs/table"), help="where tables live (default runs/table)")
    p.add_argument("--methods", nargs="+", help=f"of {' '.join(METHODS)} (default: "
                   f"{' '.join(METHODS[:3])}); ewc si lwf replay protect CochlScene during TAU (Seq-FT's rates)")
    p.add_argument("--splits", nargs="+", type=int,
                   help=f"TAU training splits in %% (default: {' '.join(map(str, SPLITS))})")
    p.add_argument("--seeds", nargs="+", type=int, help="train.seed of the runs (default: 0 1 2)")
    p.add_argument("--demo", action="store_true", help="the built-in demo corpus, passt_mini: "
                   "3 methods x splits 50 100 x seeds 0 1 on a CPU")
    p.add_argument("--launcher", help="command that starts train.py (default: torchrun over this machine's GPUs "
                   "when there are several and the runs use them, else python), e.g. 'deepspeed --num_gpus 4'")
    p.add_argument("--slurm", action="store_true", help="submit the graph as SLURM jobs instead of running it here; "
                   "arguments after -- go to every sbatch call")
    p.add_argument("--table-only", action="store_true", help="only aggregate the finished runs")
    p.add_argument("--task", help=argparse.SUPPRESS)  # a SLURM array task: the group ...
    p.add_argument("--index", type=int, help=argparse.SUPPRESS)  # ... and the run in it: print its train.py args
    p.add_argument("key=value", nargs="*", help="config overrides for every run (protocol=reference: the preset)")
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, sbatch = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if sbatch and "--slurm" not in ours:
        p.error(f"arguments after -- are sbatch options, for --slurm only: {' '.join(sbatch)}")
    overrides = [a for a in ours if "=" in a and not a.startswith("-")]  # apart: --seeds 0 1 would swallow them
    args = p.parse_args([a for a in ours if a not in overrides])
    args.overrides, args.sbatch = overrides, sbatch
    args.name = args.name or (DEMO["name"] if args.demo else None)
    if not args.name:
        p.error("--name is required (the table's folder under --root), or --demo")
    return args


def spec_from(args: argparse.Namespace) -> TableSpec:
    protocol = [o.split("=", 1)[1] for o in args.overrides if o.startswith("protocol=")]
    given = {"name": args.name, "methods": args.methods, "splits": args.splits, "seeds": args.seeds}
    values = {**(DEMO if args.demo else {}), **{k: v for k, v in given.items() if v}}
    return TableSpec(**values, protocol=protocol[-1] if protocol else "project", demo=args.demo,
                     overrides=[o for o in args.overrides if not o.startswith("protocol=")])


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.task:
            table = Table.load(args.root, args.name)
            print("\n".join(execute.task_arguments(table, args.task, args.index or 0)))
            return 0
        table = Table.load(args.root, args.name) if args.table_only else Table(spec_from(args), args.root)
        table.save()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.slurm:
        jobs = execute.submit(table, extra=args.sbatch)
        for group, job in jobs.items():
            print(f"{group}: job {job}")
        print(f"submitted {len(jobs)} job(s); results in {table.folder}" if jobs else "every run is done")
        return 0
    started, outcomes = time.perf_counter(), []
    if not args.table_only:
        try:
            device = torch.device(execute.run_device(table))  # here, not for --slurm: the cluster's nodes decide
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        launcher = shlex.split(args.launcher) if args.launcher else execute.default_launcher(device.type)
        outcomes = execute.run_local(table, launcher)
    trained = [o for o in outcomes if o.status == "trained"]
    if trained:
        minutes = (time.perf_counter() - started) / 60
        results.record_call(table, f"{time.strftime('%Y-%m-%d')}: {len(trained)} run(s) trained in {minutes:.1f} min "
                                   f"on {device_name(device, threads=False)} ({os.cpu_count()} cores), "
                                   f"commit {source_commit(REPO)}")
    text, _ = results.write(table)
    print(text)
    print(f"table: {table.folder / 'table.md'} (.csv, .png)")
    if args.demo:
        for ext in ("md", "png"):
            shutil.copyfile(table.folder / f"table.{ext}", RESULTS / f"sit_table_{table.spec.name}.{ext}")
        if (table.folder / results.TRADEOFF).is_file():
            shutil.copyfile(table.folder / results.TRADEOFF, RESULTS / f"sit_table_{table.spec.name}_tradeoff.png")
    statuses = {o.status for o in outcomes}
    return 75 if "preempted" in statuses else 1 if statuses & {"failed", "blocked"} else 0


if __name__ == "__main__":
    sys.exit(main())
