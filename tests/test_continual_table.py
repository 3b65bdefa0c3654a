"""The Split AudioSet table over seeds: its plan, its aggregation, runs side by side, and the SLURM array script."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .helpers import REPO, run_command

sys.path.insert(0, str(REPO / "benchmarks"))
import continual_table  # noqa: E402  (a script of benchmarks/, imported for its functions)

TABLE = str(REPO / "benchmarks" / "continual_table.py")


def test_plan_covers_every_run_once_per_seed_before_the_next_seed_longest_first():
    jobs = continual_table.plan(["hnet", "finetune", "si"], [3, 1], 1.0)
    assert [(j.run, j.seed, j.n_iter) for j in jobs] == [
        ("finetune", 3, 50000), ("si", 3, 25000), ("hnet", 3, 15000),
        ("finetune", 1, 50000), ("si", 1, 25000), ("hnet", 1, 15000)]
    assert [j.n_iter for j in continual_table.plan(["si"], [0], 0.001)] == [25]


def _record(run, seed, during, final, bwt, stopped=None, n_iter=100):
    return {"method": run, "algorithm": run, "seed": seed, "n_iter": n_iter, "during_accuracy": during,
            "final_accuracy": final, "backward_transfer": bwt, "stopped_early": stopped, "seconds": 20.0,
            "wall_seconds": 30.0 + seed, "accuracy_matrix": [[0.0] * 10] * 10, "tasks": [[0]] * 10, "jobs": 2,
            "threads": 1, "machine": "cpu", "torch": "2.11", "date": "2026-11-23", "data": "synthetic", "commit": "abc"}


def test_aggregation_is_the_mean_and_population_std_of_the_finished_seeds():
    records = [_record("si", 0, 80.0, 70.0, -5.0), _record("si", 1, 84.0, 66.0, -9.0),
               _record("si", 2, 90.0, 71.0, -1.0),
               _record("hnet", 0, 70.0, 60.0, -2.0), _record("hnet", 1, 50.0, 40.0, -9.0, stopped="task 3 ..."),
               _record("si", 0, 60.0, 50.0, -3.0, n_iter=10)]
    rows = {(r["run"], r["n_iter"]): r for r in continual_table.aggregate(records)}
    si = rows["si", 100]
    assert si["seeds"] == [0, 1, 2] and si["stopped"] == []
    final = np.array([70.0, 66.0, 71.0])
    assert si["final_accuracy"] == pytest.approx((final.mean(), np.sqrt(((final - final.mean()) ** 2).mean())))
    assert si["during_accuracy"] == pytest.approx((84.6667, 4.1096), abs=1e-4)  # by hand: mean 254/3, std
    assert si["backward_transfer"][0] == pytest.approx(-5.0) and si["wall_min"] == pytest.approx(31 / 60)
    assert si["ms_per_iter"] == pytest.approx(1e3 * 20.0 / (100 * 10))
    hnet = rows["hnet", 100]  # the stopped seed is counted apart and left out of the statistics
    assert hnet["seeds"] == [0] and hnet["stopped"] == [1] and hnet["final_accuracy"] == (60.0, 0.0)
    assert rows["si", 10]["seeds"] == [0]  # another n_iter is another row
    text = continual_table.render(records, None)
    assert "| si " in text and "84.7 ± 4.1" in text and "1 (+1 stopped)" in text


def test_seeds_side_by_side_then_skipped_when_recorded(tmp_path):
    args = [sys.executable, TABLE, "--runs", "finetune", "--seeds", "0", "1", "--jobs", "2", "--n-iter-scale",
            "0.0004", "--records", str(tmp_path)]
    done = run_command(args)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = max(1, (os.cpu_count() or 1) // 2)  # the cores shared by the 2 runs
    assert f"2 run(s) to measure (0 recorded already), 2 at once, {threads} thread(s) each" in done.stdout
    first, second = (json.loads((tmp_path / "finetune" / "n_iter20" / f"seed{s}.json").read_text()) for s in (0, 1))
    assert (first["seed"], second["seed"]) == (0, 1) and first["n_iter"] == 20
    assert first["jobs"] == 2 and first["threads"] == threads
    assert first["accuracy_matrix"] != second["accuracy_matrix"]  # train.seed reached the run
    again = run_command(args)
    assert again.returncode == 0 and "to measure" not in again.stdout  # nothing left: the table only
    assert json.loads((tmp_path / "finetune" / "n_iter20" / "seed0.json").read_text()) == first
    assert "| finetune " in again.stdout


def test_slurm_array_task_measures_its_entry_of_the_plan(tmp_path):
    env = {**os.environ, "SLURM_SUBMIT_DIR": str(REPO), "SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "1"}
    script = str(REPO / "launch" / "slurm" / "continual_table.sbatch")
    common = ["--runs", "si", "finetune", "--seeds", "0", "--n-iter-scale", "0.0004", "--records", str(tmp_path)]
    done = subprocess.run(["bash", script, *common], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")]
    assert recorded == ["si/n_iter10/seed0.json"]  # entry 1 of the plan [finetune, si]
    assert json.loads((tmp_path / "si" / "n_iter10" / "seed0.json").read_text())["threads"] == 1
    env["SLURM_ARRAY_TASK_ID"] = "2"
    wrong = subprocess.run(["bash", script, *common], env=env, capture_output=True, text=True, timeout=600)
    assert wrong.returncode != 0 and "--index 2: the plan has 2 entries (0..1)" in wrong.stderr


def test_regenerating_the_table_keeps_the_reading_written_below_it(tmp_path):
    out = tmp_path / "continual.md"
    reading = "Reading the table: SI keeps the old tasks.\n\n| a hand-made | table |\n|---|---|\n"
    # a file rendered before the marker existed: the text after the table's rows is the reading
    out.write_text(continual_table.render([_record("si", 0, 80.0, 70.0, -5.0)], None) + "\n" + reading)
    continual_table.render([_record("si", 0, 80.0, 70.0, -5.0), _record("si", 1, 84.0, 66.0, -9.0)], out)
    text = out.read_text()
    assert "82.0 ± 2.0" in text and text.endswith(f"{continual_table.NOTES}\n\n{reading}")
    assert out.with_suffix(".png").is_file()
    # with the marker: a third render keeps the reading once, below the new table
    continual_table.render([_record("ewc", 0, 60.0, 50.0, -3.0)], out)
    text = out.read_text()
    assert "| ewc " in text and "| si " not in text and text.count(reading) == 1
    assert text.index("| ewc ") < text.index(continual_table.NOTES) < text.index(reading)
