"""PaSST: the Patchout faSt Spectrogram Transformer (Koutini et al., 2021), checkpoint-compatible.

State-dict keys and shapes are those of the official AudioSet checkpoint
(`passt-s-f128-p16-s10-ap.476-swa.pt`), so it, Lightning fine-tunes (`net.` / `net_swa.` prefixes)
and this project's exported `model.pt` all load through `load_pretrained`.

Clip length is handled on purpose.  The time positional embedding has `max_time_patches` (99)
positions, 10 s at 32 kHz:
- fewer time patches (1-s clips: 9 at 32 kHz, 13 at 44.1 kHz): training uses a random contiguous
  slice of the time embedding, evaluation the first positions (as the reference does);
- more time patches (10-s clips at 44.1 kHz give 137), `long_clips="windows"` (ours): training takes
  a random crop of `window_frames` mel frames (exactly 99 patches); evaluation slides windows of that
  size with a hop of `window_hop_frames` (half a window, on the patch grid, the last window flush
  with the end) and averages their logits.  `long_clips="first"` is the reference's behaviour: the
  first 99 patches (~7.2 s at 44.1 kHz) in training and evaluation, the rest of the clip unused.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


HEAD_INITS = ("trunc_normal", "torch_default")
LONG_CLIPS = ("windows", "first")


@dataclass(frozen=True)
class PaSSTConfig:
    """Architecture and training-time behaviour of a PaSST model."""

    num_classes: int = 527  # output units of head and head_dist
    embed_dim: int = 768  # token width
    depth: int = 12  # transformer blocks
    num_heads: int = 12  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden width / embed_dim
    patch_size: int = 16  # square patch side in mel bins and frames
    patch_stride: int = 10  # patch stride in both directions (overlapping patches)
    n_mels: int = 128  # mel bins of the input (12 frequency patches)
    max_frames: int = 998  # frames the time embedding was sized for (99 time patches)
    s_patchout_t: int = 0  # time columns of the patch grid dropped per batch in training
    s_patchout_f: int = 0  # frequency rows dropped per batch in training
    attention: str = "sdpa"  # "sdpa" (flash / memory-efficient kernels) or "plain" (explicit softmax)
    checkpoint_activations: bool = False  # recompute block activations in backward to save memory
    long_clips: str = "windows"  # inputs past 99 time patches: "windows" (random crop / averaged windows) | "first"

    @property
    def freq_patches(self) -> int:
        return (self.n_mels - self.patch_size) // self.patch_stride + 1

    @property
    def max_time_patches(self) -> int:
        return (self.max_frames - self.patch_size) // self.patch_stride + 1

    @property
    def window_frames(self) -> int:
        """Frames that give exactly `max_time_patches` patches: the crop / window length for long clips."""
        return (self.max_time_patches - 1) * self.patch_stride + self.patch_size

    @property
    def window_hop_frames(self) -> int:
        """Hop between evaluation windows: half the patches, so windows share the patch grid."""
        return max(1, self.max_time_patches // 2) * self.patch_stride

    def time_patches(self, frames: int) -> int:
        return (frames - self.patch_size) // self.patch_stride + 1


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, kind: str):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if kind not in ("sdpa", "plain"):
            raise ValueError(f"attention must be 'sdpa' or 'plain', not {kind!r}")
        self.num_heads = num_heads
        self.kind = kind
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.kind == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * (d // self.num_heads) ** -0.5) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (DeiT), LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attention: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Overlapping square mel patches -> token embeddings, [B, 1, n_mels, frames] -> [B, F, T, D] (f-major grid).

    The weights are a Conv2d's (the checkpoint's keys and shapes, its initialisation), applied as one GEMM over
    the unfolded patches: patchout picks its rows and columns of the grid before the GEMM, so the patches it drops
    are never embedded, and the tokens come out in token order with no transposing copy.
    """

    def __init__(self, patch: int, stride: int, dim: int):
        super().__init__()
        self.patch, self.stride = patch, stride
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=stride)

    def forward(self, mel: torch.Tensor, rows: torch.Tensor | None = None,
                columns: torch.Tensor | None = None) -> torch.Tensor:
        """`rows` / `columns`: the frequency / time patches to embed (all when None)."""
        patches = mel.unfold(2, self.patch, self.stride).unfold(3, self.patch, self.stride)  # [B, 1, F, T, P, P]
        if columns is not None:
            patches = patches.index_select(3, columns)
        if rows is not None:
            patches = patches.index_select(2, rows)
        return F.linear(patches.flatten(-2).squeeze(1), self.proj.weight.flatten(1), self.proj.bias)


class PaSST(nn.Module):
    """PaSST with cls + dist tokens, separate frequency / time positional embeddings and patchout."""

    def __init__(self, config: PaSSTConfig = PaSSTConfig()):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.patch_stride, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, d))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, d, config.freq_patches, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, d, 1, config.max_time_patches))
        self.blocks = nn.ModuleList(Block(d, config.num_heads, config.mlp_ratio, config.attention)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.num_classes))
        self.head_dist = nn.Linear(d, config.num_classes)  # in the checkpoint; unused in forward
        self._init_weights()

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.dist_token, self.new_pos_embed, self.freq_new_pos_embed,
                  self.time_new_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reinit_heads(self, num_classes: int, init: str = "trunc_normal") -> None:
        """New classifier heads for `num_classes`.

        `trunc_normal` (ours): new `head.1` / `head_dist` drawn from trunc-normal(0.02) with zero bias, the
        trained `head.0` LayerNorm kept.  `torch_default` (the SIT author's stage-2 scripts): the whole `head`
        replaced by a fresh `Sequential(LayerNorm, Linear)` with PyTorch's default init (unit / zero norm,
        Kaiming-uniform weight, uniform bias).  `head_dist` never reaches the logits (forward uses `head` only);
        the reference leaves the old one in place, we give it the new class count with the same init as
        `head.1` so that model.pt has one class count.
        """
        if init not in HEAD_INITS:
            raise ValueError(f"head init must be one of {', '.join(HEAD_INITS)}, not {init!r}")
        d = self.config.embed_dim
        ref = self.head[0].weight
        self.head[1] = nn.Linear(d, num_classes, device=ref.device, dtype=ref.dtype)
        self.head_dist = nn.Linear(d, num_classes, device=ref.device, dtype=ref.dtype)
        if init == "torch_default":
            self.head[0] = nn.LayerNorm(d, device=ref.device, dtype=ref.dtype)
        else:
            for m in (self.head[1], self.head_dist):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.config = replace(self.config, num_classes=num_classes)

    def tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """Patch, position and (in training) patch out: [B, 1, F, T] -> [B, 2 + kept patches, D]."""
        c = self.config
        if mel.dim() != 4 or mel.shape[1] != 1:
            raise ValueError(f"PaSST expects mel spectrograms [batch, 1, n_mels, frames], got {tuple(mel.shape)}")
        fp, tp = (mel.shape[-2] - c.patch_size) // c.patch_stride + 1, c.time_patches(mel.shape[-1])
        if fp != c.freq_patches:
            raise ValueError(f"input has {mel.shape[-2]} mel bins ({fp} frequency patches); "
                             f"the model expects n_mels={c.n_mels}")
        if tp > c.max_time_patches:
            raise ValueError(f"{tp} time patches exceed the time embedding ({c.max_time_patches}); "
                             "call forward(), which crops or windows long inputs")
        device = mel.device
        times = torch.arange(tp, device=device)  # the time embedding's positions of the grid's columns
        if tp < c.max_time_patches and self.training:
            # a random contiguous slice, chosen on the device: no host sync, no graph break under torch.compile
            times = times + torch.randint(0, c.max_time_patches - tp + 1, (), device=device)
        columns = rows = None
        if self.training and c.s_patchout_t:
            columns = torch.randperm(tp, device=device)[:max(0, tp - c.s_patchout_t)].sort().values
            times = times.index_select(0, columns)
        if self.training and c.s_patchout_f:
            rows = torch.randperm(fp, device=device)[:max(0, fp - c.s_patchout_f)].sort().values
        x = self.patch_embed(mel, rows, columns)  # [B, F', T', D], only the kept patches
        freq_pos = self.freq_new_pos_embed if rows is None else self.freq_new_pos_embed.index_select(2, rows)
        pos = (self.time_new_pos_embed.index_select(3, times) + freq_pos).permute(0, 2, 3, 1)  # [1, F', T', D]
        x = (x + pos).flatten(1, 2)  # f-major: token index f * T' + t
        special = torch.cat([self.cls_token, self.dist_token], dim=1) + self.new_pos_embed
        return torch.cat([special.expand(x.shape[0], -1, -1), x], dim=1)

    def forward_features(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, 1, F, T] (at most `max_time_patches`) -> pooled features (cls + dist) / 2, [B, D]."""
        x = self.tokens(mel)
        for block in self.blocks:
            if self.config.checkpoint_activations and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x)
        return (x[:, 0] + x[:, 1]) / 2

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and features for [B, 1, F, T] of any length (long inputs cropped / windowed)."""
        frames = mel.shape[-1]
        if self.config.time_patches(frames) <= self.config.max_time_patches:
            features = self.forward_features(mel)
            return self.forward_head(features), features
        window = self.config.window_frames
        if self.config.long_clips == "first":
            features = self.forward_features(mel[..., :window])
            return self.forward_head(features), features
        if self.training:
            start = torch.randint(0, frames - window + 1, (), device=mel.device)
            features = self.forward_features(mel.index_select(-1, start + torch.arange(window, device=mel.device)))
            return self.forward_head(features), features
        starts = list(range(0, frames - window + 1, self.config.window_hop_frames))
        if starts[-1] != frames - window:
            starts.append(frames - window)
        # forward_features, not self(): a module call would run the hooks a wrapper (DeepSpeed's engine) put on this
        # module once per window, and inside a compiled forward it would trace them (a graph break)
        features = torch.stack([self.forward_features(mel[..., s:s + window]) for s in starts])
        return torch.stack([self.forward_head(f) for f in features]).mean(0), features.mean(0)


def _build(defaults: dict, num_classes: int, overrides: dict) -> PaSST:
    return PaSST(PaSSTConfig(**{**defaults, "num_classes": num_classes, **overrides}))


def passt_s(num_classes: int = 527, **overrides) -> PaSST:
    """PaSST-S (ViT-B/DeiT-B: 768 wide, 12 blocks, 12 heads): the AudioSet checkpoint's architecture."""
    return _build({}, num_classes, overrides)


def passt_tiny(num_classes: int = 527, **overrides) -> PaSST:
    """DeiT-Tiny shape (192 wide, 12 blocks, 3 heads): quick GPU experiments."""
    return _build({"embed_dim": 192, "depth": 12, "num_heads": 3}, num_classes, overrides)


def passt_mini(num_classes: int = 527, **overrides) -> PaSST:
    """128 wide, 4 blocks, 4 heads: trains the demo on a CPU in minutes."""
    return _build({"embed_dim": 128, "depth": 4, "num_heads": 4}, num_classes, overrides)


def passt_micro(num_classes: int = 527, **overrides) -> PaSST:
    """32 wide, 2 blocks, 2 heads: unit tests."""
    return _build({"embed_dim": 32, "depth": 2, "num_heads": 2}, num_classes, overrides)


MODELS = {"passt_s": passt_s, "passt_tiny": passt_tiny, "passt_mini": passt_mini, "passt_micro": passt_micro}


def create_model(name: str, num_classes: int, **overrides) -> PaSST:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes, **overrides)


# --- checkpoints -------------------------------------------------------------------------------

_WRAPPER_PREFIXES = ("net_swa.", "net.")  # Lightning PaSST modules: SWA weights preferred
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP / torch.compile / generic wrappers
_HEAD_KEYS = ("head.1.weight", "head.1.bias", "head_dist.weight", "head_dist.bias")


def filter_state_dict(state: dict) -> dict:
    """Reduce any supported checkpoint to bare PaSST keys.

    Accepts the official state dict, this project's `model.pt` (`{"state_dict", "classes", "config"}`)
    and Lightning checkpoints (`{"state_dict": {"net.*", "net_swa.*", "mel.*", ...}}`).
    """
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    for prefix in _WRAPPER_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    out = {}
    for key, value in state.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_pretrained(model: PaSST, path: str | Path, *, head_init: str = "trunc_normal") -> PaSST:
    """Load weights from `path` into `model` (in place; also returned).

    With the checkpoint's class count everything loads strictly.  With another class count the
    classifier (`head.1.*`, `head_dist.*`) is dropped and re-initialised (`PaSST.reinit_heads` with `head_init`).
    Any other missing, unexpected or mis-shaped key is an error naming the keys and shapes.
    """
    try:
        raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a state dict or a checkpoint dict, found {type(raw).__name__}")
    state = filter_state_dict(raw)
    new_heads = "head.1.weight" in state and state["head.1.weight"].shape[0] != model.num_classes
    fresh = _HEAD_KEYS + (("head.0.weight", "head.0.bias") if head_init == "torch_default" else ())
    if new_heads:
        state = {k: v for k, v in state.items() if k not in fresh}
        model.reinit_heads(model.num_classes, head_init)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (new_heads and k in fresh)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:10]))
        if missing:
            parts.append("missing from checkpoint: " + ", ".join(missing[:10]))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected[:10]))
        raise ValueError(f"{path} does not fit {type(model).__name__}({model.config.embed_dim} wide, "
                         f"depth {model.config.depth}): " + " | ".join(parts))
    model.load_state_dict(state, strict=False)
    return model


def flops_per_sample(config: PaSSTConfig, frames: int, training: bool) -> float:
    """Forward FLOPs (2 x multiply-adds) of one sample, counted from the layer shapes.

    Patch embedding and blocks over the patches left after patchout (training: `PatchEmbed` embeds only those)
    or all (evaluation); the classifier head.  Softmax, norms and GELU are not counted.
    """
    c = config
    fp, tp = c.freq_patches, min(c.time_patches(frames), c.max_time_patches)
    if training:
        fp, tp = max(0, fp - c.s_patchout_f), max(0, tp - c.s_patchout_t)
    n, d, h = fp * tp + 2, c.embed_dim, int(c.embed_dim * c.mlp_ratio)
    macs = fp * tp * d * c.patch_size ** 2
    macs += c.depth * (n * 3 * d * d + 2 * n * n * d + n * d * d + 2 * n * d * h)
    macs += d * c.num_classes
    return 2.0 * macs


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
