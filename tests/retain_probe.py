"""Every retention method, and SI's recording, for a few DeepSpeed steps on fixed global batches at ZeRO 0, 1 and 2,
on however many ranks it is started with (for tests/test_retain.py):

    python tests/retain_probe.py OUT.pt

Global batch 8 every step, as 2 micro-batches per rank (micro 8 / (2 x ranks)); each step covers the same 8 clips
whatever the world size, and replay draws the same coreset clips per step (its slots are numbered globally).
The model runs in evaluation mode (no patchout, a fixed time slice), so a step is a function of its clips alone.
OUT.pt (rank 0): per (method, ZeRO stage) the weights after the steps, and for `record` SI's importance.
One process start serves every case (each start costs seconds of imports and engine set-up).
"""
from __future__ import annotations

import logging
import sys

import torch

from trainer import distributed
from trainer.model.frontend import FrontendConfig, MelFrontend
from trainer.model.passt import create_model
from trainer.retain.base import Retention
from trainer.retain.ewc import EWC
from trainer.retain.lwf import LwF
from trainer.retain.previous import frozen_head
from trainer.retain.replay import Coreset, Replay
from trainer.retain.si import SI, PathIntegral

GLOBAL, ACCUMULATION, STEPS, RATE, SAMPLES = 8, 2, 3, 16000, 16000
METHODS = ("none", "ewc", "si", "lwf", "replay", "record")


def data() -> dict[str, torch.Tensor]:
    """The same clips, labels, previous model, importances and coreset on every rank."""
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(5)
    previous = create_model("passt_micro", 13, attention="plain", n_mels=64).state_dict()
    return {"audio": torch.randn(GLOBAL * STEPS, SAMPLES, generator=g) * 0.1,
            "labels": torch.randint(0, 10, (GLOBAL * STEPS,), generator=g), "previous": previous,
            "importance": {k: torch.rand(v.shape, generator=g) for k, v in previous.items()},
            "coreset": torch.randn(5, 2 * SAMPLES, generator=g) * 0.1,
            "coreset_labels": torch.randint(0, 13, (5,), generator=g)}


def method(name: str, model, d, rank: int, world: int, micro: int) -> Retention:
    head = frozen_head(d["previous"], torch.device("cpu"))
    if name == "ewc":
        return EWC(model, d["previous"], d["importance"], 50.0)
    if name == "si":
        return SI(model, d["previous"], d["importance"], 10.0)
    if name == "lwf":
        teacher = create_model("passt_micro", 13, attention="plain", n_mels=64)
        teacher.load_state_dict(d["previous"])
        return LwF(head, teacher.eval().requires_grad_(False), 1.0, 2.0, False)
    if name == "replay":
        coreset = Coreset([f"c{i}" for i in range(5)], d["coreset"], d["coreset_labels"])
        return Replay(head, coreset, micro // 2, SAMPLES, seed=3, rank=rank, world=world, device=torch.device("cpu"))
    return Retention()


def run(name: str, stage: int, d, rank: int, world: int) -> dict:
    import deepspeed

    micro = GLOBAL // (ACCUMULATION * world)
    own = micro - (micro // 2 if name == "replay" else 0)  # this stage's clips per micro-batch
    model = create_model("passt_micro", 13, attention="plain", n_mels=64)
    model.load_state_dict(d["previous"])
    torch.manual_seed(7)
    model.reinit_heads(10)
    retention = method(name, model, d, rank, world, micro)
    # SGD: Adam would turn the float noise of a zero gradient (the key biases') into whole steps of either sign.
    # No clipping, as the trainer's JSON (DeepSpeed's default clips at 1); lr 0.2 keeps the ranks' float noise in the
    # test's tolerance while every method still moves the weights its own way.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    config = {"train_batch_size": GLOBAL, "train_micro_batch_size_per_gpu": micro,
              "gradient_accumulation_steps": ACCUMULATION, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "steps_per_print": 2**31 - 1, "gradient_clipping": 0.0}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=False)
    engine.eval()
    recorder = PathIntegral(engine.module, 1e-3) if name == "record" else None
    frontend = MelFrontend(FrontendConfig(sample_rate=RATE, n_mels=64, n_fft=512, win_length=400, hop_length=160,
                                          fmax=None)).eval()
    for step in range(STEPS):
        for m in range(ACCUMULATION):
            # this rank's share of the step's clips: the same ones per step on any number of ranks
            first = step * own * world * ACCUMULATION + (m * world + rank) * own
            rows = slice(first, first + own)
            mixed = retention.batch({"audio": d["audio"][rows], "label": d["labels"][rows]}, 0,
                                    step * ACCUMULATION + m)
            mel = frontend(mixed.audio)
            logits, features = engine(mel)
            engine.backward(retention.loss(mel, logits, features, mixed))
            engine.step()
        if recorder is not None:
            recorder.after_step()
    out = {"weights": {k: v.detach().clone() for k, v in engine.module.state_dict().items()}}
    if recorder is not None:
        out["importance"] = recorder.importance()
        recorder.close()
    return out


def main(path: str) -> int:
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    info = distributed.setup("cpu")
    d = data()
    results = {f"{name}-z{stage}": run(name, stage, d, info.rank, info.world_size)
               for name in METHODS for stage in (0, 1, 2)}
    if info.is_main:
        torch.save(results, path)
    distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
