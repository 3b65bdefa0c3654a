"""Set a trainer up from a run folder's newest checkpoint, on however many ranks it is started with, write what
it resumed, then train the run to its end as `launch/train.py` would (for tests/test_resize.py):

    python tests/resume_probe.py OUT.pt --stage cochl key=value ...

OUT.pt (rank 0): the progress, the engine's per-group learning rates, its gradient accumulation, every
parameter's fp32 master weights and full Adam moments as the resumed engine holds them (read back through
DeepSpeed's `safe_get_full_*` at ZeRO 1/2, from the torch optimizer at ZeRO 0), and the keys of the
training batches the rest of the interrupted epoch would read, per rank.  Reading those batches draws
augmentation randomness, so the RNG state is put back before training: the run goes on as if never probed.
One process start serves both (each start costs seconds of imports and engine set-up).
"""
from __future__ import annotations

import sys
from dataclasses import asdict

import torch
import torch.distributed as dist

from trainer import checkpoint, distributed
from trainer.config import load_config
from trainer.engine import Trainer
from trainer.reshard import MOMENTS


def full_state(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {fp32 (the optimizer's master weights), exp_avg, exp_avg_sq}."""
    engine = trainer.engine
    if trainer.cfg.train.zero_stage == 0:
        return {name: {"fp32": p.detach().clone(), **{key: engine.optimizer.state[p][key].clone() for key in MOMENTS}}
                for name, p in engine.module.named_parameters()}
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    return {name: {"fp32": safe_get_full_fp32_param(p).clone(),
                   **{key: safe_get_full_optimizer_state(p, key).clone() for key in MOMENTS}}
            for name, p in engine.module.named_parameters()}


def main(out: str, argv: list[str]) -> int:
    assert argv[0] == "--stage"
    distributed.setup_logging()  # the resumed run logs as launch/train.py's does
    trainer = Trainer(load_config(argv[1], argv[2:])).setup()
    try:
        state = full_state(trainer)
        rng = checkpoint.rng_state()
        keys = [list(batch["key"]) for batch in trainer._epoch_batches()]
        checkpoint.set_rng_state(rng)
        everyone = [None] * trainer.dist.world_size
        dist.all_gather_object(everyone, keys)
        if trainer.dist.is_main:
            torch.save({"progress": asdict(trainer.progress), "lrs": trainer.engine.get_lr(),
                        "accumulation": trainer.accumulation, "state": state, "epoch_keys": everyone,
                        "world_size": trainer.dist.world_size}, out)
        dist.barrier()
        return trainer.fit()
    finally:
        trainer.close()
        distributed.teardown()


if __name__ == "__main__":
    distributed.exit_process(main(sys.argv[1], sys.argv[2:]))
