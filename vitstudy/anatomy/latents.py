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
output grid is smaller than its input's: the blue bands of Park & Kim's figures). The preset is `layers=latents`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import VitstudyError
from . import families
from .blocks import block_names
from .layer import INPUT, Layer
from .tokens import token_grid

KINDS = ("embedding", "attention", "mlp", "conv", "downsampling", "other")


def _is_identity(mod) -> bool:
    return mod is None or isinstance(mod, nn.Identity)


def latent_kinds(model: nn.Module) -> dict[str, str]:
    """Latent name -> kind, in forward order for the supported families."""
    modules = dict(model.named_modules())
    blocks = block_names(model)
    if not blocks:
        raise VitstudyError(
            f"found no residual blocks in {type(model).__name__}, so it has no Park & Kim latents; "
            f"give module names, e.g. layers=[...] (see `vitstudy layers`)"
        )
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
        for sub in families.family_of(mod).sublayers(b, 0, mod):
            kinds[sub.post] = sub.kind
    return kinds


def latent_names(model: nn.Module) -> list[str]:
    """The `latents` layer preset (forward order and de-duplication come from the probe)."""
    return list(latent_kinds(model))


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


def _grid(layer: Layer, model: nn.Module) -> tuple[int, tuple[int, int], int]:
    """(prefix tokens, (H, W), channels) of a layer viewed as feature maps."""
    rows, cols, prefix = token_grid(model, layer)
    channels = layer.shape[0] if layer.layout == "NCHW" else layer.shape[-1]
    return prefix, (rows, cols), int(channels)


def describe(model: nn.Module, layers: list[Layer]) -> list[Latent]:
    """Label resolved layers with kinds; conv units that shrink the grid become 'downsampling'."""
    try:
        kinds = latent_kinds(model)
    except VitstudyError:
        kinds = {}
    out: list[Latent] = []
    n = len(layers)
    previous = None
    for i, layer in enumerate(layers):
        p, grid, channels = _grid(layer, model)
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
    return x[:, latent.prefix :].transpose(1, 2).reshape(x.shape[0], x.shape[-1], h, w)


def family(model: nn.Module) -> str:
    """'transformer' if the model has attention sublayers, else 'cnn' (picks figure colours and markers)."""
    return "transformer" if families.is_transformer(model) else "cnn"
