"""Where the residual branches of a timm model are, and removing a skip connection at inference.

A residual sublayer computes `out = z + f(z)` (Raghu et al. 2021, Sec. 6, Figs 6-8): `z` enters the
skip (identity or projection) branch and `f(z)` is the long branch. `branches(model)` names, per
sublayer, the module whose input or output is z and the one whose output is f(z), as layer specs:

| family (timm class)               | sublayers  | z                              | f(z)                        |
| --------------------------------- | ---------- | ------------------------------ | --------------------------- |
| ViT `Block`                       | attn, mlp  | `norm1:in`, `norm2:in`         | `ls1`, `ls2` (before drop path) |
| Swin `SwinTransformerBlock`       | attn, mlp  | `norm1:in`, `norm2:in`         | `drop_path1`, `drop_path2`  |
| ResNet `BasicBlock`/`Bottleneck`  | res        | block input or `downsample`    | last BN (`bn2`/`bn3`), `se` when present |
| ResNetV2 `PreAct*`/`Bottleneck`   | res        | block input or `downsample`    | `drop_path`                 |
| ConvNeXt `ConvNeXtBlock`          | res        | `shortcut`                     | `drop_path`                 |
| AlterNet `LocalAttentionBlock`    | attn       | block input                    | `drop_path`                 |

`remove_skip` overrides the forward of chosen blocks so that they return f(z) only (the ResNet v1
post-addition ReLU is kept); the original forward is restored on exit. This is an *inference-time
lesion* of a trained network; Raghu et al. (Fig. 8) trained networks without the skip instead.
"""
from __future__ import annotations

import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable

from torch import nn

from ..errors import VitstudyError
from ..pipeline.layers import INPUT

SUPPORTED = "ViT Block, Swin block, ResNet BasicBlock/Bottleneck, ResNetV2 blocks, ConvNeXt block, AlterNet attention block"


@dataclass(frozen=True)
class Branch:
    """One residual sublayer: `out = z + f(z)`."""

    block: str  # module path of the residual block, e.g. 'blocks.3' or 'layer2.0'
    index: int  # block index in forward order
    sublayer: str  # 'attn', 'mlp' (transformers) or 'res' (one residual per convolutional block)
    skip: str  # layer spec of z (module output, or 'NAME:in' for a module's input)
    branch: str  # layer spec of f(z)
    post: str  # layer spec of the stream right after the addition (`z + f(z)`, post-activation for ResNet v1)


def _family(mod: nn.Module) -> str | None:
    name = type(mod).__name__
    has = lambda *attrs: all(hasattr(mod, a) for a in attrs)  # noqa: E731
    if name == "Block" and has("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
        return "vit"
    if name == "SwinTransformerBlock" and has("norm1", "drop_path1", "norm2", "drop_path2", "mlp"):
        return "swin"
    if name in ("BasicBlock", "Bottleneck") and has("conv1", "bn1", "downsample") and (has("bn3") or has("bn2")) \
            and not has("norm1"):
        return "resnet"
    if name in ("PreActBasic", "PreActBottleneck", "Bottleneck") and has("norm1", "conv1", "downsample", "drop_path"):
        return "resnetv2_preact" if name.startswith("PreAct") else "resnetv2"
    if name == "ConvNeXtBlock" and has("conv_dw", "shortcut", "drop_path"):
        return "convnext"
    if name == "LocalAttentionBlock" and has("norm1", "conv", "norm2", "attn", "drop_path"):
        return "alternet_msa"
    return None


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(path, module, family) of every residual block of a known family, in module order."""
    found = []
    for name, mod in model.named_modules():
        fam = _family(mod)
        if fam and name and not any(name.startswith(p + ".") for p, _, _ in found):
            found.append((name, mod, fam))
    return found


def branches(model: nn.Module) -> list[Branch]:
    """Every residual sublayer of the model; a model with none of a known family is an error."""
    blocks = residual_blocks(model)
    if not blocks:
        raise VitstudyError(
            f"found no residual blocks of a known family in {type(model).__name__}; "
            f"skip connections are located for: {SUPPORTED}"
        )
    out: list[Branch] = []
    for i, (b, mod, fam) in enumerate(blocks):
        if fam in ("vit", "swin"):
            f1, f2 = ("ls1", "ls2") if fam == "vit" else ("drop_path1", "drop_path2")
            out.append(Branch(b, i, "attn", f"{b}.norm1{INPUT}", f"{b}.{f1}", f"{b}.norm2{INPUT}"))
            out.append(Branch(b, i, "mlp", f"{b}.norm2{INPUT}", f"{b}.{f2}", b))
        elif fam == "alternet_msa":  # x + drop_path(attn(...)): an attention sublayer with an identity shortcut
            out.append(Branch(b, i, "attn", f"{b}{INPUT}", f"{b}.drop_path", b))
        else:
            if fam == "convnext":
                skip = f"{b}.shortcut"
            else:
                skip = f"{b}.downsample" if mod.downsample is not None else f"{b}{INPUT}"
            if fam == "resnet":
                last = "bn3" if hasattr(mod, "bn3") else "bn2"
                branch = "se" if getattr(mod, "se", None) is not None else last
            else:
                branch = "drop_path"
            out.append(Branch(b, i, "res", skip, f"{b}.{branch}", b))
    return out


# ---- removing skip connections (forward overrides, one per family) ----

def _vit_forward(which: set[str]):
    def forward(self, x, attn_mask=None, is_causal=False):
        kw = {} if attn_mask is None and not is_causal else {"attn_mask": attn_mask, "is_causal": is_causal}
        h = self.drop_path1(self.ls1(self.attn(self.norm1(x), **kw)))
        x = h if "attn" in which else x + h
        h = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return h if "mlp" in which else x + h

    return forward


def _swin_forward(which: set[str]):
    def forward(self, x):
        B, H, W, C = x.shape
        h = self.drop_path1(self._attn(self.norm1(x)))
        x = h if "attn" in which else x + h
        x = x.reshape(B, -1, C)
        h = self.drop_path2(self.mlp(self.norm2(x)))
        x = h if "mlp" in which else x + h
        return x.reshape(B, H, W, C)

    return forward


def _resnet_forward(self, x):
    # timm resnet.py BasicBlock / Bottleneck forward without `x += shortcut`; the final ReLU is kept
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


def _resnetv2_preact_forward(self, x):
    x = self.conv1(self.norm1(x))
    if hasattr(self, "conv3"):
        x = self.conv3(self.norm3(self.conv2(self.norm2(x))))
    else:
        x = self.conv2(self.norm2(x))
    return self.drop_path(x)


def _resnetv2_forward(self, x):
    x = self.norm1(self.conv1(x))
    x = self.norm2(self.conv2(x))
    x = self.norm3(self.conv3(x))
    return self.act3(self.drop_path(x))


def _convnext_forward(self, x):
    x = self.conv_dw(x)
    if self.use_conv_mlp:
        x = self.mlp(self.norm(x))
    else:
        x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    if self.gamma is not None:
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
    return self.drop_path(x)


def _alternet_msa_forward(self, x):
    return self.drop_path(self.attn(self.norm2(self.conv(self.norm1(x)))))


@contextmanager
def remove_skip(model: nn.Module, blocks: Iterable[str], which: str = "both"):
    """Within the context, the chosen blocks compute only their long branch: `out = f(z)`.

    `blocks`: module paths of residual blocks (see `residual_blocks`). `which`: 'attn', 'mlp' or 'both'
    for transformer blocks; convolutional blocks have one residual, removed for any value.
    """
    if which not in ("attn", "mlp", "both"):
        raise VitstudyError(f"which sublayer's skip to remove must be attn, mlp or both, got {which!r}")
    known = {p: (m, f) for p, m, f in residual_blocks(model)}
    chosen = list(blocks)
    for b in chosen:
        if b not in known:
            hint = f"residual blocks: {', '.join(list(known)[:4])}, ..." if known else f"none found; supported: {SUPPORTED}"
            raise VitstudyError(f"'{b}' is not a residual block of {type(model).__name__} ({hint})")
    subs = {"attn", "mlp"} if which == "both" else {which}
    patched = []
    try:
        for b in chosen:
            mod, fam = known[b]
            if fam == "vit":
                fn = _vit_forward(subs)
            elif fam == "swin":
                fn = _swin_forward(subs)
            elif fam == "resnet":
                fn = _resnet_forward
            elif fam == "resnetv2_preact":
                fn = _resnetv2_preact_forward
            elif fam == "resnetv2":
                fn = _resnetv2_forward
            elif fam == "alternet_msa":
                fn = _alternet_msa_forward
            else:
                fn = _convnext_forward
            mod.forward = types.MethodType(fn, mod)
            patched.append(mod)
        yield
    finally:
        for mod in patched:
            del mod.forward  # the instance attribute; the class forward is back
