"""A layer: one representation of a model, named by its module path (the lingua franca of timm, hooks and users).

The suffix `:in` names the *input* of a module: `blocks.3.norm2:in` is the residual stream after block 3's
attention sublayer, which no module outputs on its own.
"""
from __future__ import annotations

from dataclasses import dataclass

INPUT = ":in"


@dataclass(frozen=True)
class Layer:
    """One representation: a module path, whether it is the module's input, its output layout."""

    name: str  # as written in outputs, e.g. 'blocks.3' or 'blocks.3.norm2:in'
    module: str  # module path
    is_input: bool
    shape: tuple  # per-image shape seen in the probe (without batch)
    layout: str  # 'NCHW', 'NHWC', 'NLC' (tokens) or 'NC'
