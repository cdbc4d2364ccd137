"""Residual block families: one registry that says, for each kind of timm block, what its sublayers are.

A residual sublayer computes `out = z + f(z)` (Raghu et al. 2021, Sec. 6). For every block of a model (the
`blocks` preset, `anatomy.blocks.block_names`) the first family that matches it gives its sublayers:

| family             | timm classes                                  | sublayers | z (skip)              | f(z) (branch)          | lesion zeroes        |
| ------------------ | --------------------------------------------- | --------- | --------------------- | ---------------------- | -------------------- |
| vit                | vision_transformer `Block` (ViT, DeiT, PiT)   | attn, mlp | `norm1:in`, `norm2:in`| `ls1`, `ls2`           | `attn`, `mlp`        |
| swin               | `SwinTransformerBlock`                        | attn, mlp | `norm1:in`, `norm2:in`| `drop_path1`, `drop_path2` | `attn`, `mlp`    |
| prenorm_transformer| any other block with attn, norm2, mlp         | attn, mlp | -                     | -                      | `attn`, `mlp`        |
| postnorm_transformer| `ResPostBlock`, `SwinTransformerV2Block`     | attn, mlp | -                     | -                      | `norm1`, `norm2`     |
| resnet             | resnet `BasicBlock`, `Bottleneck`             | res       | block input / `downsample` | `bn2`/`bn3` (`se`) | `bn2`/`bn3`; 3x3: `bn2` |
| resnetv2_preact    | resnetv2 `PreActBasic`, `PreActBottleneck`    | res       | block input / `downsample` | `drop_path`        | `conv2`/`conv3`; 3x3: `conv2` |
| resnetv2           | resnetv2 `Bottleneck`                         | res       | block input / `downsample` | `drop_path`        | `norm3`; 3x3: `norm2`|
| convnext           | `ConvNeXtBlock`                               | res       | `shortcut`            | `drop_path`            | `mlp`                |
| alternet_msa       | vitstudy `LocalAttentionBlock`                | attn      | block input           | `drop_path`            | `attn`               |
| conv (any other)   | -                                             | -         | -                     | -                      | -                    |

Each sublayer also names `post`, the residual stream right after its addition (Park & Kim's latent after it) and
its `kind` (attention, mlp, conv). Families without a module for f(z) leave `skip`/`branch` unset: latents and
lesions work on them, skip ratios and receptive fields refuse them. `without_skip` overrides a block's forward so
that it returns f(z) only (an inference-time lesion of Raghu et al.'s Fig. 8, which retrains instead).
Parallel blocks (attention and MLP side by side) have no stream between their sublayers and are refused.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import VitstudyError
from .blocks import block_names
from .layer import INPUT


def _classes(module: str, *names: str) -> tuple[type, ...]:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return ()
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n))


POST_NORM = _classes("timm.models.vision_transformer", "ResPostBlock") + \
    _classes("timm.models.swin_transformer_v2", "SwinTransformerV2Block")
PARALLEL = _classes("timm.models.vision_transformer", "ParallelScalingBlock", "DiffParallelScalingBlock", "ParallelThingsBlock")


@dataclass(frozen=True)
class Sublayer:
    """One residual sublayer `out = z + f(z)` of a block."""

    block: str  # module path of the block, e.g. 'blocks.3' or 'layer2.0'
    index: int  # block index in forward order
    sublayer: str  # 'attn', 'mlp' (transformers) or 'res' (one residual per convolutional block)
    kind: str  # what the stream after it is labelled: 'attention', 'mlp' or 'conv'
    post: str  # layer spec of the stream right after the addition (z + f(z); post-activation for ResNet v1)
    zero: str | None  # module whose output is zeroed to remove the sublayer (the skip path is kept)
    skip: str | None = None  # layer spec of z (a module output, or 'NAME:in' for a module's input)
    branch: str | None = None  # layer spec of f(z)
    zero_conv3x3: str | None = None  # conv units: the module whose zeroed output removes the 3x3 conv (after its norm)


@dataclass(frozen=True)
class Family:
    name: str
    match: Callable[[nn.Module], bool]
    sublayers: Callable[[str, int, nn.Module], list[Sublayer]]
    without_skip: Callable[[set[str]], Callable] | None = None  # (sublayers to cut) -> forward returning f(z) only


def _has(mod: nn.Module, *attrs: str) -> bool:
    return all(hasattr(mod, a) for a in attrs)


def _named(*names: str) -> Callable[[nn.Module], bool]:
    return lambda mod: type(mod).__name__ in names


# ---- transformers

def _vit_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn", f"{b}.norm1{INPUT}", f"{b}.ls1"),
            Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", f"{b}.ls2")]


def _vit_without(which: set[str]):
    def forward(self, x, attn_mask=None, is_causal=False):
        kw = {} if attn_mask is None and not is_causal else {"attn_mask": attn_mask, "is_causal": is_causal}
        h = self.drop_path1(self.ls1(self.attn(self.norm1(x), **kw)))
        x = h if "attn" in which else x + h
        h = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return h if "mlp" in which else x + h

    return forward


def _swin_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn", f"{b}.norm1{INPUT}", f"{b}.drop_path1"),
            Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", f"{b}.drop_path2")]


def _swin_without(which: set[str]):
    def forward(self, x):
        B, H, W, C = x.shape
        h = self.drop_path1(self._attn(self.norm1(x)))
        x = h if "attn" in which else x + h
        x = x.reshape(B, -1, C)
        h = self.drop_path2(self.mlp(self.norm2(x)))
        x = h if "mlp" in which else x + h
        return x.reshape(B, H, W, C)

    return forward


def _prenorm_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn"),
            Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp")]


def _postnorm_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "attn", "attention", f"{b}.mlp{INPUT}", f"{b}.norm1"),
            Sublayer(b, i, "mlp", "mlp", b, f"{b}.norm2")]


def _parallel(b: str, i: int, mod) -> list[Sublayer]:
    raise VitstudyError(f"block '{b}' ({type(mod).__name__}) has no residual stream between its attention and MLP "
                        f"sublayers (they run in parallel), so its sublayers cannot be told apart; use layers=blocks "
                        f"or a list of module names")


def _alternet_msa_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "attn", "attention", b, f"{b}.attn", f"{b}{INPUT}", f"{b}.drop_path")]


def _alternet_msa_without(which: set[str]):
    def forward(self, x):
        return self.drop_path(self.attn(self.norm2(self.conv(self.norm1(x)))))

    return forward


# ---- convolutional units

def _shortcut(b: str, mod) -> str:
    return f"{b}.downsample" if getattr(mod, "downsample", None) is not None else f"{b}{INPUT}"


def _resnet_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    last = "bn3" if hasattr(mod, "bn3") else "bn2"
    branch = "se" if getattr(mod, "se", None) is not None else last
    return [Sublayer(b, i, "res", "conv", b, f"{b}.{last}", _shortcut(b, mod), f"{b}.{branch}", f"{b}.bn2")]


def _resnet_without(which: set[str]):
    def forward(self, x):  # timm resnet.py BasicBlock / Bottleneck forward without `x += shortcut`; the final ReLU is kept
        if hasattr(self, "bn3"):
            x = self.act1(self.bn1(self.conv1(x)))
            x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
            x = self.bn3(self.conv3(x))
            act = self.act3
        else:
            x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
            x = self.bn2(self.conv2(x))
            act = self.act2
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return act(x)

    return forward


def _preact_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    last = "conv3" if hasattr(mod, "conv3") else "conv2"
    return [Sublayer(b, i, "res", "conv", b, f"{b}.{last}", _shortcut(b, mod), f"{b}.drop_path", f"{b}.conv2")]


def _preact_without(which: set[str]):
    def forward(self, x):
        x = self.conv1(self.norm1(x))
        if hasattr(self, "conv3"):
            x = self.conv3(self.norm3(self.conv2(self.norm2(x))))
        else:
            x = self.conv2(self.norm2(x))
        return self.drop_path(x)

    return forward


def _resnetv2_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "res", "conv", b, f"{b}.norm3", _shortcut(b, mod), f"{b}.drop_path", f"{b}.norm2")]


def _resnetv2_without(which: set[str]):
    def forward(self, x):
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(self.drop_path(x))

    return forward


def _convnext_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "res", "conv", b, f"{b}.mlp", f"{b}.shortcut", f"{b}.drop_path")]


def _convnext_without(which: set[str]):
    def forward(self, x):
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x)

    return forward


def _conv_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "res", "conv", b, None)]


FAMILIES: list[Family] = [
    Family("parallel", lambda m: isinstance(m, PARALLEL), _parallel),
    Family("vit", lambda m: type(m).__name__ == "Block" and _has(m, "norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"),
           _vit_sublayers, _vit_without),
    Family("swin", lambda m: type(m).__name__ == "SwinTransformerBlock" and _has(m, "norm1", "drop_path1", "norm2", "drop_path2", "mlp"),
           _swin_sublayers, _swin_without),
    Family("postnorm_transformer", lambda m: isinstance(m, POST_NORM), _postnorm_sublayers),
    Family("prenorm_transformer", lambda m: _has(m, "attn", "mlp", "norm2"), _prenorm_sublayers),
    Family("transformer_without_norm2", lambda m: _has(m, "attn", "mlp"), _parallel),
    Family("resnet", lambda m: type(m).__name__ in ("BasicBlock", "Bottleneck") and _has(m, "conv1", "bn1", "downsample")
           and (_has(m, "bn3") or _has(m, "bn2")) and not hasattr(m, "norm1"), _resnet_sublayers, _resnet_without),
    Family("resnetv2_preact", lambda m: type(m).__name__ in ("PreActBasic", "PreActBottleneck") and _has(m, "norm1", "conv1", "downsample", "drop_path"),
           _preact_sublayers, _preact_without),
    Family("resnetv2", lambda m: type(m).__name__ == "Bottleneck" and _has(m, "norm1", "conv1", "downsample", "drop_path"),
           _resnetv2_sublayers, _resnetv2_without),
    Family("convnext", lambda m: type(m).__name__ == "ConvNeXtBlock" and _has(m, "conv_dw", "shortcut", "drop_path"),
           _convnext_sublayers, _convnext_without),
    Family("alternet_msa", lambda m: type(m).__name__ == "LocalAttentionBlock" and _has(m, "norm1", "conv", "norm2", "attn", "drop_path"),
           _alternet_msa_sublayers, _alternet_msa_without),
    Family("conv", lambda m: True, _conv_sublayers),
]


def family_of(mod: nn.Module) -> Family:
    return next(f for f in FAMILIES if f.match(mod))


@dataclass(frozen=True)
class Block:
    path: str
    index: int
    module: nn.Module
    family: Family

    @property
    def sublayers(self) -> list[Sublayer]:
        return self.family.sublayers(self.path, self.index, self.module)


def blocks(model: nn.Module) -> list[Block]:
    """Every residual block of the model (the `blocks` preset) with its family, in module order."""
    modules = dict(model.named_modules())
    return [Block(b, i, modules[b], family_of(modules[b])) for i, b in enumerate(block_names(model))]


def is_transformer(model: nn.Module) -> bool:
    """Whether the model has attention sublayers (figure colours and markers)."""
    return any(s.kind == "attention" for b in _safe_blocks(model) for s in _safe_sublayers(b))


def _safe_blocks(model):
    try:
        return blocks(model)
    except VitstudyError:
        return []


def _safe_sublayers(block: Block) -> list[Sublayer]:
    try:
        return block.sublayers
    except VitstudyError:
        return []
