"""Layer presets, explicit names, token modes, and the taps that capture them."""

import pytest
import timm
import torch

from vitstudy.anatomy.blocks import block_names
from vitstudy.errors import VitstudyError
from vitstudy.pipeline.layers import Layer, features, resolve
from vitstudy.pipeline.taps import tap


def names(model, spec, size=(3, 32, 32)):
    return [l.name for l in resolve(model, spec, size)]


def test_vit_blocks_and_dense_set(tiny_vit):
    assert names(tiny_vit, "blocks") == ["blocks.0", "blocks.1", "blocks.2"]
    dense = names(tiny_vit, "all")
    assert dense[:7] == [
        "patch_embed",
        "blocks.0.norm1",
        "blocks.0.attn",
        "blocks.0.norm2:in",
        "blocks.0.norm2",
        "blocks.0.mlp.act",
        "blocks.0",
    ]
    assert dense[-1] == "norm" and len(dense) == 1 + 3 * 6 + 1


def test_resnet_blocks_and_dense_set(tiny_resnet):
    assert names(tiny_resnet, "blocks") == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    dense = names(tiny_resnet, "all")
    assert dense[:3] == ["conv1", "act1", "layer1.0.conv1"]
    # act2 returns the very tensor the block returns, so only the block name is kept
    assert "layer1.0.act2" not in dense and "layer1.0" in dense


def test_swin_blocks_are_nested_and_windowed_attention_is_skipped():
    swin = timm.create_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1)).eval()
    assert block_names(swin) == [f"layers.{s}.blocks.0" for s in range(4)]
    dense = names(swin, "all", (3, 224, 224))
    assert "layers.0.blocks.0.attn" not in dense  # (B * windows, 49, C): not one row per image
    with pytest.raises(VitstudyError, match="leading dimension"):
        resolve(swin, ["layers.0.blocks.0.attn"], (3, 224, 224))


def test_explicit_list_keeps_the_requested_order(tiny_vit):
    assert names(tiny_vit, ["blocks.2", "blocks.0.norm2:in", "blocks.0"]) == [
        "blocks.2",
        "blocks.0.norm2:in",
        "blocks.0",
    ]


def test_regex_selects_in_forward_order(tiny_vit):
    assert names(tiny_vit, r"blocks\.\d+\.mlp\.act") == [f"blocks.{i}.mlp.act" for i in range(3)]


def test_unknown_layer_names_the_closest_matches(tiny_vit):
    with pytest.raises(VitstudyError, match="closest: blocks.1"):
        resolve(tiny_vit, ["blocks.1x"], (3, 32, 32))


def test_residual_stream_after_attention_is_captured(tiny_vit, images):
    """`blocks.0.norm2:in` must equal x + attn(norm1(x)) computed by hand from the block's parts."""
    blk = tiny_vit.blocks[0]
    layers = resolve(tiny_vit, ["blocks.0.norm2:in", "blocks.1"], (3, 32, 32))
    got = {}
    with torch.inference_mode():
        x_in = {}
        h = blk.register_forward_pre_hook(lambda m, a: x_in.setdefault("x", a[0].clone()))
        with tap(tiny_vit, layers, lambda layer, t: got.__setitem__(layer.name, t.clone())):
            tiny_vit(images[:4])
        h.remove()
        want = x_in["x"] + blk.attn(blk.norm1(x_in["x"]))
        after = tiny_vit.blocks[1](tiny_vit.blocks[0](x_in["x"]))
    torch.testing.assert_close(got["blocks.0.norm2:in"], want)
    torch.testing.assert_close(got["blocks.1"], after)
    assert not tiny_vit._forward_hooks and not blk._forward_pre_hooks  # hooks removed


def test_token_modes(tiny_vit):
    x = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)  # CLS + a 4x4 grid of 8-px patches
    layer = Layer(name="blocks.0", module="blocks.0", is_input=False, shape=(17, 3), layout="NLC")
    assert features(x, layer, "flatten", tiny_vit).shape == (2, 51)
    torch.testing.assert_close(features(x, layer, "cls", tiny_vit), x[:, 0])
    torch.testing.assert_close(features(x, layer, "mean", tiny_vit), x[:, 1:].mean(1))
    patches = x[:, 1:]  # the patch embedding's output: no CLS token yet
    embed = Layer(name="patch_embed", module="patch_embed", is_input=False, shape=(16, 3), layout="NLC")
    torch.testing.assert_close(features(patches, embed, "mean", tiny_vit), patches.mean(1))
    gap = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, class_token=False, global_pool="avg"
    )
    with pytest.raises(VitstudyError, match="no CLS token"):
        features(patches, layer, "cls", gap)
    fmap = torch.randn(2, 4, 3, 3)
    conv = Layer(name="c", module="c", is_input=False, shape=(4, 3, 3), layout="NCHW")
    torch.testing.assert_close(features(fmap, conv, "mean", tiny_vit), fmap.mean((2, 3)))
    x = x[:, :5]
    with pytest.raises(VitstudyError, match="token mode"):
        features(x, layer, "avg", tiny_vit)


def test_pit_class_token_is_a_prefix_token():
    """PiT has a CLS token but no num_prefix_tokens: token modes, grids and probes must still leave it out."""
    from vitstudy.anatomy import tokens

    pit = timm.create_model("pit_ti_224", img_size=64).eval()
    assert tokens.prefix_tokens(pit) == 1 and tokens.has_cls(pit)
    block = resolve(pit, ["transformers.0.blocks.0"], (3, 64, 64))[0]
    assert tokens.token_grid(pit, block) == (7, 7, 1)  # 64 px, patch 16 stride 8: a 7x7 grid plus the CLS token
    x = torch.randn(2, 50, 8)
    torch.testing.assert_close(features(x, block, "mean", pit), x[:, 1:].mean(1))
    torch.testing.assert_close(features(x, block, "cls", pit), x[:, 0])
