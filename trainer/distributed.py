"""Process-group set-up for every launcher, and the few collectives the trainer needs.

Launchers: `deepspeed` and `torchrun` set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
`srun` with one task per GPU sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, which are mapped to the
former (the sbatch scripts export MASTER_ADDR / MASTER_PORT); plain `python` runs one process.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from .configtools import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def free_port() -> int:
    """A TCP port free on this host right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_rank(env=os.environ) -> int:
    """This process's rank as the launcher set it (torchrun / deepspeed: RANK; srun: SLURM_PROCID), before any
    process group exists; 0 for a plain `python` run."""
    return int(env.get("RANK", env.get("SLURM_PROCID", "0")))


def setup_logging() -> None:
    """Log lines tagged with the launcher's rank: INFO on rank 0, warnings and errors only on the others."""
    rank = launcher_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def launcher_environment(env: dict[str, str]) -> dict[str, str]:
    """The RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* variables this process should run with."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return {}
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "MASTER_ADDR" not in env:
            raise RuntimeError("srun with several tasks: export MASTER_ADDR (the first node of SLURM_JOB_NODELIST) "
                               "and MASTER_PORT in the sbatch script, as launch/slurm/*.sbatch do")
        return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": env.get("MASTER_PORT", str(free_port()))}


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def rank_device(choice: str, local_rank: int) -> torch.device:
    """This rank's device: `choice` resolved, and on CUDA the GPU of the rank's place on its node (LOCAL_RANK).

    More ranks on a node than GPUs it shows is a bad setting, refused here by name (the launchers exit 2, and a
    SLURM job is not requeued): CUDA's own answer, at the first call, is "invalid device ordinal".
    """
    device = resolve_device(choice)
    if device.type != "cuda":
        return device
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError(
            f"LOCAL_RANK={local_rank} needs CUDA device {local_rank}, but this node shows {visible} CUDA device(s)"
            f"{f' (CUDA_VISIBLE_DEVICES={shown})' if shown is not None else ''}: start at most {visible} process(es) "
            "per node (torchrun --nproc_per_node, deepspeed --num_gpus, srun --ntasks-per-node; an srun task must "
            "see all of its node's GPUs: not --gpus-per-task or --gpu-bind to one each), or run on the CPU "
            "(train.device=cpu; launch/predict.py --device cpu)")
    return torch.device("cuda", local_rank)


def setup(device_choice: str) -> Dist:
    """Join (or create) the process group on the chosen device type; idempotent."""
    os.environ.update(launcher_environment(dict(os.environ)))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    device = rank_device(device_choice, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed must not pick CUDA for a CPU run
    info = Dist(rank, world, local, device)
    _use_accelerator(device)
    if dist.is_initialized():
        _adopt_group(info)
    if not dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend=info.backend, auto_mpi_discovery=False)
    return info


def _adopt_group(info: Dist) -> None:
    """Keep the process's group when it can run collectives on `info.device`; else replace or refuse it.

    A group lives as long as its process, so a second run in one process (a notebook, in-process tests) meets
    the first one's: an NCCL group cannot reduce CPU tensors ("No backend type associated with device type
    cpu" at the first collective).  A one-process group has no peers to agree with and is replaced; a group of
    several ranks is refused, since every rank would have to replace it together.
    """
    config = dist.get_backend_config()  # {device type}:{backend} pairs: "cuda:nccl", "cpu:gloo,cuda:gloo"
    backends = dict(pair.split(":") for pair in config.split(","))
    if info.device.type in backends:
        return
    if dist.get_world_size() == 1 and info.world_size == 1:
        logging.getLogger(__name__).info("replacing this process's %s process group by %s for device %s",
                                         config, info.backend, info.device.type)
        dist.destroy_process_group()
        return
    raise RuntimeError(f"this process already belongs to a {dist.get_world_size()}-rank process group with backend "
                       f"{config}, which has no backend for device {info.device.type} (a {info.device.type} run "
                       f"needs {info.backend}): set train.device={'/'.join(sorted(backends))}, or start the run "
                       "in fresh processes")


def _use_accelerator(device: torch.device) -> None:
    """DeepSpeed picks its accelerator once per process; a later run on the other device type must reset it."""
    if "deepspeed" not in sys.modules:
        return  # DeepSpeed will choose on first use, by DS_ACCELERATOR and what it finds
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() == device.type:
        return
    if device.type == "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
    else:
        from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
    set_accelerator(Accelerator())


def local_world_size() -> int:
    """Ranks on this node, as the launcher tells it (torchrun, deepspeed, srun); 1 when it does not."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "").split("(")[0]  # SLURM writes e.g. "4(x2)"
        if value.isdigit():
            return int(value)
    return 1


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped per-rank tensors in rank order (on every rank)."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast_object(obj, src: int = 0):
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def skip_lone_reduction(engine) -> bool:
    """At ZeRO 0 with one data-parallel rank DeepSpeed still all-reduces every gradient at each optimizer step: it
    flattens them into one buffer, reduces it over a group of one and copies it back (two read-write passes over
    the gradients, a kernel per parameter and a gradient-sized buffer per step, none of which changes a bit).
    Turn that path off on such an engine.  The path also gives every trainable parameter that got no gradient
    (PaSST's `head_dist`) a zero one, which Adam's weight decay then acts on; an optimizer step pre-hook keeps
    that, so runs on one rank and on several stay the same.  Returns whether the path was turned off (ZeRO 1-3
    reduce inside their optimizers and are left alone)."""
    if engine.zero_optimization_stage() != 0 or engine.dp_world_size != 1:
        return False
    if not hasattr(engine, "enable_backward_allreduce"):
        raise RuntimeError("this DeepSpeed engine has no enable_backward_allreduce switch (deepspeed "
                           f"{sys.modules['deepspeed'].__version__}); install the version pyproject.toml names")
    engine.enable_backward_allreduce = False
    engine.optimizer.register_step_pre_hook(_zero_missing_grads)
    return True


def _zero_missing_grads(optimizer, args, kwargs) -> None:
    """What DeepSpeed's reduction path does before it flattens: a zero gradient for each unused trainable parameter."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None and p.requires_grad and p.numel():
                p.grad = torch.zeros_like(p)


def teardown() -> None:
    if not dist.is_initialized():
        return
    comm = sys.modules.get("deepspeed.comm.comm")
    if comm is not None and comm.cdb is not None and comm.cdb.is_initialized():
        comm.destroy_process_group()  # also drops DeepSpeed's cached groups, which a later group would meet
    else:
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End the process with `code` without finalising the interpreter (call after `teardown`).

    A gloo worker thread can still be releasing the tensors of a finished collective when the
    interpreter finalises; the GIL it needs is then gone and torch 2.11 aborts the process
    ("terminate called without an active exception", SIGABRT) after a complete run, so SLURM and the
    launchers report a failure (pytorch/pytorch#190489). By this point the run's files are closed, so
    flushing logging and the standard streams is all that finalisation would still do for us.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
