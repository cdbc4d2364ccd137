"""Where the residual branches of a timm model are, and removing a skip connection at inference.

A residual sublayer computes `out = z + f(z)` (Raghu et al. 2021, Sec. 6, Figs 6-8): `z` enters the skip (identity
or projection) branch and `f(z)` is the long branch. `branches(model)` lists every sublayer whose family (see
`anatomy.families`, which holds the table) knows z and f(z); `terms` says how each is read from tapped layers: one
layer, or, where no module outputs it alone, the stream after the addition minus the other (float64, `combine`).
A derived term inherits the float32 rounding of the stream it is taken from: its relative error is about
1e-7 x ratio (||z|| / ||f(z)||), 1e-3 at a ratio of 1e4.

`remove_skip` makes chosen blocks return f(z) only: the families with their own forward (`Family.without_skip`) are
overridden; for the others, a skip that is a module's output is zeroed, and an identity skip is subtracted from the
branch module's output, so the addition yields f(z). An activation after the addition is kept: ResNet v1, ResNet-V2
(not pre-activation), RegNet and ByobNet (GerNet, HaloNet) units return act(f(z)). Restored on exit.
This is an *inference-time lesion* of a trained network; Raghu et al. (Fig. 8) trained networks without the skip.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from ..errors import VitstudyError
from .families import FAMILIES, Block, Sublayer, blocks
from .layer import parse

Branch = Sublayer  # a sublayer whose skip and branch are known (skip and branch set, or one derived from post)
SUPPORTED = ", ".join(
    dict.fromkeys(
        f.name
        for f in FAMILIES
        if f.name not in ("parallel", "transformer_without_norm2", "prenorm_transformer", "no_skip", "conv")
    )
)
Terms = tuple[tuple[str, float], ...]


def branches(model: nn.Module) -> list[Sublayer]:
    """Every residual sublayer with a known skip and branch; a model with none is an error."""
    found = blocks(model)
    out = [s for b in found for s in b.sublayers if s.measurable]
    if not out:
        reasons = list(dict.fromkeys(b.family.reason for b in found if b.family.reason))
        if reasons:
            raise VitstudyError(f"{type(model).__name__} has no skip connections to measure: {reasons[0]}")
        raise VitstudyError(
            f"found no residual blocks of a known family in {type(model).__name__}; "
            f"skip connections are located for the block families: {SUPPORTED}"
        )
    return out


def terms(s: Sublayer) -> tuple[Terms, Terms]:
    """(z, f(z)) of a sublayer as signed sums of layer specs: one tapped layer, or `post` minus the other."""
    if s.derive == "branch":
        return ((s.skip, 1.0),), ((s.post, 1.0), (s.skip, -1.0))
    if s.derive == "skip":
        return ((s.post, 1.0), (s.branch, -1.0)), ((s.branch, 1.0),)
    return ((s.skip, 1.0),), ((s.branch, 1.0),)


def positions_channels(t: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, positions, C): tokens (NLC), NHWC or NCHW maps, positions in row-major order."""
    if layout == "NCHW":
        return t.flatten(2).transpose(1, 2)
    if layout == "NHWC":
        return t.flatten(1, 2)
    if layout == "NLC":
        return t
    raise VitstudyError(f"a residual stream of layout {layout} has no positions; expected tokens or feature maps")


def combine(parts: Terms, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ coef · tensor in float64 over (B, positions, C) tensors (see `positions_channels`)."""
    out = None
    for spec, coef in parts:
        t = tensors[spec].to(torch.float64)
        if out is not None and t.shape != out.shape:
            raise VitstudyError(
                f"'{spec}' has shape {tuple(t.shape)} but {tuple(out.shape)} was expected: "
                f"the terms of this residual sublayer do not line up"
            )
        out = coef * t if out is None else out + coef * t
    return out


# ---- removing skips


def _cut(s: Sublayer, which: str, mixed: bool) -> bool:
    """Whether `which` (attn, mlp, both) removes this sublayer's skip. A conv unit's one residual goes for any value
    in a convolutional block; in a `mixed` block (MaxViT: an MBConv unit, then attention and MLPs) only with both."""
    if s.sublayer == "res":
        return which == "both" or not mixed
    return which == "both" or (which == "mlp") == (s.kind == "mlp")


def _removable(s: Sublayer) -> bool:
    """A generic hook can remove the skip: a module outputs z (zeroed), or z is an input and a module outputs f(z)."""
    if not s.residual or s.derive is not None or s.skip is None or s.branch is None:
        return False
    _, is_input, index = parse(s.skip)
    return index is None and (not is_input or parse(s.branch)[1] is False)


def _block_removable(block: Block) -> bool:
    if block.family.without_skip is not None:
        return True
    subs = [s for s in _safe(block) if s.residual]
    return bool(subs) and all(_removable(s) for s in subs)


def _safe(block: Block) -> list[Sublayer]:
    try:
        return block.sublayers
    except VitstudyError:
        return []


def residual_blocks(model: nn.Module) -> list[str]:
    """Paths of the blocks whose skip connection can be removed (`remove_skip`), in forward order."""
    return [b.path for b in blocks(model) if _block_removable(b)]


def _hook_without_skip(model: nn.Module, block: Block, which: str) -> list:
    """Hooks that make the chosen sublayers of a generic block add f(z) to nothing."""
    modules = dict(model.named_modules())
    handles = []
    mixed = any(s.sublayer != "res" for s in block.sublayers)
    for s in block.sublayers:
        if not s.residual or not _cut(s, which, mixed):
            continue
        skip, is_input, _ = parse(s.skip)
        if not is_input:  # z is a module's output (projection / scaling / identity module): zero it
            handles.append(modules[skip].register_forward_hook(lambda m, a, out: torch.zeros_like(out)))
            continue
        held: dict[str, torch.Tensor] = {}  # z is a module's input: subtract it from the branch output
        handles.append(modules[skip].register_forward_pre_hook(lambda m, a, _h=held: _h.__setitem__("z", a[0])))
        handles.append(modules[parse(s.branch)[0]].register_forward_hook(lambda m, a, out, _h=held: out - _h["z"]))
    return handles


@contextmanager
def remove_skip(model: nn.Module, chosen: Iterable[str], which: str = "both"):
    """Within the context, the chosen blocks compute only their long branch: `out = f(z)`.

    `chosen`: module paths of residual blocks (see `residual_blocks`). `which`: 'attn', 'mlp' or 'both' for
    transformer blocks; convolutional blocks have one residual, removed for any value; the MBConv unit of a
    MaxViT block is removed with 'both' only ('attn' and 'mlp' remove its attention or MLP skips).
    """
    if which not in ("attn", "mlp", "both"):
        raise VitstudyError(f"which sublayer's skip to remove must be attn, mlp or both, got {which!r}")
    known = {b.path: b for b in blocks(model) if _block_removable(b)}
    chosen = list(chosen)
    for path in chosen:
        if path not in known:
            hint = (
                f"residual blocks: {', '.join(list(known)[:4])}, ..."
                if known
                else f"none found; supported: {SUPPORTED}"
            )
            raise VitstudyError(
                f"'{path}' is not a residual block of {type(model).__name__} whose skip can be removed ({hint})"
            )
    cut = {"attn", "mlp"} if which == "both" else {which}
    patched, handles = [], []
    try:
        for path in chosen:
            block = known[path]
            if block.family.without_skip is not None:
                block.module.forward = types.MethodType(block.family.without_skip(cut), block.module)
                patched.append(block.module)
            else:
                handles += _hook_without_skip(model, block, which)
        yield
    finally:
        for mod in patched:
            del mod.forward  # the instance attribute; the class forward is back
        for h in handles:
            h.remove()
