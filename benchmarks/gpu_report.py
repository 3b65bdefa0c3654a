"""The report of `gpu.py`: its rows as one table, the targets' ratios under it (whole trainer against the model
step and the reference stack, the engine's and the augmentation's cost, loader headroom, best MFU), the notes, and
the suite's outcome; written after every row, so that a call cut off at the device's time limit keeps what it did.
"""
from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

import decode
import gpu_step
import gpu_suite
from machine import device_name, source_commit

REPO = Path(__file__).resolve().parent.parent


def write(b, out: Path) -> None:
    def rate(section, what, clips):  # None for a row that is absent or failed (nan)
        return next((r["samples_s"] for r in b.rows if r["section"] == section and r["what"] == what
                     and r["clips"] == clips and r["samples_s"] == r["samples_s"]), None)

    table = [[r["what"], r["clips"], r["batch"], f"{r['samples_s']:.0f}",
              "" if r["mfu"] is None else f"{r['mfu']:.1f}", "" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}",
              f"{r['seconds']:.0f}", r["note"]] for r in b.rows]
    checks = []
    for clips in ("1 s", "10 s"):
        for kind in ("eager", "compiled"):
            step = rate("model", f"model step, {kind}", clips)
            whole = rate("trainer", f"whole trainer, flac{', compiled' if kind == 'compiled' else ''}", clips)
            if step and whole:
                checks.append(f"- whole trainer / model step, {clips} clips, {kind}: {whole:.0f} / {step:.0f} = "
                              f"**{100 * whole / step:.0f}%** (target >= 95%)")
    bare = rate("model", "model step, eager", "1 s")
    for name in gpu_step.ENGINES.values():
        engine = rate("model", f"model step, eager, {name}", "1 s")
        if bare and engine:
            checks.append(f"- {name} / bare model step, 1-s clips, eager: {engine:.0f} / {bare:.0f} = "
                          f"**{100 * engine / bare:.0f}%**")
    augmented = rate("model", f"model step, {gpu_step.KINDS['augmented']}", "1 s")
    if bare and augmented:
        checks.append(f"- the TAU waveform augmentation (roll, impulse responses), 1-s clips: step with it / without: "
                      f"{augmented:.0f} / {bare:.0f} = **{100 * augmented / bare:.0f}%**")
    conv = rate("model", f"model step, {gpu_step.KINDS['conv patch embed']}", "1 s")
    if bare and conv:
        checks.append(f"- patch embedding, 1-s clips: PatchEmbed's GEMM over the kept patches / the reference's Conv2d "
                      f"over every patch: {bare:.0f} / {conv:.0f} = **{bare / conv:.2f}x**")
    ours = rate("trainer", "whole trainer, flac", "1 s")
    ref = rate("reference", "reference stack, whole step", "1 s")
    if ours and ref:
        fastest = max(ours, rate("trainer", "whole trainer, flac, compiled", "1 s") or 0)
        checks.append(f"- whole trainer / reference stack, 1-s clips: {fastest:.0f} / {ref:.0f} = "
                      f"**{fastest / ref:.2f}x** (target >= 5x)")
        loader = max((r["samples_s"] for r in b.rows if r["section"] == "loader" and r["clips"] == "1 s"
                      and "flac" in r["what"] and "dali" in r["what"]), default=None)
        if loader:
            checks.append(f"- loader headroom, 1-s FLAC (best DALI row / fastest whole trainer): {loader:.0f} / "
                          f"{fastest:.0f} = **{loader / fastest:.1f}x** (target >= 3x)")
    if b.facts.get("decode"):
        checks += decode.summary(b.facts["decode"], 5 * ref if ref else None, "5x the reference stack above")
    best = max((r["mfu"] for r in b.rows if r["section"] == "model" and r["mfu"]), default=None)
    if best:
        checks.append(f"- best model-step MFU: **{best:.1f}%** of the measured bf16 peak (target >= 55%)")
    corpus = b.facts.get("corpus")
    text = ""
    if b.rows or not b.suite:
        text = (f"# GPU throughput: model step, loader, whole trainer and the reference stack, side by side\n\n"
                f"Measured {datetime.date.today().isoformat()} on **{device_name(b.device)}** ({b.cpus} CPU cores; "
                f"project at {source_commit(REPO)}), "
                f"torch {torch.__version__}, with `python benchmarks/gpu.py {' '.join(sys.argv[1:])}` "
                f"({time.perf_counter() - b.started:.0f} s). bf16 matmul peak measured in the same call: "
                f"{b.facts.get('peak_tflops', float('nan')):.0f} TFLOP/s (MFU column = training FLOPs, 3x the forward "
                f"count of `flops_per_sample`, per second over that peak; seconds column = what the row took of the "
                f"call, its compilation and warm-up included).\n\n"
                + (f"Corpus: {corpus}\n\n" if corpus else "")
                + tabulate(table, headers=["what", "clips", "batch", "samples/s", "MFU %", "peak GiB", "seconds", "note"],
                           tablefmt="github")
                + "\n\n" + ("\n".join(checks) + "\n\n" if checks else "")
                + ("\n".join(f"- {n}" for n in b.notes) + "\n" if b.notes else "") + ("\n" if b.suite else ""))
    if b.suite:  # on the GPU when there is one, whatever --tiny says (the tests choose their devices)
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else device_name(b.device, threads=False)
        text += gpu_suite.markdown(b.suite, device, heading="##" if b.rows else "#",
                                   intro=f"Measured {datetime.date.today().isoformat()} with `python benchmarks/gpu.py "
                                         f"{' '.join(sys.argv[1:])}`.")
    out.parent.mkdir(parents=True, exist_ok=True)
    if b.args.append and out.is_file():
        text = b.previous + "\n" + (text.replace("# GPU throughput", "## More rows: GPU throughput", 1) if b.rows
                                    else "#" + text)
    out.write_text(text)
