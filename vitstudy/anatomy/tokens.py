"""How a model's tokens map to image positions: prefix tokens (CLS, distillation, registers) and token grids.

One answer for every analysis (CKA token modes, probes, localization, latents, attention, receptive fields).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import VitstudyError


def prefix_tokens(model: nn.Module) -> int:
    """Tokens ahead of the patch tokens: timm's `num_prefix_tokens`, else the length of a `cls_token` (PiT), else 0."""
    n = getattr(model, "num_prefix_tokens", None)
    if n is not None:
        return int(n)
    cls = getattr(model, "cls_token", None)
    return int(cls.shape[1]) if isinstance(cls, torch.Tensor) and cls.dim() == 3 else 0


def has_cls(model: nn.Module) -> bool:
    """Whether the first token is a class token."""
    return getattr(model, "cls_token", None) is not None


def split(model: nn.Module, length: int) -> tuple[int, tuple[int, int] | None]:
    """(prefix tokens, (rows, cols)) of a token sequence of this length: the model's prefix tokens are counted when
    the rest fill its patch grid (or a square), else none (e.g. the patch embedding, before the CLS token joins);
    (0, None) when no grid fits."""
    known = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    for p in dict.fromkeys((prefix_tokens(model), 0)):
        n = length - p
        if known is not None and n == known[0] * known[1]:
            return p, (int(known[0]), int(known[1]))
        r = math.isqrt(max(n, 0))
        if n > 0 and r * r == n:
            return p, (r, r)
    return 0, None


def token_grid(model: nn.Module, layer) -> tuple[int, int, int]:
    """(rows, cols, prefix tokens) of a layer's spatial positions.

    Feature maps (NCHW, NHWC) have no prefix. For tokens (NLC) the model's prefix tokens are counted when the
    rest fill its patch grid (or a square), else none (e.g. the patch embedding, before the CLS token joins).
    """
    if layer.layout == "NCHW":
        return int(layer.shape[1]), int(layer.shape[2]), 0
    if layer.layout == "NHWC":
        return int(layer.shape[0]), int(layer.shape[1]), 0
    if layer.layout == "NLC":
        length = int(layer.shape[0])
        prefix, grid = split(model, length)
        if grid is not None:
            return grid[0], grid[1], prefix
        raise VitstudyError(f"layer '{layer.name}' has {length} tokens: not a square grid with or without the model's "
                            f"{prefix_tokens(model)} prefix tokens, so it has no spatial positions; choose another layer")
    raise VitstudyError(f"layer '{layer.name}' is a {layer.layout} tensor of shape {layer.shape} without spatial positions; "
                        f"choose a block or feature map")
