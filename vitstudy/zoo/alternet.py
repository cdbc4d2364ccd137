"""AlterNet (Park & Kim 2022, "How Do Vision Transformers Work?", Sec. 4 / Fig. 11; docs/methods.md#alternet).

A pre-activation ResNet-50 (timm `ResNetV2`, BatchNorm, stages of 3-4-6-4 bottlenecks) in which some
bottlenecks are replaced by multi-head self-attention blocks, following the official `models/alternet.py`
(`AttentionBlockB` + `LocalAttention` + `Attention2d`): BN + GELU, 1x1 conv to width dim/4, BN, window
attention (q from a 1x1 conv, k and v from a 1x1 conv, head dimension 64, a (2w-1)x(2w-1) relative-position
bias shared by all heads, added before the softmax), 1x1 conv back to dim, DropPath, plus the identity
shortcut. No MLP in the attention block. The classifier is BN, ReLU, GAP, Linear (ResNetV2's final norm).

Build-up (which blocks are attention), as model keys (`model.kwargs.*`):
- `num_msa=(0, 1, 1, 2)`: MSAs per stage, placed like the repo's `alt_seq`, alternating from the end of the
  stage (Conv, MSA, Conv, MSA): the default gives Fig. 11's AlterNet (last block of c2 and c3, blocks 2 and 4
  of c4). The repo's `dnn_50` factory uses (0, 1, 3, 2).
- `attn_blocks=[[], [3], [5], [1, 3]]`: explicit 0-based block indices per stage (overrides `num_msa`).
- `heads=(3, 6, 12, 24)`, `dim_head=64`, `window_size` (4 for CIFAR, per the author in issue #38; 7 on ImageNet).

Models: `alternet50_cifar` (CIFAR stem: 3x3 conv to 64, stride 1, no pooling; 100 classes; window 4) and
`alternet50` (ResNetV2's 7x7/2 conv + max-pool stem, 224 px, 1000 classes, window 7). Importing this module
registers both with timm.
"""

from __future__ import annotations

from typing import Sequence

import torch
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnetv2 import ResNetV2
from torch import nn

from ..errors import VitstudyError
from .cifar import CIFAR100_MEAN, CIFAR100_STD, _cfg, _cifar_stem

LAYERS = (3, 4, 6, 4)
NUM_MSA = (0, 1, 1, 2)
HEADS = (3, 6, 12, 24)


class LocalAttention(nn.Module):
    """Multi-head self-attention within non-overlapping w x w windows of a (B, C, H, W) map.

    `attn_drop` receives the softmaxed attention, shape (B * windows, heads, w*w, w*w), so hooks can read it.
    """

    def __init__(self, dim_in: int, dim_out: int, heads: int, dim_head: int = 64, window_size: int = 4):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.window_size = heads, dim_head, window_size
        self.scale = dim_head**-0.5
        self.to_q = nn.Conv2d(dim_in, inner, 1, bias=False)
        self.to_kv = nn.Conv2d(dim_in, inner * 2, 1, bias=False)
        self.attn_drop = nn.Identity()
        self.proj = nn.Conv2d(inner, dim_out, 1)
        w = window_size
        self.rel_pos_bias = nn.Parameter(torch.randn(2 * w - 1, 2 * w - 1) * 0.02)  # shared across heads
        coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # (2, w*w)
        rel = coords[:, :, None] - coords[:, None, :] + w - 1  # (2, w*w, w*w), each in 0..2w-2
        self.register_buffer("rel_index", rel[0] * (2 * w - 1) + rel[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w_ = x.shape
        p = self.window_size
        if h % p or w_ % p:
            raise VitstudyError(
                f"AlterNet window attention needs feature maps divisible by window_size={p}, got {h}x{w_}; "
                f"use input sizes that give that (32 px with window 4, 224 px with window 7)"
            )
        n1, n2 = h // p, w_ // p
        x = x.reshape(b, c, n1, p, n2, p).permute(0, 2, 4, 1, 3, 5).reshape(b * n1 * n2, c, p, p)
        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=1)
        q, k, v = (t.reshape(t.shape[0], self.heads, self.dim_head, p * p).transpose(-1, -2) for t in (q, k, v))
        dots = (q @ k.transpose(-1, -2)) * self.scale + self.rel_pos_bias.flatten()[self.rel_index]
        attn = self.attn_drop(dots.softmax(dim=-1))
        out = (attn @ v).transpose(-1, -2).reshape(-1, self.heads * self.dim_head, p, p)
        out = self.proj(out)
        out = out.reshape(b, n1, n2, -1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, h, w_)
        return out


class LocalAttentionBlock(nn.Module):
    """Pre-activation MSA block (official `AttentionBlockB`): x + DropPath(attn(BN(conv1x1(GELU(BN(x)))))).

    Keeps the block's width (dim -> dim): it only replaces non-first blocks of a stage.
    """

    def __init__(
        self, dim: int, heads: int, dim_head: int = 64, window_size: int = 4, drop_path: nn.Module | None = None
    ):
        super().__init__()
        width = dim // 4
        self.norm1 = BatchNormAct2d(dim, act_layer=nn.GELU)
        self.conv = create_conv2d(dim, width, 1)
        self.norm2 = BatchNormAct2d(width, apply_act=False)
        self.attn = LocalAttention(width, dim, heads, dim_head, window_size)
        self.drop_path = drop_path if drop_path is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.attn(self.norm2(self.conv(self.norm1(x)))))


def msa_positions(layers: Sequence[int], num_msa: Sequence[int]) -> list[list[int]]:
    """Block indices of the MSAs per stage as the repo's `alt_seq`: Conv, MSA alternating at the stage's end."""
    if len(num_msa) != len(layers):
        raise VitstudyError(f"num_msa needs one count per stage ({len(layers)}), got {list(num_msa)}")
    out = []
    for s, (n, m) in enumerate(zip(layers, num_msa)):
        if not isinstance(m, int) or m < 0 or 2 * m > n:
            raise VitstudyError(
                f"num_msa[{s}]={m!r} is invalid: stage {s} has {n} blocks, so 0..{n // 2} MSAs alternate with convs"
            )
        out.append(sorted(n - 1 - 2 * i for i in range(m)))
    return out


def _check_positions(layers: Sequence[int], attn_blocks) -> list[list[int]]:
    if len(attn_blocks) != len(layers):
        raise VitstudyError(f"attn_blocks needs one list per stage ({len(layers)}), got {attn_blocks}")
    out = []
    for s, (n, idx) in enumerate(zip(layers, attn_blocks)):
        idx = sorted(set(idx or ()))
        bad = [i for i in idx if not isinstance(i, int) or not 1 <= i < n]
        if bad:
            raise VitstudyError(
                f"attn_blocks[{s}] has invalid block indices {bad}: stage {s} has {n} blocks and "
                f"block 0 changes stride/width, so valid indices are 1..{n - 1}"
            )
        out.append(idx)
    return out


def _alternet(variant: str, pretrained: bool, cifar: bool, window_size: int, kwargs: dict) -> ResNetV2:
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    layers = tuple(kwargs.pop("layers", LAYERS))
    num_msa = tuple(kwargs.pop("num_msa", NUM_MSA))
    attn_blocks = kwargs.pop("attn_blocks", None)
    heads = tuple(kwargs.pop("heads", HEADS))
    dim_head = kwargs.pop("dim_head", 64)
    window_size = kwargs.pop("window_size", window_size)
    if len(heads) != len(layers):
        raise VitstudyError(f"heads needs one count per stage ({len(layers)}), got {list(heads)}")
    positions = _check_positions(layers, attn_blocks) if attn_blocks is not None else msa_positions(layers, num_msa)
    args = dict(layers=list(layers), conv_layer=create_conv2d, norm_layer=BatchNormAct2d, **kwargs)
    model = build_model_with_cfg(ResNetV2, variant, pretrained, feature_cfg=dict(flatten_sequential=True), **args)
    if cifar:
        model = _cifar_stem(model, model.stem.conv.out_channels)
    for s, idx in enumerate(positions):
        blocks = model.stages[s].blocks
        for i in idx:
            old = blocks[i]
            blocks[i] = LocalAttentionBlock(old.conv3.out_channels, heads[s], dim_head, window_size, old.drop_path)
    model.attn_positions = positions
    return model


default_cfgs = generate_default_cfgs(
    {
        "alternet50_cifar": _cfg(100, CIFAR100_MEAN, CIFAR100_STD, first_conv="stem.conv", classifier="head.fc"),
        "alternet50": {
            "url": "",
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": (7, 7),
            "crop_pct": 0.875,
            "interpolation": "bicubic",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "first_conv": "stem.conv",
            "classifier": "head.fc",
            "license": "none",
        },
    }
)


@register_model
def alternet50_cifar(pretrained: bool = False, **kwargs) -> ResNetV2:
    """Park & Kim's CIFAR-100 AlterNet: pre-act ResNet-50 (3-4-6-4), CIFAR stem, MSAs at c2[3], c3[5], c4[1, 3], window 4."""
    return _alternet("alternet50_cifar", pretrained, True, 4, kwargs)


@register_model
def alternet50(pretrained: bool = False, **kwargs) -> ResNetV2:
    """AlterNet-50 at ImageNet resolution: ResNetV2 stem (7x7/2 conv, max-pool), window 7, 1000 classes."""
    return _alternet("alternet50", pretrained, False, 7, kwargs)
