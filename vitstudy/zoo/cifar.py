"""CIFAR models for training from scratch, registered in timm's model registry (`timm.create_model`).

Park & Kim 2022 (README of xxxnell/how-do-vits-work; docs/methods.md#cifar-models) define their CIFAR models as:
ViT-Ti (img 32, patch 2, dim 192, depth 12, 3 heads, no qkv bias), PiT-Ti (patch 2, stride 1, dims 32,
depths 2-6-4, heads 2-4-8), Swin-Ti (patch 1, window 4, dim 96, depths 2-2-6-2, heads 3-6-12-24, no qkv
bias) and ResNet-50 with the CIFAR stem (3x3 conv, stride 1, no pooling). Here the ResNet-50 is timm's
pre-activation ResNetV2-50 (BatchNorm) with that stem. `vit_mini_cifar` and `resnet_mini_cifar` are
CPU-sized models of the same families for quick training.

Training variants, as extra keyword arguments of the ViT constructors:
- `remove_skip=[i, ...]`: blocks i run without their residual connections, x -> mlp(attn(x)) (Raghu et al.
  2021 Fig. 8 trains such a model); the module tree and state dict are unchanged.
- `global_pool='avg', class_token=False`: a GAP ViT without a CLS token (Raghu et al. Figs 10, 11).

Importing this module registers the models; `import vitstudy` imports it, so timm and `vitstudy run` find them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models import build_model_with_cfg, generate_default_cfgs, load_pretrained, register_model
from timm.models.pit import _create_pit
from timm.models.resnetv2 import ResNetV2
from timm.models.swin_transformer import _create_swin_transformer
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..errors import VitstudyError
from ..pipeline.preprocess import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD  # noqa: E402


def _cfg(num_classes: int, mean, std, **kwargs) -> dict:
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": mean,
        "std": std,
        "license": "none",
        **kwargs,
    }


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
WEIGHTS = Path(__file__).parent / "weights"  # the bundled demo models (make train-demo; scripts/package_demo.py)


def _demo(arch: str, **kwargs) -> dict:
    """The bundled CIFAR-10 weights as a timm pretrained tag: timm's own loader reads the packaged local `file`."""
    return _cfg(
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
        file=str(WEIGHTS / f"{arch}.demo_cifar10.safetensors"),
        license="mit",
        description="vitstudy train recipe=demo on CIFAR-10 (see docs/demo.md)",
        label_names=CIFAR10_CLASSES,
        **kwargs,
    )


default_cfgs = generate_default_cfgs(
    {  # an architecture's first tag is its default (timm's convention)
        "vit_mini_cifar.demo_cifar10": _demo("vit_mini_cifar", first_conv="patch_embed.proj", classifier="head"),
        "resnet_mini_cifar.demo_cifar10": _demo("resnet_mini_cifar", first_conv="stem.conv", classifier="head.fc"),
        "vit_ti_cifar": _cfg(100, CIFAR100_MEAN, CIFAR100_STD, first_conv="patch_embed.proj", classifier="head"),
        "pit_ti_cifar": _cfg(100, CIFAR100_MEAN, CIFAR100_STD, first_conv="patch_embed.conv", classifier="head"),
        "swin_ti_cifar": _cfg(100, CIFAR100_MEAN, CIFAR100_STD, first_conv="patch_embed.proj", classifier="head.fc"),
        "resnet50_cifar": _cfg(100, CIFAR100_MEAN, CIFAR100_STD, first_conv="stem.conv", classifier="head.fc"),
    }
)


class NoSkipBlock(Block):
    """A timm ViT block without its two residual additions: x -> ls2(mlp(norm2(ls1(attn(norm1(x)))))).

    Same parameters and module paths as `Block`; stochastic depth is not applied (dropping the only path
    would zero the sample).
    """

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        x = self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
        return self.ls2(self.mlp(self.norm2(x)))


def remove_skips(model: nn.Module, blocks: Sequence[int] | None) -> nn.Module:
    """Turn `model.blocks[i]` for i in `blocks` into `NoSkipBlock`s (in place); checks the indices."""
    if not blocks:
        return model
    if not isinstance(getattr(model, "blocks", None), nn.Sequential) or not all(type(b) is Block for b in model.blocks):
        raise VitstudyError(
            f"remove_skip needs a plain timm ViT (blocks.i are vision_transformer.Block); "
            f"{type(model).__name__} has none; use vit_mini_cifar or vit_ti_cifar"
        )
    depth = len(model.blocks)
    for i in blocks:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth:
            raise VitstudyError(
                f"remove_skip index {i!r} is out of range: the model has {depth} blocks, valid 0..{depth - 1}"
            )
    for i in sorted(set(blocks)):
        model.blocks[i].__class__ = NoSkipBlock
    model.remove_skip = sorted(set(blocks))
    return model


def _vit(variant: str, pretrained: bool, defaults: dict, kwargs: dict) -> VisionTransformer:
    remove_skip = kwargs.pop("remove_skip", None)
    args = dict(defaults, **{k: v for k, v in kwargs.items() if v is not None})
    if args.get("global_pool") == "token" and args.get("class_token") is False:
        raise VitstudyError(
            "global_pool=token needs the CLS token; with class_token=false use global_pool=avg (GAP ViT)"
        )
    if args.get("class_token") is False and "global_pool" not in kwargs:
        args["global_pool"] = "avg"
    model = build_model_with_cfg(VisionTransformer, variant, pretrained, feature_cfg=dict(out_indices=3), **args)
    return remove_skips(model, list(remove_skip) if remove_skip else None)


def _no_skip_option(variant: str, kwargs: dict) -> None:
    if kwargs.pop("remove_skip", None):
        raise VitstudyError(
            f"remove_skip is implemented for the ViTs (vit_mini_cifar, vit_ti_cifar), not for {variant}"
        )


def _cifar_stem(model: ResNetV2, chs: int) -> ResNetV2:
    """The CIFAR stem: one 3x3 stride-1 convolution, no pooling (pre-activation: no norm in the stem)."""
    conv = create_conv2d(3, chs, 3, stride=1)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.stem = nn.Sequential()
    model.stem.add_module("conv", conv)
    model.feature_info[0] = dict(num_chs=chs, reduction=1, module="stem.conv")
    return model


def _resnet(variant: str, pretrained: bool, defaults: dict, kwargs: dict) -> ResNetV2:
    _no_skip_option(variant, kwargs)
    args = dict(defaults, **{k: v for k, v in kwargs.items() if v is not None})
    model = build_model_with_cfg(ResNetV2, variant, False, feature_cfg=dict(flatten_sequential=True), **args)
    model = _cifar_stem(model, model.stem.conv.out_channels)
    if pretrained:  # after the stem swap, so the stem's weights land in the CIFAR stem
        load_pretrained(model, num_classes=model.num_classes, in_chans=args.get("in_chans", 3))
    return model


@register_model
def vit_mini_cifar(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """CPU-sized ViT for 32x32 images: patch 4 (64 tokens + CLS), dim 96, depth 6, 3 heads, no qkv bias."""
    return _vit(
        "vit_mini_cifar",
        pretrained,
        dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3, qkv_bias=False),
        kwargs,
    )


@register_model
def vit_ti_cifar(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Park & Kim's CIFAR ViT-Ti: patch 2 (256 tokens + CLS), dim 192, depth 12, 3 heads, no qkv bias."""
    return _vit(
        "vit_ti_cifar",
        pretrained,
        dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3, qkv_bias=False),
        kwargs,
    )


@register_model
def pit_ti_cifar(pretrained: bool = False, **kwargs):
    """Park & Kim's CIFAR PiT-Ti: patch 2, stride 1, base dims 32, depths 2-6-4, heads 2-4-8."""
    _no_skip_option("pit_ti_cifar", kwargs)
    args = dict(
        img_size=32, patch_size=2, stride=1, base_dims=[32, 32, 32], depth=[2, 6, 4], heads=[2, 4, 8], mlp_ratio=4
    )
    return _create_pit("pit_ti_cifar", pretrained, **dict(args, **{k: v for k, v in kwargs.items() if v is not None}))


@register_model
def swin_ti_cifar(pretrained: bool = False, **kwargs):
    """Park & Kim's CIFAR Swin-Ti: patch 1, window 4, dim 96, depths 2-2-6-2, heads 3-6-12-24, no qkv bias."""
    _no_skip_option("swin_ti_cifar", kwargs)
    args = dict(
        img_size=32,
        patch_size=1,
        window_size=4,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        qkv_bias=False,
    )
    return _create_swin_transformer(
        "swin_ti_cifar", pretrained, **dict(args, **{k: v for k, v in kwargs.items() if v is not None})
    )


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs) -> ResNetV2:
    """Pre-activation ResNet-50 (timm ResNetV2, BatchNorm) with the CIFAR stem: 3x3 conv, stride 1, no pooling."""
    return _resnet(
        "resnet50_cifar",
        pretrained,
        dict(layers=[3, 4, 6, 3], conv_layer=create_conv2d, norm_layer=BatchNormAct2d),
        kwargs,
    )


@register_model
def resnet_mini_cifar(pretrained: bool = False, **kwargs) -> ResNetV2:
    """CPU-sized pre-activation ResNet (basic blocks 2-2-2-2, widths 16-32-64-128) with the CIFAR stem."""
    return _resnet(
        "resnet_mini_cifar",
        pretrained,
        dict(
            layers=[2, 2, 2, 2],
            channels=(16, 32, 64, 128),
            stem_chs=16,
            basic=True,
            bottle_ratio=1.0,
            conv_layer=create_conv2d,
            norm_layer=BatchNormAct2d,
        ),
        kwargs,
    )


NAMES = ("vit_mini_cifar", "resnet_mini_cifar", "vit_ti_cifar", "pit_ti_cifar", "swin_ti_cifar", "resnet50_cifar")
