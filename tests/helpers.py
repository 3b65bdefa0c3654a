"""Helpers shared by the tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_shards.manifest import load_manifest
from data_shards.shards import iter_samples
from data_shards.sources import demo
from trainer.distributed import free_port  # noqa: F401 (the tests' port helper)

# Small but complete: every split, every TAU device group, 10-s CochlScene clips.
TINY = demo.DemoSize(cochl_train=2, cochl_val=1, cochl_test=1, tau_train_recordings=2,
                     tau_test_recordings=1, tau_segments=2, tau_devices_per_recording=2)

def read_split(folder: Path, split: str) -> list[tuple[str, dict, bytes]]:
    """(key, metadata, audio bytes) of every sample of a split, in shard order."""
    manifest = load_manifest(folder)
    ext = manifest["audio_extension"]
    samples = []
    for shard in manifest["splits"][split]["shards"]:
        for key, members in iter_samples(folder / shard["path"]):
            samples.append((key, json.loads(members["json"]), members[ext]))
    return samples


# --- running the trainer as separate processes ---------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "launch" / "train.py"


def train_overrides(shards: Path, runs: Path, name: str, dataset: str = "cochlscene", **extra) -> list[str]:
    """A tiny, fast training stage on the packed test corpus (everything else from configs/<stage>.yaml), run
    alike on every machine: on the CPU, eager and in fp32 even where a GPU is visible. Several ranks cannot share
    one GPU (`distributed.rank_device`), compiling every run would cost minutes, and the checks compare runs exactly;
    the GPU path has its own tests (marked `gpu`), which ask for the device, precision and compile."""
    settings = {"data.root": shards, "data.dataset": dataset, "data.clip_seconds": 1.0, "data.num_workers": 1,
                "run.log_every": 2, "init_from": "null", "model.name": "passt_micro", "model.compile": "false",
                "train.device": "cpu", "train.epochs": 3, "train.global_batch": 8, "train.micro_batch": 2,
                "train.eval_batch": 4, "train.precision": "fp32",
                "optim.lr": 1e-3, "optim.head_lr": 1e-2, "schedule.warm_up_len": 1, "schedule.ramp_down_start": 1,
                "schedule.ramp_down_len": 2, "run.out": runs, "run.name": name, "augment.dir_prob": 0.0}
    settings.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in settings.items()]


def start_ranks(args: list[str], log_dir: Path, world: int = 2, script: Path = TRAIN,
                env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """`world` processes of `script` (the trainer by default) wired like `srun` one-task-per-GPU
    (RANK / WORLD_SIZE / MASTER_*), each writing `log_dir/rank<N>-<time>.log`; `env` adds variables."""
    port = free_port()
    procs = []
    for rank in range(world):
        rank_env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", **(env or {})}
        out = open(log_dir / f"rank{rank}-{time.monotonic_ns()}.log", "w")
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=rank_env, stdout=out,
                                      stderr=subprocess.STDOUT, cwd=REPO))
    return procs


def wait_ranks(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def run_command(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("*.log")))


def cut_short(path: Path, drop: int = 64) -> None:
    """A file whose write stopped early: its last `drop` bytes missing."""
    path.write_bytes(path.read_bytes()[:-drop])


def flip_bit(path: Path) -> None:
    """A file the same size as written with one bit changed (in its middle)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def pretend_gpus(monkeypatch, count: int) -> None:
    """This CPU machine as one whose CUDA shows `count` GPUs, for code that only asks (is_available,
    device_count); a device actually chosen (set_device) fails the test, as it would this machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: pytest.fail(f"CUDA was asked for device {a}"))
