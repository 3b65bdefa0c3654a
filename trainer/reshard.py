"""Resuming a checkpoint on another number of ranks: the optimizer state consolidated and re-partitioned.

DeepSpeed restores the module, the LR scheduler and (at ZeRO 0, where every rank holds all of it) the
optimizer on any world size, but refuses ZeRO 1/2 optimizer partitions written by another number of
ranks.  Here the old partitions are put back together from DeepSpeed's own files: each
`zero_pp_rank_<r>_mp_rank_00_optim_states.pt` lists, per parameter group, where each parameter's
fragment lies in that rank's flat partition (`param_slice_mappings`), and a parameter is its fragments
in rank order.  The full Adam moments are then written into the new engine's partitions through
DeepSpeed's `safe_set_full_optimizer_state`; the step count and the learning rates follow.  The fp32
master weights need nothing: the parameters are fp32 here (bf16 is autocast), and DeepSpeed copies the
loaded module weights into its masters when it loads no optimizer partitions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint_files import safe_load

log = logging.getLogger(__name__)

MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class FullOptimizerState:
    """A ZeRO 1/2 checkpoint's optimizer state with the partitioning undone (flat fp32 tensors per parameter)."""

    steps: list[torch.Tensor] = field(default_factory=list)  # Adam's step count, per parameter group
    moments: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # name -> {exp_avg, exp_avg_sq}


def partition_files(tag_dir: Path) -> list[Path]:
    files = sorted(tag_dir.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"),
                   key=lambda p: int(p.name.split("_")[3]))
    if not files:
        raise RuntimeError(f"{tag_dir} holds no ZeRO optimizer partitions (zero_pp_rank_*_optim_states.pt): it was "
                           "not written at ZeRO 1/2; resume with the train.zero_stage it was written with")
    return files


def consolidate(tag_dir: Path) -> FullOptimizerState:
    """Read every rank's partition of a ZeRO 1/2 checkpoint and join each parameter's fragments."""
    files = partition_files(tag_dir)
    full = FullOptimizerState()
    fragments: dict[str, dict[str, list[torch.Tensor]]] = {}
    for rank, path in enumerate(files):
        state = safe_load(path, map_location="cpu")["optimizer_state_dict"]
        if state["partition_count"] and any(n != len(files) for n in state["partition_count"]):
            raise RuntimeError(f"{path}: written by {state['partition_count']} ranks but {len(files)} partition "
                               "files are here; the checkpoint is incomplete")
        base = state["base_optimizer_state"]["state"]
        for group, mapping in enumerate(state["param_slice_mappings"]):
            if rank == 0:
                full.steps.append(torch.as_tensor(base[group]["step"]).clone())
            for name, where in mapping.items():
                parts = fragments.setdefault(name, {key: [] for key in MOMENTS})
                for key in MOMENTS:
                    parts[key].append(base[group][key].narrow(0, where.start, where.numel))
    full.moments = {name: {key: torch.cat(pieces) for key, pieces in parts.items()} for name, parts in fragments.items()}
    return full


def restore_partitions(engine, full: FullOptimizerState) -> None:
    """Write a consolidated optimizer state into a ZeRO 1/2 engine of any world size (collective: every rank)."""
    from deepspeed.utils import safe_set_full_optimizer_state

    zero = engine.optimizer
    flats = zero.single_partition_of_fp32_groups
    if len(flats) != len(full.steps):
        raise RuntimeError(f"the checkpoint has {len(full.steps)} parameter group(s), this run {len(flats)}: "
                           "optim.method must be the one the run was started with")
    # Adam's state for each group's flat partition, as the fused Adam creates it at its first step
    for flat, step in zip(flats, full.steps):
        zero.optimizer.state[flat] = {"step": step.to(device=flat.device, dtype=torch.float32),
                                      **{key: torch.zeros_like(flat) for key in MOMENTS}}
    # DeepSpeed links each parameter to its slice of that state after its first step, one group at a time,
    # and marks the link done after the first group; link all groups now that all states exist
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()
    names = {id(p): n for n, p in engine.module.named_parameters()}
    for group in zero.bit16_groups:
        for param in group:
            name = names[id(param)]
            saved = full.moments.get(name)
            if saved is None or saved["exp_avg"].numel() != param.numel():
                raise RuntimeError(f"parameter {name} {tuple(param.shape)} is not in the checkpoint's optimizer "
                                   "state (or has another size): the model must be the one the run was started with")
            for key in MOMENTS:
                safe_set_full_optimizer_state(param, saved[key].view_as(param).to(param.device), key)
    for group, lr in zip(zero.param_groups, engine.lr_scheduler.get_last_lr()):
        group["lr"] = lr


def load(engine, root: Path, tag: str) -> dict:
    """`engine.load_checkpoint` for a tag written by another number of ranks; returns the client state."""
    zero_stage = engine.zero_optimization_stage()
    if zero_stage > 2:
        raise RuntimeError("resuming on another world size supports ZeRO 0, 1 and 2, not train.zero_stage="
                           f"{zero_stage}")
    partitioned = zero_stage > 0
    full = consolidate(root / tag) if partitioned else None
    path, client_state = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=not partitioned,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint in {root / tag}, which verified; report this with the "
                           "folder")
    if full is not None:
        restore_partitions(engine, full)
    return client_state
