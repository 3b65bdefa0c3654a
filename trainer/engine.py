"""The SIT trainer: one stage (CochlScene, TAU22, ...) trained with DeepSpeed, evaluated, checkpointed, handed off.

`Trainer(cfg).fit()` sets up in the order of the recipe (processes -> config checks -> run folder ->
loaders -> model -> optimizer and schedule -> DeepSpeed -> resume), trains epoch by epoch with
validation and model selection and evaluates the best model on the test split; `report` writes the results.
Mixed precision is torch autocast over fp32 master weights (the reference recipe's AMP), applied by the
DeepSpeed engine itself (`torch_autocast` in the generated JSON), so `model.pt` is exactly the trained
fp32 weights whatever the ZeRO stage.  A training step never waits for the device: losses and the
pre-emption flag are read one window of `run.log_every` steps late (`monitor.StepMonitor`).
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import checkpoint, distributed, report
from .config import (SELECT_METRICS, Config, deepspeed_config, gradient_accumulation, resolve_precision, selection,
                     stage_clips, validate)
from .configtools import to_dict, to_yaml
from .data import make_loader
from .data.augment import FreqMixStyle
from .data.loader import default_workers
from .inference import MODEL_FILE, infer
from .metrics import classification_metrics
from .model.frontend import MelFrontend
from .model.passt import count_parameters, create_model, load_pretrained
from .monitor import StepMonitor
from .profiling import StepProfiler
from .retain.stage import RetainStage
from .runlog import RunLog
from .sit import exp_warmup_linear_down, param_groups

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed after SIGTERM / SIGUSR1; run again (resume=auto) to continue


@dataclass
class Progress:
    """Where training stands (stored in every checkpoint)."""

    epoch: int = 0  # epoch in progress (or the next one, when step_in_epoch == 0)
    step_in_epoch: int = 0  # optimizer steps already taken in `epoch`
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # sum of the step losses of `epoch` so far (a resumed epoch's mean stays exact)
    epoch_steps: int = 0  # optimizer steps `epoch` has in all (its plan's; the interrupted plan's on another world size)
    part_start: int = 0  # step_in_epoch where the epoch's current part began (> 0: continued on another world size)
    schedule_epoch: int = 0  # the LR schedule's anchor: epoch `schedule_epoch` starts at global step `schedule_step`,
    schedule_step: int = 0  # and every later epoch has the plan's steps (moved when the world size changes)
    best_epoch: int = -1
    best_score: float | None = None
    best_val: dict | None = None
    previous_before: dict | None = None  # the previous stage's test metrics before this stage (retain.keep_head)


def build_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    """PaSST for `num_classes`, from `init_from` when given: backbone kept, classifier heads new (SIT stage rule)."""
    model = create_model(cfg.model.name, num_classes, **cfg.model.passt_settings())
    if cfg.init_from:
        load_pretrained(model, cfg.init_from, head_init=cfg.head_init)  # another class count: new heads
        if cfg.reinit_heads:
            model.reinit_heads(num_classes, cfg.head_init)
    return model


def precision_in_effect(engine) -> str:
    """What the engine will actually compute in, read from the engine (not from our config)."""
    weights = "/".join(sorted({str(p.dtype).removeprefix("torch.") for p in engine.module.parameters()}))
    if engine.bfloat16_enabled() or engine.fp16_enabled():
        return f"DeepSpeed {'bf16' if engine.bfloat16_enabled() else 'fp16'} weights ({weights} parameters)"
    if engine.torch_autocast_enabled():
        dtype = str(engine.torch_autocast_dtype()).removeprefix("torch.")
        return f"{dtype} autocast inside the engine, {weights} weights and Adam state"
    return f"{weights}, no autocast"


def epoch_seed(seed: int, epoch: int, rank: int, part: int = 0) -> int:
    """The RNG seed of a rank's epoch; `part` (the step a continuation on another world size began at) > 0 gives
    the continuation fresh streams."""
    return int(np.random.SeedSequence([seed, epoch, rank, 1, *([part] if part else [])]).generate_state(1)[0])


def compile_failure(exc: BaseException) -> str:
    """One line for a torch.compile failure: its type and the underlying error's line (a BackendCompilerFailed
    message opens with "backend='inductor' raised:" and ends with a hint; the cause is the line between)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = next((line for line in lines if re.match(r"^[\w.]+(Error|Exception|Failed)\b.*:", line)), lines[0] if lines
                 else "")
    return f"{type(exc).__name__}: {cause[:300]}"


def schedule_epoch(step: int, anchor_epoch: int, anchor_step: int, steps_per_epoch: int) -> int:
    """The epoch that 0-based optimizer step `step` belongs to, given that `anchor_epoch` starts at `anchor_step`
    and later epochs have `steps_per_epoch` steps (steps before the anchor are in the epoch before it)."""
    if step < anchor_step:
        return anchor_epoch - 1
    return anchor_epoch + (step - anchor_step) // steps_per_epoch


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    # --- set-up -----------------------------------------------------------------------------------

    def setup(self) -> "Trainer":
        cfg = self.cfg
        # Processes: one per GPU (or CPU rank), whichever launcher started us.
        self.dist = d = distributed.setup(cfg.train.device)
        resolve_precision(cfg, d.device.type)  # train.precision=auto follows the device
        # Config against the files and the world size, before any heavy work.
        self.manifest = validate(cfg, d.world_size)  # loaded once; the loaders reuse it
        self.classes, self.device_names = self.manifest["classes"], self.manifest["devices"]
        self.accumulation = gradient_accumulation(cfg, d.world_size)
        if selection(cfg)["on_test"] and d.is_main:
            log.warning("data.val_split=%r is the test split: the kept epoch is chosen on the data it is tested on, "
                        "so the test metrics are optimistic (the reference's protocol; summary.json records it)",
                        cfg.data.val_split)
        # Run folder: one name for all ranks; resolved config and DeepSpeed JSON beside the checkpoints.
        self.run_dir = self._run_folder()
        self.ckpt_dir = self.run_dir / "checkpoints"
        # Loaders: exact per-rank epochs of whole optimizer steps; waveform augmentation inside.
        self._build_loaders()
        # Model: PaSST from the previous stage (backbone kept, heads new), mel front-end and MixStyle.
        checkpoint.seed_everything(cfg.train.seed)  # identical initial weights on every rank
        model = build_model(cfg, len(self.classes)).to(d.device)
        self.frontend = MelFrontend(cfg.frontend).to(d.device)
        self.mixstyle = FreqMixStyle(cfg.augment.mixstyle_p, cfg.augment.mixstyle_alpha)
        # Previous stage (retain.*): its frozen head and test split, the method protecting it; anchored to the
        # weights the stage starts from, so before DeepSpeed and any resume.
        self.retain = RetainStage(cfg, model, rank=d.rank, world_size=d.world_size, device=d.device,
                                  loader_settings=self._loader_settings())
        # Compile (model.compile): forward and backward now, at the training shape; eager, warned, if it fails.
        self.compiled, self.compile_error = self._compile(model) if cfg.model.compile == "true" else (False, None)
        # Optimizer: slow-learner groups; one per-epoch LambdaLR factor keeps the groups' ratio.
        groups = param_groups(model, cfg.optim.method, lr=cfg.optim.lr, head_lr=cfg.optim.head_lr,
                              weight_decay=cfg.optim.weight_decay)
        self.group_names = [g.pop("name") for g in groups]
        # fused: one kernel for all parameters, step counts kept on the device (no host reads of them)
        optimizer = torch.optim.Adam(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, fused=True)
        self.lr_factor = exp_warmup_linear_down(cfg.schedule.warm_up_len, cfg.schedule.ramp_down_len,
                                                cfg.schedule.ramp_down_start, cfg.schedule.last_lr_value)
        self.progress = Progress()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(self._schedule_epoch(step)))
        # DeepSpeed: ZeRO stage, accumulation and clipping from the config.
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=deepspeed_config(cfg, d.world_size),
                                                    dist_init_required=False)
        lone = distributed.skip_lone_reduction(self.engine)  # one GPU: no gradient all-reduce (nothing to reduce)
        # Resume: engine, optimizer, scheduler, RNG and data position of the newest checkpoint, on any world size.
        resumed = checkpoint.load(self.engine, self.ckpt_dir, d.rank, d.world_size) if cfg.run.resume == "auto" else None
        state = resumed.client_state if resumed else None
        self.progress = Progress(**state["progress"]) if state else Progress(epoch_steps=self.train_loader.plan.steps)
        resume_note = self._continue(resumed) if resumed else "new run"
        self.retain.start_recording(self.engine.module, (state or {}).get("retain", {}).get("path_integral"))
        if self.retain.test_loader is not None and self.progress.previous_before is None:
            self.progress.previous_before = self._evaluate_previous()
        # Profile (run.profile_steps): steps after the first log window, into the run folder.
        self.profiler = StepProfiler(d.device, cfg.run.log_every, cfg.run.profile_steps,
                                     self.run_dir if d.is_main else None)
        self.runlog = RunLog(self.run_dir, d.is_main, group_names=self.group_names,
                             resume_step=self.progress.global_step + 1 if state else 0,
                             resume_epoch=self.progress.epoch,
                             wandb_project=cfg.run.wandb_project if cfg.run.wandb else None, config=to_dict(cfg))
        plan = self.train_loader.plan
        log.info("run %s | %d rank(s) on %s (%s), ZeRO %d%s, precision: %s | global batch %d = %d micro x %d "
                 "accumulation x %d rank(s) | %s: %d train samples -> %d steps/epoch x %d epochs | val %s, test %d | "
                 "%s loader on %s, %d thread(s) | %s %.1fM params%s, %s, lr %s | %s | %s", self.run_dir, d.world_size,
                 d.device.type, d.backend, cfg.train.zero_stage, " (one rank: no gradient all-reduce)" if lone else "",
                 precision_in_effect(self.engine),
                 cfg.train.global_batch, cfg.train.micro_batch, self.accumulation, d.world_size, cfg.data.dataset,
                 plan.num_samples, plan.steps, cfg.train.epochs,
                 self.val_loader.plan.num_samples if self.val_loader else "- (the last epoch is kept)",
                 self.test_loader.plan.num_samples, cfg.data.backend, d.device.type, self.num_workers, cfg.model.name,
                 count_parameters(model) / 1e6, ", compiled" if self.compiled else "", cfg.optim.method,
                 " / ".join(f"{n} {g['lr']:g}" for n, g in zip(self.group_names, groups)), self.retain.describe(),
                 resume_note)
        return self

    def _compile(self, model: torch.nn.Module) -> tuple[bool, str | None]:
        """model.compile: PaSST's forward as one graph (a graph break is an error; not DeepSpeed's engine.compile,
        which would trace the engine's hooks too), compiled now, forward and backward, on a micro-batch of the
        training shape under the training autocast, before DeepSpeed hooks into the gradients.  If compiling
        fails, the run goes on eager: a WARNING now, and summary.json's `compiled: false` with the reason.
        Returns (compiled, the reason it is not)."""
        cfg, device = self.cfg, self.dist.device
        started, rng, eager = time.perf_counter(), checkpoint.rng_state(), model.forward
        model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False)
        if cfg.data.clip_seconds is None:  # no fixed training shape: it compiles at the first step
            return True, None
        try:
            audio = torch.zeros(cfg.train.micro_batch, round(cfg.data.clip_seconds * cfg.frontend.sample_rate),
                                device=device)
            mel = self.mixstyle(self.frontend.train()(audio))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
                logits, features = model(mel)
            (logits.float().sum() + features.float().sum()).backward()
        except Exception as exc:  # noqa: BLE001 (any compiler failure; a real bug fails again, eagerly, at step 1)
            model.forward = eager
            torch._dynamo.reset()
            reason = compile_failure(exc)
            log.warning("model.compile: compiling failed, so this run trains eager (summary.json: compiled false): "
                        "%s", reason)
            return False, reason
        finally:
            model.zero_grad(set_to_none=True)
            checkpoint.set_rng_state(rng)  # the trial draws nothing from the run's random streams
        log.info("model.compile: forward and backward compiled at set-up in %.1f s", time.perf_counter() - started)
        return True, None

    def _continue(self, resumed: checkpoint.Resumed) -> str:
        """Take up the checkpoint's data position; on another world size, the policy of the README's "Resuming on
        another number of GPUs": the interrupted epoch continues over the samples it has not trained on, for the
        steps it has left, and later epochs follow the new plan.  Returns the log line's resume note."""
        p, old, new = self.progress, resumed.position, self.dist.world_size
        where = f"resumed at epoch {p.epoch} step {p.global_step} from {resumed.tag}" + (
            f" ({resumed.set_aside} newer damaged checkpoint(s) set aside)" if resumed.set_aside else "")
        p.epoch_steps = p.epoch_steps or self.train_loader.plan.steps  # checkpoints from before it was stored
        if old.world_size == new:  # the same plans: the epoch's batches read on from where the run stopped
            self._excluded, self._seen = old.excluded, [old.seen]
            return where
        left = p.epoch_steps - p.step_in_epoch
        p.schedule_epoch, p.schedule_step = (p.epoch + 1, p.global_step + left) if p.step_in_epoch else (p.epoch, p.global_step)
        if p.step_in_epoch == 0:
            p.epoch_steps, p.part_start = self.train_loader.plan.steps, 0
            return f"{where} (resumed from W={old.world_size} on W={new}: the epoch starts with the new plan)"
        self._excluded, self._seen = old.excluded + old.seen, []
        p.part_start = p.step_in_epoch
        pool = self.manifest["splits"][self.cfg.data.train_split]["num_samples"] - len(self._excluded)
        return (f"{where} (resumed from W={old.world_size} on W={new}: epoch {p.epoch} continues over the {pool} "
                f"samples it has not trained on, for its {left} remaining step(s) of {p.epoch_steps}; RNG re-seeded "
                "per rank)")

    def _schedule_epoch(self, step: int) -> int:
        p = self.progress
        return schedule_epoch(step, p.schedule_epoch, p.schedule_step, self.train_loader.plan.steps)

    def _epoch_batches(self):
        """The batches left of the epoch in progress: the plan's, or those of the part continued on another world
        size (the epoch's samples not yet trained on, seeded by the step the part began at)."""
        cfg, p = self.cfg, self.progress
        if p.part_start == 0:
            return self.train_loader.batches(p.epoch, skip=p.step_in_epoch * self.accumulation)
        seed = int(np.random.SeedSequence([cfg.train.seed, p.part_start]).generate_state(1)[0])
        part = self._train_loader(seed=seed, exclude=self._excluded, max_steps=p.epoch_steps - p.part_start)
        return part.batches(p.epoch, skip=(p.step_in_epoch - p.part_start) * self.accumulation)

    def _run_folder(self) -> Path:
        cfg, d = self.cfg, self.dist
        name = distributed.broadcast_object(cfg.run.name or time.strftime("%Y%m%d-%H%M%S"))
        folder = Path(cfg.run.out) / cfg.stage / name
        if cfg.run.resume == "never" and checkpoint.tags(folder / "checkpoints"):
            raise RuntimeError(f"{folder} already holds a run and run.resume=never; choose another run.name or "
                               "set run.resume=auto to continue it")
        if d.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(to_yaml(cfg))
            (folder / "deepspeed.json").write_text(json.dumps(deepspeed_config(cfg, d.world_size), indent=2) + "\n")
        dist.barrier()
        return folder

    def _build_loaders(self) -> None:
        cfg = self.cfg
        self.num_workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
        self.train_loader = self._train_loader(seed=cfg.train.seed)
        self.val_loader = None if cfg.data.val_split is None else make_loader(
            cfg.data.folder, cfg.data.val_split, batch_size=cfg.train.eval_batch, training=False, seed=cfg.train.seed,
            **self._loader_settings())
        self.test_loader = make_loader(cfg.data.folder, cfg.data.test_split, batch_size=cfg.train.eval_batch,
                                       training=False, seed=cfg.train.seed, **self._loader_settings())
        self._excluded: list[str] = []  # keys the epoch's current part leaves out (trained on before it)
        self._seen: list = []  # keys of the batches the current part has trained on (per micro-batch)

    def _loader_settings(self) -> dict:
        cfg, d = self.cfg, self.dist
        return dict(backend=cfg.data.backend, device=str(d.device), rank=d.rank, world_size=d.world_size,
                    sample_rate=cfg.frontend.sample_rate, clip_seconds=cfg.data.clip_seconds,
                    num_workers=self.num_workers, manifest=self.manifest)

    def _train_loader(self, *, seed: int, **subset):
        cfg = self.cfg
        return make_loader(cfg.data.folder, cfg.data.train_split, batch_size=stage_clips(cfg), training=True,
                           accumulation=self.accumulation, roll=cfg.augment.roll, dir_prob=cfg.augment.dir_prob,
                           dir_folder=cfg.augment.dir_folder, gain_db=cfg.augment.gain_db, seed=seed,
                           **self._loader_settings(), **subset)

    # --- training ---------------------------------------------------------------------------------

    def fit(self) -> int:
        """Train the remaining epochs, then test; returns 0, or EXIT_PREEMPTED after a pre-emption checkpoint."""
        cfg, p = self.cfg, self.progress
        with checkpoint.Preemption() as preemption:
            while p.epoch < cfg.train.epochs:
                train_loss = self._train_epoch(preemption)
                if train_loss is None:
                    self._save()
                    if self.dist.is_main:
                        print(f"checkpointed at epoch {p.epoch} step {p.global_step} after a pre-emption signal; "
                              f"run the same command again to resume: {self.run_dir}", flush=True)
                    return EXIT_PREEMPTED
                self._end_epoch(train_loss)
        self._finish()
        return 0

    def _train_epoch(self, preemption: checkpoint.Preemption) -> float | None:
        """One epoch (or its rest after a resume); the mean loss, or None when a signal stopped it."""
        cfg, d, p = self.cfg, self.dist, self.progress
        if p.step_in_epoch == 0:
            p.epoch_loss_sum = 0.0
        if p.step_in_epoch == p.part_start:  # a fresh epoch, or a fresh continuation of one on another world size
            checkpoint.seed_everything(epoch_seed(cfg.train.seed, p.epoch, d.rank, p.part_start))
        for module in (self.engine, self.frontend, self.mixstyle):
            module.train()
        steps = p.epoch_steps
        bar = tqdm(total=steps, initial=p.step_in_epoch, desc=f"epoch {p.epoch}", disable=None if d.is_main else True,
                   dynamic_ncols=True, leave=False)
        monitor = StepMonitor(d.device, cfg.train.global_batch)
        signalled = lambda: preemption.received is not None  # noqa: E731
        micro_losses = torch.zeros((), device=d.device)
        stop = False
        remaining = p.step_in_epoch < steps  # a run stopped after an epoch's last step resumes at its end
        micro = p.step_in_epoch * self.accumulation  # the epoch's micro-batch index (replay draws by it)
        for batch in self._epoch_batches() if remaining else ():
            self._seen.append(batch["key"])  # decoded only if a checkpoint needs them
            mixed = self.retain.method.batch(batch, p.epoch, micro)
            mel = self.mixstyle(self.frontend(mixed.audio))
            logits, features = self.engine(mel)
            loss = self.retain.method.loss(mel, logits, features, mixed)
            boundary = self.engine.is_gradient_accumulation_boundary()
            lrs = dict(zip(self.group_names, self.engine.get_lr()))
            self.engine.backward(loss)
            self.engine.step()
            micro += 1
            micro_losses = micro_losses + loss.detach()
            if not boundary:
                continue
            self.retain.after_step()
            p.global_step += 1
            p.step_in_epoch += 1
            monitor.record(p.epoch, p.global_step, micro_losses / self.accumulation, lrs)
            micro_losses = torch.zeros((), device=d.device)
            self.profiler.step_done(p.global_step)  # before the window's clock mark: only the profiled window is slowed
            if p.global_step % cfg.run.log_every == 0 and p.step_in_epoch < steps:
                records, stop = monitor.window(signalled())
                self._log_steps(records, bar)
                if stop:
                    break
        records, stopped = monitor.drain(signalled())
        self._log_steps(records, bar)
        stop = stop or stopped
        bar.close()
        if stop:
            return None
        if p.step_in_epoch != steps:
            raise RuntimeError(f"epoch {p.epoch} ended after {p.step_in_epoch} of {steps} steps: the loader yielded "
                               "fewer batches than planned")
        return p.epoch_loss_sum / steps

    def _log_steps(self, records: list, bar: tqdm) -> None:
        """Write the steps read back from the device and add them to the epoch's loss."""
        for r in records:
            self.runlog.step(r.epoch, r.step, r.loss, r.lrs, r.samples_per_s)
            self.progress.epoch_loss_sum += r.loss
        if records:
            bar.update(len(records))
            bar.set_postfix(loss=f"{records[-1].loss:.4f}", lr=f"{next(iter(records[-1].lrs.values())):.2e}")

    def _end_epoch(self, train_loss: float) -> None:
        cfg, p = self.cfg, self.progress
        val = self.evaluate(self.val_loader) if self.val_loader else None
        score = val[cfg.train.select_metric] if val else None
        sign = SELECT_METRICS[cfg.train.select_metric]
        if val is None or p.best_score is None or (score is not None and sign * (score - p.best_score) > 0):
            p.best_epoch, p.best_score, p.best_val = p.epoch, score, val
            self.retain.write_importance(self.run_dir, self.dist.is_main)
            if self.dist.is_main:
                checkpoint.export_model(self.engine.module, self.run_dir / MODEL_FILE, self.classes, to_dict(cfg),
                                        self.retain.exported_head())
        device = self.dist.device
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        self.runlog.epoch(p.epoch, p.global_step, train_loss, self.lr_factor(p.epoch), val, peak)
        if self.dist.is_main and val is None:
            log.info("epoch %d: train loss %.4f (no validation: model.pt is this epoch's)", p.epoch, train_loss)
        elif self.dist.is_main:
            log.info("epoch %d: train loss %.4f | val accuracy %.4f, macro %.4f, log loss %.4f%s", p.epoch, train_loss,
                     val["accuracy"], val["macro_accuracy"] or float("nan"), val["log_loss"],
                     " (best)" if p.best_epoch == p.epoch else "")
        p.epoch += 1
        p.step_in_epoch, p.part_start, p.epoch_steps = 0, 0, self.train_loader.plan.steps
        self._excluded, self._seen = [], []
        self._save()

    def _save(self) -> None:
        p, d = self.progress, self.dist
        client = {"progress": asdict(p), "config": to_dict(self.cfg), "retain": self.retain.client_state()}
        seen = [key for keys in self._seen for key in keys]
        everyone = [None] * d.world_size
        dist.all_gather_object(everyone, seen)  # a mid-epoch stop: what every rank has trained on
        position = checkpoint.Position(d.world_size, self.cfg.train.zero_stage, self._excluded,
                                       [key for part in everyone for key in part])
        checkpoint.save(self.engine, self.ckpt_dir, checkpoint.tag_name(p.epoch, p.global_step), client, d.rank,
                        d.world_size, position)
        dist.barrier()
        if self.dist.is_main:
            checkpoint.prune(self.ckpt_dir, self.cfg.run.keep_checkpoints)

    # --- evaluation -------------------------------------------------------------------------------

    def evaluate(self, loader, head: torch.nn.Module | None = None) -> dict:
        """Metrics of one pass over a split, every sample exactly once across ranks (padding removed).  With `head`
        (the previous stage's, carried): its logits on the pooled features, scored with its classes and devices."""
        for module in (self.engine, self.frontend):
            module.eval()
        classes, devices = self.classes, self.device_names
        if head is not None:
            classes, devices = self.retain.previous.classes, self.retain.previous.manifest["devices"]

        def classify(wave: torch.Tensor) -> torch.Tensor:
            logits, features = self.engine.module(self.frontend(wave))
            return logits if head is None else head(features.float())

        out = infer([classify], loader, device=self.dist.device, bf16=self.cfg.train.precision == "bf16")
        return classification_metrics(out.logits, out.labels, out.devices, classes, devices)

    def _evaluate_previous(self) -> dict:
        """The previous stage's test split through the backbone as it is now and the previous stage's frozen head."""
        return self.evaluate(self.retain.test_loader, self.retain.head)

    def _finish(self) -> None:
        cfg, d, p = self.cfg, self.dist, self.progress
        dist.barrier()
        best = torch.load(self.run_dir / MODEL_FILE, map_location=d.device, weights_only=True)
        self.engine.module.load_state_dict(best["state_dict"])
        test = self.evaluate(self.test_loader)
        previous = self._previous_summary()
        if cfg.retain.record:  # at the kept weights, which the engine holds now
            count = self.retain.write_fisher(self.engine.module, self.frontend, self.run_dir, d.is_main, self.classes)
            log.info("retain.record: fisher.pt over %d train clip(s) and si.pt written beside model.pt", count)
        if d.is_main:
            report.write(self.run_dir, cfg, p.best_epoch, p.global_step, p.best_val, test, self.classes, d.world_size,
                         previous, {"compiled": self.compiled, "compile_error": self.compile_error})

    def _previous_summary(self) -> dict | None:
        """The previous stage's test before and after this stage (summary.json's `previous`), when its head is kept."""
        if self.retain.test_loader is None:
            return None
        before, after = self.progress.previous_before, self._evaluate_previous()
        previous = self.retain.previous
        if self.dist.is_main:
            log.info("previous stage %s: test accuracy %.4f before this stage, %.4f after (forgetting %.4f)",
                     previous.config.stage, before["accuracy"], after["accuracy"], before["accuracy"] - after["accuracy"])
        return {"stage": previous.config.stage, "dataset": str(previous.data), "model": str(previous.file),
                "classes": previous.classes, "method": self.cfg.retain.method, "before": before, "after": after,
                "forgetting": before["accuracy"] - after["accuracy"]}

    def close(self) -> None:
        if hasattr(self, "profiler"):
            self.profiler.close()
        if hasattr(self, "runlog"):
            self.runlog.close()
        if hasattr(self, "retain"):
            self.retain.close()
