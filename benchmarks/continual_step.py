"""Where a Split AudioSet iteration's time goes: the fused LSTM alone vs the whole training step.

    python benchmarks/continual_step.py --out benchmarks/results/continual_step.md
    python benchmarks/continual_step.py --runs finetune multitask ewc --threads 1 2

For each run (its YAML: batch size, heads, regularisers, clipping), side by side in one process on the
synthetic stand-in's batches, alternating block by block so that both see the same machine:
- `lstm`: forward + backward of the fused LSTM module alone on the run's batch (the floor of an iteration);
- `step`: the runner's own iteration (the method's loss, backward, `before_update`, clipping, Adam, log).
Medians over blocks, the spread as the slowest / fastest block, and what the step's median makes of the
run's total iterations (n_iter x tasks), i.e. the wall time of a full run without start-up and testing.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import time
from pathlib import Path

import torch
from tabulate import tabulate
from tqdm import tqdm

from machine import device_name
from trainer.continual.config import load_continual_config
from trainer.continual.runner import Runner, draw_rows


def iteration_functions(run: str):
    """(lstm, step) closures over one Runner of `run`, each doing one iteration on a fresh random batch."""
    cfg = load_continual_config([f"method={run}", "train.device=cpu"])
    runner = Runner(cfg)
    m, tasks, b = runner.method, runner.tasks, cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    bar = tqdm(disable=True)
    t = 1 if len(tasks) > 1 else 0  # a task with a predecessor: replay, penalties and anchors are active
    if not m.joint:
        m.start_task(0, tasks[0])
        m.end_task(0, tasks[0])
        m.start_task(t, tasks[t])
    opt = runner._optimizer(-1 if m.joint else t)
    xs, ys, sizes = runner.joint_train_set()

    def batch():
        which = torch.randint(len(tasks), (b,), generator=gen) if m.joint else torch.full((b,), t)
        x, y = runner._rows(xs, ys, draw_rows(sizes, which, gen))
        return x, y, which

    module = copy.deepcopy(m.net.lstm).requires_grad_(True)  # a copy: the hypernetwork's main net has no own weights

    def lstm() -> None:
        x, _, which = batch()
        module.zero_grad(set_to_none=True)
        h, _ = module(m.net.inputs(x, which if m.joint else t))
        h[:, -1].sum().backward()

    def step() -> None:
        x, y, which = batch()
        loss = m.joint_loss(x, y, which) if m.joint else m.loss(x, y, t)
        runner._step(opt, loss, -1 if m.joint else t, 0, bar)

    return lstm, step, cfg.n_iter * len(tasks), b


def measure(run: str, threads: int, blocks: int, per_block: int) -> list:
    torch.set_num_threads(threads)
    lstm, step, total, b = iteration_functions(run)
    times: dict[str, list[float]] = {"lstm": [], "step": []}
    for fn in (lstm, step):  # warm-up: oneDNN primitives, allocator, optimizer state
        for _ in range(50):
            fn()
    for _ in range(blocks):
        for name, fn in (("lstm", lstm), ("step", step)):
            started = time.perf_counter()
            for _ in range(per_block):
                fn()
            times[name].append(1e3 * (time.perf_counter() - started) / per_block)
    lstm_ms, step_ms = statistics.median(times["lstm"]), statistics.median(times["step"])
    return [run, b, threads, f"{lstm_ms:.2f}", f"{step_ms:.2f}",
            f"{min(times['step']):.2f} - {max(times['step']):.2f}", f"{step_ms / lstm_ms:.2f}", total,
            f"{lstm_ms * total / 6e4:.1f}", f"{step_ms * total / 6e4:.1f}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["finetune", "multitask"])
    p.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()])
    p.add_argument("--blocks", type=int, default=8, help="alternations of the two measurements")
    p.add_argument("--per-block", type=int, default=500, help="iterations per block")
    p.add_argument("--out", type=Path, help="Markdown file")
    args = p.parse_args()
    rows = [measure(run, threads, args.blocks, args.per_block) for run in args.runs for threads in args.threads]
    headers = ["run", "batch", "threads", "lstm ms", "step ms", "step ms, fastest - slowest block", "step / lstm",
               "iterations", "lstm x iterations (min)", "step x iterations (min)"]
    text = (f"## One Split AudioSet iteration on {device_name(torch.device('cpu'), threads=False)}, torch "
            f"{torch.__version__}, {datetime.date.today()}\n\n"
            f"`python benchmarks/continual_step.py --runs {' '.join(args.runs)} --threads "
            f"{' '.join(map(str, args.threads))}`: medians of {args.blocks} blocks of {args.per_block} iterations, "
            f"the two measurements alternating block by block.\n\n{tabulate(rows, headers=headers, tablefmt='github')}\n")
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
