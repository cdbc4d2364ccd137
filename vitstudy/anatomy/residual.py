"""Where the residual branches of a timm model are, and removing a skip connection at inference.

A residual sublayer computes `out = z + f(z)` (Raghu et al. 2021, Sec. 6, Figs 6-8): `z` enters the skip (identity
or projection) branch and `f(z)` is the long branch. `branches(model)` lists every sublayer whose family (see
`anatomy.families`, which holds the table) names a module for z and one for f(z), as layer specs.

`remove_skip` overrides the forward of chosen blocks so that they return f(z) only (the ResNet v1 post-addition
ReLU is kept); the original forward is restored on exit. This is an *inference-time lesion* of a trained network;
Raghu et al. (Fig. 8) trained networks without the skip instead.
"""
from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterable

from torch import nn

from ..errors import VitstudyError
from .families import FAMILIES, Sublayer, blocks

Branch = Sublayer  # a sublayer whose skip and branch are known (skip and branch set)
SUPPORTED = ", ".join(f.name for f in FAMILIES if f.without_skip is not None)


def branches(model: nn.Module) -> list[Sublayer]:
    """Every residual sublayer with a known skip and branch; a model with none is an error."""
    out = [s for b in blocks(model) for s in b.sublayers if s.branch is not None]
    if not out:
        raise VitstudyError(f"found no residual blocks of a known family in {type(model).__name__}; "
                            f"skip connections are located for the block families: {SUPPORTED}")
    return out


def residual_blocks(model: nn.Module) -> list[str]:
    """Paths of the blocks whose skip connection can be removed (`remove_skip`), in forward order."""
    return [b.path for b in blocks(model) if b.family.without_skip is not None]


@contextmanager
def remove_skip(model: nn.Module, chosen: Iterable[str], which: str = "both"):
    """Within the context, the chosen blocks compute only their long branch: `out = f(z)`.

    `chosen`: module paths of residual blocks (see `residual_blocks`). `which`: 'attn', 'mlp' or 'both' for
    transformer blocks; convolutional blocks have one residual, removed for any value.
    """
    if which not in ("attn", "mlp", "both"):
        raise VitstudyError(f"which sublayer's skip to remove must be attn, mlp or both, got {which!r}")
    known = {b.path: b for b in blocks(model) if b.family.without_skip is not None}
    chosen = list(chosen)
    for path in chosen:
        if path not in known:
            hint = f"residual blocks: {', '.join(list(known)[:4])}, ..." if known else f"none found; supported: {SUPPORTED}"
            raise VitstudyError(f"'{path}' is not a residual block of {type(model).__name__} ({hint})")
    cut = {"attn", "mlp"} if which == "both" else {which}
    patched = []
    try:
        for path in chosen:
            block = known[path]
            block.module.forward = types.MethodType(block.family.without_skip(cut), block.module)
            patched.append(block.module)
        yield
    finally:
        for mod in patched:
            del mod.forward  # the instance attribute; the class forward is back
