"""PaSST: checkpoint keys and shapes, loading every checkpoint flavour, tokens, patchout, clip lengths."""
from __future__ import annotations

import pytest
import torch

from trainer.model.frontend import FrontendConfig, MelFrontend
from trainer.model.passt import (PaSST, PaSSTConfig, count_parameters, flops_per_sample, load_pretrained,
                                 passt_micro, passt_mini, passt_s)


def _reference_table(n: int) -> dict[str, tuple[int, ...]]:
    """The official checkpoint's keys and shapes (reference/passt.md)."""
    t = {"cls_token": (1, 1, 768), "dist_token": (1, 1, 768), "new_pos_embed": (1, 2, 768),
         "freq_new_pos_embed": (1, 768, 12, 1), "time_new_pos_embed": (1, 768, 1, 99),
         "patch_embed.proj.weight": (768, 1, 16, 16), "patch_embed.proj.bias": (768,),
         "norm.weight": (768,), "norm.bias": (768,), "head.0.weight": (768,), "head.0.bias": (768,),
         "head.1.weight": (n, 768), "head.1.bias": (n,), "head_dist.weight": (n, 768), "head_dist.bias": (n,)}
    for i in range(12):
        b = f"blocks.{i}."
        t.update({b + "norm1.weight": (768,), b + "norm1.bias": (768,), b + "norm2.weight": (768,),
                  b + "norm2.bias": (768,), b + "attn.qkv.weight": (2304, 768), b + "attn.qkv.bias": (2304,),
                  b + "attn.proj.weight": (768, 768), b + "attn.proj.bias": (768,),
                  b + "mlp.fc1.weight": (3072, 768), b + "mlp.fc1.bias": (3072,),
                  b + "mlp.fc2.weight": (768, 3072), b + "mlp.fc2.bias": (768,)})
    return t


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A PaSST-S state dict saved exactly as the official checkpoint is (a bare state dict)."""
    torch.manual_seed(0)
    model = passt_s().eval()
    path = tmp_path_factory.mktemp("ckpt") / "passt-s-f128-p16-s10-ap.476-swa.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, 128, frames, generator=torch.Generator().manual_seed(seed))


def test_passt_s_has_the_official_keys_shapes_and_size(official):
    model, _ = official
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == _reference_table(527)
    assert count_parameters(model) == 86_153_758
    assert count_parameters(passt_s(10)) == 85_358_612


def test_official_state_dict_loads_strictly_and_reproduces_outputs(official):
    model, path = official
    fresh = load_pretrained(passt_s().eval(), path)
    mel = _mel(2, 138)
    with torch.no_grad():
        torch.testing.assert_close(fresh(mel)[0], model(mel)[0], rtol=0, atol=0)


def test_other_class_count_keeps_backbone_and_head_norm_and_makes_new_heads(official):
    model, path = official
    ten = load_pretrained(passt_s(10), path)
    own, ref = ten.state_dict(), model.state_dict()
    for key in ref:
        if key.startswith(("head.1", "head_dist")):
            assert own[key].shape[0] == 10
        else:
            torch.testing.assert_close(own[key], ref[key], rtol=0, atol=0)
    assert torch.all(own["head.1.bias"] == 0) and 0.01 < own["head.1.weight"].std() < 0.03


def test_lightning_prefixes_are_stripped_and_swa_weights_preferred(tmp_path):
    torch.manual_seed(1)
    net, swa = passt_micro(), passt_micro()
    ckpt = {"epoch": 3, "state_dict": {**{f"net.{k}": v for k, v in net.state_dict().items()},
                                       **{f"net_swa.{k}": v for k, v in swa.state_dict().items()},
                                       "mel.window": torch.ones(800)}}
    torch.save(ckpt, tmp_path / "lightning.ckpt")
    loaded = load_pretrained(passt_micro(), tmp_path / "lightning.ckpt")
    torch.testing.assert_close(loaded.state_dict(), swa.state_dict())
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "ddp.pt")
    torch.testing.assert_close(load_pretrained(passt_micro(), tmp_path / "ddp.pt").state_dict(), net.state_dict())


def test_own_model_pt_loads(tmp_path):
    model = passt_micro(10)
    torch.save({"state_dict": model.state_dict(), "classes": [str(i) for i in range(10)],
                "config": {"model": "passt_micro"}}, tmp_path / "model.pt")
    torch.testing.assert_close(load_pretrained(passt_micro(10), tmp_path / "model.pt").state_dict(),
                               model.state_dict())


def test_mismatches_name_the_keys_and_shapes(tmp_path):
    torch.save(passt_micro().state_dict(), tmp_path / "micro.pt")
    with pytest.raises(ValueError, match=r"patch_embed.proj.weight: checkpoint \(32, 1, 16, 16\) vs model \(128, 1, 16, 16\)"):
        load_pretrained(passt_mini(), tmp_path / "micro.pt")
    state = passt_micro().state_dict()
    del state["norm.weight"]
    state["extra.thing"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="missing from checkpoint: norm.weight.*not in the model: extra.thing"):
        load_pretrained(passt_micro(), tmp_path / "broken.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_pretrained(passt_micro(), tmp_path / "list.pt")


def test_eval_is_deterministic_and_batch_independent():
    model = passt_micro(s_patchout_f=6, s_patchout_t=3).eval()
    mel = _mel(4, 138)
    with torch.no_grad():
        full = model(mel)[0]
        torch.testing.assert_close(model(mel)[0], full, rtol=0, atol=0)
        singles = torch.cat([model(mel[i:i + 1])[0] for i in range(4)])
    torch.testing.assert_close(singles, full, rtol=1e-5, atol=1e-6)


def test_patchout_drops_whole_rows_and_columns_only_in_training():
    torch.manual_seed(0)
    model = passt_micro(s_patchout_f=6)
    with torch.no_grad():
        model.time_new_pos_embed.zero_()  # so training and eval place patches identically
        mel = _mel(3, 138)
        model.eval()
        full = model.tokens(mel)
        assert full.shape[1] == 12 * 13 + 2 == 158
        model.train()
        kept = model.tokens(mel)
    assert kept.shape[1] == 6 * 13 + 2 == 80
    grid = full[:, 2:].reshape(3, 12, 13, -1)
    rows = [f for f in range(12) if torch.equal(grid[0, f], kept[0, 2:15])]
    assert len(rows) == 1
    picked = [f for f in range(12) for j in range(6) if torch.equal(grid[:, f], kept[:, 2 + 13 * j:15 + 13 * j])]
    assert len(picked) == 6 and picked == sorted(picked), "the same 6 rows for every sample, f-major"
    model.config = PaSSTConfig(**{**model.config.__dict__, "s_patchout_f": 0, "s_patchout_t": 4})
    with torch.no_grad():
        assert model.tokens(mel).shape[1] == 12 * 9 + 2


def test_training_tokens_are_the_convolution_of_the_kept_patches_with_their_positions():
    """PatchEmbed embeds only the patches patchout keeps, as a GEMM over unfolded patches: the tokens equal the
    checkpoint's Conv2d over the whole spectrogram plus the positions, cut to the same draws afterwards."""
    model = passt_micro(s_patchout_f=6, s_patchout_t=3).train()
    mel = _mel(3, 138)
    for seed in range(3):
        torch.manual_seed(seed)
        with torch.no_grad():
            tokens = model.tokens(mel)
        torch.manual_seed(seed)  # the model's draws, in its order: time slice, kept columns, kept rows
        start = int(torch.randint(0, 99 - 13 + 1, ()))
        columns = torch.randperm(13)[:10].sort().values
        rows = torch.randperm(12)[:6].sort().values
        with torch.no_grad():
            grid = (torch.nn.functional.conv2d(mel, model.patch_embed.proj.weight, model.patch_embed.proj.bias,
                                               stride=10)
                    + model.time_new_pos_embed[..., start:start + 13] + model.freq_new_pos_embed)
        expected = grid[:, :, rows][:, :, :, columns].flatten(2).transpose(1, 2)
        assert tokens.shape == (3, 2 + 6 * 10, 32)
        torch.testing.assert_close(tokens[:, 2:], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"expects mel spectrograms \[batch, 1, n_mels, frames\], got \(3, 2, 128"):
        model.tokens(mel.expand(3, 2, 128, 138))


def test_eval_matches_hear21passt_given_the_same_weights(capsys):
    """The reference implementation (hear21passt's PaSST: timm blocks, a Conv2d patch embedding) on our weights."""
    from hear21passt.models.passt import PaSST as Reference

    torch.manual_seed(0)
    ours = passt_micro(10, s_patchout_f=6).eval()
    reference = Reference(img_size=(128, 998), patch_size=16, stride=(10, 10), in_chans=1, num_classes=10,
                          distilled=True, s_patchout_t=0, s_patchout_f=6, embed_dim=32, depth=2, num_heads=2).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    for frames in (138, 100, 998):
        mel = _mel(2, frames, seed=frames)
        with torch.no_grad():
            for got, want in zip(ours(mel), reference(mel)):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    capsys.readouterr()  # the reference prints its shapes on its first call


def test_short_clips_use_a_random_time_slice_in_training_and_the_first_in_eval():
    model = passt_micro()
    with torch.no_grad():
        for p in (model.patch_embed.proj.weight, model.patch_embed.proj.bias, model.freq_new_pos_embed):
            p.zero_()
        model.time_new_pos_embed.copy_(torch.arange(99.0).view(1, 1, 1, 99).expand_as(model.time_new_pos_embed))
        mel = _mel(1, 138)
        model.eval()
        first = model.tokens(mel)[0, 2:15, 0]
        assert first.tolist() == list(range(13))
        model.train()
        starts = {int(model.tokens(mel)[0, 2, 0]) for _ in range(30)}
    assert len(starts) > 3 and min(starts) >= 0 and max(starts) <= 99 - 13


@pytest.mark.parametrize("rate,seconds,patches", [(32000, 1, 9), (44100, 1, 13), (32000, 10, 99), (44100, 10, 137)])
def test_clip_lengths_at_both_rates_run(rate, seconds, patches):
    frontend = MelFrontend(FrontendConfig(rate)).eval()
    mel = frontend(torch.randn(2, rate * seconds) * 0.1)
    model = passt_micro(10, s_patchout_f=6)
    assert model.config.time_patches(mel.shape[-1]) == patches
    model.train()
    logits, _ = model(mel)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    model.eval()
    with torch.no_grad():
        assert model(mel)[0].shape == (2, 10)


def test_long_inputs_are_windowed_in_eval_and_cropped_in_training():
    model = passt_micro(10).eval()
    mel = _mel(2, 1379)  # 10 s at 44.1 kHz: 137 time patches
    w = model.config.window_frames
    assert w == 996 and model.config.time_patches(w) == 99
    with pytest.raises(ValueError, match="exceed the time embedding"):
        model.forward_features(mel)
    with torch.no_grad():
        expected = (model(mel[..., 0:w])[0] + model(mel[..., 1379 - w:])[0]) / 2
        torch.testing.assert_close(model(mel)[0], expected)
        longer = _mel(1, 2500)
        starts = [0, 490, 980, 1470, 2500 - w]
        expected = torch.stack([model(longer[..., s:s + w])[0] for s in starts]).mean(0)
        torch.testing.assert_close(model(longer)[0], expected)
    model.train()
    seen = []
    model.forward_features = lambda x: seen.append(x.shape[-1]) or torch.zeros(x.shape[0], 32)
    model(mel)
    assert seen == [w]


def test_bad_mel_height_is_a_clear_error():
    with pytest.raises(ValueError, match="n_mels=128"):
        passt_micro().eval()(torch.randn(1, 1, 64, 100))


def test_sdpa_equals_plain_attention_and_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    a = passt_micro(10)
    b = passt_micro(10, attention="plain", checkpoint_activations=True)
    b.load_state_dict(a.state_dict())
    mel = _mel(2, 138)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(mel)[0], b(mel)[0], rtol=1e-5, atol=1e-5)
    a.train(), b.train()
    torch.manual_seed(5)
    a(mel)[0].sum().backward()
    torch.manual_seed(5)
    b(mel)[0].sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_runs_and_reinit_heads_keeps_head_norm():
    model = passt_micro(527)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model.eval()(_mel(2, 138))
    assert torch.isfinite(logits.float()).all()
    norm = model.head[0].weight.clone()
    model.reinit_heads(13)
    assert model.num_classes == 13 and model.head[1].out_features == 13 and model.head_dist.out_features == 13
    torch.testing.assert_close(model.head[0].weight, norm)
    assert isinstance(model, PaSST)


def test_flop_count_matches_the_reference_table():
    cfg = PaSSTConfig(s_patchout_f=6)
    assert flops_per_sample(cfg, 138, training=False) / 2 == pytest.approx(13.9e9, rel=0.01)
    assert flops_per_sample(cfg, 100, training=False) / 2 == pytest.approx(9.6e9, rel=0.01)
    assert flops_per_sample(cfg, 998, training=False) / 2 == pytest.approx(127.4e9, rel=0.01)
    assert flops_per_sample(cfg, 138, training=True) < flops_per_sample(cfg, 138, training=False) / 1.9


def test_first_long_clip_policy_keeps_the_first_99_patches_in_training_and_eval():
    model = passt_micro(10, long_clips="first").eval()
    mel = _mel(2, 1379)  # 137 time patches
    w = model.config.window_frames
    with torch.no_grad():
        torch.testing.assert_close(model(mel)[0], model.forward_head(model.forward_features(mel[..., :w])))
        windows = passt_micro(10).eval()
        windows.load_state_dict(model.state_dict())
        assert not torch.allclose(windows(mel)[0], model(mel)[0])  # the averaged windows differ
    model.train()
    seen = []
    model.forward_features = lambda x: seen.append(x.clone()) or torch.zeros(x.shape[0], 32)
    for _ in range(3):
        model(mel)
    assert all(torch.equal(x, mel[..., :w]) for x in seen)  # never a random crop


def test_torch_default_head_init_is_a_fresh_norm_and_pytorch_linear(tmp_path):
    model = passt_micro(527)
    torch.nn.init.normal_(model.head[0].weight)  # a trained head norm, as the CochlScene stage leaves it
    model.reinit_heads(10, "torch_default")
    norm, linear = model.head
    assert torch.equal(norm.weight, torch.ones(32)) and torch.equal(norm.bias, torch.zeros(32))
    bound = 1 / 32 ** 0.5  # nn.Linear's default: Kaiming-uniform(a=sqrt 5) weight, uniform bias, both +-1/sqrt(fan_in)
    for p in (linear.weight, linear.bias):
        assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound
    assert linear.weight.std() > 0.08  # uniform(+-0.177) has std 0.102; trunc-normal(0.02) would be ~0.02
    assert model.head_dist.out_features == 10 == model.num_classes
    with pytest.raises(ValueError, match="head init must be one of trunc_normal, torch_default"):
        model.reinit_heads(10, "xavier")
    # from a checkpoint with another class count, head.0 is fresh too (the default keeps the trained one)
    trained = passt_micro(13)
    torch.nn.init.normal_(trained.head[0].weight)
    torch.save(trained.state_dict(), tmp_path / "cochl.pt")
    fresh = load_pretrained(passt_micro(10), tmp_path / "cochl.pt", head_init="torch_default")
    assert torch.equal(fresh.head[0].weight, torch.ones(32)) and fresh.head[1].bias.abs().max() > 0
    torch.testing.assert_close(fresh.blocks[0].attn.qkv.weight, trained.blocks[0].attn.qkv.weight)
    kept = load_pretrained(passt_micro(10), tmp_path / "cochl.pt")
    torch.testing.assert_close(kept.head[0].weight, trained.head[0].weight)
