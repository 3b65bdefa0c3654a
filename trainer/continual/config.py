"""Typed configuration of a continual-learning run: `configs/continual/<method>.yaml` + dotted overrides.

`python launch/continual.py method=<name> [key=value ...]`: `method` picks the YAML (the published
hyperparameters of that run), `n_iter` the iterations per task, `data.pickle` the published pickle
(otherwise the synthetic stand-in).  Unknown keys and wrong types are errors naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from ..configtools import ConfigError, merge_layers

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "continual"


@dataclass
class DataSettings:
    pickle: str | None = None  # audioset_data_balanced.pickle; null: the synthetic stand-in
    synthetic_seed: int = 0  # seed of the stand-in
    synthetic_codes: str = "vggish"  # vggish: the released codes' scale (~126 +- 60); small: the pre-2026-12 scale
    num_tasks: int = 10
    classes_per_task: int = 10
    split_seed: int = 42  # class permutation and validation split
    val_size: int = 500  # validation samples split off each task's train set (stratified)


@dataclass
class NetSettings:
    hidden: int = 32  # LSTM units
    multi_head: bool = True  # one 10-unit head per task (False: 10 shared outputs)
    task_identity: bool = False  # append the task one-hot to every input frame
    orthogonal_init: bool = False  # orthogonal init of the 4 gate blocks of W_hh
    orthogonal_reg: float = 0.0  # lambda of sum ||W W^T - I||^2 over the W_hh gate blocks; 0: off


@dataclass
class TrainSettings:
    batch_size: int = 64
    lr: float = 1e-4  # Adam lr (representation lr of the slow learner)
    weight_decay: float = 0.0  # Adam (coupled L2)
    clip_grad_norm: float = 0.0  # global norm clip; <= 0: off
    use_best_models: bool = False  # restore the best validation checkpoint of each task
    best_every: int = 250  # iterations between validation checks for use_best_models
    during_acc_criterion: float = 0.0  # stop the run if a task's during accuracy (%) falls below; 0: off
    seed: int = 0  # init and batch order
    device: str = "auto"  # auto | cuda | cpu
    threads: int = 0  # CPU threads of this process (torch.set_num_threads); 0: torch's default, all cores
    flush_denormals: bool = True  # CPU: denormal floats (from the saturated gates) count as 0: no slow path


@dataclass
class MethodSettings:
    ewc_lambda: float = 100.0  # online EWC penalty weight
    ewc_gamma: float = 1.0  # online EWC decay of the previous Fisher (applied once per task)
    si_lambda: float = 1.0  # SI penalty weight
    si_task_loss_only: bool = True  # SI path integral with the task-loss gradient only
    si_xi: float = 1e-3  # SI damping
    mask_fraction: float = 0.6  # fraction of hidden units masked per task
    coreset_size: int = 100  # train inputs kept per task
    replay_distill_reg: float = 10.0  # weight of the replay distillation loss
    distill_temperature: float = 2.0
    hnet_chunk_size: int = 2000  # weights per hypernetwork output chunk
    hnet_hidden: list[int] = field(default_factory=lambda: [10, 10])  # hypernetwork MLP hidden layers
    hnet_task_emb: int = 32  # task embedding size
    hnet_chunk_emb: int = 32  # chunk embedding size
    hnet_beta: float = 1.0  # output regulariser weight
    hnet_task_emb_std: float = 1.0
    hnet_chunk_emb_std: float = 0.1
    head_lr: float = 1e-3  # slow learner: the heads' lr


@dataclass
class ContinualConfig:
    run: str = MISSING  # the configs/continual/<run>.yaml this came from (the name in tables)
    method: str = MISSING  # finetune | from_scratch | multitask | ewc | si | masking | masking_si | coresets | hnet | slow_learner
    n_iter: int = 5000  # iterations per task (multitask: n_iter x num_tasks in all)
    data: DataSettings = field(default_factory=DataSettings)
    net: NetSettings = field(default_factory=NetSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    params: MethodSettings = field(default_factory=MethodSettings)
    out: str = "runs/continual"  # runs go to <out>/<method>/<name>/
    name: str | None = None  # run folder name; default: the start time


def load_continual_config(overrides: list[str], configs: Path = CONFIGS) -> ContinualConfig:
    """`method=<name>` (required) selects configs/continual/<name>.yaml; the other overrides apply on top."""
    if not all("=" in o for o in overrides) or not any(o.startswith("method=") for o in overrides):
        runs = ", ".join(sorted(p.stem for p in configs.glob("*.yaml")))
        raise ConfigError(f"arguments must be key=value, starting with method=<run> (one of {runs}); "
                          f"got: {' '.join(overrides) or 'nothing'}")
    run = next(o for o in overrides if o.startswith("method=")).split("=", 1)[1]
    path = configs / f"{run}.yaml"
    if not path.is_file():
        raise ConfigError(f"method={run}: no {path}; runs: {', '.join(sorted(p.stem for p in configs.glob('*.yaml')))}")
    cfg = merge_layers(ContinualConfig, [path], {"run": run}, [o for o in overrides if not o.startswith("method=")],
                       example="n_iter=100")
    for key, value in (("n_iter", cfg.n_iter), ("train.batch_size", cfg.train.batch_size),
                       ("net.hidden", cfg.net.hidden), ("data.num_tasks", cfg.data.num_tasks)):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if cfg.train.threads < 0:
        raise ConfigError(f"train.threads={cfg.train.threads} must be 0 (all cores) or a number of threads")
    if not 0 <= cfg.params.mask_fraction < 1:
        raise ConfigError(f"params.mask_fraction={cfg.params.mask_fraction} must be in [0, 1)")
    return cfg
