"""Configuration: layers, overrides, validation messages that name the key, the generated DeepSpeed JSON."""
from __future__ import annotations

import json
import shutil

import pytest

from trainer.config import ConfigError, deepspeed_config, load_config, selection, validate
from trainer.model.frontend import FrontendConfig

from .helpers import train_overrides


def test_stage_yaml_holds_the_recipe():
    cfg = load_config("cochl")
    assert (cfg.optim.method, cfg.optim.lr, cfg.optim.head_lr, cfg.optim.weight_decay) == ("sit", 1e-4, 1e-3, 1e-3)
    assert (cfg.schedule.warm_up_len, cfg.schedule.ramp_down_len, cfg.schedule.ramp_down_start,
            cfg.schedule.last_lr_value) == (3, 10, 3, 0.01)
    assert (cfg.train.global_batch, cfg.train.epochs, cfg.model.s_patchout_f, cfg.model.s_patchout_t) == (256, 25, 6, 0)
    assert (cfg.augment.mixstyle_p, cfg.augment.mixstyle_alpha) == (0.4, 0.4)
    assert isinstance(cfg.frontend, FrontendConfig) and cfg.frontend.sample_rate == 44100
    tau = load_config("tau")
    assert (tau.data.dataset, tau.augment.dir_prob, tau.data.clip_seconds) == ("tau22", 0.6, 1.0)
    assert load_config("standard_ft").optim.method == "standard_ft"


def test_layers_and_overrides():
    demo = load_config("cochl", ["train.epochs=2", "optim.betas=[0.8,0.9]"], demo=True)
    assert (demo.model.name, demo.data.root, demo.init_from) == ("passt_mini", "data/demo/shards", None)
    assert demo.train.epochs == 2 and demo.optim.betas == [0.8, 0.9]
    assert demo.data.dataset == "cochlscene"  # from configs/cochl.yaml, untouched by the overlay


@pytest.mark.parametrize("stage", ["cochl", "tau", "standard_ft"])
def test_the_demo_takes_bf16_on_a_gpu_and_fp32_on_a_cpu(stage):
    from trainer.config import resolve_precision

    for device, precision, compiled in (("cuda", "bf16", "true"), ("cpu", "fp32", "false")):
        cfg = load_config(stage, demo=True)
        assert (cfg.train.precision, cfg.model.compile) == ("auto", "auto")
        resolve_precision(cfg, device)
        assert (cfg.train.precision, cfg.model.compile) == (precision, compiled)  # compiled on CUDA only
        assert ("torch_autocast" in deepspeed_config(cfg, 1)) == (precision == "bf16")
    explicit = load_config(stage, ["train.precision=fp32", "model.compile=false"], demo=True)
    resolve_precision(explicit, "cuda")
    assert (explicit.train.precision, explicit.model.compile) == ("fp32", "false")  # stated settings are kept


@pytest.mark.parametrize("override,message", [
    ("train.epochz=3", "'train.epochz'"),
    ("train.epochs=three", "'train.epochs'"),
    ("nonsense=1", "'nonsense'"),
    ("train.epochs", "key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cochl", [override])


def test_unknown_stage_lists_the_stages():
    with pytest.raises(ConfigError, match="stages: .*cochl.*tau"):
        load_config("cochlear")


@pytest.mark.parametrize("override,world,message", [
    ("train.micro_batch=48", 2, r"train.global_batch=8 is not a multiple of train.micro_batch=48 x 2"),
    ("train.micro_batch=3", 1, r"train.global_batch=8 is not a multiple of train.micro_batch=3 x 1"),
    ("optim.method=slow", 1, r"optim.method='slow' is not one of sit, seq_ft, standard_ft"),
    ("train.zero_stage=3", 1, r"train.zero_stage=3 is not one of 0, 1, 2"),
    ("train.precision=fp8", 1, r"train.precision='fp8' is not one of bf16, fp32, auto"),  # not offered: unmeasured
    ("head_init=xavier", 1, r"head_init='xavier' is not one of trunc_normal, torch_default"),
    ("model.long_clips=last", 1, r"model.long_clips='last' is not one of windows, first"),
    ("data.train_split=split7", 1, r"data.train_split='split7': .* has splits train, val, test"),
    ("data.val_split=valid", 1, r"data.val_split='valid': .* has splits train, val, test"),
    ("data.clip_seconds=null", 1, r"data.clip_seconds=None: training needs a fixed clip length"),
    ("init_from=/nowhere/model.pt", 1, r"init_from=/nowhere/model.pt: no such file"),
    ("augment.dir_prob=0.6", 1, r"augment.dir_prob=0.6 needs augment.dir_folder"),
    ("data.dataset=cochl", 1, r"data.root=.*, data.dataset=cochl: no packed dataset at .*cochl; pack it with"),
    ("train.global_batch=64", 1, r"has 26 samples: less than one step of train.global_batch=64 on 1 rank"),
    ("train.global_batch=32", 2, r"has 26 samples: less than one step of train.global_batch=32 on 2 rank"),
])
def test_bad_configs_fail_before_any_work(trainable, tmp_path, override, world, message):
    cfg = load_config("cochl", train_overrides(trainable, tmp_path, "x") + [override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg, world)


def test_dir_needs_device_a(trainable, demo_root, tmp_path):
    cfg = load_config("cochl", train_overrides(trainable, tmp_path, "x") + [
        "augment.dir_prob=0.5", f"augment.dir_folder={demo_root['impulse_responses']}"])
    with pytest.raises(ConfigError, match="augment.dir_prob=0.5: .*cochlscene has no device-a clips"):
        validate(cfg, 1)


def test_deepspeed_json_is_generated_from_the_config(trainable, tmp_path):
    cfg = load_config("cochl", train_overrides(trainable, tmp_path, "x") + ["train.zero_stage=2", "optim.grad_clip=1.5"])
    manifest = validate(cfg, 2)
    assert manifest["classes"][0] == "Bus"
    ds = deepspeed_config(cfg, 2)
    assert ds["train_batch_size"] == 8 == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2
    assert ds["zero_optimization"] == {"stage": 2} and ds["gradient_clipping"] == 1.5
    assert "bf16" not in ds and "fp16" not in ds  # mixed precision is torch autocast over fp32 weights
    assert "torch_autocast" not in ds  # the test overrides ask for fp32
    assert ds["timers"]["throughput"]["enabled"] is False  # it would synchronise the device every micro-step
    bf16 = deepspeed_config(load_config("cochl", train_overrides(trainable, tmp_path, "x") + [
        "train.precision=bf16", "train.zero_stage=1"]), 2)
    assert bf16["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert bf16["zero_optimization"] == {"stage": 1, "compute_grad_norm": False}  # nothing clips: no norm to read


@pytest.mark.parametrize("override,message", [("run.log_every=0", "run.log_every must be at least 1"),
                                              ("data.num_workers=-1", "data.num_workers must be >= 0"),
                                              ("model.compile=sometimes",
                                               "model.compile='sometimes' is not one of auto, true, false"),
                                              ("run.profile_steps=-1", "run.profile_steps must be >= 0"),
                                              ("run.profile_steps=2", r"run.profile_steps=2 profiles steps 3-4 \(after "
                                               r"the first run.log_every=2\), but the first epoch has 3 step\(s\) on 1 "
                                               r"rank\(s\); lower run.profile_steps or run.log_every")])
def test_loop_settings_are_checked(trainable, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config("cochl", train_overrides(trainable, tmp_path, "x") + [override]), 1)


def test_launcher_reports_config_errors(trainable, tmp_path):
    from .helpers import TRAIN, run_command
    import sys

    done = run_command([sys.executable, str(TRAIN), "--stage", "cochl", "train.epochz=3"])
    assert done.returncode == 2 and "train.epochz" in done.stderr
    done = run_command([sys.executable, str(TRAIN), "--stage", "cochl", *train_overrides(trainable, tmp_path, "x"),
                        "data.dataset=missing"])
    assert done.returncode == 2 and "pack it with" in done.stderr and "--demo" in done.stderr


def test_shards_of_an_older_packer_stop_the_run_with_the_repack_command(trainable, tmp_path):
    from trainer.demo import _packed

    root = tmp_path / "shards"
    for name in ("cochlscene", "tau22", "tau22_whole"):
        shutil.copytree(trainable / name, root / name)
    assert _packed(root)
    manifest = json.loads((root / "cochlscene" / "manifest.json").read_text())
    del manifest["labels_extension"]
    (root / "cochlscene" / "manifest.json").write_text(json.dumps(manifest))
    cfg = load_config("cochl", train_overrides(root, tmp_path, "x"))
    with pytest.raises(ConfigError, match=r"data.dataset=cochlscene: .*labels_extension .*re-pack"):
        validate(cfg, 1)
    assert not _packed(root)  # --demo re-packs its own corpus instead of failing


def test_protocol_is_a_preset_between_the_stage_and_the_overrides():
    ref = load_config("tau", ["protocol=reference", "train.epochs=2"])
    assert (ref.protocol, ref.data.dataset, ref.data.whole_lists, ref.data.val_split) == ("reference", "tau22_whole",
                                                                                          True, "test")
    assert (ref.train.select_metric, ref.head_init, ref.model.long_clips) == ("log_loss", "torch_default", "first")
    assert selection(ref) == {"split": "test", "metric": "log_loss", "kept": "best epoch", "on_test": True}
    assert ref.train.epochs == 2 and ref.optim.lr == 1e-5  # the stage's recipe and the overrides still apply
    # an override after the preset wins over it; the project protocol is the stage file itself
    assert load_config("tau", ["protocol=reference", "train.select_metric=accuracy"]).train.select_metric == "accuracy"
    project = load_config("tau", ["protocol=project"])
    assert (project.data.dataset, project.data.val_split, project.head_init) == ("tau22", "val", "trunc_normal")
    assert selection(project)["on_test"] is False
    cochl = load_config("cochl", ["protocol=reference"])
    assert (cochl.data.val_split, cochl.train.select_metric, cochl.model.long_clips) == ("val", "log_loss", "first")
    assert selection(load_config("tau", ["data.val_split=null"]))["kept"] == "last epoch"
    with pytest.raises(ConfigError, match="protocol='paper' is not one of project, reference"):
        load_config("tau", ["protocol=paper"])


def test_split_lists_against_the_validation_hold_out(trainable, tmp_path):
    """tau22 was packed with the val recordings taken out of every list; tau22_whole keeps split* whole."""
    base = train_overrides(trainable, tmp_path, "x", dataset="tau22") + ["data.train_split=split50"]
    trimmed = json.loads((trainable / "tau22" / "manifest.json").read_text())["splits"]["split50"]
    whole = json.loads((trainable / "tau22_whole" / "manifest.json").read_text())["splits"]
    assert trimmed["val_removed"] > 0 and trimmed["val_overlap"] == 0
    assert whole["split50"]["val_removed"] == 0 and whole["split50"]["val_overlap"] == trimmed["val_removed"]
    assert whole["split50"]["num_samples"] == trimmed["num_samples"] + trimmed["val_removed"]
    assert whole["train"]["val_overlap"] == 0 and whole["test"]["val_overlap"] == 0  # only the lists stay whole
    validate(load_config("tau", base), 1)  # the project protocol on trimmed lists
    with pytest.raises(ConfigError, match=r"data.whole_lists=true, but \d+ clip\(s\) .* --keep-lists-whole"):
        validate(load_config("tau", base + ["data.whole_lists=true"]), 1)
    with pytest.raises(ConfigError, match=r"data.train_split='split50' shares \d+ clip\(s\) with data.val_split='val'"):
        validate(load_config("tau", base + ["data.dataset=tau22_whole"]), 1)
    for val in ("null", "test"):  # whole lists without selecting on training data
        validate(load_config("tau", base + ["data.dataset=tau22_whole", "data.whole_lists=true",
                                            f"data.val_split={val}"]), 1)
