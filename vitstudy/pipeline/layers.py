"""Which representations to take: layer presets (`blocks`, `all`), explicit names and regexes.

A layer name is the model's own module path (`blocks.3`, `layer2.1.conv2`). The suffix `:in` names the
*input* of a module: `blocks.3.norm2:in` is the residual stream after block 3's attention sublayer,
which no module outputs on its own. Preset lists are put in forward order and cleaned by one probe
forward pass: modules that run more than once, return no tensor, or return the very tensor another
listed layer returns (an activation that is also the block output) are dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import VitstudyError, closest

INPUT = ":in"
_BLOCK_CLASS = re.compile(r"(Block|Bottleneck|Basic|BasicBlock|Residual|ResBlock|DenseLayer)$")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm)
_ACT = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Tanh, nn.Sigmoid)


@dataclass(frozen=True)
class Layer:
    """One representation: a module path, whether it is the module's input, its output layout."""

    name: str  # as written in outputs, e.g. 'blocks.3' or 'blocks.3.norm2:in'
    module: str  # module path
    is_input: bool
    shape: tuple  # per-image shape seen in the probe (without batch)
    layout: str  # 'NCHW', 'NHWC', 'NLC' (tokens) or 'NC'


def _is_block(name: str, mod: nn.Module) -> bool:
    return bool(name) and bool(_BLOCK_CLASS.search(type(mod).__name__))


def block_names(model: nn.Module) -> list[str]:
    """Residual blocks: ViT `blocks.i`, ResNet `layerS.B`, Swin `layers.S.blocks.B`, ConvNeXt `stages.S.blocks.B`."""
    found: list[str] = []
    for name, mod in model.named_modules():
        if _is_block(name, mod) and not any(name.startswith(b + ".") for b in found):
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


# Named layer presets besides 'blocks' and 'all': analysis modules may add their own (e.g. 'latents').
PRESETS: dict[str, Callable[[nn.Module], list[str]]] = {}


def _match(spec: str, available: Sequence[str]) -> list[str]:
    if spec in available:
        return [spec]
    base = spec[: -len(INPUT)] if spec.endswith(INPUT) else None
    if base is not None and base in available:
        return [spec]
    try:
        pattern = re.compile(spec)
    except re.error:
        return []
    return [n for n in available if pattern.fullmatch(n)]


def select(model: nn.Module, spec) -> tuple[list[str], bool]:
    """Names for a layer spec; the flag says whether the order is the user's (explicit) or forward order."""
    available = [n for n, _ in model.named_modules() if n]
    if isinstance(spec, str) and spec in ("blocks", "all", *PRESETS):
        names = {"blocks": block_names, "all": dense_names, **PRESETS}[spec](model)
        if not names:
            raise VitstudyError(f"found no residual blocks in {type(model).__name__}; give module names, e.g. layers=[{', '.join(available[:3])}]")
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


def _layout(mod: nn.Module, shape: tuple, model: nn.Module) -> str:
    if len(shape) == 1:
        return "NC"
    if len(shape) == 2:
        return "NLC"
    if len(shape) == 3:
        if isinstance(mod, _CONV + (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            return "NCHW"
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
        def hook(mod, args, output=None):
            value = args[0] if is_input and args else output
            seen[name].append(value)
            if name not in order:
                order.append(name)

        return hook

    for n in names:
        is_input = n.endswith(INPUT)
        mod = modules[n[: -len(INPUT)] if is_input else n]
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
        elif not isinstance(values[0], torch.Tensor) or values[0].dim() < 2:
            problem = f"returns {type(values[0]).__name__}, not a batch tensor"
        elif values[0].shape[0] != 2:
            problem = f"has a leading dimension of {values[0].shape[0]} for 2 images (windowed or reshaped), not one row per image"
        if problem:
            if keep_order:
                raise VitstudyError(f"layer '{n}' {problem}; choose another module (see `vitstudy layers`)")
            continue
        t = values[0]
        layers.append(Layer(n, n[: -len(INPUT)] if n.endswith(INPUT) else n, n.endswith(INPUT), tuple(t.shape[1:]), _layout(modules[n.split(":")[0]], tuple(t.shape[1:]), model)))
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


def token_info(model: nn.Module) -> tuple[int, bool, int | None]:
    """(prefix tokens, whether the first is CLS, tokens per image in the blocks) of a timm transformer."""
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    patches = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    return prefix, getattr(model, "cls_token", None) is not None, (patches + prefix) if patches else None


def features(x: torch.Tensor, layer: Layer, tokens: str, num_prefix: int = 0, has_cls: bool = False,
             total_tokens: int | None = None) -> torch.Tensor:
    """One row per image: the representation CKA compares, according to the token mode.

    `flatten` keeps every position and channel (CLS included), `cls` the first token, `mean` the mean
    over patch tokens / spatial positions (prefix tokens excluded).
    """
    if tokens not in ("flatten", "cls", "mean"):
        raise VitstudyError(f"tokens={tokens!r} is not a token mode; valid: flatten, cls, mean")
    if tokens == "flatten" or layer.layout == "NC":
        return x.reshape(x.shape[0], -1)
    if layer.layout == "NLC":
        if total_tokens is not None and x.shape[1] != total_tokens:  # e.g. patch_embed: no prefix tokens yet
            num_prefix, has_cls = 0, False
        if tokens == "cls":
            if not has_cls:
                raise VitstudyError(f"layer '{layer.name}' has no CLS token (the model has none); use tokens=mean or tokens=flatten")
            return x[:, 0]
        return x[:, num_prefix:].mean(1)
    if tokens == "cls":
        raise VitstudyError(f"layer '{layer.name}' is a {layer.layout} feature map with no CLS token; use tokens=mean or tokens=flatten")
    dims = (1, 2) if layer.layout == "NHWC" else (2, 3)
    return x.mean(dim=dims)
