"""The GPU throughput benchmark in one call: corpus, model step, loader, whole trainer and the reference stack,
side by side, written to benchmarks/results/gpu.md (the table and the targets' ratios: `gpu_report.py`).

    python benchmarks/gpu.py --out benchmarks/results/gpu.md      # a lent GPU machine, after the wheels are staged
    python benchmarks/gpu.py --tiny --out /tmp/gpu_tiny.md        # any CPU: every section, tiny sizes (smoke test)

Rows that would not fit `--budget` are skipped with a note; a second call in the same lease adds them, e.g.
    python benchmarks/gpu.py --sections compiled --append --out benchmarks/results/gpu.md
A row that compiles is allowed 1.5x the slowest compilation the call has timed so far (130 s before the first:
PaSST-S's first compilation took 112 s on an H100 with cold caches, its first compiled step 22 s on an H200), and
every row says in its `seconds` column what it took of the call, so the next lease can plan from measured times.

Sections (each row skipped with a note once `--budget` seconds would be exceeded).  They run interleaved, what the
targets are judged on first (1-s clips: model step and whole trainer, eager and compiled, the reference stack, the
loader's headroom, the profile), then the levers and the 10-s rows, max-autotune last:
  corpus     16k 1-s + 2k 10-s 44.1 kHz clips as WAV, packed as FLAC and as pcm16 (`gpu_corpus.py`)
  peak       the bf16 matmul ceiling of this device (8192^3), the denominator of every MFU
  model      our model step: mel front-end + MixStyle + PaSST-S (SDPA) + fused Adam, bf16 autocast, on a batch
             already on the device; eager and torch.compile'd; 1-s clips at batch 256, 10-s at batch 64; the
             same eager step through a DeepSpeed engine at ZeRO 0 (what the engine costs per step), as the trainer
             runs it and with DeepSpeed's no-op one-rank gradient all-reduce kept; eager with Liger's LayerNorm
             kernel in place of every nn.LayerNorm (where liger-kernel is installed); eager after the TAU stage's
             waveform augmentation (roll, impulse responses), which the 1-s trainer row runs and the step does not;
             eager with the reference's patch embedding (a Conv2d over every patch, patchout gathering from its
             output) in place of PatchEmbed's GEMM over the kept patches
  eval       evaluation / prediction: front-end + PaSST-S in eval mode, bf16, no gradients (clips/s)
  profile    torch.profiler over the eager and the compiled 1-s model step: kernel time by category (GEMM,
             attention, norm / GELU / elementwise, STFT + mel, optimizer, copies, idle), written beside --out
             as gpu_profile.md (`gpu_profile.py`), with the 1-s FLAC trainer rows' own profiles beside them and
             each column's longest kernels; the traces beside it (gpu_trace_{step_eager,step_compiled,trainer,
             trainer_compiled}.json.gz, for ui.perfetto.dev)
  trainer    the real `launch/train.py` (DALI, DeepSpeed ZeRO 0, augmentation, checkpoints) on the corpus; the
             rate is the median of steps.csv's windows after each epoch's first; the 1-s FLAC runs profile the
             window after their first (`run.profile_steps`), which the rate leaves out
  reference  hear21passt's PaSST + mel, WAV files decoded with soundfile in DataLoader workers, Adam, bf16
             autocast (`reference_stack.py`): the whole step, and its model step alone
  loader     the DALI loader alone (+ the mel front-end), FLAC vs pcm16, several thread counts, and the torch reader;
             decoding per core (one DALI CPU thread, FLAC vs pcm16, with the bytes per clip; `decode.py`); the
             augmentation's impulse-response convolution at the exact and the 7-smooth FFT length (`augment.py`)
  compiled   the compiled model steps (PaSST alone; one graph from waveform to loss; with CUDA graphs; with
             max-autotune; with FP8 MLP Linears through torchao, where it is installed and the GPU has FP8), the
             whole trainer and evaluation / prediction with PaSST compiled
  suite      the test suite with -n <cores - 2> on this machine (`gpu_suite.py`): pass / fail counts and the failing
             ids, so one call checks correctness and speed; alone: --sections suite --append (~5 min on 16 cores)
Every row has the peak GPU memory its step allocated (the trainer's: epochs.csv's peak).  A lever that fails
(a compiler error, a kernel library's) or a trainer run that exits non-zero is a row saying why (the run's log
tail in the output); any other measurement that raises (an out-of-memory, a profiler) is a note saying why, with
its traceback in the output; either way the call goes on to the next rows.  The optional rows' wheels
(torchao, liger-kernel) and pytest-xdist for the suite: `bash benchmarks/stage_extras.sh` after the shared
staging script.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

import augment
import decode
import gpu_corpus
import gpu_profile
import gpu_report
import gpu_step
import gpu_suite
import reference_stack
from machine import device_name
from trainer.config import deepspeed_config, load_config
from trainer.data import make_loader
from trainer.data.augment import fast_fft_size, fft_convolve
from trainer.engine import compile_failure
from trainer.model.frontend import PRESETS, MelFrontend
from trainer.model.passt import create_model, flops_per_sample

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("model", "eval", "trainer", "reference", "loader", "profile", "compiled", "suite")
COLD_COMPILE_S = 130.0  # a compilation's allowance before this call has timed one (PaSST-S, cold caches: 112 s, H100)


class Bench:
    """Settings, the clock against the budget, and the rows measured so far (written after every row)."""

    def __init__(self, args):
        self.args, self.tiny = args, args.tiny
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.model = "passt_micro" if self.tiny else "passt_s"
        self.started = time.perf_counter()
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.facts: dict = {}
        self.suite: dict | None = None
        self.cpus = len(os.sched_getaffinity(0))
        self.config = create_model(self.model, 10, s_patchout_f=6).config  # for the FLOP count, built once
        self.compile_s: list[float] = []  # what each compilation timed in this call took (first step included)
        self.lap_started = self.started  # where the next row's seconds are counted from

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def fits(self, section: str, needs: float, compiling: bool = False) -> bool:
        """Whether `section` was asked for and ~`needs` seconds (on a GPU; a tenth of it --tiny) are left; compiling:
        the row compiles, so it also needs a compilation's time (`compile_estimate`)."""
        if section not in self.args.sections:
            return False
        needs = (needs / 10 if self.tiny else needs) + (self.compile_estimate() if compiling else 0.0)
        if self.left() < needs:
            self.notes.append(f"{section}: skipped, {self.left():.0f} s of the {self.args.budget:.0f} s budget left "
                              f"(needs ~{needs:.0f} s); run again with --sections {section}")
            return False
        return True

    def compile_estimate(self) -> float:
        """Seconds a compilation will take: 1.5x the slowest this call has timed (later graphs reuse the first's
        kernels and caches), or the cold-cache allowance before any (a tenth of it --tiny)."""
        if self.compile_s:
            return 1.5 * max(self.compile_s)
        return COLD_COMPILE_S / 10 if self.tiny else COLD_COMPILE_S

    def lap(self) -> float:
        """Seconds since the last row (or mark): what the work in between took of the budget."""
        now = time.perf_counter()
        took, self.lap_started = now - self.lap_started, now
        return took

    def add(self, **row) -> None:
        row.setdefault("peak_gib", None)
        row["seconds"] = self.lap()  # the row's build, compilation, warm-up and timing
        self.rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        # written after every row: a call cut off at the device's time limit still leaves every row it measured
        gpu_report.write(self, self.args.out)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def attempt(self, what: str, measure: Callable[..., None], *args, **kwargs) -> None:
        """`measure(*args, **kwargs)`, whose failure on a machine this code has not met yet becomes a note saying
        why (its traceback in the output), so that the call goes on to the next rows instead of ending."""
        try:
            measure(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 (any failure: the rest of a scarce lease is worth more than this row)
            traceback.print_exc()
            self.notes.append(f"{what}: failed after {self.lap():.0f} s, the call went on: {compile_failure(exc)}")
            torch._dynamo.reset()
            self.fresh_memory()
            gpu_report.write(self, self.args.out)

    def fresh_memory(self) -> None:
        """Forget what earlier rows cached and allocated, so that the next row's peak is its own."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None

    def rate(self, call, batch: int, warmup: int) -> float:
        """Clips/s of `call` (one batch each) over a timed run after `warmup` calls (more on a GPU)."""
        for _ in range(warmup if self.tiny else 2 * warmup + 1):
            call()
        steps = 2 if self.tiny else 20
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            call()
        self.sync()
        return batch * steps / (time.perf_counter() - start)

    def train_flops(self, frames: int) -> float:
        return 3 * flops_per_sample(self.config, min(frames, self.config.window_frames), training=True)

    def mfu(self, samples_per_s: float, frames: int) -> float | None:
        peak = self.facts.get("peak_tflops")
        return 100 * samples_per_s * self.train_flops(frames) / (peak * 1e12) if peak else None


def measure_peak(b: Bench) -> None:
    n = 1024 if b.tiny else 8192
    x = torch.randn(n, n, device=b.device, dtype=torch.bfloat16)
    y = torch.randn(n, n, device=b.device, dtype=torch.bfloat16)
    times = []
    for i in range(3 if b.tiny else 25):
        b.sync()
        start = time.perf_counter()
        x @ y
        b.sync()
        times.append(time.perf_counter() - start)
    b.facts["peak_tflops"] = 2 * n**3 / statistics.median(times[1:]) / 1e12
    print(f"bf16 matmul {n}^3: {b.facts['peak_tflops']:.1f} TFLOP/s", flush=True)


def model_step(b: Bench, seconds: float, batch: int, kind: bool | str) -> None:
    name = gpu_step.KINDS[kind]
    missing = {"fp8": gpu_step.fp8_unavailable, "liger": gpu_step.liger_unavailable}.get(kind, lambda _: None)(b.device)
    if missing:
        b.add(section="model", what=f"model step, {name}", clips=f"{seconds:g} s", batch=batch,
              samples_s=float("nan"), mfu=None, note=f"not measured: {missing}")
        return
    try:
        b.fresh_memory()
        step, frames = gpu_step.build_step(b.device, b.model, seconds, batch, kind)
        start = time.perf_counter()
        step()
    except Exception as exc:  # noqa: BLE001 (a lever that fails is a result: the row says so, the call goes on)
        if kind is False:
            raise
        reason = compile_failure(exc)
        b.add(section="model", what=f"model step, {name}", clips=f"{seconds:g} s", batch=batch,
              samples_s=float("nan"), mfu=None, note=f"{'' if kind == 'liger' else 'compiling '}failed: {reason}")
        torch._dynamo.reset()
        if kind == "whole":
            model_step(b, seconds, batch, "whole, no pattern matcher")
        return
    b.sync()
    first = time.perf_counter() - start
    if kind in gpu_step.COMPILED and kind != "max-autotune":  # max-autotune's first step also benchmarks kernels
        b.compile_s.append(first)
    rate = b.rate(step, batch, warmup=2)
    b.add(section="model", what=f"model step, {name}", clips=f"{seconds:g} s",
          batch=batch, samples_s=rate, mfu=b.mfu(rate, frames), peak_gib=b.peak(),
          note=f"first step {first:.0f} s (compilation)" if kind in gpu_step.COMPILED else "")


def engine_step(b: Bench, seconds: float, batch: int, lean: bool) -> None:
    """The eager model step through a DeepSpeed engine (ZeRO 0, autocast inside it, as the trainer's JSON has it)
    in this process as one rank: the engine's own cost per step, against the bare step.  lean: as the trainer runs
    it, without DeepSpeed's no-op one-rank gradient all-reduce (`distributed.skip_lone_reduction`)."""
    import deepspeed

    from trainer import distributed

    distributed.setup(b.device.type)
    try:
        b.fresh_memory()
        frontend, mixstyle, model, optimizer, wave, label = gpu_step.step_parts(b.device, b.model, seconds, batch)
        stage = load_config("tau", [f"train.global_batch={batch}", f"train.micro_batch={batch}",
                                    "train.precision=bf16", "train.zero_stage=0"])
        config = deepspeed_config(stage, 1)  # the trainer's JSON (no clipping: DeepSpeed's default would clip at 1)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=False)
        if lean:
            distributed.skip_lone_reduction(engine)

        def step():
            logits, _ = engine(mixstyle(frontend(wave)))
            engine.backward(F.cross_entropy(logits.float(), label))
            engine.step()

        rate = b.rate(step, batch, warmup=2)
        b.add(section="model", what=f"model step, eager, {gpu_step.ENGINES[lean]}", clips=f"{seconds:g} s",
              batch=batch, samples_s=rate, mfu=b.mfu(rate, frontend.frames(wave.shape[1])), peak_gib=b.peak(),
              note="as the trainer runs it, one rank" if lean else
              "DeepSpeed's default: every step flattens the gradients, all-reduces them over one rank, copies back")
    finally:
        distributed.teardown()


def eval_rate(b: Bench, seconds: float, batch: int, compiled: bool = False) -> None:
    """Evaluation / prediction: front-end + PaSST in eval mode (no patchout; long clips windowed), bf16, no grad;
    compiled: PaSST's forward as the trainer compiles it (what its evaluation runs with model.compile on)."""
    b.fresh_memory()
    preset = PRESETS["sit44k"]
    frontend = MelFrontend(preset).to(b.device).eval()
    model = create_model(b.model, 10, s_patchout_f=6).to(b.device).eval()
    if compiled:
        model.compile(fullgraph=True, dynamic=False)
    wave = torch.randn(batch, int(seconds * preset.sample_rate), device=b.device) * 0.1

    @torch.no_grad()
    def forward():
        with torch.autocast(b.device.type, dtype=torch.bfloat16):
            model(frontend(wave))

    rate = b.rate(forward, batch, warmup=1)
    b.add(section="eval", what=f"evaluation / prediction, {'compiled' if compiled else 'eager'}",
          clips=f"{seconds:g} s", batch=batch, samples_s=rate, mfu=None, peak_gib=b.peak(), note="bf16, no gradients")


def trace_path(out: Path, what: str) -> Path:
    """Where a profile's trace goes: beside --out, so that a lease brings it back (ui.perfetto.dev reads it)."""
    return out.parent / f"gpu_trace_{what}.json.gz"


def profile_steps(b: Bench, out: Path) -> None:
    """The eager and (if it fits) the compiled 1-s model step under torch.profiler, into gpu_profile.md."""
    batch = 8 if b.tiny else 256
    results = {}
    for compiled in (False, True):
        if compiled and not b.fits("profile", 20, compiling=True):
            break
        b.fresh_memory()
        step, _ = gpu_step.build_step(b.device, b.model, 1.0, batch, compiled)
        for _ in range(2 if b.tiny else 5):  # compilation and warm-up outside the profile
            step()
        results[f"{'compiled' if compiled else 'eager'} step, 1-s clips x {batch}"] = gpu_profile.profile_step(
            step, b.device, 2 if b.tiny else 10, trace_path(out, f"step_{'compiled' if compiled else 'eager'}"))
    for label, path in b.facts.get("trainer_profiles", {}).items():  # the trainer rows' own (run.profile_steps)
        results[label] = json.loads(path.read_text())
    intro = (f"Measured {datetime.date.today().isoformat()} with `python benchmarks/gpu.py {' '.join(sys.argv[1:])}` "
             f"({b.model}, bf16 autocast, fused Adam). The model step's columns profile the bare step; the whole "
             "trainer's are its 1-s FLAC rows' own profile (`run.profile_steps`: steps after the first window, loader "
             "and DeepSpeed engine included), so the difference is what the trainer adds. "
             + ("CPU: ATen operators' own time stands in for kernels (a smoke test of the section)." if b.tiny else
                "Kernel time on the device by category; idle = wall time no kernel covered."))
    (out.parent / "gpu_profile.md").write_text(gpu_profile.markdown(results, device_name(b.device), intro))
    print((out.parent / "gpu_profile.md").read_text(), flush=True)
    b.notes.append(f"profile: {b.lap():.0f} s (gpu_profile.md)")


def trainer_run(b: Bench, corpus: dict, seconds: float, fmt: str, compiled: bool, work: Path) -> None:
    """The real launcher in its own process, on one device; the rate of steps.csv's steady windows."""
    short = seconds < 5
    name = f"{'short' if short else 'long'}_{fmt}{'_compiled' if compiled else ''}"
    dataset = corpus["sets"]["short" if short else "long"]["shards"][fmt]
    micro = (8 if b.tiny else 256) if short else (4 if b.tiny else 64)
    log_every = 1 if b.tiny else (5 if short else 2)
    profiled = (2 if b.tiny else 5) if short and fmt == "flac" else 0  # steps after the first window, for the profile
    overrides = [f"data.root={dataset.parent}", f"data.dataset={dataset.name}", "data.train_split=train",
                 f"data.clip_seconds={seconds:g}",
                 "init_from=null", f"model.name={b.model}", f"model.compile={str(compiled).lower()}",
                 f"train.epochs={2 if b.tiny or short else 3}", f"train.global_batch={16 if b.tiny else 256}",
                 f"train.micro_batch={micro}", f"train.eval_batch={micro}", "train.precision=bf16",
                 f"train.device={b.device.type}", f"run.out={work}", f"run.name={name}", f"run.log_every={log_every}",
                 "run.keep_checkpoints=1", f"run.profile_steps={profiled}"]
    if short:
        overrides.append(f"augment.dir_folder={corpus['irs']}")
    stage = "tau" if short else "cochl"
    log = work / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    with open(log, "w") as fh:
        code = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), "--stage", stage, *overrides],
                              cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    text = log.read_text()
    what = f"whole trainer, {fmt}{', compiled' if compiled else ''}"
    batch = f"256 = {micro} x {256 // micro}" if not b.tiny else f"16 = {micro} x {16 // micro}"
    if code != 0:  # a row saying why, its log's tail in the call's output, and the call goes on
        print(f"trainer run {name} exited {code}; the end of {log}:\n{text[-3000:]}", flush=True)
        cause = next((line.strip() for line in reversed(text.splitlines())  # the launcher's error or the exception
                      if re.search(r"^error: |\b\w+(Error|Exception)\b", line)), "see gpu.log")
        b.add(section="trainer", what=what, clips=f"{seconds:g} s", batch=batch, samples_s=float("nan"), mfu=None,
              peak_gib=None, note=f"failed: exit {code}: {cause[:200]}")
        return
    folder = work / stage / name  # the run folder
    steps = pd.read_csv(folder / "steps.csv")
    steps["in_epoch"] = steps.groupby("epoch").cumcount()
    profiled_window = steps["step"].between(log_every + 1, log_every + profiled)  # the profiler slowed it
    steady = steps[(steps["in_epoch"] >= log_every) & ~profiled_window]["samples_per_s"]
    rate = float(steady.median() if len(steady) else steps["samples_per_s"].median())
    precision = next((line.split("precision: ")[1].split(" | ")[0] for line in text.splitlines()
                      if "precision: " in line), "?")
    compile_note = next((line.split("model.compile: ")[1] for line in text.splitlines() if "model.compile: " in line), "")
    compiled_in = re.search(r"compiled at set-up in ([\d.]+) s", compile_note)
    if compiled_in:
        b.compile_s.append(float(compiled_in.group(1)))
    frames = MelFrontend(PRESETS["sit44k"]).frames(int(seconds * 44100))
    peak = pd.read_csv(folder / "epochs.csv")["peak_memory_gib"].max()
    notes = [precision, compile_note]
    if profiled and (folder / "profile.json").exists():
        b.facts.setdefault("trainer_profiles", {})[
            f"whole trainer{', compiled' if compiled else ''}, {seconds:g}-s clips x {16 if b.tiny else 256} per step"
        ] = folder / "profile.json"
        shutil.copyfile(folder / "profile_trace.json.gz",
                        trace_path(b.args.out, f"trainer{'_compiled' if compiled else ''}"))
    elif profiled:  # the trainer warned and trained on (run.profile_steps never fails a run)
        notes.append(next((line.split("run.profile_steps: ")[1] for line in text.splitlines()
                           if "run.profile_steps: profiling steps" in line), "no profile written"))
    b.add(section="trainer", what=what, clips=f"{seconds:g} s", batch=batch, samples_s=rate,
          mfu=b.mfu(rate, frames), peak_gib=None if pd.isna(peak) else float(peak),
          note="; ".join(note for note in notes if note))


def loader_rate(b: Bench, folder: Path, batch: int, backend: str, threads: int) -> None:
    """Clips/s of one training epoch of the loader plus the mel front-end, after its first batches."""
    loader = make_loader(folder, "train", batch_size=batch, training=True, backend=backend, device=b.device.type,
                         num_workers=threads)
    frontend = MelFrontend(PRESETS["sit44k"]).to(b.device).train()
    batches = iter(loader)
    for _ in range(min(3, len(loader) - 1)):  # pipeline start-up and prefetch fill
        frontend(next(batches)["audio"])
    b.sync()
    start, n = time.perf_counter(), 0
    for batch_ in batches:
        frontend(batch_["audio"])
        n += batch_["audio"].shape[0]
    b.sync()
    rate = n / (time.perf_counter() - start)
    b.add(section="loader", what=f"loader {backend}-{b.device.type} + mel, {folder.name.split('_')[1]}",
          clips="1 s" if folder.name.startswith("short") else "10 s", batch=batch, samples_s=rate, mfu=None,
          note=f"{threads} {'threads' if backend == 'dali' else 'workers'}")


def decode_per_core(b: Bench, folder: Path, batch: int) -> None:
    """The CPU half of the loader on one thread (read, decode, crop; `decode.py`): what one core gives a GPU."""
    fmt, clips = folder.name.split("_")[1], "1 s" if folder.name.startswith("short") else "10 s"
    rate, size = decode.decode_rate(folder, batch, 1, warmup=False), decode.bytes_per_clip(folder)  # one epoch
    b.facts.setdefault("decode", {})[clips, fmt] = {"per_core": rate, "bytes": size}
    b.add(section="loader", what=f"decode per core (DALI CPU, 1 thread), {fmt}", clips=clips, batch=batch,
          samples_s=rate, mfu=None, note=f"{size / 1024:.0f} KiB / clip in the shards")


def convolution_rate(b: Bench, batch: int, fast: bool) -> None:
    """The training augmentation's impulse-response convolution (1-s clips, 0.25-s responses; `augment.py`)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 44100, generator=gen).to(b.device)
    h = torch.randn(batch, 11025, generator=gen).to(b.device)
    rate = b.rate(lambda: fft_convolve(x, h, fast), batch, warmup=2)
    size = x.shape[1] + h.shape[1] - 1
    size = fast_fft_size(size) if fast else size
    b.add(section="loader", what=f"impulse-response convolution, {'7-smooth' if fast else 'exact'} FFT length",
          clips="1 s", batch=batch, samples_s=rate, mfu=None, note=f"{size} = {augment.factors(size)} points; "
                                                                   "0.25-s responses")


def run(b: Bench, work: Path) -> None:
    if set(b.args.sections) - {"suite"}:
        throughput(b, work)
    if b.fits("suite", 60):
        # tiny: one small file on one worker checks the plumbing (the whole suite is what runs this)
        paths = ["tests/test_sit_metrics.py"] if b.tiny else []
        b.suite = gpu_suite.run_suite(1 if b.tiny else max(1, b.cpus - 2), b.left(), work / "suite", paths)


def throughput(b: Bench, work: Path) -> None:
    corpus = gpu_corpus.make_corpus(work / "corpus", tiny=b.tiny, workers=max(1, b.cpus - 1))
    t = corpus["timings"]
    b.facts["corpus"] = (f"{corpus['clips']['short']} 1-s + {corpus['clips']['long']} 10-s clips in "
                         f"{t['total']:.0f} s on {b.cpus} cores (WAV {t['write wav']:.0f} s; packing FLAC "
                         f"{t['pack short flac'] + t['pack long flac']:.0f} s, pcm16 "
                         f"{t['pack short pcm16'] + t['pack long pcm16']:.0f} s)")
    print(b.facts["corpus"], flush=True)
    measure_peak(b)
    b.lap()  # the corpus is in its own line; rows count from here
    steps = [(1.0, 8 if b.tiny else 256), (10.0, 4 if b.tiny else 64)]
    short, long = steps
    threads = [1, 2] if b.tiny else sorted({4, 8, b.cpus - 1})  # DALI threads / torch workers of the loader rows
    # First what the targets are judged on (1-s clips): model step and whole trainer, eager and compiled, the
    # reference stack, the loader's headroom and the profile; then the levers and the 10-s rows.
    step_and_trainer(b, corpus, work, *short)
    if b.fits("reference", 45):
        b.attempt("reference stack", reference_rows, b, corpus)
    if b.fits("loader", 30):
        dali_loader_rows(b, corpus["sets"]["short"]["shards"], short[1], threads)
    if b.fits("profile", 60):
        b.attempt("profile", profile_steps, b, b.args.out)
    if b.fits("model", 30):
        for lean in (True, False):
            b.attempt(f"model step, eager, {gpu_step.ENGINES[lean]}", engine_step, b, *short, lean)
        for lever in ("liger",  # a kernel library's norm against eager's and compile's
                      "augmented",  # what the trainer's 1-s (TAU) row does beyond the model step
                      "conv patch embed"):  # the reference's patch embedding, against PatchEmbed's
            b.attempt(f"model step, {gpu_step.KINDS[lever]}", model_step, b, *short, kind=lever)
    for lever in ("whole", "cuda graphs", "fp8"):  # one graph; what the profile may call for: launch gaps, MLP GEMMs
        if b.fits("compiled", 20, compiling=True):
            b.attempt(f"model step, {gpu_step.KINDS[lever]}", model_step, b, *short, kind=lever)
    if b.fits("eval", 20):
        for seconds, batch in steps:
            b.attempt(f"evaluation, eager, {seconds:g} s", eval_rate, b, seconds, batch)
    if b.fits("loader", 45):
        dali_loader_rows(b, corpus["sets"]["long"]["shards"], long[1], threads)
        for name, batch in (("short", short[1]), ("long", long[1])):
            b.attempt(f"torch loader, {name} clips", loader_rate, b, corpus["sets"][name]["shards"]["flac"], batch,
                      "torch", threads[-1])
        for name, batch in (("short", short[1]), ("long", long[1])):
            for fmt in ("flac", "pcm16"):
                b.attempt(f"decode per core, {name} {fmt}", decode_per_core, b,
                          corpus["sets"][name]["shards"][fmt], batch)
        for fast in (False, True):
            b.attempt("impulse-response convolution", convolution_rate, b, short[1], fast)
    if b.fits("trainer", 60):
        b.attempt("whole trainer, pcm16, 1 s", trainer_run, b, corpus, 1.0, "pcm16", False, work)
    step_and_trainer(b, corpus, work, *long)
    if b.fits("compiled", 30, compiling=True):  # two forward-only graphs, each cheaper than a training one
        for seconds, batch in steps:
            b.attempt(f"evaluation, compiled, {seconds:g} s", eval_rate, b, seconds, batch, compiled=True)
    if b.fits("compiled", 300):  # last: benchmarking kernel configurations takes minutes
        b.attempt("model step, max-autotune", model_step, b, *short, kind="max-autotune")


def step_and_trainer(b: Bench, corpus: dict, work: Path, seconds: float, batch: int) -> None:
    """The model step and the whole trainer (FLAC) on `seconds`-long clips, eager and compiled."""
    if b.fits("model", 30):
        b.attempt(f"model step, eager, {seconds:g} s", model_step, b, seconds, batch, kind=False)
    if b.fits("compiled", 20, compiling=True):  # the call's first compilation: the cold-cache allowance
        b.attempt(f"model step, compiled, {seconds:g} s", model_step, b, seconds, batch, kind=True)
    if b.fits("trainer", 60):
        b.attempt(f"whole trainer, flac, {seconds:g} s", trainer_run, b, corpus, seconds, "flac", False, work)
    if b.fits("compiled", 60, compiling=True):
        b.attempt(f"whole trainer, flac, compiled, {seconds:g} s", trainer_run, b, corpus, seconds, "flac", True, work)


def dali_loader_rows(b: Bench, shards: dict, batch: int, threads: list[int]) -> None:
    """The DALI loader + mel on FLAC at each thread count, and on pcm16 at the fewest."""
    for fmt, n in [("flac", n) for n in threads] + [("pcm16", threads[0])]:
        b.attempt(f"DALI loader, {fmt}, {n} threads", loader_rate, b, shards[fmt], batch, "dali", n)


def reference_rows(b: Bench, corpus: dict) -> None:
    """hear21passt's stack on the 1-s WAV files: the whole step and its model step."""
    rows = [r for r in corpus["sets"]["short"]["rows"] if r["split"] == "train"]
    paths = [corpus["wav"] / r["path"] for r in rows]
    labels = [int(r["label"][5:]) for r in rows]
    batch = 8 if b.tiny else 256
    r = reference_stack.measure(paths, labels, num_classes=10, sample_rate=44100, samples=44100, batch=batch,
                                workers=1 if b.tiny else min(14, b.cpus - 2), steps=2 if b.tiny else 30,
                                warmup=1 if b.tiny else 5, tiny=b.tiny, device=b.device)
    frames = MelFrontend(PRESETS["sit44k"]).frames(44100)
    b.add(section="reference", what="reference stack, whole step", clips="1 s", batch=batch, samples_s=r["whole"],
          mfu=b.mfu(r["whole"], frames), note=f"{r['workers']} DataLoader workers")
    b.add(section="reference", what="reference stack, model step", clips="1 s", batch=batch, samples_s=r["model"],
          mfu=b.mfu(r["model"], frames), note="hear21passt PaSST + mel, Adam")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny corpus and model on the CPU: a smoke test of every section")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.md")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds; later sections are skipped past it")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--append", action="store_true", help="add this call's table to the --out file")
    b = Bench(ap.parse_args())
    b.previous = b.args.out.read_text() if b.args.append and b.args.out.is_file() else ""
    if not b.tiny and b.device.type != "cuda":
        raise SystemExit("no CUDA device: run with --tiny on a CPU")
    with tempfile.TemporaryDirectory(dir=b.args.work) as tmp:
        try:
            run(b, Path(tmp))
        finally:
            gpu_report.write(b, b.args.out)
    print(b.args.out.read_text())


if __name__ == "__main__":
    main()
