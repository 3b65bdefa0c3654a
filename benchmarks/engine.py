"""What DeepSpeed's engine costs per step on one rank at ZeRO 0, with and without its no-op gradient all-reduce
(`trainer.distributed.skip_lone_reduction`), side by side, on this machine's device.

    python benchmarks/engine.py [--out benchmarks/results/engine.md]
    python benchmarks/engine.py --tiny --out /tmp/engine.md          # a smoke test

Two measurements, each the median of `--repeats` timed calls after warm-up:
  reduction   DeepSpeed's `allreduce_gradients()` alone on PaSST-S's gradients (what the skip removes per step)
  step        forward + backward + optimizer step of a small MLP (the engine's own host work dominates): bare torch,
              the engine as the trainer runs it, the engine with DeepSpeed's reduction kept
The engine takes the trainer's generated DeepSpeed JSON (no clipping, no timers).
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from machine import device_name, source_commit
from bench import arguments, median_seconds
from trainer import distributed
from trainer.config import deepspeed_config, load_config
from trainer.model.passt import create_model

REPO = Path(__file__).resolve().parent.parent


def engine(model: torch.nn.Module, batch: int, lean: bool):
    import deepspeed

    cfg = load_config("tau", [f"train.global_batch={batch}", f"train.micro_batch={batch}", "train.precision=fp32",
                              "train.zero_stage=0"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-3, fused=True)
    built, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg, 1),
                                     dist_init_required=False)
    if lean:
        distributed.skip_lone_reduction(built)
    return built


def mlp(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(40)]).to(device)


def main() -> None:
    ap = arguments(__doc__, "engine.md", "passt_micro and few repeats", 7)
    args = ap.parse_args()
    info = distributed.setup("auto")
    device, repeats = info.device, 2 if args.tiny else args.repeats
    rows = []
    try:
        name = "passt_micro" if args.tiny else "passt_s"
        passt = engine(create_model(name, 10).to(device), 8, lean=False)
        for p in passt.module.parameters():
            p.grad = torch.randn_like(p)
        count = sum(p.numel() for p in passt.module.parameters())
        seconds = median_seconds(passt.allreduce_gradients, repeats, device, warmup=3)
        rows.append(["reduction", f"DeepSpeed's one-rank all-reduce of {name}'s {count / 1e6:.2f}M gradients",
                     f"{1e3 * seconds:.2f}", "what skip_lone_reduction removes from every optimizer step"])
        x = torch.randn(32, 64, device=device)
        bare_model = mlp(device)
        bare_optimizer = torch.optim.Adam(bare_model.parameters(), lr=1e-4, weight_decay=1e-3, fused=True)

        def bare():
            bare_model(x).square().mean().backward()
            bare_optimizer.step()
            bare_optimizer.zero_grad(set_to_none=True)

        steps = {"bare torch (forward, backward, fused Adam)": bare}  # first: the baseline
        for lean in (True, False):
            built = engine(mlp(device), 32, lean)

            def step(built=built):
                built.backward(built(x).square().mean())
                built.step()

            steps["DeepSpeed engine ZeRO 0, as the trainer runs it" if lean else
                  "DeepSpeed engine ZeRO 0, one-rank all-reduce kept"] = step
        times = {what: median_seconds(call, 20 * repeats, device, warmup=3) for what, call in steps.items()}
        bare_key = next(iter(steps))
        for what, seconds in times.items():
            rows.append(["step, 40 x Linear(64, 64), batch 32", what, f"{1e3 * seconds:.2f}",
                         f"+{1e3 * (seconds - times[bare_key]):.2f} ms over bare torch" if what != bare_key else ""])
    finally:
        distributed.teardown()
    for row in rows:
        print(row, flush=True)
    text = (f"# DeepSpeed's engine per step on one rank, ZeRO 0\n\nMeasured {datetime.date.today().isoformat()} on "
            f"{device_name(device)} (project at {source_commit(REPO)}) with `python benchmarks/engine.py "
            f"{' '.join(sys.argv[1:])}`: medians after warm-up, side by side in one run.\n\n"
            + tabulate(rows, headers=["measure", "what", "ms", "note"], tablefmt="github") + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
