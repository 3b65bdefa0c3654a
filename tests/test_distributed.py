"""The process-level pieces of `trainer.distributed`: the launcher's way out and the one-rank engine.

`exit_process` against the gloo teardown race of torch 2.11:

When a gloo worker thread releases a finished collective's tensors after the interpreter has begun to
finalise, the GIL it needs is gone and the process aborts (SIGABRT) although the run is complete. The
scenario below makes that likely: rank 1 holds the GIL in one long C call while its all-gather
completes, then ends. Ending it the ordinary way is the control (it must abort at least once, or the
scenario proves nothing); ending it with `exit_process` must give the requested code.

`skip_lone_reduction`: a one-rank ZeRO 0 engine trains without DeepSpeed's no-op gradient all-reduce, bit for bit
as with it and as plain torch does.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .helpers import REPO, pretend_gpus, start_ranks, wait_ranks

SCENARIO = """
import os, sys, time
import torch, torch.distributed as dist
from trainer import distributed

rank, how = int(os.environ["RANK"]), sys.argv[1]
dist.init_process_group("gloo")
parts = [torch.empty(4) for _ in range(2)]
if rank == 0:
    time.sleep(0.5)
work = dist.all_gather(parts, torch.full((4,), float(rank)), async_op=True)
if rank == 0:
    work.wait()
del work, parts
print(f"rank {rank} finished")
busy = sum(range(2 * 10**8))
how == "exit_process" and distributed.exit_process(7)
"""


def _run_pair(tmp_path, how: str) -> tuple[list[int], list[str]]:
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    log_dir = tmp_path / f"{how}-{time.monotonic_ns()}"
    log_dir.mkdir()
    # unbuffered output makes the abort of an ordinary exit much more likely (6 of 8 pairs, not 1 of 8)
    codes = wait_ranks(start_ranks([how], log_dir, script=script, env={"PYTHONUNBUFFERED": "1"}), timeout=120)
    return codes, [log.read_text() for log in sorted(log_dir.glob("rank*.log"))]


def test_exit_process_survives_the_gloo_finalisation_race(tmp_path):
    aborted = False
    for _ in range(4):
        codes, logs = _run_pair(tmp_path, "interpreter")
        if -signal.SIGABRT in codes:
            aborted = True
            assert "terminate called without an active exception" in "".join(logs)
            break
    if not aborted:
        pytest.skip("an ordinary exit no longer aborts in this scenario: torch may have fixed the race, "
                    "and distributed.exit_process may be replaced by sys.exit")
    for _ in range(2):
        codes, logs = _run_pair(tmp_path, "exit_process")
        assert codes == [7, 7], logs
        assert [f"rank {rank} finished" in log for rank, log in enumerate(logs)] == [True, True], logs


def test_exit_process_flushes_buffered_output():
    """Under SLURM or a launcher stdout is a block-buffered pipe: what rank 0 printed last (the metrics
    table) must still arrive although the interpreter does not finalise."""
    code = "from trainer import distributed; print('metrics table'); distributed.exit_process(3)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "metrics table\n"


def test_setup_replaces_or_refuses_a_group_without_a_backend_for_the_device(monkeypatch):
    """A GPU machine ran an NCCL group in-process before a CPU run; on this machine a gloo group registered for
    cuda alone stands in for it: it has no backend for CPU tensors, exactly as NCCL has none."""
    import torch
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator, set_accelerator
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    from trainer import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(distributed.free_port()))
    distributed.teardown()
    accelerator = get_accelerator()
    try:
        dist.init_process_group("cuda:gloo", rank=0, world_size=1)
        with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
            dist.all_reduce(torch.ones(1))  # what the CPU run met
        set_accelerator(CUDA_Accelerator())  # and DeepSpeed still chose CUDA for the first run
        info = distributed.setup("cpu")
        total = torch.ones(1)
        dist.all_reduce(total)
        assert info.device.type == "cpu" and total.item() == 1.0
        assert dist.get_backend_config() == "cpu:gloo,cuda:gloo" and get_accelerator().device_name() == "cpu"
        distributed.teardown()

        # several ranks cannot replace their group one by one: refused, naming the backends and the setting
        dist.init_process_group("cuda:gloo", rank=0, world_size=1)
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
        with pytest.raises(RuntimeError, match=r"2-rank process group with backend cuda:gloo, which has no backend "
                                               r"for device cpu \(a cpu run needs gloo\): set train.device=cuda"):
            distributed.setup("cpu")
    finally:
        monkeypatch.undo()
        distributed.teardown()
        set_accelerator(accelerator)


def test_more_ranks_on_a_node_than_it_has_gpus_is_a_setting_error_by_name(monkeypatch):
    """Two ranks on a one-GPU node: rank 0 gets the GPU; rank 1 stops before any CUDA call with an error that says
    what is wrong and what to change (CUDA's own, from set_device, is "invalid device ordinal"); a launcher exits
    2 on it, so SLURM does not requeue the job."""
    import torch
    import torch.distributed as dist

    from trainer import distributed
    from trainer.configtools import ConfigError

    pretend_gpus(monkeypatch, 1)  # a node like the H100 / H200 leases
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert distributed.rank_device("auto", 0) == torch.device("cuda", 0)
    message = (r"LOCAL_RANK=1 needs CUDA device 1, but this node shows 1 CUDA device\(s\) \(CUDA_VISIBLE_DEVICES=3\): "
               r"start at most 1 process\(es\) per node \(torchrun --nproc_per_node, .*\), or run on the CPU "
               r"\(train.device=cpu; launch/predict.py --device cpu\)")
    for choice in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=message):
            distributed.rank_device(choice, 1)
    assert distributed.rank_device("cpu", 1) == torch.device("cpu")
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(distributed.free_port()))):
        monkeypatch.setenv(name, value)
    distributed.teardown()
    with pytest.raises(ConfigError, match=message):
        distributed.setup("auto")  # the trainer's and launch/predict.py's way in
    assert not dist.is_initialized()  # refused before joining: rank 0 is not left holding a half-made group


def test_the_suites_runs_take_the_cpu_path_on_a_one_gpu_node(monkeypatch, tmp_path):
    """The suite starts its trainer runs with two ranks on one machine: on a GPU machine of one GPU (the leases'),
    they would each want a GPU of their own. `train_overrides` runs them on the CPU everywhere."""
    from trainer import distributed

    from .helpers import train_overrides

    pretend_gpus(monkeypatch, 1)
    settings = dict(item.split("=", 1) for item in train_overrides(tmp_path, tmp_path, "run"))
    device = settings.get("train.device", "auto")  # absent: the stage YAMLs' auto
    assert [distributed.rank_device(device, local).type for local in (0, 1)] == ["cpu", "cpu"]


def _engine_run(zero: int, skip: bool, monkeypatch) -> tuple[dict, int]:
    """Three optimizer steps of 2 accumulated micro-batches through a one-rank engine: (weights, all-reduces run)."""
    import deepspeed
    import torch

    from trainer import distributed

    torch.manual_seed(0)
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1)
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": zero}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, dist_init_required=False, config=config)
    reductions = []
    fallback = engine.buffered_allreduce_fallback
    monkeypatch.setattr(engine, "buffered_allreduce_fallback", lambda *a, **k: (reductions.append(1), fallback(*a, **k)))
    if skip:
        assert distributed.skip_lone_reduction(engine) is (zero == 0)
    data = torch.Generator().manual_seed(1)
    for _ in range(6):
        engine.backward(engine(torch.randn(2, 6, generator=data)).square().mean())
        engine.step()
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}, len(reductions)


def _model():
    """Two Linears and one that forward never uses (as PaSST's head_dist): DeepSpeed's reduction zero-fills its
    gradient, so weight decay moves it."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
            self.unused = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.body(x)

    return Net()


def test_one_rank_at_zero_0_skips_the_no_op_gradient_all_reduce_and_trains_bit_identically(group, monkeypatch):
    import torch

    lean, lean_reductions = _engine_run(0, True, monkeypatch)
    full, full_reductions = _engine_run(0, False, monkeypatch)
    assert (lean_reductions, full_reductions) == (0, 3)  # DeepSpeed's own path reduces once per optimizer step
    torch.manual_seed(0)  # the same steps without DeepSpeed: loss / accumulation, backward twice, zero-fill, Adam
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1)
    data = torch.Generator().manual_seed(1)
    for _ in range(3):
        for _ in range(2):
            (model(torch.randn(2, 6, generator=data)).square().mean() / 2).backward()
        model.unused.weight.grad, model.unused.bias.grad = torch.zeros(2, 2), torch.zeros(2)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for key, value in model.state_dict().items():
        assert torch.equal(lean[key], full[key]) and torch.equal(lean[key], value), key
    assert not torch.equal(lean["unused.weight"], _model().unused.weight.detach())  # decayed, as on several ranks
    _engine_run(1, True, monkeypatch)  # ZeRO 1 reduces in its optimizer: left alone
