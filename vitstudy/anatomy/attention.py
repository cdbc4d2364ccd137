"""Capture the real softmax attention probabilities of timm attention modules.

timm's ViT/DeiT/Swin attention runs fused (`F.scaled_dot_product_attention`) by default, which never
materialises the probabilities: hooks then see nothing (and `timm.utils.AttentionExtract` silently returns
an empty dict). `unfused(model)` switches `fused_attn` off on the analysed model's own modules only and
restores it afterwards; the probabilities are then the input of each module's `attn_drop` (identity in
eval mode), shape (B, heads, N, N), or (B * windows, heads, n, n) for Swin. `sites(model)` says where
they are and how tokens map to pixels; `check_capture` verifies the count and that rows sum to 1.

Per family (`sites`): ViT, DeiT (distilled), DeiT-III, BEiT, EVA, registers, GAP and hybrids attend over all
their tokens; CaiT's self-attention blocks see the patch tokens only (its class token joins in the class-attention
blocks `blocks_token_only`, which update only that token and are left out) and mix heads after the softmax
(talking heads), so its probabilities are the softmax output, the input of `proj_w`, (B, N, N, heads); ConViT's
gated positional blocks (GPSA, before `local_up_to_layer`) see the patch tokens, the later ones the class token
too, and their probabilities are the gated, renormalised mix that multiplies the values; PiT's stages attend over
its class token(s) and a grid that each stage's strided pooling conv shrinks; Swin and Swin-V2 attend
inside (shifted) windows. XCiT is refused: its cross-covariance attention is a softmax over channels, not positions.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..errors import VitstudyError
from .layer import Layer
from .tokens import prefix_tokens
from ..metrics import attention as am

ROW_SUM_TOL = 1e-3


@dataclass
class Site:
    """One attention module: where its probabilities are tapped and how its tokens map to pixels."""

    name: str  # module path of the attention module, e.g. 'blocks.3.attn' or 'layers.1.blocks.0.attn'
    block: int  # depth index over all attention blocks of the model
    heads: int
    kind: str  # 'global' (ViT family) or 'window' (Swin)
    grid: tuple[int, int]  # token grid the module sees
    stride: tuple[float, float]  # pixels per grid step
    num_prefix: int = 0
    window: tuple[int, int] | None = None
    shift: tuple[int, int] = (0, 0)
    dist: torch.Tensor = field(default=None, repr=False)  # (N, N) or (windows, n, n) float64 pixels
    tap: str = "attn_drop"  # submodule (of the attention module) whose input is the probabilities
    heads_last: bool = False  # the tapped tensor is (B, N, N, heads) (CaiT's talking-heads `proj_w` input)

    @property
    def layer(self) -> Layer:
        """The tap: the input of `attn_drop` (or `tap`), i.e. the softmax output."""
        return Layer(self.name, f"{self.name}.{self.tap}", True, (), "attn")

    @property
    def tokens(self) -> int:
        return self.num_prefix + self.grid[0] * self.grid[1]

    def probabilities(self, attn: torch.Tensor) -> torch.Tensor:
        """A captured tensor as (B, heads, queries, keys) probabilities."""
        return attn.permute(0, 3, 1, 2) if self.heads_last else attn

    def per_image(self, attn: torch.Tensor) -> torch.Tensor:
        """(B, heads) mean attention distance in pixels for one captured map."""
        attn = self.probabilities(attn)
        dist = self.dist.to(attn.device)
        if self.kind == "window":
            return am.window_mean_distance(attn, dist)
        return am.mean_distance(attn, dist, self.grid[0] * self.grid[1])

    def check(self, attn: torch.Tensor, batch: int) -> None:
        """Shape and row sums of a captured map; a mismatch means it is not the softmax we expect."""
        attn = self.probabilities(attn)
        if self.kind == "window":
            n = self.window[0] * self.window[1]
            windows = (self.grid[0] // self.window[0]) * (self.grid[1] // self.window[1])
            expected = (batch * windows, self.heads, n, n)
        else:
            expected = (batch, self.heads, self.tokens, self.tokens)
        if tuple(attn.shape) != expected:
            raise VitstudyError(f"attention of '{self.name}' has shape {tuple(attn.shape)}, expected {expected} "
                                f"(grid {self.grid}, {self.num_prefix} prefix tokens); input size and model config disagree")
        sums = attn.float().sum(dim=-1)
        err = float((sums - 1).abs().max())
        tol = max(ROW_SUM_TOL, 4 * torch.finfo(attn.dtype).eps)  # a bf16/fp16 forward rounds each probability
        if not err <= tol:
            raise VitstudyError(f"attention rows captured at '{self.name}.attn_drop' sum to 1 +- {err:.3g}, not 1: "
                                f"{type(attn).__name__} there is not a softmax over keys; this attention type is not supported")


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _attention_ok(attn: nn.Module) -> bool:
    return isinstance(getattr(attn, "attn_drop", None), nn.Module) and hasattr(attn, "num_heads")


def _vit_sites(model: nn.Module) -> list[Site]:
    pe = model.patch_embed
    grid = tuple(int(g) for g in _pair(pe.grid_size))
    img = _pair(getattr(pe, "img_size", None) or (None, None))
    if None in img:
        raise VitstudyError(f"{type(model).__name__}.patch_embed has no fixed img_size; set model.kwargs.img_size")
    stride = (img[0] / grid[0], img[1] / grid[1])
    dists: dict[int, torch.Tensor] = {}
    out = []
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not _attention_ok(attn):
            raise VitstudyError(f"block 'blocks.{i}' of {type(model).__name__} has no standard timm attention "
                                f"(an `attn` module with `attn_drop` and `num_heads`); attention maps are not supported for it")
        prefix = block_prefix(model, i)
        if prefix not in dists:
            dists[prefix] = am.distance_matrix(grid[0], grid[1], stride, prefix)
        talking = isinstance(getattr(attn, "proj_w", None), nn.Linear)  # CaiT: heads mixed after the softmax
        out.append(Site(f"blocks.{i}.attn", i, int(attn.num_heads), "global", grid, stride, prefix, dist=dists[prefix],
                        tap="proj_w" if talking else "attn_drop", heads_last=talking))
    return out


def _conv_out(n: int, conv: nn.Conv2d, dim: int) -> int:
    k, st, pad, dil = conv.kernel_size[dim], conv.stride[dim], conv.padding[dim], conv.dilation[dim]
    return (n + 2 * pad - dil * (k - 1) - 1) // st + 1


def _pit_sites(model: nn.Module) -> list[Site]:
    """PiT: stages `transformers.S` of ViT blocks over (class tokens + an H x W grid); each stage after the first
    starts with a strided depthwise conv (`pool.conv`) that shrinks the grid, so the stride in pixels grows."""
    img = _pair(model.patch_embed.img_size)
    grid = tuple(int(g) for g in _pair(model.patch_embed.grid_size))
    prefix = prefix_tokens(model)
    out, depth = [], 0
    for s, stage in enumerate(model.transformers):
        pool = getattr(stage, "pool", None)
        if pool is not None:
            grid = (_conv_out(grid[0], pool.conv, 0), _conv_out(grid[1], pool.conv, 1))
        stride = (img[0] / grid[0], img[1] / grid[1])
        dist = am.distance_matrix(grid[0], grid[1], stride, prefix)
        for j, blk in enumerate(stage.blocks):
            if not _attention_ok(getattr(blk, "attn", None)):
                raise VitstudyError(f"block 'transformers.{s}.blocks.{j}' of {type(model).__name__} has no standard timm attention")
            out.append(Site(f"transformers.{s}.blocks.{j}.attn", depth, int(blk.attn.num_heads), "global", grid, stride, prefix, dist=dist))
            depth += 1
    return out


def block_prefix(model: nn.Module, i: int) -> int:
    """Prefix tokens that block i of a ViT-family model attends over: CaiT's class token joins after `blocks` (in
    `blocks_token_only`), ConViT's at block `local_up_to_layer`; every other ViT has them from the start."""
    if getattr(model, "blocks_token_only", None) is not None:
        return 0
    late = getattr(model, "local_up_to_layer", None)
    if late is not None and i < int(late):
        return 0
    return prefix_tokens(model)


def excluded(model: nn.Module) -> str | None:
    """Attention modules `sites` leaves out on purpose, in one line (said in the analyses' output)."""
    cls_blocks = getattr(model, "blocks_token_only", None)
    if cls_blocks is not None and len(cls_blocks):
        return (f"the {len(cls_blocks)} class-attention blocks (blocks_token_only) are left out: only the class token "
                f"queries there, it does not attend between image positions")
    return None


def _swin_sites(model: nn.Module, blocks: list[tuple[str, nn.Module]]) -> list[Site]:
    img = _pair(model.patch_embed.img_size)
    out = []
    for i, (name, blk) in enumerate(blocks):
        grid = tuple(int(g) for g in blk.input_resolution)
        window = tuple(int(w) for w in _pair(blk.window_size))
        shift = tuple(int(s) for s in _pair(blk.shift_size))
        if grid[0] % window[0] or grid[1] % window[1]:
            raise VitstudyError(f"Swin block '{name}' sees a {grid[0]}x{grid[1]} grid that {window[0]}x{window[1]} windows do not tile "
                                f"(padded windows are not supported); choose an input size whose stage grids are multiples of the window")
        if getattr(blk, "dynamic_mask", False):
            raise VitstudyError(f"Swin block '{name}' uses a dynamic mask; create the model with a fixed img_size")
        stride = (img[0] / grid[0], img[1] / grid[1])
        dist = am.window_distances(grid[0], grid[1], window, shift, stride)
        out.append(Site(f"{name}.attn", i, int(blk.attn.num_heads), "window", grid, stride, 0, window, shift, dist))
    return out


def sites(model: nn.Module) -> list[Site]:
    """The attention modules of a timm ViT-family (ViT, DeiT, DeiT-III, registers, GAP, hybrid) or Swin model."""
    if type(model).__name__ == "Xcit":
        raise VitstudyError("XCiT's cross-covariance attention is a softmax over channels, not over image positions, "
                            "so it has no attention distance or map; use another transformer")
    swin = [(n, m) for n, m in model.named_modules()
            if hasattr(m, "shift_size") and hasattr(m, "window_size") and hasattr(m, "input_resolution") and _attention_ok(getattr(m, "attn", None))]
    if swin:
        return _swin_sites(model, swin)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and hasattr(pe, "grid_size") and isinstance(getattr(model, "transformers", None), nn.Sequential):
        return _pit_sites(model)
    if pe is not None and hasattr(pe, "grid_size") and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)):
        return _vit_sites(model)
    if any(_attention_ok(m) for m in model.modules()):
        raise VitstudyError(f"{type(model).__name__} has attention modules but not in a layout vitstudy knows "
                            f"(timm ViT family with patch_embed.grid_size and blocks.N.attn, or Swin); attention maps are not supported for it yet")
    raise VitstudyError(f"{type(model).__name__} has no self-attention to measure (it is not a timm ViT-family or Swin model); "
                        f"use a transformer, e.g. model=vit_b16, model=deit_s or model=swin_t")


@contextmanager
def unfused(model: nn.Module, only: Iterable[str] | None = None):
    """Switch fused attention off on `model`'s modules (all, or the module paths in `only`), then restore."""
    names = None if only is None else set(only)
    saved = []
    for name, mod in model.named_modules():
        if hasattr(mod, "fused_attn") and (names is None or name in names):
            saved.append((mod, mod.fused_attn))
            mod.fused_attn = False
    try:
        yield
    finally:
        for mod, value in saved:
            mod.fused_attn = value


class Counter:
    """Counts captured maps per batch so a silent miss (0 maps, or a module running twice) becomes an error."""

    def __init__(self, expected: list[str]):
        self.expected = expected
        self.seen: list[str] = []

    def add(self, name: str) -> None:
        self.seen.append(name)

    def end_batch(self) -> None:
        if self.seen != self.expected:
            raise VitstudyError(f"captured {len(self.seen)} attention maps for {len(self.expected)} attention modules "
                                f"(e.g. expected '{self.expected[0]}'); the model's attention does not run through attn_drop "
                                f"as timm's does, so its probabilities cannot be read")
        self.seen = []
