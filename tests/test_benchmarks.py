"""The one-call GPU benchmark runs every section end to end (`--tiny`: tiny corpus and model, on the CPU).

Speed is never asserted here; this checks that the script the next lent GPU will run works: corpus
generation and packing, the model step eager and compiled, the real trainer (FLAC, pcm16, compiled;
1-s and 10-s clips) with bf16 in effect inside the engine, the reference stack and the loader table.
Every result records the commit it was measured with.
"""
from __future__ import annotations

import subprocess
import sys

from trainer.machine import source_commit

from .helpers import REPO, run_command


def test_gpu_benchmark_tiny_measures_every_section(tmp_path):
    out = tmp_path / "gpu.md"
    done = run_command([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--tiny", "--out", str(out),
                        "--work", str(tmp_path)], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]) for line in text.splitlines()
            if line.startswith("| ") and "samples/s" not in line}
    for what, clips in [("model step, eager", "1 s"), ("model step, eager", "10 s"), ("model step, compiled", "1 s"),
                        ("model step, compiled", "10 s"), ("whole trainer, flac", "1 s"),
                        ("whole trainer, flac", "10 s"), ("whole trainer, pcm16", "1 s"),
                        ("whole trainer, flac, compiled", "1 s"), ("reference stack, whole step", "1 s"),
                        ("reference stack, model step", "1 s"), ("loader dali-cpu + mel, flac", "1 s"),
                        ("loader dali-cpu + mel, pcm16", "10 s"), ("loader torch-cpu + mel, flac", "10 s")]:
        assert (what, clips) in rows, (what, clips, text)
    assert text.count("bfloat16 autocast inside the engine, float32 weights and Adam state") == 4  # trainer runs
    assert "the first micro-step took" in text  # model.compile logs its compile time
    assert "whole trainer / reference stack, 1-s clips:" in text and "skipped" not in text


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
