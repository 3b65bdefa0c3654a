"""The SIT table: its run graph, skip / resume / failure handling, aggregation, the SLURM graph, and one real table.

Most tests drive `launch/sit_table.py` with a stand-in for `launch/train.py` (a script that writes what a
finished run writes, records its calls, and fails or is pre-empted on request); the last one trains a real
(tiny) table under the reference protocol.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from trainer.config import load_config
from trainer.table.plan import Table, TableSpec

from .helpers import REPO, pretend_gpus

sys.path.insert(0, str(REPO / "launch"))
import sit_table  # noqa: E402

# What the stand-in trainer scores: a number per (method, split, seed), so that means and stds are known.
FAKE_TRAIN = r'''
import json, os, sys
from pathlib import Path
args = sys.argv[2:]  # after train.py's path
stage = args[args.index("--stage") + 1]
kv = dict(a.split("=", 1) for a in args if "=" in a)
folder = Path(kv["run.out"]) / stage / kv["run.name"]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(f"{stage}/{kv['run.name']}\n")
if kv["run.name"] == os.environ.get("FAKE_FAIL"):
    sys.exit(1)
if "init_from" in kv and not Path(kv["init_from"]).is_file():
    sys.exit(2)
folder.mkdir(parents=True, exist_ok=True)
if kv["run.name"] == os.environ.get("FAKE_PREEMPT") and not (folder / "checkpoint").exists():
    (folder / "checkpoint").write_text("half")
    sys.exit(75)
split = int(kv.get("data.train_split", "split0")[5:])
seed = int(kv["train.seed"])
bonus = {"standard_ft": 0, "seq_ft": 1, "sit": 2}[kv["optim.method"]]
acc = (40 + split / 10 + bonus + 2 * seed) / 100
on_test = kv["protocol"] == "reference" and stage != "cochl"
previous = None
if kv.get("retain.keep_head") == "true":  # what the CochlScene test gave before and after TAU
    forgets = {"none": 0.20 if kv["optim.method"] == "seq_ft" else 0.15, "ewc": 0.10, "replay": 0.05}
    before = 0.6 + seed / 100
    previous = {"before": {"accuracy": before}, "after": {"accuracy": before - forgets[kv["retain.method"]]},
                "forgetting": forgets[kv["retain.method"]]}
(folder / "model.pt").write_text("weights")
(folder / "summary.json").write_text(json.dumps({
    "test": {"accuracy": acc, "macro_accuracy": acc - 0.01, "log_loss": 2 - acc}, "previous": previous,
    "best_epoch": 1, "selection": {"split": "test" if on_test else "val", "on_test": on_test}}))
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls"))
    calls = lambda: (tmp_path / "calls").read_text().split() if (tmp_path / "calls").exists() else []  # noqa: E731
    return [f"--launcher={sys.executable} {script}", "--root", str(tmp_path / "tables")], calls


def test_plan_starts_every_tau_run_from_its_own_cochl_model():
    table = Table(TableSpec("t", splits=[5, 100], seeds=[0, 1]), Path("/tables"))
    runs = table.runs()
    assert len(runs) == 2 * (2 + 2 * (1 + 2))  # per seed: Standard FT x 2 splits; SIT, Seq-FT: cochl + 2 splits
    assert len({(r.stage, r.name) for r in runs}) == len(runs)  # distinct folders, seeds included
    seen = set()
    for run in runs:
        cfg = load_config(run.stage, table.arguments(run)[2:])
        assert (cfg.optim.method, cfg.train.seed, cfg.run.name) == (run.method, run.seed, run.name)
        assert cfg.run.out == "/tables/t/runs" and cfg.run.resume == "auto"
        if run.stage == "cochl":
            assert run.method in ("sit", "seq_ft") and cfg.data.dataset == "cochlscene"
            continue
        assert cfg.data.train_split == f"split{run.split}"
        seen.add((run.method, run.split, run.seed))
        if run.method == "standard_ft":  # straight from AudioSet: the stage's own init_from
            assert run.stage == "standard_ft" and cfg.init_from.endswith("passt-s-f128-p16-s10-ap.476-swa.pt")
        else:  # from the CochlScene model of the same method and seed
            assert run.stage == "tau" and cfg.init_from == f"/tables/t/runs/cochl/{run.method}-seed{run.seed}/model.pt"
    assert seen == {(m, p, s) for m in ("standard_ft", "seq_ft", "sit") for p in (5, 100) for s in (0, 1)}
    mine = Table(TableSpec("m", splits=[5], seeds=[0], overrides=["init_from=/ckpt/audioset.pt"]), Path("/tables"))
    starts = {(r.stage, r.method): load_config(r.stage, mine.arguments(r)[2:]).init_from for r in mine.runs()}
    assert starts == {("standard_ft", "standard_ft"): "/ckpt/audioset.pt", ("cochl", "seq_ft"): "/ckpt/audioset.pt",
                      ("cochl", "sit"): "/ckpt/audioset.pt",  # the user's checkpoint never breaks the chain:
                      ("tau", "seq_ft"): "/tables/m/runs/cochl/seq_ft-seed0/model.pt",
                      ("tau", "sit"): "/tables/m/runs/cochl/sit-seed0/model.pt"}
    groups = {g.name: g for g in table.groups()}
    assert groups["tau-sit-seed1"].after == "cochl-sit-seed1" and groups["standard_ft-seed0"].after is None
    demo = Table(TableSpec("d", demo=True, protocol="reference"), Path("/tables"))
    tau = load_config("tau", demo.arguments(demo.runs()[3])[3:], demo=True)
    assert (tau.protocol, tau.data.root, tau.data.dataset, tau.data.val_split) == ("reference", "data/demo/shards",
                                                                                  "tau22_whole", "test")


@pytest.mark.parametrize("spec,message", [
    (dict(methods=["sit", "slca"]), "--methods: slca"), (dict(splits=[0]), "--splits: \\[0\\]"),
    (dict(seeds=[1, 1]), "--seeds must be distinct"), (dict(overrides=["train.seed=3"]), "use --name / --seeds"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        Table(TableSpec("t", **spec), Path("/tables"))


def test_the_local_launcher_starts_a_process_per_gpu_only_for_runs_on_the_gpus(monkeypatch):
    """On a machine of 4 GPUs: torchrun with 4 processes, unless the runs train on the CPU (train.device=cpu, the
    last one given), which take one process: 4 CPU ranks would split the global batch for nothing."""
    from trainer.table import execute

    pretend_gpus(monkeypatch, 4)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    for overrides, device, launcher in (([], "cuda", torchrun), (["train.device=cpu"], "cpu", [sys.executable]),
                                        (["train.device=cpu", "train.device=auto"], "cuda", torchrun),
                                        (["train.device=cuda", "train.device=cpu"], "cpu", [sys.executable])):
        table = Table(TableSpec("t", splits=[5], seeds=[0], overrides=overrides), Path("/tables"))
        assert execute.run_device(table) == device, overrides
        assert execute.default_launcher(device) == launcher, overrides
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="train.device=cuda but no CUDA device is visible"):
        execute.run_device(Table(TableSpec("t", overrides=["train.device=cuda"]), Path("/tables")))


def test_runs_asked_on_cuda_where_there_is_none_stop_before_any_starts(fake, capsys):
    args, calls = fake
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert sit_table.main(args + ["--name", "t", "--splits", "5", "--seeds", "0", "train.device=cuda"]) == 2
    assert "error: train.device=cuda but no CUDA device is visible" in capsys.readouterr().err and calls() == []


def test_runs_are_skipped_when_done_resumed_when_preempted_and_failures_block_their_tau_runs(fake, tmp_path,
                                                                                             monkeypatch, capsys):
    args, calls = fake
    table = ["--name", "t", "--splits", "5", "100", "--seeds", "0", "1", "train.epochs=2"]
    monkeypatch.setenv("FAKE_FAIL", "seq_ft-seed1")
    monkeypatch.setenv("FAKE_PREEMPT", "sit-split100-seed1")
    assert sit_table.main(args + table) == 75  # stopped at the pre-emption: the runs after it wait
    first = calls()
    assert first[-1] == "tau/sit-split100-seed1" and "cochl/seq_ft-seed1" in first
    assert not any(c.startswith("tau/seq_ft-") and c.endswith("seed1") for c in first)  # blocked by their cochl run
    assert len(first) == len(set(first)) == 2 * 8 - 2  # seed 0 whole; seed 1 without the blocked pair
    monkeypatch.delenv("FAKE_FAIL")
    assert sit_table.main(args + table) == 0  # only what is not done runs again
    again = calls()[len(first):]
    assert sorted(again) == ["cochl/seq_ft-seed1", "tau/seq_ft-split100-seed1", "tau/seq_ft-split5-seed1",
                             "tau/sit-split100-seed1"]
    assert sit_table.main(args + table) == 0 and len(calls()) == len(first) + 4  # nothing left to run
    assert sit_table.main(args + ["--name", "t", "--seeds", "0"]) == 2  # a different plan under the same name
    assert "planned with other settings (overrides, seeds, splits)" in capsys.readouterr().err


def test_table_is_the_mean_and_population_std_of_the_finished_seeds(fake, tmp_path):
    args, _ = fake
    assert sit_table.main(args + ["--name", "t", "--splits", "5", "100", "--seeds", "0", "1", "3"]) == 0
    folder = tmp_path / "tables" / "t"
    stats = pd.read_csv(folder / "table.csv")
    row = stats[(stats["method"] == "sit") & (stats["split"] == 100)].iloc[0]
    accs = np.array([40 + 10 + 2 + 2 * s for s in (0, 1, 3)], dtype=float)
    assert row["n"] == 3 and row["accuracy_mean"] == pytest.approx(accs.mean(), abs=1e-4)
    assert row["accuracy_std"] == pytest.approx(np.sqrt(((accs - accs.mean()) ** 2).mean()), abs=1e-4)
    assert row["log_loss_mean"] == pytest.approx(2 - accs.mean() / 100, abs=1e-4)
    assert (row["published_mean"], row["published_std"]) == (62.46, 0.207)
    text = (folder / "table.md").read_text()
    assert "| 100%" in text and "54.67 ± 2.49 (n=3)" in text and "optimistic" not in text
    assert (folder / "table.png").stat().st_size > 10_000
    # a missing seed leaves its cell with fewer seeds, and --table-only only aggregates
    (folder / "runs" / "tau" / "sit-split100-seed3" / "summary.json").unlink()
    assert sit_table.main(["--root", str(tmp_path / "tables"), "--name", "t", "--table-only"]) == 0
    stats = pd.read_csv(folder / "table.csv")
    assert stats[(stats["method"] == "sit") & (stats["split"] == 100)].iloc[0]["n"] == 2
    # the reference protocol selects on test: the table says so
    assert sit_table.main(args + ["--name", "r", "--splits", "5", "--seeds", "0", "protocol=reference"]) == 0
    assert "optimistic (selected on test), as the reference" in (tmp_path / "tables" / "r" / "table.md").read_text()


def test_continual_methods_start_from_the_seq_ft_cochl_run_which_records_for_them():
    table = Table(TableSpec("t", methods=["sit", "ewc", "lwf"], splits=[5], seeds=[0]), Path("/tables"))
    assert [g.name for g in table.groups()] == ["cochl-sit-seed0", "tau-sit-seed0", "cochl-seq_ft-seed0",
                                                 "tau-ewc-seed0", "tau-lwf-seed0"]
    runs = {f"{r.stage}/{r.name}": table.arguments(r) for r in table.runs()}
    assert "optim.method=seq_ft" in runs["cochl/seq_ft-seed0"] and "retain.record=true" in runs["cochl/seq_ft-seed0"]
    assert "retain.record=true" not in runs["cochl/sit-seed0"]  # no method on SIT's rates needs it
    ewc = runs["tau/ewc-split5-seed0"]
    assert {"optim.method=seq_ft", "retain.method=ewc", "retain.keep_head=true"} <= set(ewc)
    assert ewc[-1] == "init_from=/tables/t/runs/cochl/seq_ft-seed0/model.pt"
    assert {"optim.method=sit", "retain.method=none", "retain.keep_head=true"} <= set(runs["tau/sit-split5-seed0"])
    lwf_only = Table(TableSpec("u", methods=["seq_ft", "lwf"], splits=[5], seeds=[0]), Path("/tables"))
    assert not any("retain.record=true" in lwf_only.arguments(r) for r in lwf_only.runs())  # LwF needs no files
    with pytest.raises(ValueError, match="use --name / --seeds / --methods"):
        Table(TableSpec("v", overrides=["retain.method=si"]), Path("/tables"))


def test_forgetting_is_aggregated_per_method_and_split_and_plotted(fake, tmp_path):
    args, calls = fake
    assert sit_table.main(args + ["--name", "f", "--methods", "seq_ft", "ewc", "replay", "standard_ft", "--splits",
                                  "5", "--seeds", "0", "2"]) == 0
    assert sorted(c for c in calls() if c.startswith("cochl/")) == ["cochl/seq_ft-seed0", "cochl/seq_ft-seed2"]
    folder = tmp_path / "tables" / "f"
    stats = pd.read_csv(folder / "table.csv").set_index("method")
    assert stats.loc["ewc", "forgetting_mean"] == pytest.approx(10.0) and stats.loc["ewc", "forgetting_n"] == 2
    assert stats.loc["replay", "after_mean"] == pytest.approx(61 - 5) and stats.loc["seq_ft", "before_std"] == 1.0
    assert stats.loc["standard_ft", "forgetting_n"] == 0  # no previous stage to forget
    text = (folder / "table.md").read_text()
    assert "## Forgetting: CochlScene test accuracy % before and after TAU" in text
    assert "| EWC      | 43.50 ± 2.00 | 61.00 ± 1.00        | 51.00 ± 1.00       | 10.00 ± 0.00 | 2   |" in text
    assert (folder / "tradeoff.png").stat().st_size > 10_000


FAKE_SBATCH = """#!/bin/bash
echo "$@" >> "$SBATCH_LOG"
n=$(wc -l < "$SBATCH_LOG")
echo "$((1000 + n));cluster"
"""


def _submitted(log: Path) -> dict[str, list[str]]:
    """The fake sbatch's calls by group (the aggregation job as "table")."""
    calls = [line.split() for line in log.read_text().splitlines()]
    return {c[c.index("--task") + 1] if "--task" in c else "table": c for c in calls}


def test_slurm_graph_dependencies(fake, tmp_path, monkeypatch, capsys):
    args, _ = fake
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text(FAKE_SBATCH)
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_LOG", str(tmp_path / "sbatch.log"))
    table = ["--name", "t", "--methods", "sit", "standard_ft", "--splits", "5", "100", "--seeds", "0"]
    # finish the CochlScene run and one TAU run first, so the graph has a done part
    root = tmp_path / "tables" / "t" / "runs"
    for run in ("cochl/sit-seed0", "tau/sit-split5-seed0"):
        (root / run).mkdir(parents=True)
        (root / run / "summary.json").write_text(json.dumps({"test": {"accuracy": 0.5, "macro_accuracy": 0.5,
                                                                      "log_loss": 1.0}, "best_epoch": 0}))
    (root / "cochl" / "sit-seed0" / "model.pt").write_text("weights")
    assert sit_table.main(args + table + ["--slurm", "--", "--partition=big"]) == 0
    calls = _submitted(tmp_path / "sbatch.log")
    assert len(calls) == 3  # the tau array (cochl is done), the standard_ft array, the table job
    tau, ft, final = calls["tau-sit-seed0"], calls["standard_ft-seed0"], calls["table"]
    assert "--array=0,1" in ft and not any(a.startswith("--dependency") for a in ft) and "--partition=big" in ft
    assert ft[-6:] == ["--root", str(tmp_path / "tables"), "--name", "t", "--task", "standard_ft-seed0"]
    assert "--array=1" in tau and not any(a.startswith("--dependency") for a in tau)  # split5 done, cochl done
    assert "--dependency=afterany:1001:1002" in final and "--table-only" in " ".join(final)
    wrapped = " ".join(final[final.index("--wrap") + 1:])  # what the aggregation job runs, under sh as --wrap does
    assert not (tmp_path / "tables" / "t" / "table.md").exists()  # submitting writes no table
    done = subprocess.run(["sh", "-c", wrapped], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "tables" / "t" / "table.md").is_file(), done.stderr
    out = capsys.readouterr().out
    assert "tau-sit-seed0: job 1001" in out and "standard_ft-seed0: job 1002" in out and "table: job 1003" in out
    # a pending CochlScene run: its TAU array waits for it (afterok) and is cancelled if it fails
    (root / "cochl" / "sit-seed0" / "summary.json").unlink()
    (tmp_path / "sbatch.log").unlink()
    assert sit_table.main(args + table + ["--slurm"]) == 0
    calls = _submitted(tmp_path / "sbatch.log")
    assert "--array=0" in calls["cochl-sit-seed0"] and "--dependency=afterany:1001:1002:1003" in calls["table"]
    tau = calls["tau-sit-seed0"]
    assert "--dependency=afterok:1001" in tau and "--kill-on-invalid-dep=yes" in tau


def test_sbatch_task_trains_its_run_with_srun_and_skips_a_done_one(tmp_path):
    Table(TableSpec("t", methods=["sit"], splits=[5, 100], seeds=[0]), tmp_path / "tables").save()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/srun.args\n')
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for tool in ("srun", "scontrol"):
        (tmp_path / "bin" / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO),
           "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node01", "SLURM_ARRAY_TASK_ID": "1"}
    task = ["bash", str(REPO / "launch/slurm/sit_table.sbatch"), "--root", str(tmp_path / "tables"), "--name", "t",
            "--task", "tau-sit-seed0"]
    done = subprocess.run(task, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    srun = (tmp_path / "srun.args").read_text().split()
    assert srun[:4] == ["--kill-on-bad-exit=1", "python", "launch/train.py", "--stage"] and srun[4] == "tau"
    assert "run.name=sit-split100-seed0" in srun and "data.train_split=split100" in srun
    folder = tmp_path / "tables" / "t" / "runs" / "tau" / "sit-split100-seed0"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    (tmp_path / "srun.args").unlink()
    done = subprocess.run(task, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "done already" in done.stdout and not (tmp_path / "srun.args").exists()
    bad = subprocess.run(task[:-1] + ["tau-slca-seed0"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "has no group 'tau-slca-seed0'" in bad.stderr


def test_a_real_table_under_the_reference_protocol(trainable, tmp_path):
    """SIT at one split and seed, trained for real: the CochlScene run, then TAU from its model on the whole
    split list, selected on test (flagged) with the reference head; a second call trains nothing."""
    from .helpers import train_overrides

    tiny = [o for o in train_overrides(trainable, tmp_path, "x", train__epochs=1)
            if not o.startswith(("run.out=", "run.name=", "data.dataset="))]
    args = ["--root", str(tmp_path / "tables"), "--name", "ref", "--methods", "sit", "--splits", "50", "--seeds", "0",
            "protocol=reference", *tiny]
    assert sit_table.main(args) == 0
    folder = tmp_path / "tables" / "ref"
    cochl, tau = folder / "runs" / "cochl" / "sit-seed0", folder / "runs" / "tau" / "sit-split50-seed0"
    summary = json.loads((tau / "summary.json").read_text())
    assert summary["selection"] == {"split": "test", "metric": "log_loss", "kept": "best epoch", "on_test": True}
    assert summary["protocol"] == "reference" and summary["dataset"] == "tau22_whole"
    assert json.loads((cochl / "summary.json").read_text())["selection"]["split"] == "val"
    log = (folder / "logs" / "tau-sit-split50-seed0.log").read_text()
    assert "the test metrics are optimistic" in log
    whole = json.loads((trainable / "tau22_whole" / "manifest.json").read_text())["splits"]["split50"]["num_samples"]
    assert f"tau22_whole: {whole} train samples" in log  # the list as published, val recordings included
    cfg = OmegaConf.load(tau / "config.yaml")  # the resolved config saved beside the run
    assert (cfg.head_init, cfg.init_from, cfg.data.whole_lists) == ("torch_default", str(cochl / "model.pt"), True)
    assert "optimistic (selected on test), as the reference" in (folder / "table.md").read_text()
    trained = (folder / "calls.txt").read_text()
    assert sit_table.main(args) == 0 and (folder / "calls.txt").read_text() == trained  # all done: nothing trained
