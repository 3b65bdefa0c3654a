"""Where a training step's time goes: torch.profiler over a few optimizer steps, device time by kernel category.

Two users: the trainer (`run.profile_steps`: steps of a real run, loader and engine included, written into the
run folder) and `benchmarks/gpu.py` (the bare model step, side by side with the trainer's).  On a GPU the device's
kernels and copies are timed (their own time on the device), and what the steps' wall time leaves uncovered is
idle: launch gaps and host work the device waited for.  On a CPU the ATen operators' own time stands in for
kernels, so the same code runs anywhere; its numbers there say nothing about a GPU.  A kernel's category comes
from its name (the first pattern that matches).
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path

import torch
from tabulate import tabulate
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from .machine import device_name

log = logging.getLogger(__name__)

CATEGORIES = (  # (category, pattern over the lower-cased kernel / operator name), first match wins
    # DALI's kernels (dali::kernels::...) and host-to-device copies (the batches'; a step makes none of its own): the
    # loader's GPU stage on the training GPU
    ("loader (DALI)", r"dali|memcpy htod"),
    # flash / cuDNN / memory-efficient SDPA kernels (flash_bwd_convert_dq must not count as a convolution)
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    # cuBLAS (nvjet_*: its Hopper kernels; sm90_xmma_gemm_*; splitKreduce), CUTLASS, cuDNN's implicit GEMMs; ATen ops
    ("GEMM", r"gemm|gemv|nvjet|matmul|cutlass|cublas|xmma|splitkreduce|\bmm\b|aten::mm|addmm|bmm|linear|convolution|"
             r"conv[12]d"),
    ("STFT + mel", r"fft|stft|spectr|mel"),  # cuFFT's kernels name fft (regular_fft, vector_fft, fftDirection_t)
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("communication", r"nccl|allreduce|all_reduce|allgather|all_gather|reduce_scatter|gloo"),
    ("copies / gathers", r"copy|memcpy|memset|\bcat\b|aten::cat|index|gather|scatter|contiguous|clone|randperm|"
                         r"radixsort"),
    ("norm / GELU / elementwise", r"norm|gammabeta|gelu|elementwise|vectorized|reduce|add|mul|div|sub|exp|log|pow|"
                                  r"sqrt|sum|mean|where|fill|max|clamp|neg|rsqrt|tanh|erf"),
)
# torch.compile's kernels, triton_<kind>_fused_<the ATen ops fused>_<n>: a pointwise or reduction kernel computes no
# GEMM and no attention whatever ops its name lists (mm there is a cast or layout of a GEMM's input or output), so
# its category comes from its ops: data movement and casts alone make it a copy, any arithmetic an elementwise pass
GENERATED = re.compile(r"^triton_(poi|red|per|tem|for)_fused(\w*?)(?:_\d+)?$")
MOVES = frozenset("to copy clone cat index gather scatter slice select view unsafe permute t transpose expand "
                  "unsqueeze squeeze reshape alias detach narrow unbind unfold constant pad nd full like new zeros zero "
                  "ones empty lift fresh put stack split with sizes flip roll repeat as strided mm bmm convolution "
                  "embedding iota arange".split())
IDLE = "idle (gaps, host)"
LABELS = [label for label, _ in CATEGORIES] + ["other", IDLE]  # every category a summary can hold, in table order
PROFILE_FILES = ("profile.md", "profile.json", "profile_trace.json.gz")  # what a profiled run writes
TOP_KERNELS = 15  # the kernels a summary names, longest first: what a category's share is made of


def category(name: str) -> str:
    lowered = name.lower()
    generated = GENERATED.match(lowered)
    if generated:
        return generated_category(*generated.groups())
    return next((label for label, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def generated_category(kind: str, ops: str) -> str:
    """The category of an inductor kernel from its kind (poi: pointwise, red / per: reduction, tem: a GEMM template,
    for: a foreach kernel, the compiled optimizer's) and the ATen ops its name lists."""
    if kind == "tem":
        return "attention" if "attention" in ops else "GEMM"
    if kind == "for" or re.search(r"adam|foreach", ops):
        return "optimizer"
    if "softmax" in ops:
        return "attention"
    tokens = set(filter(None, ops.split("_")))
    return "copies / gathers" if tokens <= MOVES else "norm / GELU / elementwise"


def top_kernels_table(summary: dict, width: int = 100) -> str:
    """The summary's longest kernels as a markdown table (names cut to `width`: C++ template names run long)."""
    rows = []
    for entry in summary["top"]:
        name = entry["name"] if len(entry["name"]) <= width else entry["name"][:width - 3] + "..."
        rows.append([name.replace("|", "\\|"), entry["category"], f"{entry['ms']:.3f}",
                     f"{100 * entry['ms'] / summary['wall_ms']:.1f}", f"{entry['calls']:g}"])
    return tabulate(rows, headers=["kernel", "category", "ms per step", "% of wall", "calls per step"],
                    tablefmt="github", disable_numparse=True) + "\n"


def device_work(events) -> list:
    """The kernels, copies and memsets among a profile's events.  Not the GPU user annotations: kineto mirrors each
    record_function range that launched device work onto the device's timeline (inductor's "## Call CompiledFxGraph
    ##" around a whole compiled graph, "Optimizer.step#Adam.step"), spanning the kernels inside it and the gaps between
    them, so counting them would count those kernels twice and those gaps as busy."""
    return [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]


def covered_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: the time at least one kernel ran, where kernels on several
    streams (DALI's, the step's) overlap."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summarise(kernels: list[tuple[str, float, int]], wall_ms: float, steps: int, busy_us: float | None) -> dict:
    """Capture.stop's summary from (name, microseconds, calls) over `steps` steps of `wall_ms` each.  Idle is the wall
    time no kernel covered: `busy_us` (the kernels' union on the device), or on a CPU their sum (self times, which do
    not overlap); a sum on a GPU would count overlapping streams twice and hide idle time."""
    by_name: dict[str, list] = {}  # a GPU profile holds ~10^5 kernel events of a few hundred names
    for name, micros, calls in kernels:
        entry = by_name.setdefault(name, [0.0, 0])
        entry[0] += micros / 1e3 / steps
        entry[1] += calls
    categories = {name: category(name) for name in by_name}  # each name's patterns matched once
    totals: dict[str, float] = {}
    for name, (ms, _) in by_name.items():
        totals[categories[name]] = totals.get(categories[name], 0.0) + ms
    busy = sum(totals.values()) if busy_us is None else busy_us / 1e3 / steps
    totals[IDLE] = max(0.0, wall_ms - busy)
    top = sorted(by_name.items(), key=lambda item: -item[1][0])[:TOP_KERNELS]
    return {"wall_ms": wall_ms, "by_category": totals,
            "top": [{"name": name, "category": categories[name], "ms": ms, "calls": calls / steps}
                    for name, (ms, calls) in top]}


class Capture:
    """torch.profiler over some steps, from an idle device to an idle device: `start()`, the steps, `stop(steps)`
    -> {"wall_ms": per step, "by_category": {category: ms per step} (categories absent when zero), "top": the
    longest kernels, [{"name", "category", "ms" per step, "calls" per step}]}."""

    def __init__(self, device: torch.device):
        self.device = device
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.profiler = profile(activities=activities)
        self.started = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._sync()  # the steps start on an idle device: earlier work is not counted against them
        self.profiler.__enter__()
        self.started = time.perf_counter()

    def stop(self, steps: int) -> dict:
        self._sync()
        wall = (time.perf_counter() - self.started) * 1e3 / steps
        self.profiler.__exit__(None, None, None)
        if self.device.type == "cuda":
            events = device_work(self.profiler.events())
            kernels = [(e.name, e.device_time, 1) for e in events]
            busy = covered_us([(e.time_range.start, e.time_range.end) for e in events])
        else:
            kernels = [(e.key, e.self_cpu_time_total, e.count) for e in self.profiler.key_averages()
                       if e.key.startswith(("aten::", "c10d::"))]  # operators and collectives, not Python frames
            busy = None
        return summarise(kernels, wall, steps, busy)

    def abandon(self) -> None:
        """Stop profiling without a summary (a step or the capture itself failed); never raises, since a profiler
        that failed may fail again on the way out and the caller is already handling an error."""
        with contextlib.suppress(Exception):
            self.profiler.__exit__(None, None, None)


class StepProfiler:
    """`run.profile_steps`: optimizer steps `after + 1` .. `after + count` of a run under torch.profiler (after the
    first window of `run.log_every` steps: compilation, loader start-up and the first read of the losses are
    behind).  Every rank profiles the same steps, so they stay in step; the main rank writes profile.md (ms per step
    by category), profile.json (the same, for tools) and profile_trace.json.gz (the Chrome / Perfetto trace) into
    the run folder."""

    def __init__(self, device: torch.device, after: int, count: int, folder: Path | None):
        self.device, self.first, self.last, self.folder = device, after + 1, after + count, folder
        self.capture: Capture | None = None

    def step_done(self, step: int) -> None:
        """After optimizer step `step` (counted from 1 over the run): start before `first`, stop after `last`.
        A profiler that fails (CUPTI, a full disk) costs the profile, not the run: a WARNING, and no profile files."""
        if self.last < self.first or step not in (self.first - 1, self.last):
            return
        capture = self.capture
        try:
            if step == self.first - 1:
                capture = self.capture = Capture(self.device)
                capture.start()
            elif capture is not None:
                self.capture = None
                self._write(capture.stop(self.last - self.first + 1), capture.profiler)
        except Exception as exc:  # noqa: BLE001 (any profiler failure; the training step itself has finished)
            self.capture = capture
            self.close()
            for name in PROFILE_FILES if self.folder is not None else ():
                (self.folder / name).unlink(missing_ok=True)
            log.warning("run.profile_steps: profiling steps %d-%d failed, so this run has no profile (training goes "
                        "on): %s: %s", self.first, self.last, type(exc).__name__, exc)

    def close(self) -> None:
        """A run stopped inside the profiled steps (a pre-emption, an error): the profiler stops, nothing is written."""
        if self.capture is not None:
            capture, self.capture = self.capture, None
            capture.abandon()

    def _write(self, summary: dict, profiler) -> None:
        if self.folder is None:
            return
        summary = {"device": device_name(self.device), "steps": [self.first, self.last], **summary}
        rows = [[label, f"{ms:.2f}", f"{100 * ms / summary['wall_ms']:.0f}"]
                for label in LABELS if (ms := summary["by_category"].get(label)) is not None]
        rows.append(["step wall time", f"{summary['wall_ms']:.2f}", "100"])
        kind = "kernel time on the device" if self.device.type == "cuda" else "ATen operators' own CPU time"
        (self.folder / "profile.md").write_text(
            f"# Where this run's steps went: {summary['device']}\n\nOptimizer steps {self.first}-{self.last} under "
            f"torch.profiler ({kind} by category; idle = wall time nothing covered; kernels on overlapping streams, "
            "the loader's beside the step's, can take the shares past 100%). Trace: profile_trace.json.gz "
            "(chrome://tracing or ui.perfetto.dev).\n\n"
            + tabulate(rows, headers=["category", "ms per step", "% of wall"], tablefmt="github",
                       disable_numparse=True)
            + f"\n\nThe {len(summary['top'])} kernels that took the most time:\n\n" + top_kernels_table(summary))
        (self.folder / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")
        profiler.export_chrome_trace(str(self.folder / "profile_trace.json.gz"))
        log.info("run.profile_steps: steps %d-%d profiled, %.2f ms per step: %s", self.first, self.last,
                 summary["wall_ms"], self.folder / "profile.md")
