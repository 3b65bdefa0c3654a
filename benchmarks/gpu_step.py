"""The model step of `gpu.py` and its levers: one function builds the trainer's step (front-end, MixStyle, PaSST,
loss, backward, fused Adam) on a batch already on the device, eager or with one lever applied, so that each lever
is a row that can be judged alone against the same step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.config import load_config
from trainer.data.augment import FreqMixStyle, WaveAugment
from trainer.model.frontend import PRESETS, MelFrontend
from trainer.model.passt import create_model

KINDS = {  # build_step's `kind` -> the row's name
    False: "eager", True: "compiled",
    "whole": "compiled waveform to loss",  # front-end, MixStyle, patchout, PaSST and the loss as one function
    "whole, no pattern matcher": "compiled waveform to loss, no pattern matcher",  # inductor's passes off
    "cuda graphs": "compiled, CUDA graphs (reduce-overhead)",
    "fp8": "compiled, FP8 MLP Linears (torchao float8)",  # the fc1 / fc2 of every block; the rest bf16
    "max-autotune": "compiled, max-autotune (no CUDA graphs)",  # inductor benchmarks GEMM / kernel configs
    "liger": "eager, Liger LayerNorm",  # every nn.LayerNorm as Liger's Triton kernel: a library's fused norm
    "augmented": "eager, + TAU waveform augmentation",  # the trainer's roll and impulse responses before the step
    "conv patch embed": "eager, patch embedding as a Conv2d over every patch",  # the A/B of PatchEmbed's GEMM
}
# engine_step's `lean` -> the row's engine: as the trainer runs one rank, and with DeepSpeed's default
ENGINES = {True: "DeepSpeed engine ZeRO 0", False: "DeepSpeed engine ZeRO 0, one-rank all-reduce kept"}
COMPILED = (True, "whole", "whole, no pattern matcher", "cuda graphs", "fp8", "max-autotune")  # kinds that compile
MICIRP = dict(responses=66, seconds=0.25)  # the MicIRP set's count; a typical response length


def swap_norms(model: torch.nn.Module, make) -> int:
    """Replace every nn.LayerNorm of `model` by `make(norm)` holding the same weights; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.LayerNorm):
                new = make(child).to(child.weight.device)
                new.load_state_dict(child.state_dict())
                setattr(parent, name, new)
                swapped += 1
    return swapped


def liger_norm(norm: torch.nn.LayerNorm) -> torch.nn.Module:
    from liger_kernel.transformers import LigerLayerNorm

    return LigerLayerNorm(norm.normalized_shape[0], eps=norm.eps, bias=True)


def liger_unavailable(device: torch.device) -> str | None:
    """Why the Liger row cannot run here (None: it can)."""
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return "liger-kernel is not installed (pip install liger-kernel; stage its wheel on a lent machine)"
    if device.type != "cuda":
        return "Liger's Triton kernels need a CUDA device"
    return None


def fp8_unavailable(device: torch.device) -> str | None:
    """Why the FP8 row cannot run here (None: it can)."""
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "torchao is not installed (pip install torchao; stage its wheel on a lent machine)"
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return "float8 matmuls need a CUDA device of compute capability >= 8.9 (Ada, Hopper or newer)"
    return None


def build_step(device: torch.device, model_name: str, seconds: float, batch: int, kind: bool | str):
    """Front-end + MixStyle + PaSST + loss + backward + fused Adam, as the trainer's step, on a batch on the device;
    (step, mel frames per clip).  kind: a key of KINDS (True: PaSST's forward, as the trainer compiles it)."""
    frontend, mixstyle, model, optimizer, wave, label = step_parts(device, model_name, seconds, batch)
    if kind == "fp8":
        from torchao.float8 import convert_to_float8_training

        convert_to_float8_training(model, module_filter_fn=lambda module, fqn: ".mlp." in f".{fqn}."
                                   and isinstance(module, torch.nn.Linear))
    if kind == "liger":
        swap_norms(model, liger_norm)
    if kind == "conv patch embed":
        model.tokens = conv_tokens(model)
    if kind in (True, "cuda graphs", "fp8", "max-autotune"):
        mode = {"cuda graphs": "reduce-overhead", "max-autotune": "max-autotune-no-cudagraphs"}.get(kind)
        model.compile(fullgraph=True, dynamic=False, mode=mode)

    augment = (lambda audio: audio) if kind != "augmented" else tau_augment(device, batch, frontend.config.sample_rate)

    def loss():
        mel = mixstyle(frontend(augment(wave)))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, _ = model(mel)
        return F.cross_entropy(logits.float(), label)

    if kind in ("whole", "whole, no pattern matcher"):  # not fullgraph: MixStyle's draw may break the graph
        loss = torch.compile(loss, dynamic=False, options={"pattern_matcher": kind == "whole"})

    def step():
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, frontend.frames(wave.shape[1])


def conv_tokens(model: torch.nn.Module):
    """`model.tokens` as the reference computes them: the patch embedding's Conv2d over every patch, positions
    added to the whole grid, then patchout's rows and columns gathered from it (copies of the embedded grid).
    The draws are the model's, in its order, so the tokens equal `PatchEmbed`'s, which embeds only the kept
    patches: the A/B of that lever."""
    c = model.config

    def tokens(mel: torch.Tensor) -> torch.Tensor:
        x = model.patch_embed.proj(mel)
        _, _, fp, tp = x.shape
        times = torch.arange(tp, device=x.device)
        if tp < c.max_time_patches and model.training:
            times = times + torch.randint(0, c.max_time_patches - tp + 1, (), device=x.device)
        x = x + model.time_new_pos_embed.index_select(3, times) + model.freq_new_pos_embed
        if model.training and c.s_patchout_t:
            x = x[:, :, :, torch.randperm(tp, device=x.device)[:max(0, tp - c.s_patchout_t)].sort().values]
        if model.training and c.s_patchout_f:
            x = x[:, :, torch.randperm(fp, device=x.device)[:max(0, fp - c.s_patchout_f)].sort().values]
        x = x.flatten(2).transpose(1, 2)
        special = torch.cat([model.cls_token, model.dist_token], dim=1) + model.new_pos_embed
        return torch.cat([special.expand(x.shape[0], -1, -1), x], dim=1)

    return tokens


def tau_augment_module(device: torch.device, rate: int) -> WaveAugment:
    """The TAU stage's waveform augmentation (`WaveAugment` with configs/tau.yaml's roll, impulse-response
    probability and gain) on synthetic decaying responses of MicIRP's count."""
    a = load_config("tau").augment
    n = int(MICIRP["seconds"] * rate)
    responses = torch.randn(MICIRP["responses"], n) * torch.exp(-torch.arange(n) / (0.05 * rate))
    return WaveAugment(roll=a.roll, dir_prob=a.dir_prob, impulse_responses=responses,
                       gain_db=a.gain_db).to(device).train()


def tau_augment(device: torch.device, batch: int, rate: int):
    """`tau_augment_module` on a batch whose devices are drawn as TAU's six training devices (`a` first)."""
    module = tau_augment_module(device, rate)
    devices = torch.randint(6, (batch,), device=device)
    return lambda audio: module(audio, devices)


def step_parts(device: torch.device, model_name: str, seconds: float, batch: int):
    """A training step's pieces, seeded: front-end, MixStyle, PaSST, fused Adam, and a batch on the device."""
    torch.manual_seed(0)
    preset = PRESETS["sit44k"]
    frontend = MelFrontend(preset).to(device).train()
    mixstyle = FreqMixStyle(0.4, 0.4).train()
    model = create_model(model_name, 10, s_patchout_f=6).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-3, fused=True)
    wave = torch.randn(batch, int(seconds * preset.sample_rate), device=device) * 0.1
    label = torch.randint(10, (batch,), device=device)
    return frontend, mixstyle, model, optimizer, wave, label
