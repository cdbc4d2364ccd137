"""Park & Kim's latents: the residual stream after every sublayer, each labelled by the kind of sublayer.

Park & Kim 2022 (*How Do Vision Transformers Work?*, Figs 2a, 8, 9, D.1-D.4) split a model into a list of
blocks and take each block's output. For a ViT: the embedding (patch embedding + CLS + position
embedding), then the residual stream after each attention sublayer and after each MLP sublayer; for a
ResNet: the stem, then each unit. Here those are module paths, usable as `layers=latents`:

  ViT / DeiT / PiT / Swin:  `<first block>:in`, then per block `<block>.norm2:in` (after attention;
                            `<block>.mlp:in` for post-norm blocks) and `<block>` (after the MLP);
                            PiT pooling -> `<first block of the stage>:in`, Swin patch merging -> `<stage>.downsample`
  ResNet / ResNetV2 / ConvNeXt: `<first block>:in` (the stem), every unit; ConvNeXt `<stage>.downsample`
  AlterNet: as ResNetV2, its attention blocks (an `attn` without an MLP) are kind `attention`

Kinds: embedding, attention, mlp, conv, downsampling (a pooling/patch-merging module, or a conv unit whose
output grid is smaller than its input's: the blue bands of Park & Kim's figures). Importing this module
registers the preset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..pipeline import layers as _layers
from ..errors import VitstudyError
from ..pipeline.layers import INPUT, Layer, block_names

KINDS = ("embedding", "attention", "mlp", "conv", "downsampling", "other")


def _classes(module_name: str, *names: str) -> tuple[type, ...]:
    import importlib

    try:
        mod = importlib.import_module(f"timm.models.{module_name}")
    except ImportError:
        return ()
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n))


_POST_NORM = _classes("vision_transformer", "ResPostBlock") + _classes("swin_transformer_v2", "SwinTransformerV2Block")
_PARALLEL = _classes("vision_transformer", "ParallelScalingBlock", "DiffParallelScalingBlock", "ParallelThingsBlock")


def is_transformer_block(mod: nn.Module) -> bool:
    return hasattr(mod, "attn") and hasattr(mod, "mlp")


def is_attention_only_block(mod: nn.Module) -> bool:
    """A residual block whose one sublayer is self-attention (AlterNet's MSA blocks: no MLP)."""
    return hasattr(mod, "attn") and not hasattr(mod, "mlp")


def _check_block(name: str, mod: nn.Module) -> None:
    if isinstance(mod, _PARALLEL) or (is_transformer_block(mod) and not isinstance(mod, _POST_NORM) and not hasattr(mod, "norm2")):
        raise VitstudyError(
            f"block '{name}' ({type(mod).__name__}) has no residual stream between its attention and MLP sublayers, "
            f"so Park & Kim's latents are undefined; use layers=blocks or a list of module names"
        )


def after_attention(name: str, mod: nn.Module) -> str:
    """The residual stream after a block's attention sublayer: input of norm2 (pre-norm) or of mlp (post-norm)."""
    return f"{name}.mlp{INPUT}" if isinstance(mod, _POST_NORM) else f"{name}.norm2{INPUT}"


def _is_identity(mod) -> bool:
    return mod is None or isinstance(mod, nn.Identity)


def latent_kinds(model: nn.Module) -> dict[str, str]:
    """Latent name -> kind, in forward order for the supported families."""
    modules = dict(model.named_modules())
    blocks = block_names(model)
    if not blocks:
        raise VitstudyError(f"found no residual blocks in {type(model).__name__}, so it has no Park & Kim latents; "
                            f"give module names, e.g. layers=[...] (see `vitstudy layers`)")
    kinds = {f"{blocks[0]}{INPUT}": "embedding"}
    stages_seen: set[str] = set()
    for b in blocks:
        mod = modules[b]
        parent = b.rsplit(".", 1)[0] if "." in b else ""
        stage = parent[: -len(".blocks")] if parent.endswith(".blocks") else None
        if stage and stage not in stages_seen:  # Swin / ConvNeXt / PiT stages: their downsampling step
            stages_seen.add(stage)
            smod = modules.get(stage)
            if not _is_identity(getattr(smod, "downsample", None)):
                kinds[f"{stage}.downsample"] = "downsampling"
            if not _is_identity(getattr(smod, "pool", None)) and b != blocks[0]:  # PiT: the pool returns a tuple
                kinds[f"{b}{INPUT}"] = "downsampling"
        _check_block(b, mod)
        if is_transformer_block(mod):
            kinds[after_attention(b, mod)] = "attention"
            kinds[b] = "mlp"
        elif is_attention_only_block(mod):
            kinds[b] = "attention"
        else:
            kinds[b] = "conv"
    return kinds


def latent_names(model: nn.Module) -> list[str]:
    """The `latents` layer preset (forward order and de-duplication come from the probe)."""
    return list(latent_kinds(model))


_layers.PRESETS["latents"] = latent_names


@dataclass(frozen=True)
class Latent:
    """A layer with its Park & Kim kind, its place in depth and how to view it as (B, C, H, W) maps."""

    layer: Layer
    kind: str
    index: int
    depth: float  # index / (number of latents - 1), Park & Kim's "normalized depth"
    prefix: int  # leading tokens (CLS, distillation, registers) dropped from token layouts
    grid: tuple[int, int]  # (H, W)
    channels: int

    @property
    def name(self) -> str:
        return self.layer.name


def prefix_tokens(model: nn.Module) -> int:
    """CLS/distillation/register tokens ahead of the patch tokens (PiT: its cls_token's length)."""
    n = getattr(model, "num_prefix_tokens", None)
    if n is not None:
        return int(n)
    cls = getattr(model, "cls_token", None)
    return int(cls.shape[1]) if isinstance(cls, torch.Tensor) and cls.dim() == 3 else 0


def _grid(layer: Layer, model: nn.Module, prefix: int) -> tuple[int, tuple[int, int], int]:
    shape = layer.shape
    if layer.layout == "NCHW":
        return 0, (shape[1], shape[2]), shape[0]
    if layer.layout == "NHWC":
        return 0, (shape[0], shape[1]), shape[2]
    if layer.layout == "NLC":
        length, channels = shape
        known = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        for p in dict.fromkeys((prefix, 0)):
            n = length - p
            if known is not None and n == known[0] * known[1]:
                return p, (int(known[0]), int(known[1])), channels
            r = math.isqrt(max(n, 0))
            if n > 0 and r * r == n:
                return p, (r, r), channels
        raise VitstudyError(f"layer '{layer.name}' has {length} tokens: not a square grid with or without the "
                            f"model's {prefix} prefix tokens, so it cannot be viewed as a feature map")
    raise VitstudyError(f"layer '{layer.name}' is a {layer.layout} tensor of shape {shape}, not a feature map "
                        f"(tokens or channels x height x width); choose spatial layers, e.g. layers=latents")


def describe(model: nn.Module, layers: list[Layer]) -> list[Latent]:
    """Label resolved layers with kinds; conv units that shrink the grid become 'downsampling'."""
    try:
        kinds = latent_kinds(model)
    except VitstudyError:
        kinds = {}
    prefix = prefix_tokens(model)
    out: list[Latent] = []
    n = len(layers)
    previous = None
    for i, layer in enumerate(layers):
        p, grid, channels = _grid(layer, model, prefix)
        kind = kinds.get(layer.name, "other")
        if kind == "conv" and previous is not None and grid[0] * grid[1] < previous[0] * previous[1]:
            kind = "downsampling"
        out.append(Latent(layer, kind, i, i / (n - 1) if n > 1 else 0.0, p, grid, channels))
        previous = grid
    return out


def to_maps(x: torch.Tensor, latent: Latent) -> torch.Tensor:
    """A captured tensor as (B, C, H, W) maps: prefix tokens dropped, tokens laid out row-major on the grid."""
    layout = latent.layer.layout
    if layout == "NCHW":
        return x
    if layout == "NHWC":
        return x.permute(0, 3, 1, 2)
    h, w = latent.grid
    return x[:, latent.prefix:].transpose(1, 2).reshape(x.shape[0], x.shape[-1], h, w)


def family(model: nn.Module) -> str:
    """'transformer' if the model has attention blocks, else 'cnn' (picks figure colours and markers)."""
    return "transformer" if any(is_transformer_block(m) or is_attention_only_block(m) for m in model.modules()) else "cnn"
