"""PaSST's patch embedding: PatchEmbed's GEMM over the patches patchout keeps, against the reference's Conv2d over
every patch with patchout gathering rows from its output (`gpu_step.conv_tokens`), side by side in one run.

    python benchmarks/patch_embed.py                  # -> benchmarks/results/patch_embed.md
    python benchmarks/patch_embed.py --tiny --out /tmp/patch_embed.md

Rows: the tokens alone (patch embedding, positions, patchout, class tokens; forward + backward in training,
forward in evaluation) and the whole PaSST training step (forward + backward of the loss on the log-mel input),
bf16 autocast as the trainer runs it, 1-s clips at 44.1 kHz (138 frames), frequency patchout 6 (the SIT configs).
The same weights and the same draws in both (the tokens are equal: tests/test_benchmarks.py).
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench import arguments, median_seconds
from gpu_step import conv_tokens
from machine import device_name, source_commit
from trainer.model.passt import create_model

REPO = Path(__file__).resolve().parent.parent
FRAMES = 138  # 1 s at 44.1 kHz, hop 320


def main() -> None:
    ap = arguments(__doc__, "patch_embed.md", "passt_micro, batch 4", repeats=7)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = "passt_micro" if args.tiny else "passt_s"
    tokens_batch, step_batch = (4, 4) if args.tiny else (256, 256) if device.type == "cuda" else (64, 8)
    torch.manual_seed(0)
    model = create_model(name, 10, s_patchout_f=6).to(device)
    ways = {"PatchEmbed: one GEMM over the kept patches": model.tokens,
            "reference: Conv2d over every patch, then patchout": conv_tokens(model)}

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def tokens_train(tokens, mel):
        def call():
            model.zero_grad(set_to_none=True)
            with autocast():
                out = tokens(mel)
            out.float().square().mean().backward()
        return call

    def tokens_eval(tokens, mel):
        @torch.no_grad()
        def call():
            with autocast():
                tokens(mel)
        return call

    def step(tokens, mel):
        label = torch.randint(10, (mel.shape[0],), device=device)

        def call():
            model.tokens = tokens
            model.zero_grad(set_to_none=True)
            with autocast():
                logits, _ = model(mel)
            F.cross_entropy(logits.float(), label).backward()
        return call

    mel_tokens = torch.randn(tokens_batch, 1, 128, FRAMES, device=device)
    mel_step = torch.randn(step_batch, 1, 128, FRAMES, device=device)
    measures = [("tokens, training (forward + backward)", tokens_batch, True, tokens_train, mel_tokens),
                ("tokens, evaluation (forward, every patch)", tokens_batch, False, tokens_eval, mel_tokens),
                (f"{name} training step (forward + backward)", step_batch, True, step, mel_step)]
    rows = []
    for what, batch, training, build, mel in measures:
        model.train(training)
        times = {way: median_seconds(build(tokens, mel), args.repeats, device) for way, tokens in ways.items()}
        ours, reference = times.values()
        for first, (way, seconds) in zip((True, False), times.items()):
            rows.append([what, batch, way, f"{1e3 * seconds:.2f}", f"{batch / seconds:.0f}",
                         f"{reference / ours:.2f}x" if first else ""])
            print(rows[-1], flush=True)
    del model.tokens  # back to the class's method
    text = (f"# PaSST's patch embedding: a GEMM over the kept patches vs the reference's Conv2d\n\n"
            f"Measured {datetime.date.today().isoformat()} on {device_name(device)} (project at {source_commit(REPO)}), "
            f"torch {torch.__version__}, with `python benchmarks/patch_embed.py {' '.join(sys.argv[1:])}`: "
            f"medians of {args.repeats} after 2 warm-up, side by side in one run; bf16 autocast, 1-s clips at 44.1 kHz "
            f"({FRAMES} frames), frequency patchout 6.\n\n"
            + tabulate(rows, headers=["measure", "batch", "patch embedding", "ms", "samples/s", "speed-up"],
                       tablefmt="github") + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
