"""The trainer's typed configuration: `configs/<stage>.yaml` + dotted overrides, validated before any work.

Layers, later wins: the dataclass defaults below -> `configs/<stage>.yaml` -> `configs/demo/<stage>.yaml`
(with `--demo`) -> `configs/protocol/<name>/<stage>.yaml` (with `protocol=<name>`) -> `key=value` overrides.
OmegaConf merges them into the structured schema, so an unknown key or a value of the wrong type is an error that names the full key.  `validate` then checks
what depends on several fields or on the files (batch arithmetic, splits, checkpoints) and names the
key to change.  Every number of the recipe lives in configs/; the DeepSpeed JSON is generated from
this object (`deepspeed_config`), never written by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import MISSING

from .configtools import ConfigError, last_override, merge_layers
from .data.dataset import DatasetError, check_request, open_dataset
from .data.epoch import plan_epoch
from .data.loader import BACKENDS
from .model.frontend import FrontendConfig
from .model.passt import HEAD_INITS, LONG_CLIPS, MODELS, PaSSTConfig
from .retain import RETAIN_METHODS
from .sit import METHODS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PROTOCOLS = ("project", "reference")
SELECT_METRICS = {"accuracy": 1.0, "macro_accuracy": 1.0, "log_loss": -1.0}  # +1: higher is better


@dataclass
class DataConfig:
    """Which packed dataset and splits to read, and how."""

    root: str = "data/shards"  # folder holding packed datasets (python -m data_shards pack --out ROOT)
    dataset: str = MISSING  # packed dataset folder under root: cochlscene, tau22, ...
    train_split: str = "train"  # split to train on (TAU low-resource: split5 ... split100)
    val_split: str | None = "val"  # model selection split; null: keep the last epoch; test: allowed, flagged optimistic
    whole_lists: bool = False  # train on the list as published: refuse one packed with val recordings taken out
    test_split: str = "test"  # split evaluated once with the selected model
    backend: str = "dali"  # dali | torch (plain DataLoader reader of the same shards)
    clip_seconds: float | None = 10.0  # training crop / evaluation pad length; null: whole clips (eval only)
    num_workers: int | None = None  # DALI CPU threads or DataLoader workers per rank; null: the rank's CPUs but one

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.dataset


@dataclass
class ModelConfig:
    """Architecture choice and its training-time switches (defaults: PaSSTConfig's; the stage YAMLs set the recipe's)."""

    name: str = "passt_s"  # passt_s | passt_tiny | passt_mini | passt_micro
    s_patchout_t: int = PaSSTConfig.s_patchout_t  # time columns dropped per batch in training
    s_patchout_f: int = PaSSTConfig.s_patchout_f  # frequency rows dropped per batch in training
    attention: str = PaSSTConfig.attention  # sdpa | plain
    checkpoint_activations: bool = PaSSTConfig.checkpoint_activations  # recompute block activations in backward
    compile: str = "auto"  # auto (compiled on CUDA, eager on the CPU) | true | false: torch.compile's one graph
    long_clips: str = PaSSTConfig.long_clips  # past 99 time patches: windows (random crop, averaged windows) | first

    def passt_settings(self) -> dict:
        """The PaSSTConfig fields this config sets (every field but `name` and `compile`)."""
        return {f.name: getattr(self, f.name) for f in fields(PaSSTConfig) if hasattr(self, f.name)}


@dataclass
class AugmentConfig:
    """Training-only augmentations (waveform: in the loader; MixStyle: on the log-mels)."""

    roll: int = 4000  # maximum circular shift in samples
    dir_prob: float = 0.6  # probability of a device impulse response on device-a clips
    dir_folder: str | None = None  # folder of impulse responses (MicIRP); required when dir_prob > 0
    gain_db: float = 0.0  # uniform gain in [-gain_db, gain_db] dB
    mixstyle_p: float = 0.4  # probability per batch of frequency MixStyle
    mixstyle_alpha: float = 0.4  # Beta(alpha, alpha) mixing weight


@dataclass
class OptimConfig:
    """Adam with coupled L2 weight decay in one (baselines) or two (SIT) parameter groups."""

    method: str = "sit"  # sit | seq_ft | standard_ft
    lr: float = 1e-4  # representation lr (sit) or the single lr (seq_ft, standard_ft)
    head_lr: float = 1e-3  # heads' lr (sit only)
    weight_decay: float = 1e-3  # coupled L2, both groups
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    eps: float = 1e-8  # Adam epsilon
    grad_clip: float = 0.0  # global gradient-norm clip; 0: off


@dataclass
class ScheduleConfig:
    """exp_warmup_linear_down, evaluated per epoch (one factor for every step of an epoch)."""

    warm_up_len: int = 3  # W: epochs of exponential warm-up
    ramp_down_start: int = 3  # S: last epoch at full lr
    ramp_down_len: int = 10  # L: epochs of linear ramp down
    last_lr_value: float = 0.01  # factor after the ramp


@dataclass
class TrainConfig:
    """Batch arithmetic, precision, distribution and model selection."""

    epochs: int = 25  # training epochs
    global_batch: int = 256  # samples per optimizer step over all ranks (= micro x accumulation x ranks)
    micro_batch: int = 32  # samples per rank per forward pass
    eval_batch: int = 32  # samples per rank per evaluation batch
    precision: str = "bf16"  # bf16 (autocast, fp32 master weights) | fp32 | auto (bf16 on CUDA, fp32 on the CPU)
    zero_stage: int = 0  # DeepSpeed ZeRO stage: 0, 1 or 2
    device: str = "auto"  # auto (cuda when available) | cuda | cpu
    seed: int = 0  # seeds model init, data order and augmentation (per rank and epoch)
    select_metric: str = "macro_accuracy"  # validation metric for the best epoch: macro_accuracy | accuracy | log_loss


@dataclass
class RunConfig:
    """Where the run lives and how it logs."""

    out: str = "runs"  # runs go to <out>/<stage>/<name>/
    name: str | None = None  # run folder name; default: the start time (YYYYmmdd-HHMMSS)
    resume: str = "auto"  # auto: continue the run folder's latest checkpoint if any | never: refuse an existing run
    keep_checkpoints: int = 2  # epoch checkpoints kept (the pre-emption one is kept too)
    log_every: int = 10  # optimizer steps between reads of the losses from the device (steps.csv has every step)
    profile_steps: int = 0  # > 0: torch.profiler over that many steps after the first log_every (profile.md in the run)
    wandb: bool = False  # also log to Weights & Biases (pip install wandb)
    wandb_project: str = "sit"  # W&B project name


@dataclass
class RetainConfig:
    """What this stage keeps of the previous one (its model.pt is init_from): its head, its test, its protection."""

    method: str = "none"  # none | ewc | si | lwf | replay: protects the previous stage's task (on top of optim.method)
    keep_head: bool = False  # carry the previous stage's head, frozen, and test its task before and after this stage
    previous_data: str | None = None  # the previous stage's packed dataset; null: the one its model.pt names
    record: bool = False  # write fisher.pt and si.pt beside model.pt: what ewc / si in the next stage need
    fisher_samples: int | None = 1024  # train clips (unaugmented) the Fisher averages over; null: the whole split
    ewc_lambda: float = 1000.0  # EWC: (lambda / 2) sum F (theta - theta*)^2
    si_c: float = 1.0  # SI: c sum Omega (theta - theta*)^2
    si_xi: float = 1e-3  # SI: damping of Omega = omega / ((theta_end - theta_start)^2 + xi)
    lwf_lambda: float = 1.0  # LwF: weight of the distillation loss on the previous head
    lwf_temperature: float = 2.0  # LwF: softmax temperature of the distillation
    replay_size: int = 1300  # replay: clips of the previous train split in the fixed coreset
    replay_share: float = 0.25  # replay: the share of every training micro-batch that is coreset clips


@dataclass
class Config:
    """One training stage."""

    stage: str = MISSING  # stage name: the run folder's parent (cochl, tau, standard_ft, ...)
    protocol: str = "project"  # project (held-out validation) | reference (configs/protocol/reference/<stage>.yaml)
    init_from: str | None = None  # weights to start from: AudioSet PaSST checkpoint or an earlier stage's model.pt
    reinit_heads: bool = True  # fresh classifier heads even if the class count matches (the SIT stage rule)
    head_init: str = "trunc_normal"  # new heads: trunc_normal (head.0 kept) | torch_default (fresh LayerNorm + Linear)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    retain: RetainConfig = field(default_factory=RetainConfig)


def available_stages(configs: Path = CONFIGS) -> list[str]:
    return sorted(p.stem for p in configs.glob("*.yaml"))


def load_config(stage: str, overrides: list[str] = (), *, demo: bool = False, configs: Path = CONFIGS) -> Config:
    """Merge the layers for `stage` and return the typed config (not yet validated against files).

    `protocol=<name>` among the overrides selects a preset: `configs/protocol/<name>/<stage>.yaml`, merged
    after the stage (and demo) layers and before the other overrides, which still win."""
    layers = [configs / f"{stage}.yaml"]
    if not layers[0].is_file():
        raise ConfigError(f"no config for stage {stage!r} ({layers[0]}); stages: {', '.join(available_stages(configs))}")
    if demo:
        layers.append(configs / "demo" / f"{stage}.yaml")
        if not layers[1].is_file():
            raise ConfigError(f"--demo has no settings for stage {stage!r} ({layers[1]})")
    protocol = last_override(overrides, "protocol")
    if protocol is not None and protocol != "project":
        _choice("protocol", protocol, PROTOCOLS)
        preset = configs / "protocol" / protocol / f"{stage}.yaml"
        if not preset.is_file():
            raise ConfigError(f"protocol={protocol} has no preset for stage {stage!r} ({preset})")
        layers.append(preset)
    return merge_layers(Config, layers, {"stage": stage}, overrides, example="train.epochs=5")


def resolve_precision(cfg: Config, device_type: str) -> None:
    """The `auto` settings follow the device, so that one config trains fast on a laptop and on a GPU machine:
    train.precision=auto becomes bf16 on CUDA and fp32 on the CPU (where bf16 autocast is emulated, and slower than
    fp32); model.compile=auto compiles on CUDA (benchmarks/gpu.py's compiled rows measure what it gains) and not on
    the CPU (where compiling costs more than it saves on a demo's minutes).  The run's saved config.yaml holds what was chosen."""
    if cfg.train.precision == "auto":
        cfg.train.precision = "bf16" if device_type == "cuda" else "fp32"
    cfg.model.compile = str(cfg.model.compile).lower()
    if cfg.model.compile == "auto":
        cfg.model.compile = "true" if device_type == "cuda" else "false"


def gradient_accumulation(cfg: Config, world_size: int) -> int:
    per_step = cfg.train.micro_batch * world_size
    if cfg.train.global_batch % per_step:
        raise ConfigError(f"train.global_batch={cfg.train.global_batch} is not a multiple of train.micro_batch="
                          f"{cfg.train.micro_batch} x {world_size} rank(s); change train.micro_batch or "
                          "train.global_batch")
    return cfg.train.global_batch // per_step


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")


def validate(cfg: Config, world_size: int) -> dict:
    """Check everything that can be checked before any GPU work; returns the dataset's manifest."""
    _choice("optim.method", cfg.optim.method, METHODS)
    _choice("data.backend", cfg.data.backend, BACKENDS)
    _choice("model.name", cfg.model.name, MODELS)
    _choice("model.attention", cfg.model.attention, ("sdpa", "plain"))
    _choice("model.compile", str(cfg.model.compile).lower(), ("auto", "true", "false"))
    _choice("train.precision", cfg.train.precision, ("bf16", "fp32", "auto"))
    _choice("train.zero_stage", cfg.train.zero_stage, (0, 1, 2))
    _choice("train.device", cfg.train.device, ("auto", "cuda", "cpu"))
    _choice("train.select_metric", cfg.train.select_metric, SELECT_METRICS)
    _choice("run.resume", cfg.run.resume, ("auto", "never"))
    _choice("protocol", cfg.protocol, PROTOCOLS)
    _choice("head_init", cfg.head_init, HEAD_INITS)
    _choice("model.long_clips", cfg.model.long_clips, LONG_CLIPS)
    for key, value in (("train.epochs", cfg.train.epochs), ("train.micro_batch", cfg.train.micro_batch),
                       ("train.eval_batch", cfg.train.eval_batch), ("train.global_batch", cfg.train.global_batch),
                       ("run.keep_checkpoints", cfg.run.keep_checkpoints), ("run.log_every", cfg.run.log_every)):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if cfg.optim.lr <= 0 or cfg.optim.head_lr <= 0:
        raise ConfigError("optim.lr and optim.head_lr must be positive")
    if not 0 <= cfg.augment.dir_prob <= 1 or not 0 <= cfg.augment.mixstyle_p <= 1:
        raise ConfigError("augment.dir_prob and augment.mixstyle_p are probabilities in [0, 1]")
    if cfg.run.profile_steps < 0:
        raise ConfigError(f"run.profile_steps must be >= 0 (0: no profile), got {cfg.run.profile_steps}")
    if cfg.data.num_workers is not None and cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0 (or null for one per CPU), got {cfg.data.num_workers}")
    accumulation = gradient_accumulation(cfg, world_size)
    if cfg.init_from and not Path(cfg.init_from).is_file():
        raise ConfigError(f"init_from={cfg.init_from}: no such file; give the AudioSet PaSST checkpoint "
                          "(passt-s-f128-p16-s10-ap.476-swa.pt) or an earlier stage's runs/<stage>/<run>/model.pt, "
                          "or init_from=null to start from random weights")
    if cfg.augment.dir_prob > 0 and not (cfg.augment.dir_folder and Path(cfg.augment.dir_folder).is_dir()):
        raise ConfigError(f"augment.dir_prob={cfg.augment.dir_prob} needs augment.dir_folder (the MicIRP impulse "
                          f"responses), got {cfg.augment.dir_folder!r}; or set augment.dir_prob=0")
    # The dataset's own checks (data layer), worded with the config keys to change.
    folder, key = cfg.data.folder, "data.train_split"
    try:
        manifest = open_dataset(folder)
        for key, split, training in (("data.train_split", cfg.data.train_split, True),
                                     ("data.val_split", cfg.data.val_split, False),
                                     ("data.test_split", cfg.data.test_split, False)):
            if split is None:
                continue
            check_request(folder, manifest, split, training=training, clip_seconds=cfg.data.clip_seconds,
                          dir_prob=cfg.augment.dir_prob if training else 0.0)
    except DatasetError as exc:
        if exc.setting == "shards":
            raise ConfigError(f"data.root={cfg.data.root}, data.dataset={cfg.data.dataset}: {exc.problem} "
                              "(or try the built-in demo: --demo)") from None
        raise ConfigError(exc.named({"split": key, "clip_seconds": "data.clip_seconds",
                                     "dir_prob": "augment.dir_prob"}[exc.setting])) from None
    _check_lists(cfg, manifest)
    _check_retain(cfg)
    samples = manifest["splits"][cfg.data.train_split]["num_samples"]
    try:
        plan = plan_epoch(samples, stage_clips(cfg), world_size=world_size, training=True, accumulation=accumulation)
    except ValueError:
        raise ConfigError(f"data.train_split={cfg.data.train_split!r} has {samples} samples: less than one step of "
                          f"train.global_batch={cfg.train.global_batch} on {world_size} rank(s); lower "
                          "train.global_batch") from None
    if cfg.run.profile_steps and cfg.run.log_every + cfg.run.profile_steps > plan.steps:
        raise ConfigError(f"run.profile_steps={cfg.run.profile_steps} profiles steps {cfg.run.log_every + 1}-"
                          f"{cfg.run.log_every + cfg.run.profile_steps} (after the first run.log_every="
                          f"{cfg.run.log_every}), but the first epoch has {plan.steps} step(s) on {world_size} "
                          "rank(s); lower run.profile_steps or run.log_every")
    return manifest


def _check_lists(cfg: Config, manifest: dict) -> None:
    """The training list against the validation hold-out made at pack time (manifest `val_removed` / `val_overlap`)."""
    train = manifest["splits"][cfg.data.train_split]
    if cfg.data.whole_lists and train.get("val_removed", 0):
        raise ConfigError(f"data.whole_lists=true, but {train['val_removed']} clip(s) of the recordings held out as "
                          f"'val' were taken out of data.train_split={cfg.data.train_split!r} when "
                          f"{cfg.data.folder} was packed; pack it again with --val-fraction ... --keep-lists-whole "
                          "(or without --val-fraction), or set data.whole_lists=false")
    if cfg.data.val_split == "val" and cfg.data.train_split != "val" and train.get("val_overlap", 0):
        raise ConfigError(f"data.train_split={cfg.data.train_split!r} shares {train['val_overlap']} clip(s) with "
                          f"data.val_split='val' ({cfg.data.folder} was packed with --keep-lists-whole): selecting "
                          "on it would select on training data; set data.val_split=null (keep the last epoch) or "
                          "use a dataset packed without --keep-lists-whole")


def replay_clips(cfg: Config) -> int:
    """Coreset clips in every training micro-batch (retain.method=replay), else 0."""
    if cfg.retain.method != "replay":
        return 0
    return int(round(cfg.train.micro_batch * cfg.retain.replay_share))


def stage_clips(cfg: Config) -> int:
    """This stage's own clips in every training micro-batch (the loader's batch size)."""
    return cfg.train.micro_batch - replay_clips(cfg)


def _check_retain(cfg: Config) -> None:
    """retain.*: the method, its numbers, and the previous stage it needs (`retain.previous.open_previous`)."""
    r = cfg.retain
    _choice("retain.method", r.method, RETAIN_METHODS)
    if r.method in ("lwf", "replay") and not r.keep_head:
        raise ConfigError(f"retain.method={r.method} trains through the previous stage's head: set "
                          "retain.keep_head=true")
    for key, value in (("retain.ewc_lambda", r.ewc_lambda), ("retain.si_c", r.si_c), ("retain.lwf_lambda",
                       r.lwf_lambda)):
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    for key, value in (("retain.si_xi", r.si_xi), ("retain.lwf_temperature", r.lwf_temperature)):
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if r.replay_size < 1 or (r.fisher_samples is not None and r.fisher_samples < 1):
        raise ConfigError("retain.replay_size and retain.fisher_samples must be at least 1 (fisher_samples: or null)")
    if r.method == "replay":
        k = cfg.train.micro_batch * r.replay_share
        if not 0 < r.replay_share < 1 or abs(k - round(k)) > 1e-9 or not 1 <= round(k) < cfg.train.micro_batch:
            raise ConfigError(f"retain.replay_share={r.replay_share} of train.micro_batch={cfg.train.micro_batch} "
                              f"is {k:g} clips: it must be a whole number between 1 and micro_batch - 1; change "
                              "retain.replay_share or train.micro_batch")
        if cfg.data.clip_seconds is None:
            raise ConfigError("retain.method=replay crops the coreset clips to data.clip_seconds: set it")
    from .retain.previous import needs_previous, open_previous  # imports the model code: only when it is needed

    if needs_previous(cfg):
        open_previous(cfg)


def selection(cfg: Config) -> dict:
    """What the kept model is chosen on, as summary.json records it."""
    split = cfg.data.val_split
    return {"split": split, "metric": cfg.train.select_metric if split else None,
            "kept": "best epoch" if split else "last epoch",
            "on_test": split is not None and split == cfg.data.test_split}


def deepspeed_config(cfg: Config, world_size: int) -> dict:
    """The DeepSpeed JSON, generated from the config.

    bf16 is torch autocast over fp32 master weights and Adam state.  It must be declared in the
    `torch_autocast` section: without it DeepSpeed switches autocast *off* inside its engine on CUDA
    (measured on an H100: 752 vs 2086 samples/s).  `lower_precision_safe_modules: []` keeps the
    gradient all-reduce in fp32 (DeepSpeed's default would reduce Linear / Conv gradients in bf16).
    The throughput timer is off: it synchronises the device twice per micro-step; so is ZeRO 1/2's
    gradient norm when nothing clips with it (its finiteness check reads the norm on the host every step).
    """
    ds = {
        "train_batch_size": cfg.train.global_batch,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch,
        "gradient_accumulation_steps": gradient_accumulation(cfg, world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "steps_per_print": 2**31 - 1,  # the trainer logs loss, per-group lr and throughput itself
        "wall_clock_breakdown": False,
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
    }
    if cfg.train.zero_stage in (1, 2) and cfg.optim.grad_clip == 0:
        ds["zero_optimization"]["compute_grad_norm"] = False
    if cfg.train.precision == "bf16":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    return ds
