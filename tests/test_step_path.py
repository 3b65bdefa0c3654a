"""What decides GPU speed, checked on the CPU: the precision inside the engine, a training step that never
waits for the device, and the model as one compilable graph.

The trainer runs in this process (one gloo rank) so that its step can be watched from inside: a
TorchFunctionMode records every call that makes the host wait for a CUDA device (`.item()`,
`.tolist()`, `bool(tensor)`, ...) and where it came from.
"""
from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from trainer import checkpoint, distributed
from trainer.config import load_config
from trainer.data.augment import FreqMixStyle
from trainer.engine import Trainer, precision_in_effect
from trainer.model.passt import passt_micro
from trainer.monitor import StepMonitor

from .helpers import free_port, train_overrides

# Tensor methods and functions that copy a device value to the host, i.e. wait for the device.
HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy"}


@pytest.fixture(scope="module")
def one_rank():
    """This process as rank 0 of 1 (gloo); the environment and the process group are restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}.items():
            mp.setenv(name, value)
        yield
        distributed.teardown()


def _trainer(trainable, tmp_path, name: str, **extra) -> Trainer:
    overrides = train_overrides(trainable, tmp_path, name, train__epochs=1, **extra)
    return Trainer(load_config("cochl", overrides)).setup()


class HostReads(TorchFunctionMode):
    """Records (name, file:line of the caller) of every call in HOST_READS."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename)
            self.calls[(name, f"{caller.filename.rsplit('/', 1)[-1]}:{caller.name}")] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_no_host_read_inside_a_training_step(one_rank, trainable, demo_root, tmp_path, monkeypatch, zero):
    """Only the monitor reads from the device, once per window of run.log_every steps: never inside a step.

    Fails on a loop that reads the loss with .item() every step, on DeepSpeed's throughput timer or ZeRO's
    per-step gradient-norm check, on a MixStyle coin drawn with .item(), on boolean-mask indexing in
    the augmentation and on mel banks drawn with int(torch.randint(...)).
    """
    trainer = _trainer(trainable, tmp_path, f"sync{zero}", train__zero_stage=zero, run__log_every=1,
                       augment__dir_prob=0.6, augment__dir_folder=demo_root["impulse_responses"],
                       frontend__fmin_aug_range=10, augment__gain_db=3.0, dataset="tau22")
    from deepspeed.accelerator import get_accelerator

    syncs = []
    monkeypatch.setattr(get_accelerator(), "synchronize", lambda *a, **k: syncs.append(traceback.format_stack()))
    steps = trainer.train_loader.plan.steps
    assert steps >= 2
    with checkpoint.Preemption() as preemption, HostReads() as reads:
        assert trainer._train_epoch(preemption) is not None
    assert syncs == []
    # one read per window (log_every=1: the windows after steps 1 .. steps-1) plus the drain at the end
    assert reads.calls == {("tolist", "monitor.py:_read"): steps}, reads.calls


def test_bf16_autocast_runs_inside_the_engine(one_rank, trainable, tmp_path, monkeypatch):
    """precision=bf16 is autocast applied by the DeepSpeed engine, over fp32 weights, fp32 Adam state and an
    fp32 gradient all-reduce.  On a GPU, DeepSpeed's check `torch.is_autocast_enabled()` (CUDA autocast)
    decides: made to answer True here, an engine without the `torch_autocast` section turns autocast off and
    the model runs in fp32 (what every GPU run did before), while ours keeps bf16."""
    trainer = _trainer(trainable, tmp_path, "bf16", train__precision="bf16")
    engine = trainer.engine
    assert engine.torch_autocast_enabled() and engine.torch_autocast_dtype() == torch.bfloat16
    assert precision_in_effect(engine) == "bfloat16 autocast inside the engine, float32 weights and Adam state"
    assert not any(hasattr(p, "comm_dtype") for p in engine.module.parameters())  # all-reduce stays fp32
    real = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *device: True if not device else real(*device))
    dtypes = collections.Counter()
    for m in engine.module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.register_forward_hook(lambda mod, inp, out: dtypes.update([out.dtype]))
    with checkpoint.Preemption() as preemption:
        trainer._train_epoch(preemption)
    assert set(dtypes) == {torch.bfloat16}, dtypes
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())
    state = engine.optimizer.state[next(engine.module.parameters())]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_setup_reads_the_manifest_once(one_rank, trainable, tmp_path, monkeypatch):
    """The config checks and the three loaders share one manifest load (the data layer owns the checks)."""
    import data_shards.manifest as manifest

    loads = []
    real = manifest.load_manifest
    monkeypatch.setattr("trainer.data.dataset.load_manifest", lambda folder: loads.append(folder) or real(folder))
    trainer = _trainer(trainable, tmp_path, "once")
    assert loads == [trainable / "cochlscene"] and len(trainer.val_loader) > 0


def test_fp32_runs_without_autocast(one_rank, trainable, tmp_path):
    trainer = _trainer(trainable, tmp_path, "fp32", train__precision="fp32")
    assert not trainer.engine.torch_autocast_enabled()
    assert precision_in_effect(trainer.engine) == "float32, no autocast"


def test_monitor_reads_a_window_late_and_stops_all_ranks_at_the_same_step():
    monitor = StepMonitor(torch.device("cpu"), samples_per_step=8)
    lrs = {"head": 0.1}
    monitor.record(0, 1, torch.tensor(2.0), lrs)
    monitor.record(0, 2, torch.tensor(4.0), lrs)
    assert monitor.window(stop_flag=False) == ([], False)  # nothing read yet: the host did not wait
    monitor.record(0, 3, torch.tensor(6.0), lrs)
    records, stop = monitor.window(stop_flag=True)  # a signal arrives: sent now, seen one window later
    assert [(r.step, r.loss) for r in records] == [(1, 2.0), (2, 4.0)] and not stop
    assert all(r.samples_per_s > 0 and r.lrs == lrs for r in records)
    monitor.record(0, 4, torch.tensor(8.0), lrs)
    records, stop = monitor.window(stop_flag=False)
    assert [r.step for r in records] == [3] and stop
    records, stop = monitor.drain(stop_flag=False)
    assert [(r.step, r.loss) for r in records] == [(4, 8.0)] and not stop


def test_passt_is_one_graph_in_training_and_evaluation():
    """torch.compile(fullgraph=True) raises on a graph break; the eager backend makes it a tracing check."""
    torch.manual_seed(0)
    model = passt_micro(10, s_patchout_f=6)
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    for frames in (138, 1379):  # 1-s clips (random time-embedding slice), 10-s clips (random crop / windows)
        x = torch.randn(2, 1, 128, frames)
        model.train()
        compiled(x)[0].sum().backward()
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x)[0], model(x)[0])


def test_long_clips_are_windowed_without_calling_the_module_again():
    """A wrapper's hooks on PaSST (DeepSpeed's engine puts some there) run once per call, not once per window: inside
    a compiled forward, a module call per window traced them, and a 10-s evaluation failed to compile."""
    torch.manual_seed(0)
    model = passt_micro(10).eval()
    x = torch.randn(2, 1, 128, 1379)  # 10-s clips: several windows
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with torch.no_grad():
        eager = model(x)[0]
    assert len(calls) == 1
    model.register_forward_pre_hook(lambda module, args: torch._dynamo.graph_break())
    model.forward = torch.compile(model.forward, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], eager)


def test_compiled_model_equals_eager_in_evaluation():
    torch.manual_seed(0)
    model = passt_micro(10, s_patchout_f=6).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    x = torch.randn(4, 1, 128, 138)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)


def test_mixstyle_compiles_with_inductors_pattern_matcher():
    """Indexing by a randperm (mu[perm]) crashed inductor's pattern matcher (pytorch#183988), so a graph holding
    MixStyle could not compile; compiled, forward and backward equal eager for the same draws (fallback_random:
    inductor draws from eager's generator)."""
    x = torch.randn(6, 1, 16, 30, requires_grad=True)
    module = FreqMixStyle(p=1.0).train()
    compiled = torch.compile(module, dynamic=False, options={"pattern_matcher": True, "fallback_random": True})
    results = []
    for run in (module, compiled):
        torch.manual_seed(4)
        out = run(x)
        (grad,) = torch.autograd.grad((out * torch.linspace(-1, 1, 30)).sum(), x)
        results.append((out.detach(), grad))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)
    assert not torch.equal(results[0][0], x.detach())  # the batch was mixed


def test_compile_auto_is_eager_on_the_cpu_and_a_failed_compile_falls_back_to_eager_with_a_warning(
        one_rank, trainable, tmp_path, monkeypatch, caplog):
    import json

    auto = _trainer(trainable, tmp_path, "auto", model__compile="auto", train__device="cpu")  # the yaml default
    assert (auto.cfg.model.compile, auto.compiled) == ("false", False)
    assert "compile: 'false'" in (auto.run_dir / "config.yaml").read_text()  # the choice, not 'auto'
    auto.close()

    def failing(fn, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("BackendCompilerFailed: inductor raised\nmore detail")
        return compiled

    monkeypatch.setattr(torch, "compile", failing)
    with caplog.at_level("WARNING", logger="trainer.engine"):
        trainer = _trainer(trainable, tmp_path, "broken", model__compile="true")
    assert not trainer.compiled and trainer.compile_error == "RuntimeError: BackendCompilerFailed: inductor raised"
    assert "model.compile: compiling failed, so this run trains eager" in caplog.text
    assert trainer.fit() == 0  # and it trains, eager, to the end
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    assert summary["compiled"] is False and summary["compile_error"].startswith("RuntimeError: BackendCompilerFailed")
    trainer.close()


def test_a_compile_failure_is_named_by_its_cause():
    from trainer.engine import compile_failure

    inductor = RuntimeError("backend='inductor' raised:\nRuntimeError: Not all inputs to pattern found in match.kwargs.\n"
                            "\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace")
    assert compile_failure(inductor) == "RuntimeError: RuntimeError: Not all inputs to pattern found in match.kwargs."
    assert compile_failure(TypeError("plain message")) == "TypeError: plain message"
