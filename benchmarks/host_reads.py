"""Where a training epoch makes the host wait for the device: every call that reads a device value on the host,
counted by caller, for ZeRO 0, 1 and 2 (CPU evidence for the GPU path: the calls are the same on a GPU).

    python benchmarks/host_reads.py [--out benchmarks/results/host_reads.md]
    python benchmarks/host_reads.py --repo /path/to/an/older/checkout      # the same count for other code

One epoch of the demo TAU stage (packed on first use) with `passt_micro`, bf16, device impulse responses
and mel-bank jitter on, run in this process as one gloo rank.  A TorchFunctionMode sees every `.item()`,
`.tolist()`, `bool()` / `int()` / `float()` of a tensor, `.cpu()`, `.numpy()`, `nonzero`, boolean-mask
indexing and `torch.tensor(...)` (a pageable host-to-device copy on a GPU); DeepSpeed's accelerator
`synchronize` is counted too.  Some of these are host-only on a GPU (a CPU tensor's `.item()`); the caller
column says which code asked.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import subprocess
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy", "tensor"}


def count(repo: Path, zero: int, runs: Path) -> tuple[int, int, collections.Counter]:
    """(optimizer steps, micro-batches, Counter of (call, caller)) for one epoch of `repo`'s trainer."""
    sys.path.insert(0, str(repo))
    import torch
    from torch.overrides import TorchFunctionMode

    from trainer import checkpoint
    from trainer.config import load_config
    from trainer.demo import ensure_demo_shards
    from trainer.engine import Trainer

    calls: collections.Counter = collections.Counter()

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            masked = name in ("__getitem__", "__setitem__") and len(args) > 1 and \
                isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool
            if name in READS or masked:
                caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
                calls[(f"{name}[bool-mask]" if masked else name, f"{Path(caller.filename).name}:{caller.name}")] += 1
            return func(*args, **(kwargs or {}))

    shards = REPO / "data" / "demo" / "shards"
    ensure_demo_shards(shards)
    overrides = [f"data.root={shards}", "data.num_workers=1", "model.name=passt_micro", "train.epochs=1",
                 "train.global_batch=16", "train.micro_batch=4", "train.precision=bf16", f"train.zero_stage={zero}",
                 f"run.out={runs}", f"run.name=zero{zero}", "frontend.fmin_aug_range=10", "init_from=null",
                 f"augment.dir_folder={REPO / 'data' / 'demo' / 'raw' / 'MicIRP'}"]
    trainer = Trainer(load_config("tau", overrides, demo=True)).setup()
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    real = accelerator.synchronize
    accelerator.synchronize = lambda *a, **k: calls.update([("accelerator.synchronize", "deepspeed")]) or real(*a, **k)
    with checkpoint.Preemption() as preemption, Mode():
        trainer._train_epoch(preemption)
    return trainer.train_loader.plan.steps, trainer.train_loader.plan.batches, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose trainer is counted")
    ap.add_argument("--zero", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: count one stage in this process
    args = ap.parse_args()
    if args.one is not None:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")  # MASTER_PORT: main()
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            steps, batches, calls = count(args.repo.resolve(), args.one, Path(tmp))
        print(f"@@ {steps} {batches}")
        for (name, caller), n in sorted(calls.items()):
            print(f"@@ {n} {name} {caller}")
        return
    git = ["git", "-C", str(args.repo)]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout:
        commit += " with uncommitted changes"
    sections = []
    from trainer.distributed import free_port  # this checkout's; the counting children import --repo's trainer

    for zero in args.zero:  # one process per stage: DeepSpeed keeps global state
        done = subprocess.run([sys.executable, __file__, "--repo", str(args.repo), "--one", str(zero)], cwd=REPO,
                              capture_output=True, text=True, env={**os.environ, "MASTER_PORT": str(free_port())})
        lines = [line[3:].split(" ", 2) for line in done.stdout.splitlines() if line.startswith("@@ ")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"ZeRO {zero}: counting failed\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        steps, batches = int(lines[0][0]), int(lines[0][1])
        rows = [f"| {n} | `{name}` | `{caller}` |" for n, name, caller in lines[1:]] or ["| 0 | - | - |"]
        sections.append(f"ZeRO {zero}: {steps} optimizer steps of {batches // steps} micro-batches\n\n"
                        "| calls | host read | caller |\n|---|---|---|\n" + "\n".join(rows))
    text = (f"## Host reads of device values in one training epoch: the trainer at {commit}\n\n"
            f"Counted {datetime.date.today().isoformat()} with `python benchmarks/host_reads.py "
            f"{' '.join(sys.argv[1:])}`.\n\n" + "\n\n".join(sections) + "\n")
    print(text)
    if args.out:
        previous = args.out.read_text() if args.out.is_file() else "# Where the training step waits for the device\n"
        args.out.write_text(previous.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
