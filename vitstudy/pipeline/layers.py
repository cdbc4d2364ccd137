"""Which representations to take: layer presets (`blocks`, `all`, `latents`), explicit names and regexes, checked
by one probe forward pass; and the token modes that turn a layer's tensor into one row per image.

A layer name is the model's own module path (`blocks.3`, `layer2.1.conv2`; `NAME:in` is a module's input, see
`anatomy.layer`). Preset lists come from the model's anatomy and are put in forward order and cleaned by the
probe: modules that run more than once, return no tensor, or return the very tensor another listed layer
returns (an activation that is also the block output) are dropped.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from ..anatomy import families, latents
from ..anatomy import tokens as anatomy_tokens
from ..anatomy.blocks import _CONV
from ..anatomy.layer import INPUT, Layer, parse
from ..errors import VitstudyError, closest

PRESETS = {"blocks": families.block_layers, "all": families.dense_layers, "latents": latents.latent_names}


def _match(spec: str, available: Sequence[str]) -> list[str]:
    if spec in available or parse(spec)[0] in available:  # a module, its input (`:in`) or one of its outputs (`[i]`)
        return [spec]
    try:
        pattern = re.compile(spec)
    except re.error:
        return []
    return [n for n in available if pattern.fullmatch(n)]


def select(model: nn.Module, spec) -> tuple[list[str], bool]:
    """Names for a layer spec; the flag says whether the order is the user's (explicit) or forward order."""
    available = [n for n, _ in model.named_modules() if n]
    if isinstance(spec, str) and spec in PRESETS:
        names = PRESETS[spec](model)
        if not names:
            raise VitstudyError(
                f"found no residual blocks in {type(model).__name__}; give module names, e.g. layers=[{', '.join(available[:3])}]"
            )
        return names, False
    specs = [spec] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    explicit = True
    for s in specs:
        s = str(s)
        hits = _match(s, available)
        if not hits:
            raise VitstudyError(
                f"no layer '{s}' in {type(model).__name__} (layers are module paths, 'blocks', 'all' or a regex); "
                f"{closest(s, available)}"
            )
        if len(hits) > 1 or hits[0] != s:
            explicit = False
        names += [h for h in hits if h not in names]
    return names, explicit and len(specs) == len(names)


def _layout(mod: nn.Module, shape: tuple, model: nn.Module, input_hw: tuple | None = None) -> str:
    if len(shape) == 1:
        return "NC"
    if len(shape) == 2:
        return "NLC"
    if len(shape) == 3:
        if isinstance(mod, _CONV + (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            return "NCHW"
        fit = anatomy_tokens.channels_last_fit(shape, input_hw)  # which reading puts the image's aspect on H, W
        if fit is not None:
            return fit
        return "NHWC" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "NCHW"
    return "N" + "?" * len(shape)


def probe(model: nn.Module, names: list[str], input_size, keep_order: bool) -> list[Layer]:
    """Run one forward on a dummy input to check each layer and find forward order and layouts.

    Explicitly named layers that run twice or return no tensor are errors; preset layers are dropped.
    """
    modules = dict(model.named_modules())
    seen: dict[str, list] = {n: [] for n in names}
    order: list[str] = []
    handles = []

    def make(name, is_input):
        _, _, index = parse(name)

        def hook(mod, args, output=None):
            value = (args[index or 0] if args else None) if is_input else output if index is None else output[index]
            seen[name].append(value)
            if name not in order:
                order.append(name)

        return hook

    for n in names:
        path, is_input, _ = parse(n)
        mod = modules[path]
        if is_input:
            handles.append(mod.register_forward_pre_hook(make(n, True)))
        else:
            handles.append(mod.register_forward_hook(make(n, False)))
    try:
        with torch.inference_mode():
            model(torch.zeros(2, *input_size))
    finally:
        for h in handles:
            h.remove()
    layers: list[Layer] = []
    kept_tensors: list[torch.Tensor] = []
    sequence = names if keep_order else order
    for n in sequence:
        values = seen[n]
        problem = None
        if len(values) == 0:
            problem = "does not run in the forward pass"
        elif len(values) > 1:
            problem = f"runs {len(values)} times per forward pass"
        elif isinstance(values[0], (tuple, list)) and any(isinstance(v, torch.Tensor) for v in values[0]):
            problem = (
                f"returns a {type(values[0]).__name__} of {len(values[0])}, not a batch tensor; "
                f"pick one element with '{n}[i]'"
            )
        elif not isinstance(values[0], torch.Tensor) or values[0].dim() < 2:
            problem = f"returns {type(values[0]).__name__}, not a batch tensor"
        elif values[0].shape[0] != 2:
            problem = f"has a leading dimension of {values[0].shape[0]} for 2 images (windowed or reshaped), not one row per image"
        if problem:
            if keep_order:
                raise VitstudyError(f"layer '{n}' {problem}; choose another module (see `vitstudy layers`)")
            continue
        t = values[0]
        path, is_input, index = parse(n)
        blocks = anatomy_tokens.nested_blocks(model, path, tuple(t.shape[1:]))
        if blocks:  # NesT: the (H, W, C) map its nested blocks were cut from (what Layer.unblocked returns)
            from timm.models.nest import deblockify

            shape, layout = tuple(deblockify(t, blocks).shape[1:]), "NHWC"
        else:
            shape = tuple(t.shape[1:])
            layout = _layout(modules[path], shape, model, tuple(input_size[-2:]))
        grid = anatomy_tokens.infer_grid(model, shape[0], tuple(input_size[-2:])) if layout == "NLC" else None
        layers.append(
            Layer(
                name=n,
                module=path,
                is_input=is_input,
                shape=shape,
                layout=layout,
                index=index,
                grid=grid,
                blocks=blocks,
            )
        )
        kept_tensors.append(t)
    if not keep_order:  # drop a layer whose tensor is the same object as a later one (e.g. act3 == block output)
        unique = []
        for i, layer in enumerate(layers):
            if not any(kept_tensors[i] is kept_tensors[j] for j in range(i + 1, len(layers))):
                unique.append(layer)
        layers = unique
    if not layers:
        raise VitstudyError("none of the selected layers returns a tensor in the forward pass")
    return layers


def resolve(model: nn.Module, spec, input_size) -> list[Layer]:
    """Layer spec -> checked layers, in the requested order (explicit lists) or forward order (presets)."""
    names, explicit = select(model, spec)
    return probe(model, names, tuple(input_size), keep_order=explicit)


def features(x: torch.Tensor, layer: Layer, tokens: str, model: nn.Module) -> torch.Tensor:
    """One row per image: the representation CKA compares, according to the token mode.

    `flatten` keeps every position and channel (CLS included), `cls` the first token, `mean` the mean over patch
    tokens / spatial positions (prefix tokens excluded, as `anatomy.tokens` counts them for this many tokens).
    """
    if tokens not in ("flatten", "cls", "mean"):
        raise VitstudyError(f"tokens={tokens!r} is not a token mode; valid: flatten, cls, mean")
    if tokens == "flatten" or layer.layout == "NC":
        return x.reshape(x.shape[0], -1)
    if layer.layout == "NLC":
        prefix = anatomy_tokens.prefix_of(model, layer, x.shape[1])
        if tokens == "cls":
            if not (anatomy_tokens.has_cls(model) and prefix):
                raise VitstudyError(
                    f"layer '{layer.name}' has no CLS token (the model has none); use tokens=mean or tokens=flatten"
                )
            return x[:, 0]
        return x[:, prefix:].mean(1)
    if tokens == "cls":
        raise VitstudyError(
            f"layer '{layer.name}' is a {layer.layout} feature map with no CLS token; use tokens=mean or tokens=flatten"
        )
    dims = (1, 2) if layer.layout == "NHWC" else (2, 3)
    return x.mean(dim=dims)


__all__ = ["INPUT", "Layer", "PRESETS", "features", "probe", "resolve", "select"]
