"""Capture the real softmax attention probabilities of timm attention modules.

timm's ViT/DeiT/Swin attention runs fused (`F.scaled_dot_product_attention`) by default, which never
materialises the probabilities: hooks then see nothing (and `timm.utils.AttentionExtract` silently returns
an empty dict). `unfused(model)` switches `fused_attn` off on the analysed model's own modules only and
restores it afterwards; the probabilities are then the input of each module's `attn_drop` (identity in
eval mode), shape (B, heads, N, N), or (B * windows, heads, n, n) for Swin. `sites(model)` says where
they are and how tokens map to pixels; `check_capture` verifies the count and that rows sum to 1.

Per family (`sites`): ViT, DeiT (distilled), DeiT-III, BEiT, EVA, registers, GAP and hybrids attend over all
their tokens; CaiT's self-attention blocks see the patch tokens only (its class token joins in the class-attention
blocks `blocks_token_only`, which update only that token and are left out) and mix heads after the softmax
(talking heads), so its probabilities are the softmax output, the input of `proj_w`, (B, N, N, heads); ConViT's
gated positional blocks (GPSA, before `local_up_to_layer`) see the patch tokens, the later ones the class token
too, and their probabilities are the gated, renormalised mix that multiplies the values; PiT's stages attend over
its class token(s) and a grid that each stage's strided pooling conv shrinks; Swin and Swin-V2 attend
inside (shifted) windows. XCiT is refused: its cross-covariance attention is a softmax over channels, not positions.

Described families (`DESCRIBED`, a probe forward at the model's input size gives each module's map size): PVT-v2
and Twins' global sub-sampled attention (queries on the stage grid, keys from the strided `sr` conv or PVT-v2-li's
7x7 adaptive pool), Twins' locally-grouped windows (zero-padded map: padded keys attended, padded queries dropped),
MaxViT block and grid partitions and CoAtNet's global Attention2d, NesT's nested blocks, MViT-v2's pooled q and k
(class token unpooled), LeViT's attention and its subsampling AttentionDownsample, EfficientFormer's last-stage
attention, CrossViT per branch and its fusion cross-attention (the class token is the only query: kind 'cross',
whose distance is the spread of the keys it attends to), TNT inner (pixel tokens in each patch) and outer,
Hiera (mask units; positions by unrolling the grid's coordinates). Modules without `attn_drop` (MViT-v2, LeViT,
EfficientFormer, Hiera) are tapped at their softmax output through a `SoftmaxTap` (a TorchFunctionMode active
only inside those modules' forward). CoaT is refused: its factorized attention has no query-by-key map.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..errors import VitstudyError
from ..metrics import attention as am
from .layer import Layer
from .tokens import prefix_kinds, prefix_tokens

ROW_SUM_TOL = 1e-3


@dataclass
class Site:
    """One attention module: where its probabilities are tapped and how its tokens map to pixels."""

    name: str  # module path of the attention module, e.g. 'blocks.3.attn' or 'layers.1.blocks.0.attn'
    block: int  # depth index over all attention blocks of the model
    heads: int
    kind: str  # 'global' (ViT family) or 'window' (Swin)
    grid: tuple[int, int]  # token grid the module sees
    stride: tuple[float, float]  # pixels per grid step
    num_prefix: int = 0
    window: tuple[int, int] | None = None
    shift: tuple[int, int] = (0, 0)
    dist: torch.Tensor = field(default=None, repr=False)  # (N, N) or (windows, n, n) float64 pixels
    tap: str = "attn_drop"  # submodule (of the attention module) whose input is the probabilities
    heads_last: bool = False  # the tapped tensor is (B, N, N, heads) (CaiT's talking-heads `proj_w` input)
    # Described sites (hierarchical families): `dist` is (groups, queries, keys) float64 pixels with rows of
    # uncounted queries (prefix, padding) zero, `layout` says how a captured tensor is laid out, `queries` counts
    # the measured queries over all groups. Groups are windows, grid partitions, NesT blocks or TNT patches.
    layout: str | None = None  # 'bhqk', '(bg)hqk' (groups folded into the batch), 'bghqk' or 'bhgqk'
    queries: int = 0
    q_pos: torch.Tensor = field(default=None, repr=False)  # (groups, Q, 2) pixel centres, NaN for prefix/padding
    k_pos: torch.Tensor = field(
        default=None, repr=False
    )  # (groups, K, 2) pixel centres of each key's footprint, NaN for prefix
    # kind 'cross' (CrossViT fusion): the one query (the class token) has no position; `dist` is its zero row
    # (1, 1, K) and `key_dist` (K, K) the pixel distances between keys (prefix rows/columns zero), see per_image
    key_dist: torch.Tensor = field(default=None, repr=False)
    prefix_names: str = ""  # what the prefix keys are, e.g. 'class, 4 registers' ('' when there are none)

    @property
    def layer(self) -> Layer:
        """The tap: the input of `attn_drop` (or `tap`), i.e. the softmax output."""
        return Layer(name=self.name, module=f"{self.name}.{self.tap}", is_input=True, shape=(), layout="attn")

    @property
    def tokens(self) -> int:
        return self.num_prefix + self.grid[0] * self.grid[1]

    def probabilities(self, attn: torch.Tensor) -> torch.Tensor:
        """A captured tensor as (B, heads, queries, keys) probabilities (described sites: (B, groups, heads, Q, K))."""
        if self.layout is not None:
            return grouped(attn, self.layout, self.dist.shape[0])
        return attn.permute(0, 3, 1, 2) if self.heads_last else attn

    def per_image(self, attn: torch.Tensor) -> torch.Tensor:
        """(B, heads) mean attention distance in pixels for one captured map."""
        attn = self.probabilities(attn)
        if self.kind == "cross":
            return am.spread_distance(attn[:, 0, :, 0], self.key_dist.to(attn.device))
        if self.layout is not None:
            return am.grouped_mean_distance(attn, self.dist.to(attn.device), self.queries)
        dist = self.dist.to(attn.device)
        if self.kind == "window":
            return am.window_mean_distance(attn, dist)
        return am.mean_distance(attn, dist, self.grid[0] * self.grid[1])

    def uniform_distance(self) -> float:
        """The mean distance uniform attention over this module's keys would give (the "neither local nor global"
        reference line): described sites spread 1/K over each group's K keys, averaged over the counted queries."""
        if self.kind == "cross":  # 1/K on each key, prefix keys at 0: sum_jk D_jk / K^2
            return float(self.key_dist.sum() / self.key_dist.shape[-1] ** 2)
        if self.layout is not None:
            return float(self.dist.to(torch.float64).sum() / (self.dist.shape[-1] * self.queries))
        return am.uniform_distance(self.dist, self.num_prefix)

    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(groups, Q) counted queries and (groups, K) prefix keys (class, distillation, register tokens: no
        position), from the queries' and keys' positions; cached."""
        if getattr(self, "_masks", None) is None:
            q, k = positions(self)
            counted = ~q.isnan().any(-1)
            if self.kind == "cross":
                counted = torch.ones_like(counted)  # the class token is the query
            self._masks = (counted, k.isnan().any(-1))
        return self._masks

    def split(self, attn: torch.Tensor) -> am.PrefixSplit:
        """Per (image, head) share of attention to prefix keys and mean distance over patch keys only (each row
        renormalised over them). Cross sites: the spread of the class token's attention over the patch keys,
        renormalised (sum_jk A_j A_k D_jk / m^2 with m its patch mass)."""
        queries, prefix = self.masks()
        if self.kind == "cross":
            a = self.probabilities(attn)[:, 0, :, 0].to(torch.float64)  # (B, H, K)
            pre = prefix[0].to(a.device)
            share = a[..., pre].sum(-1)
            mass = a[..., ~pre].sum(-1)
            spread = am.spread_distance(a, self.key_dist.to(a.device))
            return am.PrefixSplit(share, torch.where(mass > 0, spread / mass.clamp_min(1e-300) ** 2, torch.nan))
        dist = self.dist if self.dist.dim() == 3 else self.dist[None]
        return am.prefix_split(
            grouped_of(self, attn), dist.to(attn.device), queries.to(attn.device), prefix.to(attn.device)
        )

    def uniform_patch_distance(self) -> float:
        """The patch-key mean distance uniform attention would give: each counted query spreads its renormalised
        row evenly over its group's patch keys (cross sites: the patch keys' mean pairwise distance)."""
        queries, prefix = self.masks()
        if self.kind == "cross":
            patch = ~prefix[0]
            return float(self.key_dist[patch][:, patch].mean())
        dist = (self.dist if self.dist.dim() == 3 else self.dist[None]).to(torch.float64)
        per = dist.sum(-1) / (~prefix).sum(-1, keepdim=True).to(torch.float64)  # (groups, Q)
        return float(per[queries].sum() / queries.sum())

    def check(self, attn: torch.Tensor, batch: int) -> None:
        """Shape and row sums of a captured map; a mismatch means it is not the softmax we expect."""
        if self.layout is not None:
            g, q, k = self.dist.shape
            try:
                attn = self.probabilities(attn)
            except RuntimeError:
                attn = attn.new_zeros(0)
            expected = (batch, g, self.heads, q, k)
        elif self.kind == "window":
            attn = self.probabilities(attn)
            n = self.window[0] * self.window[1]
            windows = (self.grid[0] // self.window[0]) * (self.grid[1] // self.window[1])
            expected = (batch * windows, self.heads, n, n)
        else:
            attn = self.probabilities(attn)
            expected = (batch, self.heads, self.tokens, self.tokens)
        if tuple(attn.shape) != expected:
            raise VitstudyError(
                f"attention of '{self.name}' has shape {tuple(attn.shape)}, expected {expected} "
                f"(grid {self.grid}, {self.num_prefix} prefix tokens); input size and model config disagree"
            )
        sums = attn.float().sum(dim=-1)
        err = float((sums - 1).abs().max())
        tol = max(ROW_SUM_TOL, 4 * torch.finfo(attn.dtype).eps)  # a bf16/fp16 forward rounds each probability
        if not err <= tol:
            raise VitstudyError(
                f"attention rows captured at '{self.name}.{self.tap}' sum to 1 +- {err:.3g}, not 1: "
                f"{type(attn).__name__} there is not a softmax over keys; this attention type is not supported"
            )


def positions(site: Site) -> tuple[torch.Tensor, torch.Tensor]:
    """(groups, Q, 2) and (groups, K, 2) pixel centres of a site's queries and keys (NaN: prefix or padding), for
    every kind of site: described ones store them; ViT-family grids and Swin windows are rebuilt here."""
    if site.q_pos is not None:
        return site.q_pos, site.k_pos
    if site.kind == "window":  # Swin: window partition of the map rolled by -shift, as metrics.window_distances
        gh, gw = site.grid
        out = []
        for wr in range(gh // site.window[0]):
            for wc in range(gw // site.window[1]):
                local = am.grid_coords(*site.window)
                y = (local[:, 0] + wr * site.window[0] + site.shift[0]) % gh
                x = (local[:, 1] + wc * site.window[1] + site.shift[1]) % gw
                out.append(torch.stack([y, x], dim=1) + 0.5)
        pos = torch.stack(out) * torch.tensor(site.stride, dtype=torch.float64)
        return pos, pos
    pos = am.grid_coords(*site.grid) + 0.5
    pos = torch.cat(
        [
            torch.full((site.num_prefix, 2), float("nan"), dtype=torch.float64),
            pos * torch.tensor(site.stride, dtype=torch.float64),
        ]
    )[None]
    return pos, pos


def grouped_of(site: Site, attn: torch.Tensor) -> torch.Tensor:
    """Any captured map as (B, groups, heads, Q, K)."""
    if site.layout is not None:
        return site.probabilities(attn)
    attn = site.probabilities(attn)
    if site.kind == "window":
        nw = (site.grid[0] // site.window[0]) * (site.grid[1] // site.window[1])
        return attn.reshape(attn.shape[0] // nw, nw, *attn.shape[1:])
    return attn.unsqueeze(1)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _attention_ok(attn: nn.Module) -> bool:
    return isinstance(getattr(attn, "attn_drop", None), nn.Module) and hasattr(attn, "num_heads")


def _vit_sites(model: nn.Module) -> list[Site]:
    pe = model.patch_embed
    grid = tuple(int(g) for g in _pair(pe.grid_size))
    img = _pair(getattr(pe, "img_size", None) or (None, None))
    if None in img:
        raise VitstudyError(f"{type(model).__name__}.patch_embed has no fixed img_size; set model.kwargs.img_size")
    stride = (img[0] / grid[0], img[1] / grid[1])
    dists: dict[int, torch.Tensor] = {}
    out = []
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not _attention_ok(attn):
            raise VitstudyError(
                f"block 'blocks.{i}' of {type(model).__name__} has no standard timm attention "
                f"(an `attn` module with `attn_drop` and `num_heads`); attention maps are not supported for it"
            )
        prefix = block_prefix(model, i)
        if prefix not in dists:
            dists[prefix] = am.distance_matrix(grid[0], grid[1], stride, prefix)
        talking = isinstance(getattr(attn, "proj_w", None), nn.Linear)  # CaiT: heads mixed after the softmax
        out.append(
            Site(
                f"blocks.{i}.attn",
                i,
                int(attn.num_heads),
                "global",
                grid,
                stride,
                prefix,
                dist=dists[prefix],
                tap="proj_w" if talking else "attn_drop",
                heads_last=talking,
                prefix_names=prefix_names(model, prefix),
            )
        )
    return out


def _conv_out(n: int, conv: nn.Conv2d, dim: int) -> int:
    k, st, pad, dil = conv.kernel_size[dim], conv.stride[dim], conv.padding[dim], conv.dilation[dim]
    return (n + 2 * pad - dil * (k - 1) - 1) // st + 1


def _pit_sites(model: nn.Module) -> list[Site]:
    """PiT: stages `transformers.S` of ViT blocks over (class tokens + an H x W grid); each stage after the first
    starts with a strided depthwise conv (`pool.conv`) that shrinks the grid, so the stride in pixels grows."""
    img = _pair(model.patch_embed.img_size)
    grid = tuple(int(g) for g in _pair(model.patch_embed.grid_size))
    prefix = prefix_tokens(model)
    out, depth = [], 0
    for s, stage in enumerate(model.transformers):
        pool = getattr(stage, "pool", None)
        if pool is not None:
            grid = (_conv_out(grid[0], pool.conv, 0), _conv_out(grid[1], pool.conv, 1))
        stride = (img[0] / grid[0], img[1] / grid[1])
        dist = am.distance_matrix(grid[0], grid[1], stride, prefix)
        for j, blk in enumerate(stage.blocks):
            if not _attention_ok(getattr(blk, "attn", None)):
                raise VitstudyError(
                    f"block 'transformers.{s}.blocks.{j}' of {type(model).__name__} has no standard timm attention"
                )
            out.append(
                Site(
                    f"transformers.{s}.blocks.{j}.attn",
                    depth,
                    int(blk.attn.num_heads),
                    "global",
                    grid,
                    stride,
                    prefix,
                    dist=dist,
                    prefix_names=prefix_names(model, prefix),
                )
            )
            depth += 1
    return out


def prefix_names(model: nn.Module, n: int) -> str:
    """The first n prefix tokens of a ViT-family model in words, e.g. 'class, 4 registers' ('' for none)."""
    kinds = prefix_kinds(model)[:n] if n == prefix_tokens(model) else ["class"] * n
    words = []
    for kind in dict.fromkeys(kinds):
        c = kinds.count(kind)
        words.append(kind if c == 1 else f"{c} {kind}s")
    return ", ".join(words)


def block_prefix(model: nn.Module, i: int) -> int:
    """Prefix tokens that block i of a ViT-family model attends over: CaiT's class token joins after `blocks` (in
    `blocks_token_only`), ConViT's at block `local_up_to_layer`; every other ViT has them from the start."""
    if getattr(model, "blocks_token_only", None) is not None:
        return 0
    late = getattr(model, "local_up_to_layer", None)
    if late is not None and i < int(late):
        return 0
    return prefix_tokens(model)


def excluded(model: nn.Module) -> str | None:
    """Attention modules `sites` leaves out on purpose, in one line (said in the analyses' output)."""
    cls_blocks = getattr(model, "blocks_token_only", None)
    if cls_blocks is not None and len(cls_blocks):
        return (
            f"the {len(cls_blocks)} class-attention blocks (blocks_token_only) are left out: only the class token "
            f"queries there, it does not attend between image positions"
        )
    return None


def _swin_sites(model: nn.Module, blocks: list[tuple[str, nn.Module]]) -> list[Site]:
    img = _pair(model.patch_embed.img_size)
    out = []
    for i, (name, blk) in enumerate(blocks):
        grid = tuple(int(g) for g in blk.input_resolution)
        window = tuple(int(w) for w in _pair(blk.window_size))
        shift = tuple(int(s) for s in _pair(blk.shift_size))
        if grid[0] % window[0] or grid[1] % window[1]:
            raise VitstudyError(
                f"Swin block '{name}' sees a {grid[0]}x{grid[1]} grid that {window[0]}x{window[1]} windows do not tile "
                f"(padded windows are not supported); choose an input size whose stage grids are multiples of the window"
            )
        if getattr(blk, "dynamic_mask", False):
            raise VitstudyError(f"Swin block '{name}' uses a dynamic mask; create the model with a fixed img_size")
        stride = (img[0] / grid[0], img[1] / grid[1])
        dist = am.window_distances(grid[0], grid[1], window, shift, stride)
        out.append(Site(f"{name}.attn", i, int(blk.attn.num_heads), "window", grid, stride, 0, window, shift, dist))
    return out


# --------------------------------------------------------------------------------------------------
# Described sites: hierarchical and hybrid families. A probe forward (zeros at the model's input size) records
# each attention module's input and the shape of its probabilities; one builder per family turns them into the
# pixel centres of its queries and keys (input pixels: a token of a map with stride s has centre (i + 0.5) s, a
# pooled or strided key the centre of its footprint).


def grouped(attn: torch.Tensor, layout: str, groups: int) -> torch.Tensor:
    """A captured tensor as (B, groups, heads, Q, K) according to the site's layout."""
    if layout == "bhqk":
        return attn.unsqueeze(1)
    if layout == "(bg)hqk":
        return attn.reshape(attn.shape[0] // groups, groups, *attn.shape[1:])
    if layout == "bghqk":
        return attn
    if layout == "bhgqk":
        return attn.transpose(1, 2)
    raise ValueError(layout)


class SoftmaxTap(nn.Identity):
    """Installed on an attention module that has no `attn_drop` (MViT-v2, LeViT, EfficientFormer): the output of
    the softmax that module's forward computes is passed through it, so hooks see the probabilities as used."""


_SOFTMAX = {torch.Tensor.softmax, torch.softmax, torch.nn.functional.softmax}
SOFTMAX_TAP = "vitstudy_softmax"


class _RouteSoftmax(torch.overrides.TorchFunctionMode):
    def __init__(self, tap: nn.Module):
        super().__init__()
        self.tap = tap

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return self.tap(out) if func in _SOFTMAX else out


@contextmanager
def softmax_taps(model: nn.Module, names: Iterable[str]):
    """Route each named module's softmax output through a `SoftmaxTap` child while inside this context."""
    modules = dict(model.named_modules())
    patched = []
    for name in names:
        mod = modules[name]
        mod.add_module(SOFTMAX_TAP, SoftmaxTap())
        inner = mod.forward

        def forward(*args, _inner=inner, _tap=mod._modules[SOFTMAX_TAP], **kwargs):
            with _RouteSoftmax(_tap):
                return _inner(*args, **kwargs)

        mod.forward = forward
        patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            del mod.forward
            del mod._modules[SOFTMAX_TAP]


@dataclass
class Probe:
    """What one attention module saw in the probe forward."""

    args: tuple  # positional inputs: tensor shapes as torch.Size, other values as given (feat_size lists)
    probs: list  # shapes of the captured probabilities, one per call


def _describe(v):
    return v.shape if isinstance(v, torch.Tensor) else tuple(v) if isinstance(v, (list, tuple)) else v


def probe(model: nn.Module, input_size: tuple[int, int], candidates: dict[str, str]) -> dict[str, Probe]:
    """One forward of a zero image at `input_size` with fused attention off: the inputs and probability shapes of
    the modules in `candidates` (name -> tap), plus the inputs of their parents (partition blocks)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modules = dict(model.named_modules())
    found = {n: Probe((), []) for n in candidates}
    parents = {n.rsplit(".", 1)[0] for n in candidates if "." in n}
    found.update({p: Probe((), []) for p in parents if p not in found})
    handles = []
    for name in found:
        handles.append(
            modules[name].register_forward_pre_hook(
                lambda m, args, _n=name: setattr(found[_n], "args", tuple(_describe(a) for a in args))
            )
        )
    was = model.training
    model.eval()
    try:
        with (
            unfused(model, list(candidates)),
            softmax_taps(model, [n for n, t in candidates.items() if t == SOFTMAX_TAP]),
        ):
            mods = dict(model.named_modules())
            for name, t in candidates.items():
                handles.append(
                    mods[f"{name}.{t}"].register_forward_pre_hook(
                        lambda m, args, _n=name: found[_n].probs.append(args[0].shape)
                    )
                )
            with torch.no_grad():
                model(torch.zeros(1, 3, *input_size, device=device, dtype=dtype))
    except VitstudyError:
        raise
    except Exception as err:  # the model does not run at this size: any error
        first = (str(err).strip().splitlines() or [""])[0]
        raise VitstudyError(
            f"{type(model).__name__} does not run on a {input_size[0]}x{input_size[1]} input "
            f"({type(err).__name__}: {first[:160]}); choose an input size its stages accept"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return found


def _described(
    name: str,
    block: int,
    heads: int,
    kind: str,
    grid,
    stride,
    layout: str,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    tap: str = "attn_drop",
    num_prefix: int = 0,
    window=None,
) -> Site:
    """A site from pixel positions of its queries and keys, (groups, Q, 2) and (groups, K, 2)."""
    if q_pos.dim() == 2:
        q_pos, k_pos = q_pos[None], k_pos[None]
    dist = am.pair_distances(q_pos, k_pos)
    counted = int((~q_pos.isnan().any(-1)).sum())
    return Site(
        name,
        block,
        heads,
        kind,
        tuple(int(g) for g in grid),
        tuple(float(s) for s in stride),
        num_prefix,
        window,
        dist=dist,
        tap=tap,
        layout=layout,
        queries=counted,
        q_pos=q_pos,
        k_pos=k_pos,
        prefix_names="class" if num_prefix else "",
    )


def _px(pos: torch.Tensor, stride: tuple[float, float]) -> torch.Tensor:
    """Cell-unit positions (.., 2) to pixels."""
    return pos * torch.tensor(stride, dtype=torch.float64)


def _with_prefix(pos: torch.Tensor, n: int) -> torch.Tensor:
    """Prepend n prefix tokens (NaN positions) to (T, 2) positions."""
    return torch.cat([torch.full((n, 2), float("nan"), dtype=torch.float64), pos]) if n else pos


def _strides(img: tuple[int, int], grid) -> tuple[float, float]:
    return (img[0] / grid[0], img[1] / grid[1])


def _reduced_keys(mod: nn.Module, h: int, w: int) -> torch.Tensor:
    """PVT-v2 / Twins global sub-sampled keys: the strided conv `sr` (kernel = stride), PVT-v2-li's adaptive
    7x7 average pool, or none; (K, 2) key centres in cells of the query grid."""
    pool = getattr(mod, "pool", None)
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        m = _pair(pool.output_size)
        return am.plane(am.adaptive_centres(h, m[0]), am.adaptive_centres(w, m[1]))
    sr = getattr(mod, "sr", None)
    if isinstance(sr, nn.Conv2d):
        return am.plane(
            am.pooled_centres(h, sr.kernel_size[0], sr.stride[0], sr.padding[0]),
            am.pooled_centres(w, sr.kernel_size[1], sr.stride[1], sr.padding[1]),
        )
    return am.plane(am.cell_centres(h), am.cell_centres(w))


def _spatial_reduction_site(name, mod, pr: Probe, depth, img) -> Site:
    """PVT-v2 Attention and Twins GlobalSubSampleAttn: queries on the stage's H x W grid, keys sub-sampled."""
    h, w = (int(v) for v in pr.args[1])
    stride = _strides(img, (h, w))
    q = am.plane(am.cell_centres(h), am.cell_centres(w))
    k = _reduced_keys(mod, h, w)
    kind = "global" if len(k) == len(q) else "pooled"
    return _described(
        f"{name}", depth, int(mod.num_heads), kind, (h, w), stride, "bhqk", _px(q, stride), _px(k, stride)
    )


def _window_positions(h: int, w: int, ws: tuple[int, int], grid_partition: bool = False) -> torch.Tensor:
    """(windows, ws0 * ws1, 2) cell positions of a map partitioned into windows (windows and tokens row-major):
    blocks of adjacent cells, or (MaxViT's grid partition) cells strided h/ws0 apart."""
    out = []
    if grid_partition:
        sh, sw = h // ws[0], w // ws[1]
        for u in range(sh):
            for v in range(sw):
                out.append(
                    am.plane(
                        torch.arange(ws[0], dtype=torch.float64) * sh + u,
                        torch.arange(ws[1], dtype=torch.float64) * sw + v,
                    )
                )
    else:
        for r in range(h // ws[0]):
            for c in range(w // ws[1]):
                out.append(
                    am.plane(
                        torch.arange(ws[0], dtype=torch.float64) + r * ws[0],
                        torch.arange(ws[1], dtype=torch.float64) + c * ws[1],
                    )
                )
    return torch.stack(out) + 0.5


def _twins_local_site(name, mod, pr: Probe, depth, img) -> Site:
    """Twins LocallyGroupedAttn: ws x ws windows of the (bottom/right zero-padded) grid, (B, windows, heads, n, n).
    Padded keys are attended (zero tokens, at their place beyond the border); padded queries are thrown away."""
    h, w = (int(v) for v in pr.args[1])
    ws = int(mod.ws)
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    stride = _strides(img, (h, w))
    pos = _window_positions(hp, wp, (ws, ws))
    q = pos.clone()
    q[(pos[..., 0] > h) | (pos[..., 1] > w)] = float("nan")
    return _described(
        name,
        depth,
        int(mod.num_heads),
        "window",
        (h, w),
        stride,
        "bghqk",
        _px(q, stride),
        _px(pos, stride),
        window=(ws, ws),
    )


def _twins_sites(model, img) -> list[Site]:
    names = [
        (n, m) for n, m in model.named_modules() if type(m).__name__ in ("LocallyGroupedAttn", "GlobalSubSampleAttn")
    ]
    found = probe(model, img, {n: "attn_drop" for n, _ in names})
    return [
        (_twins_local_site if type(m).__name__ == "LocallyGroupedAttn" else _spatial_reduction_site)(
            n, m, found[n], i, img
        )
        for i, (n, m) in enumerate(names)
    ]


def _pvt_sites(model, img) -> list[Site]:
    names = [(n, m) for n, m in model.named_modules() if n.endswith(".attn") and hasattr(m, "kv") and hasattr(m, "q")]
    found = probe(model, img, {n: "attn_drop" for n, _ in names})
    return [_spatial_reduction_site(n, m, found[n], i, img) for i, (n, m) in enumerate(names)]


def _maxxvit_sites(model, img) -> list[Site]:
    """MaxViT / CoAtNet: PartitionAttention blocks attend inside ws x ws windows ('block') or over a strided grid
    ('grid'), windows folded into the batch; CoAtNet's TransformerBlock2d attends globally over its (pooled) map."""
    names = [(n, m) for n, m in model.named_modules() if type(m).__name__ in ("Attention2d", "AttentionCl")]
    found = probe(model, img, {n: "attn_drop" for n, _ in names})
    modules = dict(model.named_modules())
    out = []
    for i, (n, m) in enumerate(names):
        parent = modules[n.rsplit(".", 1)[0]]
        pname = type(parent).__name__
        heads = int(m.num_heads)
        if pname in ("PartitionAttentionCl", "PartitionAttention2d"):
            shape = found[n.rsplit(".", 1)[0]].args[0]
            h, w = (shape[1], shape[2]) if pname.endswith("Cl") else (shape[2], shape[3])
            ps = tuple(int(v) for v in parent.partition_size)
            if h % ps[0] or w % ps[1]:
                raise VitstudyError(f"{n}: a {h}x{w} map that {ps[0]}x{ps[1]} partitions do not tile")
            stride = _strides(img, (h, w))
            pos = _px(_window_positions(h, w, ps, grid_partition=not parent.partition_block), stride)
            out.append(
                _described(
                    n,
                    i,
                    heads,
                    "window" if parent.partition_block else "grid",
                    (h, w),
                    stride,
                    "(bg)hqk",
                    pos,
                    pos,
                    window=ps,
                )
            )
        else:  # global over the module's input map
            shape = found[n].args[0]
            h, w = (shape[2], shape[3]) if type(m).__name__ == "Attention2d" else (shape[1], shape[2])
            stride = _strides(img, (h, w))
            pos = _px(am.plane(am.cell_centres(h), am.cell_centres(w)), stride)
            out.append(_described(n, i, heads, "global", (h, w), stride, "bhqk", pos, pos))
    return out


def _nest_sites(model, img) -> list[Site]:
    """NesT: each level's attention runs inside non-overlapping square blocks of its map: (B, heads, blocks, n, n),
    blocks and tokens row-major (timm's blockify)."""
    names = [(n, m) for n, m in model.named_modules() if n.endswith(".attn") and ".transformer_encoder." in n]
    found = probe(model, img, {n: "attn_drop" for n, _ in names})
    out = []
    for i, (n, m) in enumerate(names):
        _, t, nt, _ = found[n].args[0]
        g, bs = math.isqrt(t), math.isqrt(nt)
        side = g * bs
        stride = _strides(img, (side, side))
        pos = _px(_window_positions(side, side, (bs, bs)), stride)
        out.append(
            _described(n, i, int(m.num_heads), "window", (side, side), stride, "bhgqk", pos, pos, window=(bs, bs))
        )
    return out


def _pool_centres(op, n: int, dim: int) -> torch.Tensor:
    if op is None:
        return am.cell_centres(n)
    k, s, p = (_pair(getattr(op, a))[dim] for a in ("kernel_size", "stride", "padding"))
    return am.pooled_centres(n, int(k), int(s), int(p))


def _mvit_sites(model, img) -> list[Site]:
    """MViT-v2: queries, keys and values pooled by strided convs/pools (pool_q, pool_k) over the stage's grid;
    the class token (if any) stays unpooled in front. No attn_drop: the softmax output is tapped."""
    names = [
        (n, m)
        for n, m in model.named_modules()
        if type(m).__name__ in ("MultiScaleAttention", "MultiScaleAttentionPoolFirst")
    ]
    found = probe(model, img, {n: SOFTMAX_TAP for n, _ in names})
    out = []
    for i, (n, m) in enumerate(names):
        h, w = (int(v) for v in found[n].args[1])
        stride = _strides(img, (h, w))
        prefix = int(bool(m.has_cls_token))
        q = am.plane(_pool_centres(m.pool_q, h, 0), _pool_centres(m.pool_q, w, 1))
        k = am.plane(_pool_centres(m.pool_k, h, 0), _pool_centres(m.pool_k, w, 1))
        qn = (len(_pool_centres(m.pool_q, h, 0)), len(_pool_centres(m.pool_q, w, 1)))
        kind = "global" if m.pool_q is None and m.pool_k is None else "pooled"
        out.append(
            _described(
                n,
                i,
                int(m.num_heads),
                kind,
                qn if kind == "global" else (h, w),
                stride,
                "bhqk",
                _with_prefix(_px(q, stride), prefix),
                _with_prefix(_px(k, stride), prefix),
                tap=SOFTMAX_TAP,
                num_prefix=prefix,
            )
        )
    return out


def _levit_sites(model, img) -> list[Site]:
    """LeViT: Attention over its stage's resolution x resolution grid; AttentionDownsample's queries are the grid
    subsampled with its stride (positions 0, s, 2s, ... as in its own bias table), keys the full grid."""
    names = [(n, m) for n, m in model.named_modules() if type(m).__name__ in ("Attention", "AttentionDownsample")]
    probe(model, img, {n: SOFTMAX_TAP for n, _ in names})  # it must run at this size (else a one-line error)
    out = []
    for i, (n, m) in enumerate(names):
        res = _pair(m.resolution)
        stride = _strides(img, res)
        k = am.plane(am.cell_centres(res[0]), am.cell_centres(res[1]))
        if type(m).__name__ == "AttentionDownsample":
            q = am.plane(
                torch.arange(0, res[0], m.stride, dtype=torch.float64) + 0.5,
                torch.arange(0, res[1], m.stride, dtype=torch.float64) + 0.5,
            )
            kind = "pooled"
        else:
            q, kind = k, "global"
        out.append(
            _described(
                n, i, int(m.num_heads), kind, res, stride, "bhqk", _px(q, stride), _px(k, stride), tap=SOFTMAX_TAP
            )
        )
    return out


def _efficientformer_sites(model, img) -> list[Site]:
    """EfficientFormer: global attention (with a learned position bias) over the last stage's flattened map."""
    names = [
        (n, m) for n, m in model.named_modules() if type(m).__name__ == "Attention" and hasattr(m, "attention_biases")
    ]
    found = probe(model, img, {n: SOFTMAX_TAP for n, _ in names})
    out = []
    for i, (n, m) in enumerate(names):
        tokens = found[n].args[0][1]
        side = math.isqrt(tokens)
        grid = (side, side)
        bias = m.attention_biases.shape[-1]
        if side * side != tokens or bias != tokens:
            raise VitstudyError(
                f"EfficientFormer attention '{n}' sees {tokens} tokens but its position bias is for {bias}: "
                f"use the input size the model was built for"
            )
        stride = _strides(img, grid)
        pos = _px(am.plane(am.cell_centres(side), am.cell_centres(side)), stride)
        out.append(_described(n, i, int(m.num_heads), "global", grid, stride, "bhqk", pos, pos, tap=SOFTMAX_TAP))
    return out


def _cross_site(name: str, block: int, heads: int, grid, stride, keys: torch.Tensor) -> Site:
    """CrossViT fusion: the one query is branch i's class token (no position), the keys its own class token and the
    other branch's patch grid `keys` (1 + N, 2). Mean distance there is the spread of the keys it attends to
    (metrics.attention.spread_distance)."""
    k = keys[None]
    q = torch.full((1, 1, 2), float("nan"), dtype=torch.float64)
    return Site(
        name,
        block,
        heads,
        "cross",
        tuple(int(g) for g in grid),
        tuple(float(s) for s in stride),
        1,
        dist=torch.zeros(1, 1, len(keys), dtype=torch.float64),
        layout="bhqk",
        queries=1,
        q_pos=q,
        k_pos=k,
        key_dist=am.pair_distances(k, k)[0],
        prefix_names="class (own branch)",
    )


def _crossvit_sites(model, img) -> list[Site]:
    """CrossViT: each branch i resizes the image to img_size_scaled[i] and attends over its class token and its own
    patch grid (ViT blocks `blocks.J.blocks.i.K.attn`); a grid cell spans img / grid input pixels. Then each fusion
    `blocks.J.fusion.i` runs cross-attention (timm CrossAttention): branch i's class token is the only query, the keys
    are that token and branch i+1's patch tokens (kind 'cross'). Sites are listed in execution order."""
    grids = [
        (sc[0] // _pair(pe.patch_size)[0], sc[1] // _pair(pe.patch_size)[1])
        for sc, pe in zip(model.img_size_scaled, model.patch_embed)
    ]
    pos = []
    for g in grids:
        stride = _strides(img, g)
        pos.append((stride, _with_prefix(_px(am.plane(am.cell_centres(g[0]), am.cell_centres(g[1])), stride), 1)))
    out = []
    for j, ms in enumerate(model.blocks):
        for i, branch in enumerate(ms.blocks):
            for k, blk in enumerate(branch):
                stride, p = pos[i]
                out.append(
                    _described(
                        f"blocks.{j}.blocks.{i}.{k}.attn",
                        len(out),
                        int(blk.attn.num_heads),
                        "global",
                        grids[i],
                        stride,
                        "bhqk",
                        p,
                        p,
                        num_prefix=1,
                    )
                )
        for i, fusion in enumerate(ms.fusion):
            other = (i + 1) % len(ms.fusion)
            cross = [(n, m) for n, m in fusion.named_modules() if type(m).__name__ == "CrossAttention"]
            if (
                len(cross) != 1
            ):  # timm's stacked fusion blocks pass on the class token alone: no patch keys after the first
                raise VitstudyError(
                    f"CrossViT fusion 'blocks.{j}.fusion.{i}' has {len(cross)} cross-attention blocks; "
                    f"only one per fusion (timm's configs: depth[-1] = 0) has patch tokens as keys"
                )
            n, m = cross[0]
            stride, p = pos[other]
            out.append(
                _cross_site(
                    f"blocks.{j}.fusion.{i}" + (f".{n}" if n else ""),
                    len(out),
                    int(m.num_heads),
                    grids[other],
                    stride,
                    p,
                )
            )
    return out


def _tnt_sites(model, img) -> list[Site]:
    """TNT: per block, inner attention among the pixel tokens of each patch ((B * patches, heads, n, n); a pixel
    token is the strided conv's output, centred on its kernel's footprint) and outer attention over the class
    token and the patch grid."""
    pe = model.pixel_embed
    ps, nps = _pair(pe.patch_size), _pair(pe.new_patch_size)
    conv = pe.proj
    grid = (img[0] // ps[0], img[1] // ps[1])
    inner = []
    for r in range(grid[0]):
        for c in range(grid[1]):
            if pe.legacy:  # conv over the image, then unfold: pixel token a of patch r is conv output r * nps + a
                rows = am.pooled_centres(img[0], conv.kernel_size[0], conv.stride[0], conv.padding[0])[
                    r * nps[0] : (r + 1) * nps[0]
                ]
                cols = am.pooled_centres(img[1], conv.kernel_size[1], conv.stride[1], conv.padding[1])[
                    c * nps[1] : (c + 1) * nps[1]
                ]
            else:  # unfold into patches, conv inside each patch (zero padding at the patch border)
                rows = am.pooled_centres(ps[0], conv.kernel_size[0], conv.stride[0], conv.padding[0]) + r * ps[0]
                cols = am.pooled_centres(ps[1], conv.kernel_size[1], conv.stride[1], conv.padding[1]) + c * ps[1]
            inner.append(am.plane(rows, cols))
    inner = torch.stack(inner)
    stride = _strides(img, grid)
    outer = _with_prefix(_px(am.plane(am.cell_centres(grid[0]), am.cell_centres(grid[1])), stride), 1)
    out = []
    for i, blk in enumerate(model.blocks):
        out.append(
            _described(
                f"blocks.{i}.attn_in",
                len(out),
                int(blk.attn_in.num_heads),
                "window",
                (grid[0] * nps[0], grid[1] * nps[1]),
                (ps[0] / nps[0], ps[1] / nps[1]),
                "(bg)hqk",
                inner,
                inner,
                window=tuple(nps),
            )
        )
        out.append(
            _described(
                f"blocks.{i}.attn_out",
                len(out),
                int(blk.attn_out.num_heads),
                "global",
                grid,
                stride,
                "bhqk",
                outer,
                outer,
                num_prefix=1,
            )
        )
    return out


def _hiera_sites(model, img) -> list[Site]:
    """Hiera: tokens are `unroll`ed so that a max-pool over q_stride is a max over the slowest index. Their
    positions are found by unrolling the patch grid's own coordinates; each pooling (the queries of a stage's first
    block, and the block's output) takes a token's position as the mean of the ones it pools (its footprint's
    centre). Mask-unit attention: token n = t * windows + w, (B, heads, windows, Tq, Tk); global: (B, heads, Nq, N)."""
    names = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "MaskUnitAttention"]
    found = probe(model, img, {n: SOFTMAX_TAP for n, _ in names})
    size = [int(v) for v in model.unroll.size]
    if len(size) != 2:
        raise VitstudyError("Hiera with a temporal axis (video) has no 2-D image positions; use an image model")
    stride = _strides(img, size)
    grid = am.plane(am.cell_centres(size[0]), am.cell_centres(size[1]))
    with torch.no_grad():
        pos = model.unroll(_px(grid, stride)[None].to(torch.float64))[0]
    out = []
    for i, (n, m) in enumerate(names):
        tokens = int(found[n].args[0][1])
        if tokens != len(pos):
            raise VitstudyError(f"Hiera attention '{n}' sees {tokens} tokens, expected {len(pos)} (masked input?)")
        qs = int(m.q_stride)
        pooled = pos.reshape(qs, -1, 2).mean(0)
        if m.use_mask_unit_attn:
            windows = tokens // (qs * int(m.window_size))
            k = pos.reshape(-1, windows, 2).transpose(0, 1)  # (windows, T, 2)
            q = pooled.reshape(-1, windows, 2).transpose(0, 1)
            layout, kind = "bhgqk", "window"
        else:
            k, q, layout, kind = pos[None], pooled[None], "bhqk", "global" if qs == 1 else "pooled"
        h = round(math.sqrt(tokens * size[0] / size[1]))
        out.append(
            _described(
                n,
                i,
                int(m.heads),
                kind,
                (h, tokens // max(h, 1)),
                _strides(img, (h, tokens // max(h, 1))),
                layout,
                q,
                k,
                tap=SOFTMAX_TAP,
            )
        )
        pos = pooled
    return out


DESCRIBED = {
    "PyramidVisionTransformerV2": _pvt_sites,
    "Twins": _twins_sites,
    "MaxxVit": _maxxvit_sites,
    "Nest": _nest_sites,
    "MultiScaleVit": _mvit_sites,
    "Levit": _levit_sites,
    "LevitDistilled": _levit_sites,
    "EfficientFormer": _efficientformer_sites,
    "CrossVit": _crossvit_sites,
    "TNT": _tnt_sites,
    "Hiera": _hiera_sites,
}

REFUSED = {
    "CoaT": "CoaT's factorized attention takes the softmax of the keys over tokens and multiplies K^T V first "
    "(Xu et al. 2021): no query-by-key probability map exists, so it has no attention distance or rollout",
}


def input_size_of(model: nn.Module, input_size=None) -> tuple[int, int]:
    """(H, W) the model runs on: given, or its patch embedding's img_size, or its pretrained config."""
    if input_size is not None:
        return tuple(int(v) for v in list(input_size)[-2:])
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img is not None:
        return tuple(int(v) for v in _pair(img))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(int(v) for v in cfg["input_size"][-2:])
    raise VitstudyError(f"{type(model).__name__}: no input size known; set model.data.input_size")


def sites(model: nn.Module, input_size=None) -> list[Site]:
    """The attention modules of a timm transformer: ViT family, PiT and Swin from their config; the hierarchical
    families in DESCRIBED from a probe forward at `input_size` (H, W; default: the model's own)."""
    name = type(model).__name__
    if name == "Xcit":
        raise VitstudyError(
            "XCiT's cross-covariance attention is a softmax over channels, not over image positions, "
            "so it has no attention distance or map; use another transformer"
        )
    if name in REFUSED:
        raise VitstudyError(REFUSED[name])
    if name in DESCRIBED:
        return DESCRIBED[name](model, input_size_of(model, input_size))
    swin = [
        (n, m)
        for n, m in model.named_modules()
        if hasattr(m, "shift_size")
        and hasattr(m, "window_size")
        and hasattr(m, "input_resolution")
        and _attention_ok(getattr(m, "attn", None))
    ]
    if swin:
        return _swin_sites(model, swin)
    pe = getattr(model, "patch_embed", None)
    if pe is not None and hasattr(pe, "grid_size") and isinstance(getattr(model, "transformers", None), nn.Sequential):
        return _pit_sites(model)
    if (
        pe is not None
        and hasattr(pe, "grid_size")
        and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList))
    ):
        return _vit_sites(model)
    named = sorted(
        {type(m).__name__ for m in model.modules() if any(w in type(m).__name__ for w in ("Attn", "Attention"))}
    )
    if any(_attention_ok(m) for m in model.modules()) or named:
        raise VitstudyError(
            f"{type(model).__name__} has attention modules ({', '.join(named) or 'timm Attention'}) but not in a layout vitstudy knows (the ViT "
            f"family, PiT, Swin, or one of {', '.join(sorted(DESCRIBED))}); attention maps are not supported for it yet"
        )
    raise VitstudyError(
        f"{type(model).__name__} has no self-attention to measure (none of its modules is a softmax "
        f"attention over image positions that vitstudy knows); use a transformer, e.g. model=vit_b16, "
        f"model=deit_s or model=swin_t"
    )


@contextmanager
def unfused(model: nn.Module, only: Iterable | None = None):
    """Switch fused attention off on `model`'s modules (all, or the module paths or Sites in `only`), then restore;
    Sites tapped at their softmax get a SoftmaxTap for the duration."""
    only = None if only is None else list(only)
    if only and isinstance(only[0], Site):
        with (
            unfused(model, [s.name for s in only]),
            softmax_taps(model, [s.name for s in only if s.tap == SOFTMAX_TAP]),
        ):
            yield
        return
    names = None if only is None else set(only)
    saved = []
    for name, mod in model.named_modules():
        if hasattr(mod, "fused_attn") and (names is None or name in names):
            saved.append((mod, mod.fused_attn))
            mod.fused_attn = False
    try:
        yield
    finally:
        for mod, value in saved:
            mod.fused_attn = value


class Counter:
    """Counts captured maps per batch so a silent miss (0 maps, or a module running twice) becomes an error."""

    def __init__(self, expected: list[str]):
        self.expected = expected
        self.seen: list[str] = []

    def add(self, name: str) -> None:
        self.seen.append(name)

    def end_batch(self) -> None:
        if self.seen != self.expected:
            raise VitstudyError(
                f"captured {len(self.seen)} attention maps for {len(self.expected)} attention modules "
                f"(e.g. expected '{self.expected[0]}'); the model's attention does not run through attn_drop "
                f"as timm's does, so its probabilities cannot be read"
            )
        self.seen = []
