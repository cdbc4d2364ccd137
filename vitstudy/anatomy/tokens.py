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


def prefix_kinds(model: nn.Module) -> list[str]:
    """The kind of each prefix token in the model's order: 'class', 'distillation', then 'register' (timm's
    `_pos_embed` concatenates class, distillation (DeiT) and `reg_token`); kinds it cannot tell are 'prefix'."""
    n = prefix_tokens(model)
    kinds = []
    if getattr(model, "cls_token", None) is not None:
        kinds.append("class")
    if getattr(model, "dist_token", None) is not None:
        kinds.append("distillation")
    reg = getattr(model, "reg_token", None)
    if isinstance(reg, torch.Tensor):
        kinds += ["register"] * int(reg.shape[1])
    return (kinds + ["prefix"] * n)[:n]


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


ASPECT_TOL = 0.3  # |log(stride_h / stride_w)| a token grid may have: conv rounding (27 tokens for 224 px at stride 8)


def _divisor_grids(n: int):
    return [(h, n // h) for h in range(1, n + 1) if n % h == 0]


def infer_grid(model: nn.Module, length: int, input_hw: tuple[int, int] | None) -> tuple[int, int, int] | None:
    """(rows, cols, prefix tokens) of a token sequence of this length seen on an input of `input_hw` pixels.

    First the model's patch grid (`patch_embed.grid_size`) with or without its prefix tokens (CLS, distillation,
    registers); else the factorisation rows x cols of the remaining tokens whose pixel strides along H and W agree
    best (any stage of a hierarchical model: Swin, PVT, MViT, LeViT, ...; non-square inputs too), preferring the
    model's own prefix count, then none, then one (a class token of its own, e.g. CoaT's per-stage CLS).
    None when no grid fits."""
    prefixes = list(dict.fromkeys((prefix_tokens(model), 0, 1)))
    known = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if known is not None:
        for p in prefixes:
            if length - p == int(known[0]) * int(known[1]):
                return int(known[0]), int(known[1]), p
    best = None
    for rank, p in enumerate(prefixes):
        n = length - p
        if n <= 0:
            continue
        for h, w in _divisor_grids(n):
            if input_hw is None:
                err = 0.0 if h == w else math.inf
            else:
                err = abs(math.log((input_hw[0] / h) / (input_hw[1] / w)))
            if err <= ASPECT_TOL and (best is None or (err, rank) < best[0]):
                best = ((err, rank), (h, w, p))
    return None if best is None else best[1]


def channels_last_fit(shape: tuple, input_hw: tuple[int, int] | None) -> str | None:
    """'NCHW' or 'NHWC' for a (d0, d1, d2) feature map: the reading whose spatial dims have the input's aspect and
    the larger share of the positions; None when both readings fit equally (the caller decides)."""
    if input_hw is None:
        return None
    d0, d1, d2 = shape
    aspect = math.log(input_hw[0] / input_hw[1])
    chw = abs(math.log(d1 / d2) - aspect)
    hwc = abs(math.log(d0 / d1) - aspect)
    if abs(chw - hwc) < 1e-9:
        return None
    return "NCHW" if chw < hwc else "NHWC"


def nested_blocks(model: nn.Module, path: str, shape: tuple) -> int | None:
    """The block edge b when the module at `path` sees NesT's nested blocks (Zhang et al. 2022): inside a timm
    `NestLevel`'s transformer_encoder a per-image (T, N, C) tensor is the level's (H, W) map cut by `blockify` into
    T = (H/b)(W/b) blocks of N = b*b tokens each, block-major; None for any other module or shape."""
    if len(shape) != 3:
        return None
    from timm.models.nest import NestLevel

    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):  # the module's ancestors, nearest first
        if parts[k] == "transformer_encoder" and isinstance(
            level := model.get_submodule(".".join(parts[:k])), NestLevel
        ):
            b, (t, n, _) = int(level.block_size), shape
            side = math.isqrt(t)
            return b if n == b * b and side * side == t else None
    return None


def prefix_of(model: nn.Module, layer, length: int) -> int:
    """Prefix tokens of a token layer: from its probed grid, else counted as `split` does."""
    grid = getattr(layer, "grid", None)
    return int(grid[2]) if grid is not None else split(model, length)[0]


def token_grid(model: nn.Module, layer) -> tuple[int, int, int]:
    """(rows, cols, prefix tokens) of a layer's spatial positions.

    Feature maps (NCHW, NHWC) have no prefix. For tokens (NLC) the model's prefix tokens are counted when the
    rest fill its patch grid (or a square), else none (e.g. the patch embedding, before the CLS token joins).
    """
    if layer.layout == "NCHW":
        return int(layer.shape[1]), int(layer.shape[2]), 0
    if layer.layout == "NHWC":
        return int(layer.shape[0]), int(layer.shape[1]), 0
    if layer.layout == "NLC" and getattr(layer, "grid", None) is not None:
        return tuple(int(v) for v in layer.grid)
    if layer.layout == "NLC":
        length = int(layer.shape[0])
        prefix, grid = split(model, length)
        if grid is not None:
            return grid[0], grid[1], prefix
        raise VitstudyError(
            f"layer '{layer.name}' has {length} tokens: no grid of the input's aspect with or without the "
            f"model's {prefix_tokens(model)} prefix tokens, so it has no spatial positions; choose another layer"
        )
    raise VitstudyError(
        f"layer '{layer.name}' is a {layer.layout} tensor of shape {layer.shape} without spatial positions; "
        f"choose a block or feature map"
    )
