"""Capture named module outputs (or inputs) during a forward pass; hooks are removed afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from torch import nn

from .layers import Layer


@contextmanager
def tap(model: nn.Module, layers: Sequence[Layer], fn: Callable[[Layer, torch.Tensor], None]):
    """Call `fn(layer, tensor)` as each layer's tensor is produced, so it can be reduced and freed at once.

    Reducing inside the hook keeps memory flat: no layer's activation outlives its own use.
    """
    modules = dict(model.named_modules())
    handles = []
    for layer in layers:
        mod = modules[layer.module]
        if layer.is_input:
            handles.append(mod.register_forward_pre_hook(lambda m, args, _l=layer: fn(_l, _l.of_input(args))))
        else:
            handles.append(mod.register_forward_hook(lambda m, args, out, _l=layer: fn(_l, _l.of_output(out))))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
