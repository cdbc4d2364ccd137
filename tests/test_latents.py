"""The `latents` preset (Park & Kim's residual stream after every sublayer) and its kinds, per family."""

import pytest
import timm
import torch
from torch import nn

from vitstudy.anatomy import latents
from vitstudy.errors import VitstudyError
from vitstudy.pipeline.layers import PRESETS, resolve
from vitstudy.pipeline.taps import tap


def described(model, size):
    return latents.describe(model, resolve(model, "latents", (3, size, size)))


def capture(model, layers, x):
    out = {}
    with torch.no_grad(), tap(model, layers, lambda layer, t: out.__setitem__(layer.name, t.clone())):
        model(x)
    return out


def test_preset_is_registered():
    assert PRESETS["latents"] is latents.latent_names  # layers=latents


def test_vit_latents_are_the_residual_stream_after_each_sublayer(tiny_vit, images):
    lats = described(tiny_vit, 32)
    assert [l.name for l in lats] == ["blocks.0:in"] + [
        n for i in range(3) for n in (f"blocks.{i}.norm2:in", f"blocks.{i}")
    ]
    assert [l.kind for l in lats] == ["embedding"] + ["attention", "mlp"] * 3
    assert [l.depth for l in lats] == pytest.approx([i / 6 for i in range(7)])
    assert all(l.grid == (4, 4) and l.prefix == 1 and l.channels == 192 for l in lats)
    x = images[:4]
    got = capture(tiny_vit, [l.layer for l in lats], x)
    with torch.no_grad():  # by hand, as Park & Kim's PatchEmbed + Residual(norm1, attn) + Residual(norm2, mlp)
        m = tiny_vit
        z = torch.cat([m.cls_token.expand(4, -1, -1), m.patch_embed(x)], dim=1) + m.pos_embed
        expected = [z]
        for b in m.blocks:
            z = z + b.attn(b.norm1(z))
            expected.append(z)
            z = z + b.mlp(b.norm2(z))
            expected.append(z)
    for lat, e in zip(lats, expected):
        torch.testing.assert_close(got[lat.name], e, rtol=1e-5, atol=1e-5)
    # tokens -> maps: CLS dropped, row-major grid (einops 'b (h w) c -> b c h w')
    maps = latents.to_maps(got["blocks.1"], lats[4])
    torch.testing.assert_close(maps[:, :, 2, 3], got["blocks.1"][:, 1 + 2 * 4 + 3, :])


def test_resnet_latents_are_stem_then_units_with_downsampling(tiny_resnet, images):
    lats = described(tiny_resnet, 64)
    assert [l.name for l in lats] == ["layer1.0:in"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert [l.kind for l in lats] == [
        "embedding",
        "conv",
        "conv",
        "downsampling",
        "conv",
        "downsampling",
        "conv",
        "downsampling",
        "conv",
    ]
    x = torch.nn.functional.interpolate(images[:2], size=64)
    got = capture(tiny_resnet, [lats[0].layer], x)
    m = tiny_resnet
    with torch.no_grad():
        torch.testing.assert_close(got["layer1.0:in"], m.maxpool(m.act1(m.bn1(m.conv1(x)))))


def test_resnet50_downsampling_indices_match_the_paper():
    """Park & Kim shade ResNet-50 latents 4, 8 and 14 blue (Fig. 8)."""
    lats = described(timm.create_model("resnet50").eval(), 64)
    assert len(lats) == 17
    assert [l.index for l in lats if l.kind == "downsampling"] == [4, 8, 14]


def test_swin_convnext_pit_deit_resnetv2_kinds():
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=32,
        window_size=2,
        depths=(1, 1, 2, 1),
        embed_dim=16,
        num_heads=(1, 1, 2, 2),
    ).eval()
    lats = described(swin, 32)
    assert [l.kind for l in lats] == ["embedding", "attention", "mlp"] + ["downsampling", "attention", "mlp"] + [
        "downsampling",
        "attention",
        "mlp",
        "attention",
        "mlp",
    ] + ["downsampling", "attention", "mlp"]
    assert lats[3].name == "layers.1.downsample" and lats[1].layer.layout == "NLC" and lats[2].layer.layout == "NHWC"
    assert [l.grid for l in lats[:4]] == [(8, 8), (8, 8), (8, 8), (4, 4)]

    cnx = described(timm.create_model("convnext_atto").eval(), 64)
    assert [l.name for l in cnx][:4] == [
        "stages.0.blocks.0:in",
        "stages.0.blocks.0",
        "stages.0.blocks.1",
        "stages.1.downsample",
    ]
    assert {l.kind for l in cnx} == {"embedding", "conv", "downsampling"}

    pit = described(timm.create_model("pit_ti_224", img_size=64).eval(), 64)
    assert pit[5].name == "transformers.1.blocks.0:in" and pit[5].kind == "downsampling" and pit[5].prefix == 1
    assert [l.grid for l in (pit[0], pit[5], pit[-1])] == [(7, 7), (4, 4), (2, 2)]

    deit = described(
        timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=1).eval(), 32
    )
    assert [l.prefix for l in deit] == [2, 2, 2] and deit[0].grid == (4, 4)

    v2 = described(timm.create_model("resnetv2_50", layers=[1, 1, 1, 1]).eval(), 64)
    assert [l.kind for l in v2] == ["embedding", "conv", "downsampling", "downsampling", "downsampling"]


def test_model_without_blocks_is_a_clear_error():
    with pytest.raises(VitstudyError, match="no residual blocks"):
        resolve(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), "latents", (3, 8, 8))


def test_parallel_blocks_are_refused():
    vit = timm.create_model(
        "vit_small_patch16_18x2_224", img_size=32, patch_size=16, depth=1, embed_dim=32, num_heads=1
    )
    with pytest.raises(VitstudyError, match="no residual stream between its attention and MLP"):
        latents.latent_names(vit)


def test_vector_layers_are_not_feature_maps(tiny_vit):
    with pytest.raises(VitstudyError, match="without spatial positions"):
        latents.describe(tiny_vit, resolve(tiny_vit, ["head"], (3, 32, 32)))


def _unblock(t: torch.Tensor, b: int) -> torch.Tensor:
    """Explicit un-blocking, written out here: token n = (u, v) of block k = (i, j) on a g x g grid of b x b blocks is
    position (i * b + u, j * b + v) of the (B, H, W, C) map (NesT, Zhang et al. 2022, Fig. 1)."""
    B, T, N, C = t.shape
    g = int(round(T**0.5))
    out = torch.full((B, g * b, g * b, C), float("nan"))
    for k in range(T):
        i, j = divmod(k, g)
        for n in range(N):
            u, v = divmod(n, b)
            out[:, i * b + u, j * b + v] = t[:, k, n]
    return out


def test_nest_latents_are_the_unblocked_spatial_maps():
    """NesT's blocks see (B, blocks, tokens per block, C); its latents are the (H, W) maps those blocks were cut from:
    the explicit un-blocking of the raw tensors, and the last one of each level is the level's own output map."""
    from timm.models.nest import Nest

    torch.manual_seed(0)
    model = Nest(
        img_size=32, patch_size=2, embed_dims=(16, 32, 32), num_heads=(1, 2, 2), depths=(1, 1, 1), num_classes=10
    ).eval()
    lats = described(model, 32)
    assert [l.grid for l in lats] == [(16, 16)] * 3 + [(8, 8)] * 2 + [
        (4, 4)
    ] * 2  # 16 px / patch 2; pooled x2 per level
    assert all(l.layer.layout == "NHWC" and l.layer.blocks == 4 for l in lats)
    x = torch.randn(2, 3, 32, 32)
    got = capture(model, [l.layer for l in lats], x)
    mods = dict(model.named_modules())
    raw, hooks = {}, []
    for l in lats:
        if l.layer.is_input:
            hooks.append(
                mods[l.layer.module].register_forward_pre_hook(
                    lambda m, a, _n=l.name: raw.__setitem__(_n, a[0].clone())
                )
            )
        else:
            hooks.append(
                mods[l.layer.module].register_forward_hook(lambda m, a, o, _n=l.name: raw.__setitem__(_n, o.clone()))
            )
    hooks += [
        mods[f"levels.{i}"].register_forward_hook(lambda m, a, o, _i=i: raw.__setitem__(_i, o.clone()))
        for i in range(3)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for l in lats:
        assert raw[l.name].dim() == 4 and raw[l.name].shape[2] == 16  # (B, T, N = 4 x 4, C): blocked
        torch.testing.assert_close(got[l.name], _unblock(raw[l.name], 4), rtol=0, atol=0)
    for i, last in enumerate(
        ["levels.0.transformer_encoder.0", "levels.1.transformer_encoder.0", "levels.2.transformer_encoder.0"]
    ):
        lat = next(l for l in lats if l.name == last)
        torch.testing.assert_close(latents.to_maps(got[last], lat), raw[i], rtol=0, atol=0)  # (B, C, H, W)
