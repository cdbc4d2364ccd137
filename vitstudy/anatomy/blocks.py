"""Which modules are a model's residual blocks, and Raghu et al.'s dense layer set inside them.

Layer presets: `blocks` (one per residual block: ViT `blocks.i`, ResNet `layerS.B`, Swin `layers.S.blocks.B`,
ConvNeXt `stages.S.blocks.B`) and `all` (Raghu et al. Figs 1-2: norms, attention output, the residual stream after
attention, MLP hidden activation and block output of every transformer block; every conv and activation of
every conv block; the stem and final norm).
"""

from __future__ import annotations

import importlib
import re

from torch import nn

from .layer import INPUT

_BLOCK_CLASS = re.compile(
    r"(Block|Block1d|Block2d|Bottleneck|Basic|BasicBlock|Residual|ResBlock|DenseLayer|"
    r"TransformerLayer|DepthwiseSeparableConv)$"
)


def timm_classes(module: str, *names: str) -> tuple[type, ...]:
    """The classes `names` of a timm module that exist in the installed timm (older releases lack some)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return ()
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n))


# Containers named like blocks whose children are the residual blocks (CrossViT: one ViT block list per branch).
_CONTAINERS = timm_classes("timm.models.crossvit", "MultiScaleBlock")
# Class-attention blocks update only the CLS token (CaiT's blocks_token_only, XCiT's cls_attn_blocks, CrossViT's
# cross-attention fusion): not blocks of the token stream.
_CLASS_ATTENTION = (
    timm_classes("timm.models.xcit", "ClassAttentionBlock")
    + timm_classes("timm.models.cait", "LayerScaleBlockClassAttn")
    + timm_classes("timm.models.crossvit", "CrossAttentionBlock")
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm)
_ACT = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Tanh, nn.Sigmoid)


def _is_block(name: str, mod: nn.Module) -> bool:
    if isinstance(mod, _CONTAINERS + _CLASS_ATTENTION):
        return False
    return bool(name) and bool(_BLOCK_CLASS.search(type(mod).__name__))


def block_names(model: nn.Module) -> list[str]:
    """Residual blocks: ViT `blocks.i`, ResNet `layerS.B`, Swin `layers.S.blocks.B`, ConvNeXt `stages.S.blocks.B`,
    CrossViT's per-branch ViT blocks `blocks.i.blocks.j.k`; class-attention blocks are left out."""
    found: list[str] = []
    skipped = [n + "." for n, m in model.named_modules() if n and isinstance(m, _CLASS_ATTENTION)]
    for name, mod in model.named_modules():
        if (
            _is_block(name, mod)
            and not any(name.startswith(b + ".") for b in found)
            and not name.startswith(tuple(skipped))
        ):
            found.append(name)
    if found:
        return found
    # Fallback: the numbered children of top-level containers (nn.Sequential / nn.ModuleList).
    for name, mod in model.named_children():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)):
            found += [f"{name}.{child}" for child, _ in mod.named_children() if child.isdigit()]
    return found


def _kind(mod: nn.Module) -> str | None:
    if isinstance(mod, _CONV):
        return "conv"
    if isinstance(mod, _NORM) or type(mod).__name__.endswith(("Norm", "Norm2d", "NormAct2d")):
        return "norm"
    if isinstance(mod, _ACT) or type(mod).__module__.endswith(".activations"):
        return "act"
    return None


def dense_names(model: nn.Module) -> list[str]:
    """The dense layer set of Raghu et al. (Figs 1, 2).

    Transformer blocks: norm1, the attention output, the residual stream after attention (`norm2:in`),
    norm2, the MLP hidden activation and the block output. Convolutional blocks: every convolution and
    activation and the block output. Outside blocks: the stem (patch embedding or stem conv/act) and the
    final norm.
    """
    modules = dict(model.named_modules())
    blocks = block_names(model)
    outside: list[str] = []
    inner: dict[str, list[str]] = {b: [] for b in blocks}
    for name, mod in model.named_modules():
        block = next((b for b in blocks if name.startswith(b + ".")), None)
        if block is None:
            if not name or name in inner or any(b.startswith(name + ".") for b in blocks):
                continue  # the model itself, a block, or a container of blocks
            leaf = not list(mod.children())
            if "PatchEmbed" in type(mod).__name__ or (leaf and _kind(mod) and name.split(".")[0] != "head"):
                if not any(name.startswith(n + ".") for n in outside):
                    outside.append(name)
            continue
        rel, kind = name[len(block) + 1 :], _kind(mod)
        if hasattr(modules[block], "attn") and hasattr(modules[block], "mlp"):  # transformer block
            if rel == "norm2":
                inner[block] += [name + INPUT, name]
            elif rel == "attn" or (kind == "norm" and "." not in rel) or (kind == "act" and rel.startswith("mlp.")):
                inner[block].append(name)
        elif kind in ("conv", "act") and not list(mod.children()):
            inner[block].append(name)
    # forward order (stem before blocks, final norm after) is set by the probe
    return outside + [n for b in blocks for n in inner[b] + [b]]
