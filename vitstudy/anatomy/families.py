"""Residual block families: one registry that says, for each kind of timm block, what its sublayers are.

A residual sublayer computes `out = z + f(z)` (Raghu et al. 2021, Sec. 6). For every block of a model (the
`blocks` preset, `anatomy.blocks.block_names`) the first family that matches it gives its sublayers. Where a
module outputs f(z) (or z) on its own, that module is tapped; where none does (a branch scaled inside the
addition, one drop-path module shared by both sublayers, a pooled or projected shortcut), the missing term is
derived exactly from the other two in float64: f(z) = post - z, or z = post - f(z) (`derive`).

| family             | timm classes                                  | sublayers | z (skip)              | f(z) (branch)          | lesion zeroes        |
| ------------------ | --------------------------------------------- | --------- | --------------------- | ---------------------- | -------------------- |
| vit                | vision_transformer `Block` (ViT, DeiT, DeiT-III, PiT, CrossViT, hybrids) | attn, mlp | `norm1:in`, `norm2:in`| `ls1`, `ls2` | `attn`, `mlp` |
| swin               | `SwinTransformerBlock`                        | attn, mlp | `norm1:in`, `norm2:in`| `drop_path1`, `drop_path2` | `attn`, `mlp`    |
| droppath_prenorm   | BEiT `Block`, `EvaBlock`, Twins `Block`, PVT-v2 `Block`, NesT `TransformerLayer`, MaxViT `PartitionAttentionCl`, EfficientFormer `MetaBlock1d` | attn, mlp | `norm1:in`, `norm2:in` | `drop_path1`, `drop_path2` | `attn`, `mlp` |
| coatnet_transformer| maxxvit `TransformerBlock2d`                  | attn, mlp | `shortcut`, `norm2:in`| `drop_path1`, `drop_path2` | `attn`, `mlp`    |
| hiera              | `HieraBlock` (pooling blocks: z derived)      | attn, mlp | `norm1:in` / derived, `norm2:in` | `drop_path1`, `drop_path2` | `attn`, `mlp` |
| mvit               | MViT-v2 `MultiScaleBlock` (output element 0)  | attn, mlp | derived (pooled shortcut), `norm2:in` or `shortcut_proj_mlp` | `drop_path1`, `drop_path2` | `attn`, `mlp` |
| postnorm           | `ResPostBlock`, `SwinTransformerV2Block`      | attn, mlp | block input, `mlp:in` | `drop_path1`, `drop_path2` | `norm1`, `norm2`     |
| xcit               | `XCABlock`                                    | attn, lpi, mlp | `norm1:in`, `norm3:in`, `norm2:in` | `drop_path1`, `drop_path3`, `drop_path2` | `attn`, `local_mp`, `mlp` |
| shared_droppath    | CaiT `LayerScaleBlock`, ConViT `Block`, CoaT `SerialBlock` | attn, mlp | `norm1:in`, `norm2:in` | derived | `attn`, `mlp` |
| tnt                | TNT `Block` (patch stream, output element 1)  | attn, mlp | `norm_out:in`, `norm_mlp:in` | derived         | `attn_out`, `mlp`    |
| levit              | `LevitBlock`, EfficientFormer `MetaBlock2d`   | attn, mlp | block input, `mlp:in` | `drop_path1`, `drop_path2` | `attn`, `mlp`   |
| metaformer         | `MetaFormerBlock` (PoolFormer, ConvFormer, CAFormer) | mixer, mlp | `res_scale1`, `res_scale2` | `layer_scale1`, `layer_scale2` | `token_mixer`, `mlp` |
| maxxvit            | `MaxxVitBlock`: MBConv + block and grid attention | res, block_attn, block_mlp, grid_attn, grid_mlp | as mbconv and droppath_prenorm | | |
| resnet             | resnet `BasicBlock`, `Bottleneck`             | res       | block input / `downsample` | `bn2`/`bn3` (`se`) | `bn2`/`bn3`; 3x3: `bn2` |
| resnetv2_preact    | resnetv2 `PreActBasic`, `PreActBottleneck`    | res       | block input / `downsample` | `drop_path`        | `conv2`/`conv3`; 3x3: `conv2` |
| resnetv2           | resnetv2 `Bottleneck`                         | res       | block input / `downsample` | `drop_path`        | `norm3`; 3x3: `norm2`|
| regnet             | regnet `Bottleneck`                           | res       | `downsample`          | `drop_path`            | `conv3`; 3x3: `conv2`|
| byobnet            | ByobNet blocks (GerNet, HaloNet `SelfAttnBlock`, ...) | res / attn | `shortcut`     | `drop_path`            | `drop_path`; 3x3: `conv2_kxk` |
| mbconv             | maxxvit `MbConvBlock` (CoAtNet, MaxViT)       | res       | `shortcut`            | `drop_path`            | `conv3_1x1`; 3x3: `norm2` |
| inverted_residual  | EfficientNet / MobileNet `InvertedResidual`, `DepthwiseSeparableConv`, `EdgeResidual` | res (where the skip exists) | block input | `drop_path` | last norm; 3x3: the depthwise norm |
| convnext           | `ConvNeXtBlock`                               | res       | `shortcut`            | `drop_path`            | `mlp`                |
| convmixer          | ConvMixer `Residual`                          | res       | block input           | `fn`                   | `fn`                 |
| alternet_msa       | vitstudy `LocalAttentionBlock`                | attn      | block input           | `drop_path`            | `attn`               |
| no_skip            | DenseNet `DenseBlock`, VGG layers             | refused: features are concatenated / there is no skip at all |  |  |  |
| conv (any other)   | -                                             | -         | -                     | -                      | -                    |

Each sublayer also names `post`, the residual stream right after its addition (Park & Kim's latent after it) and
its `kind` (attention, mlp, conv). Families without z and f(z) leave `skip`/`branch` unset: latents work on them,
skip ratios and receptive fields refuse them. Blocks whose forward returns a tuple name the element that is the
residual stream (`Family.output`: MViT-v2 element 0, TNT element 1), so `layers=blocks` is one tensor per block.
Class-attention blocks (CaiT `blocks_token_only`, XCiT `cls_attn_blocks`) update only the CLS token and are not
blocks of the token stream. `without_skip` overrides a block's forward so that it returns f(z) only (an
inference-time lesion of Raghu et al.'s Fig. 8, which retrains instead); for the other families `residual.remove_skip`
zeroes the skip module's output, or subtracts z from the branch output. Parallel blocks (attention and MLP side by
side) have no stream between their sublayers and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import VitstudyError
from .blocks import block_names, dense_names
from .blocks import timm_classes as _classes
from .layer import INPUT

POST_NORM = _classes("timm.models.vision_transformer", "ResPostBlock") + _classes(
    "timm.models.swin_transformer_v2", "SwinTransformerV2Block"
)
PARALLEL = _classes(
    "timm.models.vision_transformer", "ParallelScalingBlock", "DiffParallelScalingBlock", "ParallelThingsBlock"
)
DROPPATH_PRENORM = (
    _classes("timm.models.beit", "Block")
    + _classes("timm.models.eva", "EvaBlock")
    + _classes("timm.models.twins", "Block")
    + _classes("timm.models.pvt_v2", "Block")
    + _classes("timm.models.nest", "TransformerLayer")
    + _classes("timm.models.maxxvit", "PartitionAttentionCl")
)


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
    derive: str | None = None  # 'branch': f(z) = post - z (no module outputs f alone); 'skip': z = post - f(z)
    residual: bool = True  # False: a unit without an additive skip (e.g. a strided inverted residual); lesion skips it

    @property
    def measurable(self) -> bool:
        """Whether z and f(z) are both known (tapped, or one derived from `post`)."""
        if self.derive == "branch":
            return self.skip is not None
        if self.derive == "skip":
            return self.branch is not None
        return self.skip is not None and self.branch is not None

    @property
    def skip_point(self) -> str:
        return f"{self.post} - {self.branch}" if self.derive == "skip" else str(self.skip)

    @property
    def branch_point(self) -> str:
        return f"{self.post} - {self.skip}" if self.derive == "branch" else str(self.branch)


@dataclass(frozen=True)
class Family:
    name: str
    match: Callable[[nn.Module], bool]
    sublayers: Callable[[str, int, nn.Module], list[Sublayer]]
    without_skip: Callable[[set[str]], Callable] | None = None  # (sublayers to cut) -> forward returning f(z) only
    output: int | None = None  # the block returns a tuple: this element is its residual stream
    reason: str | None = None  # why blocks of this family have no additive skip (refusals say it)


def _has(mod: nn.Module, *attrs: str) -> bool:
    return all(hasattr(mod, a) for a in attrs)


# ---- transformers


def _vit_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [
        Sublayer(b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn", f"{b}.norm1{INPUT}", f"{b}.ls1"),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", f"{b}.ls2"),
    ]


def _vit_without(which: set[str]):
    def forward(self, x, attn_mask=None, is_causal=False):
        kw = {} if attn_mask is None and not is_causal else {"attn_mask": attn_mask, "is_causal": is_causal}
        h = self.drop_path1(self.ls1(self.attn(self.norm1(x), **kw)))
        x = h if "attn" in which else x + h
        h = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return h if "mlp" in which else x + h

    return forward


def _swin_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    return [
        Sublayer(b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn", f"{b}.norm1{INPUT}", f"{b}.drop_path1"),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", f"{b}.drop_path2"),
    ]


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
    return [
        Sublayer(b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn"),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp"),
    ]


def _parallel(b: str, i: int, mod) -> list[Sublayer]:
    raise VitstudyError(
        f"block '{b}' ({type(mod).__name__}) has no residual stream between its attention and MLP "
        f"sublayers (they run in parallel), so its sublayers cannot be told apart; use layers=blocks "
        f"or a list of module names"
    )


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
    def forward(
        self, x
    ):  # timm resnet.py BasicBlock / Bottleneck forward without `x += shortcut`; the final ReLU is kept
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


# ---- more transformer layouts (timm 1.x classes; see the table above)


def _kind_of(mod) -> str:
    """'attention' for a token mixer that attends, 'conv' for pooling / convolution mixers."""
    name = type(mod).__name__
    return "attention" if "Attn" in name or "Attention" in name or hasattr(mod, "num_heads") else "conv"


def _droppath_prenorm(b: str, i: int, mod, attn: str = "attn") -> list[Sublayer]:
    """`x = x + drop_path1(..(attn(norm1(x)))); x = x + drop_path2(..(mlp(norm2(x))))` with distinct drop-path modules."""
    kind = _kind_of(getattr(mod, attn))
    return [
        Sublayer(b, i, "attn", kind, f"{b}.norm2{INPUT}", f"{b}.{attn}", f"{b}.norm1{INPUT}", f"{b}.drop_path1"),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", f"{b}.drop_path2"),
    ]


def _coatnet_transformer(b: str, i: int, mod) -> list[Sublayer]:
    return [
        Sublayer(b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn", f"{b}.shortcut", f"{b}.drop_path1"),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", f"{b}.drop_path2"),
    ]


def _hiera(b: str, i: int, mod) -> list[Sublayer]:
    # a pooling block adds the branch to the max-pooled (and projected) input, which no module outputs: z = post - f
    attn = (
        Sublayer(b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn", None, f"{b}.drop_path1", derive="skip")
        if getattr(mod, "do_expand", False)
        else Sublayer(
            b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.attn", f"{b}.norm1{INPUT}", f"{b}.drop_path1"
        )
    )
    return [attn, Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", f"{b}.drop_path2")]


def _mvit(b: str, i: int, mod) -> list[Sublayer]:
    # attention: the shortcut is pooled (and maybe projected) inside the block's forward: z = post - f
    mlp_skip = f"{b}.shortcut_proj_mlp" if getattr(mod, "shortcut_proj_mlp", None) is not None else f"{b}.norm2{INPUT}"
    return [
        Sublayer(
            b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.drop_path1", None, f"{b}.drop_path1", derive="skip"
        ),
        Sublayer(b, i, "mlp", "mlp", f"{b}[0]", f"{b}.drop_path2", mlp_skip, f"{b}.drop_path2"),
    ]


def _mvit_without(which: set[str]):
    def forward(
        self, x, feat_size
    ):  # timm mvitv2 MultiScaleBlock.forward; a removed skip's pooling / projection is not run
        x_norm = self.norm1(x)
        h, feat_size_new = self.attn(x_norm, feat_size)
        h = self.drop_path1(h)
        if "attn" not in which:
            h = (
                self._shortcut_pool(
                    x if self.shortcut_proj_attn is None else self.shortcut_proj_attn(x_norm), feat_size
                )
                + h
            )
        x_norm = self.norm2(h)
        x = self.drop_path2(self.mlp(x_norm))
        if "mlp" not in which:
            x = (h if self.shortcut_proj_mlp is None else self.shortcut_proj_mlp(x_norm)) + x
        return x, feat_size_new

    return forward


def _postnorm_sublayers(b: str, i: int, mod) -> list[Sublayer]:
    """`x = x + drop_path1(norm1(attn(x))); x = x + drop_path2(norm2(mlp(x)))` (Swin-V2, ResPostBlock)."""
    return [
        Sublayer(b, i, "attn", "attention", f"{b}.mlp{INPUT}", f"{b}.norm1", f"{b}{INPUT}", f"{b}.drop_path1"),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.norm2", f"{b}.mlp{INPUT}", f"{b}.drop_path2"),
    ]


def _xcit(b: str, i: int, mod) -> list[Sublayer]:
    return [
        Sublayer(b, i, "attn", "attention", f"{b}.norm3{INPUT}", f"{b}.attn", f"{b}.norm1{INPUT}", f"{b}.drop_path1"),
        Sublayer(b, i, "lpi", "conv", f"{b}.norm2{INPUT}", f"{b}.local_mp", f"{b}.norm3{INPUT}", f"{b}.drop_path3"),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", f"{b}.drop_path2"),
    ]


def _shared_droppath(attn: str):
    """One drop-path module for both sublayers (it runs twice, so it cannot be tapped): f(z) = post - z."""

    def sublayers(b: str, i: int, mod) -> list[Sublayer]:
        return [
            Sublayer(
                b, i, "attn", "attention", f"{b}.norm2{INPUT}", f"{b}.{attn}", f"{b}.norm1{INPUT}", derive="branch"
            ),
            Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.norm2{INPUT}", derive="branch"),
        ]

    return sublayers


def _cait_without(which: set[str]):
    def forward(self, x):
        h = self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        x = h if "attn" in which else x + h
        h = self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
        return h if "mlp" in which else x + h

    return forward


def _convit_without(which: set[str]):
    def forward(self, x):
        h = self.drop_path(self.attn(self.norm1(x)))
        x = h if "attn" in which else x + h
        h = self.drop_path(self.mlp(self.norm2(x)))
        return h if "mlp" in which else x + h

    return forward


def _coat_without(which: set[str]):
    def forward(self, x, size):
        x = self.cpe(x, size)
        h = self.drop_path(self.factoratt_crpe(self.norm1(x), size))
        x = h if "attn" in which else x + h
        h = self.drop_path(self.mlp(self.norm2(x)))
        return h if "mlp" in which else x + h

    return forward


def _tnt(b: str, i: int, mod) -> list[Sublayer]:
    # the patch-token stream (element 1); the inner pixel stream runs per patch, not per image, and is left out
    return [
        Sublayer(
            b, i, "attn", "attention", f"{b}.norm_mlp{INPUT}", f"{b}.attn_out", f"{b}.norm_out{INPUT}", derive="branch"
        ),
        Sublayer(b, i, "mlp", "mlp", f"{b}[1]", f"{b}.mlp", f"{b}.norm_mlp{INPUT}", derive="branch"),
    ]


def _tnt_without(which: set[str]):
    def forward(self, pixel_embed, patch_embed):  # timm tnt Block.forward: the pixel stream and its injection are kept
        pixel_embed = pixel_embed + self.drop_path(self.attn_in(self.norm_in(pixel_embed)))
        pixel_embed = pixel_embed + self.drop_path(self.mlp_in(self.norm_mlp_in(pixel_embed)))
        B, N, C = patch_embed.size()
        if self.norm2_proj is None:
            inner = self.proj(self.norm1_proj(pixel_embed).reshape(B, N - 1, -1))
        else:
            inner = self.norm2_proj(self.proj(self.norm1_proj(pixel_embed.reshape(B, N - 1, -1))))
        patch_embed = torch.cat([patch_embed[:, 0:1], patch_embed[:, 1:] + inner], dim=1)
        h = self.drop_path(self.attn_out(self.norm_out(patch_embed)))
        patch_embed = h if "attn" in which else patch_embed + h
        h = self.drop_path(self.mlp(self.norm_mlp(patch_embed)))
        return pixel_embed, (h if "mlp" in which else patch_embed + h)

    return forward


def _no_norm(b: str, i: int, mod, attn: str = "attn") -> list[Sublayer]:
    """`x = x + drop_path1(..(attn(x))); x = x + drop_path2(..(mlp(x)))` (LeViT, EfficientFormer's 2-D blocks)."""
    return [
        Sublayer(
            b,
            i,
            "attn",
            _kind_of(getattr(mod, attn)),
            f"{b}.mlp{INPUT}",
            f"{b}.{attn}",
            f"{b}{INPUT}",
            f"{b}.drop_path1",
        ),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.mlp{INPUT}", f"{b}.drop_path2"),
    ]


def _metaformer(b: str, i: int, mod) -> list[Sublayer]:
    return [
        Sublayer(
            b,
            i,
            "mixer",
            _kind_of(mod.token_mixer),
            f"{b}.norm2{INPUT}",
            f"{b}.token_mixer",
            f"{b}.res_scale1",
            f"{b}.layer_scale1",
        ),
        Sublayer(b, i, "mlp", "mlp", b, f"{b}.mlp", f"{b}.res_scale2", f"{b}.layer_scale2"),
    ]


def _mbconv(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "res", "conv", b, f"{b}.conv3_1x1", f"{b}.shortcut", f"{b}.drop_path", f"{b}.norm2")]


def _maxxvit(b: str, i: int, mod) -> list[Sublayer]:
    """MaxViT: an MBConv unit, then block (window) attention and grid attention, each with its MLP."""
    out = [
        Sublayer(
            b,
            i,
            "res",
            "conv",
            f"{b}.conv",
            f"{b}.conv.conv3_1x1",
            f"{b}.conv.shortcut",
            f"{b}.conv.drop_path",
            f"{b}.conv.norm2",
        )
    ]
    for part in ("attn_block", "attn_grid"):
        if getattr(mod, part, None) is None:
            continue
        p, tag = f"{b}.{part}", part.split("_")[1]
        out += [
            Sublayer(
                b,
                i,
                f"{tag}_attn",
                "attention",
                f"{p}.norm2{INPUT}",
                f"{p}.attn",
                f"{p}.norm1{INPUT}",
                f"{p}.drop_path1",
            ),
            Sublayer(b, i, f"{tag}_mlp", "mlp", p, f"{p}.mlp", f"{p}.norm2{INPUT}", f"{p}.drop_path2"),
        ]
    return out


# ---- more convolutional units


def _regnet(b: str, i: int, mod) -> list[Sublayer]:
    if getattr(mod, "downsample", None) is None:
        return [Sublayer(b, i, "res", "conv", b, None, residual=False)]
    return [Sublayer(b, i, "res", "conv", b, f"{b}.conv3", f"{b}.downsample", f"{b}.drop_path", f"{b}.conv2")]


def _byob(b: str, i: int, mod) -> list[Sublayer]:
    if getattr(mod, "shortcut", None) is None:
        return [Sublayer(b, i, "res", "conv", b, None, residual=False)]
    kind = "attention" if hasattr(mod, "self_attn") else "conv"
    conv3x3 = f"{b}.conv2_kxk" if hasattr(mod, "conv2_kxk") else None
    return [Sublayer(b, i, "res", kind, b, f"{b}.drop_path", f"{b}.shortcut", f"{b}.drop_path", conv3x3)]


def _inverted_residual(b: str, i: int, mod) -> list[Sublayer]:
    if not getattr(mod, "has_skip", False):
        return [Sublayer(b, i, "res", "conv", b, None, residual=False)]
    last = "bn3" if hasattr(mod, "bn3") else "bn2"
    depthwise = {"InvertedResidual": "bn2", "DepthwiseSeparableConv": "bn1"}.get(type(mod).__name__)
    return [
        Sublayer(
            b,
            i,
            "res",
            "conv",
            b,
            f"{b}.{last}",
            f"{b}{INPUT}",
            f"{b}.drop_path",
            f"{b}.{depthwise}" if depthwise else None,
        )
    ]


def _convmixer(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "res", "conv", b, f"{b}.fn", f"{b}{INPUT}", f"{b}.fn")]


def _no_skip(b: str, i: int, mod) -> list[Sublayer]:
    return [Sublayer(b, i, "res", "conv", b, None, residual=False)]


def _is(module: str, *names: str) -> Callable[[nn.Module], bool]:
    classes = _classes(module, *names)
    return lambda mod: isinstance(mod, classes) if classes else False


FAMILIES: list[Family] = [
    Family("parallel", lambda m: isinstance(m, PARALLEL), _parallel),
    Family(
        "vit",
        lambda m: (
            type(m).__name__ == "Block"
            and _has(m, "norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
        ),
        _vit_sublayers,
        _vit_without,
    ),
    Family(
        "swin",
        lambda m: (
            type(m).__name__ == "SwinTransformerBlock" and _has(m, "norm1", "drop_path1", "norm2", "drop_path2", "mlp")
        ),
        _swin_sublayers,
        _swin_without,
    ),
    Family("postnorm", lambda m: isinstance(m, POST_NORM), _postnorm_sublayers),
    Family("droppath_prenorm", lambda m: isinstance(m, DROPPATH_PRENORM), _droppath_prenorm),
    Family(
        "droppath_prenorm",
        _is("timm.models.efficientformer", "MetaBlock1d"),
        lambda b, i, m: _droppath_prenorm(b, i, m, "token_mixer"),
    ),
    Family("coatnet_transformer", _is("timm.models.maxxvit", "TransformerBlock2d"), _coatnet_transformer),
    Family("hiera", _is("timm.models.hiera", "HieraBlock"), _hiera),
    Family("mvit", _is("timm.models.mvitv2", "MultiScaleBlock"), _mvit, _mvit_without, output=0),
    Family("xcit", _is("timm.models.xcit", "XCABlock"), _xcit),
    Family("shared_droppath", _is("timm.models.cait", "LayerScaleBlock"), _shared_droppath("attn"), _cait_without),
    Family("shared_droppath", _is("timm.models.convit", "Block"), _shared_droppath("attn"), _convit_without),
    Family(
        "shared_droppath", _is("timm.models.coat", "SerialBlock"), _shared_droppath("factoratt_crpe"), _coat_without
    ),
    Family("tnt", _is("timm.models.tnt", "Block"), _tnt, _tnt_without, output=1),
    Family("levit", _is("timm.models.levit", "LevitBlock"), _no_norm),
    Family(
        "levit", _is("timm.models.efficientformer", "MetaBlock2d"), lambda b, i, m: _no_norm(b, i, m, "token_mixer")
    ),
    Family("metaformer", _is("timm.models.metaformer", "MetaFormerBlock"), _metaformer),
    Family("maxxvit", _is("timm.models.maxxvit", "MaxxVitBlock"), _maxxvit),
    Family("prenorm_transformer", lambda m: _has(m, "attn", "mlp", "norm2"), _prenorm_sublayers),
    Family("transformer_without_norm2", lambda m: _has(m, "attn", "mlp"), _parallel),
    Family(
        "resnet",
        lambda m: (
            type(m).__name__ in ("BasicBlock", "Bottleneck")
            and _has(m, "conv1", "bn1", "downsample")
            and (_has(m, "bn3") or _has(m, "bn2"))
            and not hasattr(m, "norm1")
        ),
        _resnet_sublayers,
        _resnet_without,
    ),
    Family(
        "resnetv2_preact",
        lambda m: (
            type(m).__name__ in ("PreActBasic", "PreActBottleneck")
            and _has(m, "norm1", "conv1", "downsample", "drop_path")
        ),
        _preact_sublayers,
        _preact_without,
    ),
    Family(
        "resnetv2",
        lambda m: type(m).__name__ == "Bottleneck" and _has(m, "norm1", "conv1", "downsample", "drop_path"),
        _resnetv2_sublayers,
        _resnetv2_without,
    ),
    Family("regnet", _is("timm.models.regnet", "Bottleneck"), _regnet),
    Family(
        "byobnet",
        _is("timm.models.byobnet", "BasicBlock", "BottleneckBlock", "DarkBlock", "EdgeBlock", "SelfAttnBlock"),
        _byob,
    ),
    Family("mbconv", _is("timm.models.maxxvit", "MbConvBlock"), _mbconv),
    Family(
        "inverted_residual",
        _is("timm.models._efficientnet_blocks", "InvertedResidual", "DepthwiseSeparableConv", "EdgeResidual"),
        _inverted_residual,
    ),
    Family(
        "convnext",
        lambda m: type(m).__name__ == "ConvNeXtBlock" and _has(m, "conv_dw", "shortcut", "drop_path"),
        _convnext_sublayers,
        _convnext_without,
    ),
    Family("convmixer", _is("timm.models.convmixer", "Residual"), _convmixer),
    Family(
        "alternet_msa",
        lambda m: type(m).__name__ == "LocalAttentionBlock" and _has(m, "norm1", "conv", "norm2", "attn", "drop_path"),
        _alternet_msa_sublayers,
        _alternet_msa_without,
    ),
    Family(
        "no_skip",
        _is("timm.models.densenet", "DenseBlock", "DenseTransition"),
        _no_skip,
        reason="DenseNet concatenates each layer's features to its input instead of adding them, so it has no additive skip z + f(z)",
    ),
    Family(
        "no_skip",
        lambda m: isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d)),
        _no_skip,
        reason="its layers form a plain chain (VGG-style) without skip connections",
    ),
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

    @property
    def output(self) -> str:
        """Layer spec of the block's output stream (`path[i]` when the block returns a tuple)."""
        return self.path if self.family.output is None else f"{self.path}[{self.family.output}]"


def blocks(model: nn.Module) -> list[Block]:
    """Every residual block of the model (the `blocks` preset) with its family, in module order."""
    modules = dict(model.named_modules())
    return [Block(b, i, modules[b], family_of(modules[b])) for i, b in enumerate(block_names(model))]


def block_layers(model: nn.Module) -> list[str]:
    """The `blocks` layer preset: each residual block's output stream."""
    return [b.output for b in blocks(model)]


def dense_layers(model: nn.Module) -> list[str]:
    """The `all` layer preset (`blocks.dense_names`) with each block named by its output stream."""
    outputs = {b.path: b.output for b in blocks(model)}
    return [outputs.get(n, n) for n in dense_names(model)]


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
