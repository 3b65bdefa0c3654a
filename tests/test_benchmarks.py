"""The benchmarks run end to end (`--tiny`: tiny sizes, on the CPU); the one-call GPU benchmark runs every section.

Speed is never asserted here; this checks that the script the next lent GPU will run works: corpus
generation and packing, the model step eager, compiled, through a DeepSpeed engine and compiled from waveform
to loss, evaluation, the real trainer (FLAC, pcm16, compiled; 1-s and 10-s clips) with bf16 in effect inside
the engine, the reference stack, the loader table, peak memory and the profile's categories.
Every result records the commit it was measured with.
"""
from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.machine import source_commit

from .helpers import REPO, run_command


def tiny_benchmark(script: str, tmp_path, *args: str, timeout: float) -> str:
    """Run benchmarks/<script> --tiny, writing its table under tmp_path; the table's text."""
    out = tmp_path / f"{Path(script).stem}.md"
    done = run_command([sys.executable, str(REPO / "benchmarks" / script), "--tiny", "--out", str(out), *args],
                       timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out.read_text()


def test_gpu_benchmark_tiny_measures_every_section(tmp_path):
    # a budget no loaded CI machine exhausts: every section must run (": skipped" is checked below)
    text = tiny_benchmark("gpu.py", tmp_path, "--work", str(tmp_path), "--budget", "1500", timeout=1800)
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]) for line in text.splitlines()
            if line.startswith("| ") and "samples/s" not in line}
    for what, clips in [("model step, eager", "1 s"), ("model step, eager", "10 s"), ("model step, compiled", "1 s"),
                        ("model step, compiled", "10 s"), ("whole trainer, flac", "1 s"),
                        ("whole trainer, flac", "10 s"), ("whole trainer, pcm16", "1 s"),
                        ("whole trainer, flac, compiled", "1 s"), ("whole trainer, flac, compiled", "10 s"),
                        ("evaluation / prediction, eager", "1 s"), ("evaluation / prediction, eager", "10 s"),
                        ("evaluation / prediction, compiled", "1 s"), ("evaluation / prediction, compiled", "10 s"),
                        ("model step, eager, DeepSpeed engine ZeRO 0", "1 s"),
                        ("model step, eager, DeepSpeed engine ZeRO 0, one-rank all-reduce kept", "1 s"),
                        ("model step, eager, Liger LayerNorm", "1 s"),
                        ("model step, eager, + TAU waveform augmentation", "1 s"),
                        ("model step, eager, patch embedding as a Conv2d over every patch", "1 s"),
                        ("model step, compiled, max-autotune (no CUDA graphs)", "1 s"),
                        ("decode per core (DALI CPU, 1 thread), flac", "1 s"),
                        ("decode per core (DALI CPU, 1 thread), pcm16", "10 s"),
                        ("impulse-response convolution, exact FFT length", "1 s"),
                        ("impulse-response convolution, 7-smooth FFT length", "1 s"),
                        ("model step, compiled waveform to loss", "1 s"),
                        ("model step, compiled, CUDA graphs (reduce-overhead)", "1 s"),
                        ("model step, compiled, FP8 MLP Linears (torchao float8)", "1 s"),
                        ("reference stack, whole step", "1 s"),
                        ("reference stack, model step", "1 s"), ("loader dali-cpu + mel, flac", "1 s"),
                        ("loader dali-cpu + mel, pcm16", "10 s"), ("loader torch-cpu + mel, flac", "10 s")]:
        assert (what, clips) in rows, (what, clips, text)
    assert text.count("bfloat16 autocast inside the engine, float32 weights and Adam state") == 5  # trainer runs
    header = next(line for line in text.splitlines() if line.startswith("| what"))
    assert "peak GiB" in header and "seconds" in header
    assert re.search(r"^- profile: \d+ s \(gpu_profile\.md\)$", text, re.M)
    whole = [line.split("|")[4].strip() for line in text.splitlines() if "| model step, compiled waveform to loss" in line]
    assert whole[0] != "nan" or (len(whole) == 2 and whole[1] != "nan"), whole  # a failed compile is retried
    assert "not measured: torchao is not installed" in text or "not measured: float8 matmuls need" in text
    assert "not measured: liger-kernel is not installed" in text or "not measured: Liger's Triton kernels need" in text
    assert "loader headroom, 1-s FLAC" in text and "DeepSpeed engine ZeRO 0 / bare model step, 1-s clips" in text
    assert "DeepSpeed engine ZeRO 0, one-rank all-reduce kept / bare model step" in text
    assert "- the TAU waveform augmentation (roll, impulse responses), 1-s clips: step with it / without" in text
    assert "- patch embedding, 1-s clips: PatchEmbed's GEMM over the kept patches / the reference's Conv2d" in text
    assert "- 1 s clips: pcm16 decodes" in text and "cores per GPU for 3x headroom" in text
    # the profile section: both steps, every category, the wall time they add up to
    profile = (tmp_path / "gpu_profile.md").read_text()
    assert "eager step, 1-s clips x 8" in profile and "compiled step, 1-s clips x 8" in profile
    assert "whole trainer, 1-s clips x 16 per step" in profile and "whole trainer, compiled, 1-s clips x 16" in profile
    for category in ("loader (DALI)", "GEMM", "attention", "norm / GELU / elementwise", "STFT + mel", "optimizer",
                     "copies / gathers", "idle (gaps, host)", "**step wall time**"):
        assert f"| {category}" in profile, (category, profile)
    for column in ("eager step, 1-s clips x 8", "compiled step, 1-s clips x 8", "whole trainer, 1-s clips x 16 per step",
                   "whole trainer, compiled, 1-s clips x 16 per step"):  # what each column's shares are made of
        kernels = profile.split(f"## {column}: the 15 longest kernels")[1].split("##")[0]
        assert len(re.findall(r"^\| (aten|c10d)::", kernels, re.M)) == 15, (column, kernels)
    for what in ("step_eager", "step_compiled", "trainer", "trainer_compiled"):  # the traces come back from a lease
        trace = json.loads(gzip.decompress((tmp_path / f"gpu_trace_{what}.json.gz").read_bytes()))
        assert any(event.get("name") == "aten::stft" for event in trace["traceEvents"]), what
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_profile

    named = [row for lever in gpu_profile.LEVERS.values() for row in re.findall(r"`((?:compiled|eager)[^`]*)`", lever)]
    assert len(named) >= 6 and all(f"| model step, {row}" in text for row in named), named  # the rows exist
    assert "forward and backward compiled at set-up in" in text  # model.compile logs its compile time
    assert "whole trainer / reference stack, 1-s clips:" in text and ": skipped" not in text
    # and the suite section: the plumbing on one small test file (a GPU machine runs the whole suite)
    assert "## The test suite on " in text and "tests/test_sit_metrics.py`: **3 passed, 0 failed, 0 error, 0 skipped**" in text


def test_compiled_rows_are_budgeted_from_the_compilations_the_call_timed():
    """Before any compilation a compiled row needs the cold-cache allowance; after, 1.5x the slowest one timed."""
    import argparse
    import time

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu

    b = gpu.Bench(argparse.Namespace(tiny=False, budget=1000.0, sections=["model", "compiled"]))

    def fits_with(left: float, *args, **kwargs) -> bool:
        b.started = time.perf_counter() - (b.args.budget - left)
        return b.fits(*args, **kwargs)

    assert fits_with(20 + gpu.COLD_COMPILE_S + 1, "compiled", 20, compiling=True)
    assert not fits_with(20 + gpu.COLD_COMPILE_S - 1, "compiled", 20, compiling=True)
    assert b.notes[-1].startswith("compiled: skipped, 149 s of the 1000 s budget left (needs ~150 s)")
    b.compile_s += [22.0, 8.0]  # the first compilation, then one that reused its kernels
    assert fits_with(20 + 33 + 1, "compiled", 20, compiling=True)
    assert not fits_with(20 + 33 - 1, "compiled", 20, compiling=True)
    assert fits_with(31, "model", 30) and not fits_with(29, "model", 30)  # rows that do not compile: as asked
    assert not fits_with(999, "eval", 1)  # a section not asked for


def test_a_trainer_row_that_fails_says_why_and_the_call_goes_on(tmp_path):
    """A trainer run that exits non-zero on a lent GPU must not end the call: its row says why, the ratios leave it
    out, the table is written; any other measurement that raises is a note saying why."""
    import argparse

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu

    b = gpu.Bench(argparse.Namespace(tiny=True, budget=100.0, sections=["trainer"], out=tmp_path / "gpu.md",
                                     append=False))
    b.add(section="model", what="model step, eager", clips="1 s", batch=8, samples_s=400.0, mfu=1.0, note="")
    missing = tmp_path / "no_corpus" / "short_flac"
    gpu.trainer_run(b, {"sets": {"short": {"shards": {"flac": missing}}}, "irs": tmp_path}, 1.0, "flac", False,
                    tmp_path)
    row = b.rows[-1]
    assert row["what"] == "whole trainer, flac" and row["samples_s"] != row["samples_s"]  # nan
    assert re.match(r"failed: exit 2: error: data.root=.*no_corpus, data.dataset=short_flac: no packed dataset",
                    row["note"]), row["note"]
    text = (tmp_path / "gpu.md").read_text()
    assert "| whole trainer, flac" in text and "whole trainer / model step" not in text  # no ratio from a failure

    def out_of_memory(batch):
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch} GiB")

    b.attempt("evaluation, compiled, 10 s", out_of_memory, 2)  # any other measurement: a note, and on
    note = "evaluation, compiled, 10 s: failed after 0 s, the call went on: OutOfMemoryError: CUDA out of memory. Tried"
    assert b.notes[-1].startswith(note) and f"- {note}" in (tmp_path / "gpu.md").read_text()


def test_results_carry_the_commit_and_only_a_code_change_marks_it_dirty(tmp_path):
    """A benchmark writes its table under benchmarks/results/; the next run measures the same code."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert source_commit(tmp_path) == "unknown"
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("old\n")
    (tmp_path / "model.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    head = git("rev-parse", "--short", "HEAD").strip()
    (tmp_path / "benchmarks" / "results" / "table.md").write_text("new\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert source_commit(tmp_path) == head
    (tmp_path / "model.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == f"{head}-dirty"


def test_the_suite_section_counts_outcomes_and_reports_what_finished_before_the_time_limit(tmp_path):
    """gpu.py's `suite` section on a suite made here: ids of failures, errors and skips with their reasons, and
    at the time limit the tests that finished are still reported (pytest is interrupted, not killed)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_suite

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_outcomes.py").write_text(
        "import pytest, time\n"
        "def test_passes():\n    pass\n"
        "def test_fails():\n    assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='not here')\ndef test_skipped():\n    pass\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('fixture broke')\n"
        "def test_errors(broken):\n    pass\n"
        "@pytest.mark.parametrize('n', [1, 2])\ndef test_param(n):\n    assert n == 1\n")
    (suite / "test_slow.py").write_text("import time\ndef test_sleeps():\n    time.sleep(120)\n")
    result = gpu_suite.run_suite(1, 20, tmp_path / "work", [str(suite)])
    assert result["timed_out"] and result["wall_s"] < 60  # the sleeping test is interrupted, not waited for
    ids = {kind: [tid.split("::", 1)[1] for tid, _ in result[kind]] for kind in ("passed", "failed", "error", "skipped")}
    assert sorted(ids["passed"]) == ["test_param[1]", "test_passes"]
    assert sorted(ids["failed"]) == ["test_fails", "test_param[2]"]
    assert ids["error"] == ["test_errors"] and ids["skipped"] == ["test_skipped"]
    assert "test_sleeps" not in str(result)
    assert any("one is not two" in why for _, why in result["failed"])
    text = gpu_suite.markdown(result, "a test machine")
    assert "**2 passed, 2 failed, 1 error, 1 skipped**" in text and "stopped at the time limit" in text
    assert "- `" in text and "test_outcomes.py::test_fails`" in text


def test_resume_benchmark_tiny_times_both_positions(tmp_path):
    """benchmarks/resume.py end to end on a tiny corpus: pre-empted at 10% and 90% of an epoch, each resumed."""
    text = tiny_benchmark("resume.py", tmp_path, "--work", str(tmp_path), timeout=600)
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| this checkout")]
    positions = [int(row[2].split("/")[0]) for row in rows]
    assert len(rows) == 2 and 0 < positions[0] < 26 < positions[1] < 52, text  # 52 steps per epoch
    assert all(float(row[4]) > 0 for row in rows) and "Start-up at 90% of the epoch / at 10%: this checkout:" in text


def test_continual_saturation_compares_both_scales_and_both_inits(tmp_path):
    text = tiny_benchmark("continual_saturation.py", tmp_path, timeout=300)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("| small") or line.startswith("| vggish")]
    assert [row[:2] for row in rows] == [["small", "finetune"], ["small", "hnet"], ["vggish", "finetune"],
                                         ["vggish", "hnet"]]
    share = {(row[0], row[1]): float(row[5].rstrip("%")) for row in rows}
    assert share["vggish", "finetune"] > 80 > 20 > share["small", "finetune"]  # the scale is what saturates


def test_decode_benchmark_tiny_measures_both_formats_and_their_bytes(tmp_path):
    text = tiny_benchmark("decode.py", tmp_path, "--repeats", "1", timeout=300)
    rows = {(cells[0], cells[1]): cells for cells in ([c.strip() for c in line.split("|")[1:-1]]
                                                      for line in text.splitlines() if line.startswith("| 1") or
                                                      line.startswith("| 10"))}
    assert set(rows) == {("1 s", "flac"), ("1 s", "pcm16"), ("10 s", "flac"), ("10 s", "pcm16")}, text
    for (clips, fmt), cells in rows.items():
        assert float(cells[3]) > 0 and float(cells[4]) > 0
    # raw 16-bit samples plus the tar members: at least 2 bytes per sample, and FLAC of noise + tone is smaller
    for clips, samples in (("1 s", 44100), ("10 s", 441000)):
        assert 2 * samples / 1024 < float(rows[clips, "pcm16"][6]) < 2 * samples / 1024 + 4
        assert float(rows[clips, "flac"][6]) < float(rows[clips, "pcm16"][6])
    assert "- 1 s clips: pcm16 decodes" in text and "- 10 s clips: pcm16 decodes" in text


def test_decode_summary_ratios_and_cores_per_gpu():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import decode

    rows = {("1 s", "flac"): {"per_core": 1000.0, "bytes": 50 * 1024}, ("1 s", "pcm16"): {"per_core": 4000.0,
                                                                                          "bytes": 100 * 1024}}
    lines = decode.summary(rows, 2000.0, "a goal")
    assert lines[0] == ("- 1 s clips: pcm16 decodes **4.0x** the clips per core of FLAC (4000 vs 1000 clips/s) at "
                        "**2.00x** the bytes per clip (100 vs 50 KiB)")
    assert lines[1].startswith("- cores per GPU for 3x headroom at 2000 1-s clips/s (a goal): FLAC **6**, pcm16 **1.5**")
    assert decode.summary(rows) == lines[:1]  # no target, no cores line; no 10-s rows, no 10-s line


def test_the_liger_row_swaps_every_layernorm_and_keeps_the_function():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    import gpu_step
    from trainer.model.passt import create_model

    class Stand(torch.nn.LayerNorm):  # stands in for Liger's LayerNorm (its Triton kernels need a GPU)
        pass

    model = create_model("passt_micro", 10).eval()
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    mel = torch.randn(2, 1, model.config.n_mels, 100)
    before = model(mel)[0]
    assert gpu_step.swap_norms(model, lambda norm: Stand(norm.normalized_shape, eps=norm.eps)) == norms
    assert sum(isinstance(m, Stand) for m in model.modules()) == norms and norms == 2 * model.config.depth + 2
    torch.testing.assert_close(model(mel)[0], before, rtol=0, atol=0)


def test_the_conv_patch_embedding_row_computes_the_same_tokens_and_gradients():
    """The A/B row's reference patch embedding (a Conv2d over every patch, then patchout) does the model's work."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    import gpu_step
    from trainer.model.passt import create_model

    model = create_model("passt_micro", 10, s_patchout_f=6, s_patchout_t=2).train()
    mel = torch.randn(3, 1, model.config.n_mels, 138)
    results = []
    for tokens in (model.tokens, gpu_step.conv_tokens(model)):
        torch.manual_seed(0)
        out = tokens(mel)
        model.zero_grad()
        out.square().sum().backward()
        results.append((out.detach(), model.patch_embed.proj.weight.grad.clone()))
    assert results[0][0].shape == (3, 2 + 6 * 11, 32)
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)  # fp32 sums in another order


def test_patch_embed_benchmark_tiny_times_both_ways_side_by_side(tmp_path):
    text = tiny_benchmark("patch_embed.py", tmp_path, timeout=300)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")][1:]
    assert [row[0] for row in rows] == [m for m in ("tokens, training (forward + backward)",
                                                     "tokens, evaluation (forward, every patch)",
                                                     "passt_micro training step (forward + backward)") for _ in "ab"]
    assert [row[2].split(":")[0] for row in rows] == ["PatchEmbed", "reference"] * 3
    for ours, reference in zip(rows[::2], rows[1::2]):
        assert float(ours[5].rstrip("x")) == pytest.approx(float(ours[4]) / float(reference[4]), rel=0.02)


def test_augment_benchmark_tiny_compares_both_fft_lengths_and_both_augmentations(tmp_path):
    import torch

    text = tiny_benchmark("augment.py", tmp_path, timeout=300)
    lengths, whole = text.split("## The TAU augmentation per step")
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lengths.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 6 * (2 if torch.cuda.is_available() else 1), text
    steps = [[c.strip() for c in line.split("|")[1:-1]] for line in whole.splitlines() if line.startswith("| ")][1:]
    assert [row[1] for row in steps] == ["1 s x 4", "10 s x 2"] * (2 if torch.cuda.is_available() else 1)
    for row in steps:  # the speed-up is the ratio of the two columns
        assert float(row[4]) == pytest.approx(float(row[2]) / float(row[3]), abs=0.02), row
    assert {row[3] for row in rows[:3]} == {"46304 = 2 x 2 x 2 x 2 x 2 x 1447", "55124 = 2 x 2 x 13781",
                                            "66149 = 29 x 2281"}
    assert {row[4] for row in rows[:3]} == {"46305 = 3 x 3 x 3 x 5 x 7 x 7 x 7", "55125 = 3 x 3 x 5 x 5 x 5 x 7 x 7",
                                            "66150 = 2 x 3 x 3 x 3 x 5 x 5 x 7 x 7"}
    assert all(float(row[5]) > 0 and float(row[6]) > 0 for row in rows)


def test_engine_benchmark_tiny_measures_the_reduction_and_three_steps(tmp_path):
    text = tiny_benchmark("engine.py", tmp_path, timeout=300)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")][1:]
    assert [row[0] for row in rows] == ["reduction"] + ["step, 40 x Linear(64, 64), batch 32"] * 3, text
    assert "passt_micro's" in rows[0][1] and float(rows[0][2]) > 0
    assert [row[1] for row in rows[1:]] == ["bare torch (forward, backward, fused Adam)",
                                            "DeepSpeed engine ZeRO 0, as the trainer runs it",
                                            "DeepSpeed engine ZeRO 0, one-rank all-reduce kept"]
    assert rows[2][3].endswith("ms over bare torch") and rows[3][3].endswith("ms over bare torch")

