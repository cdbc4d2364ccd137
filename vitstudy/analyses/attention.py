"""Mean attention distance per (block, head) and local-vs-global heads against a CNN.

attention_distance: Raghu et al. 2021 Figs 3-4 (heads sorted by distance, chosen blocks; `compare` adds
the IN-1k vs IN-21k pairs of Fig. 4 on the same images) and Dosovitskiy et al. 2020 Fig. 7 right / Fig. 11
(every head against depth). local_global_cka: Raghu et al. Fig. 5, CKA of subsets of one block's heads,
most local to most global, with early layers of a reference CNN.
Both stream: the softmax maps are reduced to per-image means inside the hook (metrics.attention). Not in the papers:
the attention_distance table also reports prefix keys (class token, registers) apart (`prefix_share`,
`patch_mean_distance`), and CrossViT's cross-attention rows (kind 'cross') measure the spread of the keys its class
token attends to (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
import pandas as pd
import torch

from ..anatomy.attention import Counter, Site, excluded, sites, unfused
from ..anatomy.blocks import block_names
from ..errors import VitstudyError
from ..metrics import uncertainty
from ..metrics.cka import MinibatchCKA, gram, u_center
from ..pipeline import models
from ..pipeline.engine import Reducer, stream
from ..pipeline.layers import Layer, features
from ..pipeline.results import Replicates
from ..plots import attention as plots_attention
from ._registry import Params, Result, at_least, register
from .common import INPUT


class DistanceStats:
    """Per (site, head) float64 sums of per-image mean distances and their squares; std comes at the end."""

    def __init__(self, site_list: list[Site]):
        self.sites = {s.name: s for s in site_list}
        self.order = [s.name for s in site_list]
        self.s1 = {s.name: torch.zeros(s.heads, dtype=torch.float64) for s in site_list}
        self.s2 = {s.name: torch.zeros(s.heads, dtype=torch.float64) for s in site_list}
        self.batch_sums: dict[str, list[torch.Tensor]] = {
            s.name: [] for s in site_list
        }  # per batch Σ, for the jackknife
        self.batch_counts: dict[str, list[int]] = {s.name: [] for s in site_list}
        # prefix keys reported apart: Σ over images of the per-image share and of the patch-key mean distance
        self.share = {s.name: torch.zeros(s.heads, dtype=torch.float64) for s in site_list}
        self.patch = {s.name: torch.zeros(s.heads, dtype=torch.float64) for s in site_list}
        self.n = 0
        self.checked: set[str] = set()

    def add(self, name: str, attn: torch.Tensor, batch: int) -> None:
        site = self.sites[name]
        if name not in self.checked:  # shape and row sums once per site: the capture is structural
            site.check(attn, batch)
            self.checked.add(name)
        m = site.per_image(attn).to(torch.float64).cpu()
        total = m.sum(0)
        self.s1[name] += total
        self.s2[name] += (m * m).sum(0)
        self.batch_sums[name].append(total)
        self.batch_counts[name].append(m.shape[0])
        split = site.split(attn)
        self.share[name] += split.share.cpu().sum(0)
        self.patch[name] += split.patch_distance.cpu().sum(0)

    def mean_std(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        mean = self.s1[name] / n
        var = (self.s2[name] - self.s1[name] * mean) / (n - 1) if n > 1 else torch.full_like(mean, float("nan"))
        return mean.numpy(), var.clamp_min(0).sqrt().numpy()

    def prefix_means(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(heads,) mean over images of the share of attention to prefix keys and of the patch-key mean distance."""
        return (self.share[name] / self.n).numpy(), (self.patch[name] / self.n).numpy()

    def replicates(self, name: str) -> np.ndarray:
        """Leave-one-batch-out means (B, heads): how the mean moves without each batch (for paired comparisons)."""
        sums = torch.stack(self.batch_sums[name]).numpy()
        counts = np.asarray(self.batch_counts[name], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # one batch: no replicate (NaN)
            return (sums.sum(0)[None] - sums) / (counts.sum() - counts)[:, None]


class DistanceReducer(Reducer):
    """attention_distance: one map per attention module per batch, reduced inside the hook."""

    def __init__(self, site_list: list[Site]):
        self.stats = DistanceStats(site_list)
        self.counter = Counter([s.name for s in site_list])
        self.batch = None

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        if layer is INPUT:  # model input: batch size
            self.batch = tensor.shape[0]
            return
        self.counter.add(layer.name)
        self.stats.add(layer.name, tensor, self.batch)

    def end_batch(self, labels, outputs) -> None:
        self.counter.end_batch()
        self.stats.n += len(labels)


def distance_table(m, stats: DistanceStats, site_list: list[Site], cfg) -> pd.DataFrame:
    """One row per (block, head); `uniform_distance` is what uniform attention on that block's grid would give.
    `prefix_share` and `patch_mean_distance` report the prefix keys named in `prefix_keys` apart (the share of
    attention they get; the mean distance over patch keys with each row renormalised), `uniform_patch_distance`
    is the latter's uniform-attention reference. `mean_distance` keeps the papers' convention (prefix keys at 0)."""
    rows = []
    uniform = {s.name: s.uniform_distance() if s.dist is not None else float("nan") for s in site_list}
    for s in site_list:
        mean, std = stats.mean_std(s.name)
        share, patch = stats.prefix_means(s.name)
        uniform_patch = s.uniform_patch_distance()
        se = std / np.sqrt(stats.n)  # images are independent draws; heads of one image are not
        ci = uncertainty.se_columns("mean_distance", mean, se, stats.n - 1)
        rank = np.argsort(np.argsort(mean, kind="stable"), kind="stable")
        for h in range(s.heads):
            rows.append(
                {
                    "model": m.name,
                    "label": m.label,
                    "weights": m.weights,
                    "block": s.block,
                    "layer": s.name,
                    "head": h,
                    "head_rank": int(rank[h]),
                    "mean_distance": float(mean[h]),
                    **{k: float(v[h]) for k, v in ci.items()},
                    "std_distance": float(std[h]),
                    "uniform_distance": uniform[s.name],
                    "prefix_keys": s.prefix_names or "none",
                    "prefix_share": float(share[h]),
                    "patch_mean_distance": float(patch[h]),
                    "uniform_patch_distance": uniform_patch,
                    "num_images": stats.n,
                    "uncertainty": "se_images",
                    "kind": s.kind,
                    "stride_px": s.stride[0],
                    "grid": f"{s.grid[0]}x{s.grid[1]}",
                    "window": "" if s.window is None else f"{s.window[0]}x{s.window[1]}",
                    "shift": f"{s.shift[0]}x{s.shift[1]}",
                    "prefix_tokens": s.num_prefix,
                    "dataset": cfg.dataset.name,
                }
            )
    return pd.DataFrame(rows)


def measure(ctx, m, batching) -> tuple[pd.DataFrame, np.ndarray]:
    """Mean attention distance of every head of `m` over the sampled images, and its leave-one-batch-out
    replicates (B, rows) in the table's row order."""
    site_list = sites(m.module, m.data_config.get("input_size"))
    reducer = DistanceReducer(site_list)
    loader = ctx.loader([m], batching)
    with unfused(m.module, site_list):
        stream(
            [m],
            [[INPUT] + [s.layer for s in site_list]],
            loader,
            reducer,
            ctx.device,
            f"attention distance {m.label}",
            ctx.progress,
        )
    reps = np.concatenate([reducer.stats.replicates(s.name) for s in site_list], axis=1)
    return distance_table(m, reducer.stats, site_list, ctx.cfg), reps


@dataclass
class AttentionDistance(Params):
    blocks: List[int] = field(
        default_factory=lambda: [0, 1, -2, -1]
    )  # blocks drawn in the sorted-head figure (negative: from the end); the CSV has every block
    compare: List[Any] = field(
        default_factory=list
    )  # more models on the same images: presets, timm names (arch.tag) or model nodes, e.g. the IN-21k twin


def distance_models(cfg) -> dict:
    """`model`, then every `analysis.compare` entry as its own node (own weights, kwargs, data; nothing inherited),
    labelled with its full timm name unless it has a label, so two tags of one architecture stay apart (Fig. 4)."""
    nodes = {"model": cfg.model}
    for i, entry in enumerate(cfg.analysis.compare or []):
        node = models.node(entry)
        models.check_name(node.name)
        if not node.get("label"):
            node.label = node.name
        nodes[f"compare{i}"] = node
    return nodes


@register(
    "attention_distance",
    "mean attention distance in pixels per (block, head) (Raghu et al. Figs 3-4, Dosovitskiy et al. Fig. 7 right)",
    AttentionDistance,
    models=distance_models,
    lazy_models=True,
)
def attention_distance(ctx) -> Result:
    blocks = list(ctx.params.blocks)
    main = ctx.models["model"]
    site_list = sites(
        main.module, main.data_config.get("input_size")
    )  # clear message for CNNs before any image is loaded
    for b in blocks:
        if not -len(site_list) <= b < len(site_list):
            raise VitstudyError(
                f"analysis.blocks has {b}, but {main.label} has {len(site_list)} attention blocks (valid: 0..{len(site_list) - 1} or negative from the end)"
            )
    batching, record = ctx.sample()
    tables, reps = [], []
    for key in ctx.models.nodes:  # one model at a time: the compare models are built here and freed after use
        table, rep = measure(ctx, ctx.models[key], batching)
        tables.append(table)
        reps.append(rep)
        ctx.models.release(key)
    df = pd.concat(tables, ignore_index=True)
    figs = {
        "attention_distance": plots_attention.sorted_heads(df, blocks),
        "attention_distance_depth": plots_attention.depth_scatter(df),
    }
    replicates = {}
    if len(batching.batches) > 1:  # paired comparisons (vitstudy compare): every model saw the same batches
        replicates["attention_distance"] = Replicates(
            values=np.concatenate(reps, axis=1),
            strata=np.zeros(len(batching.batches), dtype=np.int64),
            units=uncertainty.unit_ids(batching.batches),
            estimate=df.mean_distance.to_numpy(),
            column="mean_distance",
        )
    info = {
        "attention_models": [t.model.iloc[0] for t in tables],
        "uncertainty": {"attention_distance": {"method": "se_images", "description": uncertainty.METHODS["se_images"]}},
    }
    if excluded(main.module):  # e.g. CaiT's class-attention blocks
        info["excluded"] = excluded(main.module)
    return Result(tables={"attention_distance": df}, figures=figs, info=info, images=[record], replicates=replicates)


# --------------------------------------------------------------------------------------------------
# local_global_cka (Raghu et al. Fig. 5)


class LocalGlobalReducer(Reducer):
    """One pass: per-head Ũ of the chosen block's head outputs, Ũ of each reference layer, and that block's distances.

    The Gram of a concatenation of heads is the sum of the per-head Grams and Ũ is linear, so the inner
    products <Ũ_a, Ũ_b> of all heads and reference layers (one (H+R) x (H+R) matrix per batch, accumulated by
    MinibatchCKA) give the minibatch CKA of *any* head subset afterwards: no second pass once the heads are ranked.
    """

    def __init__(self, site: Site, proj: Layer, ref_layers: list[Layer], tokens: str, vit, ref, device):
        self.site, self.proj, self.tokens = site, proj, tokens
        self.ref_layers = ref_layers
        self.ref_index = {l.name: i for i, l in enumerate(ref_layers)}
        self.vit, self.ref = vit, ref  # the modules (token modes count their prefix tokens)
        self.stats = DistanceStats([site])
        self.acc = MinibatchCKA(site.heads + len(ref_layers), device=device)
        self.heads: list[torch.Tensor] | None = None
        self.refs: list[torch.Tensor | None] = [None] * len(ref_layers)
        self.batch = None

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        if model_index == 1:
            x = features(tensor, layer, self.tokens, self.ref)
            self.refs[self.ref_index[layer.name]] = u_center(gram(x)).flatten()
        elif layer is INPUT:
            self.batch = tensor.shape[0]
        elif layer.name == self.site.name:
            self.stats.add(layer.name, tensor, self.batch)
        else:  # input of attn.proj: (B, N, heads * head_dim), head h in channels [h d, (h + 1) d)
            b, n, c = tensor.shape
            per = tensor.reshape(b, n, self.site.heads, c // self.site.heads)
            self.heads = [
                u_center(gram(features(per[:, :, h], self.proj, self.tokens, self.vit))).flatten()
                for h in range(self.site.heads)
            ]

    def end_batch(self, labels, outputs) -> None:
        if self.heads is None or any(r is None for r in self.refs):
            raise VitstudyError("a batch passed without the head outputs or a reference layer being captured")
        self.acc.update(torch.stack(self.heads + self.refs))
        self.stats.n += len(labels)
        self.heads, self.refs = None, [None] * len(self.refs)


def subsets(order: list[int], size: int, step: int) -> list[list[int]]:
    """Sliding windows of `size` heads over heads ordered from most local to most global."""
    starts = list(range(0, len(order) - size + 1, step))
    if starts[-1] != len(order) - size:
        starts.append(len(order) - size)  # always end with the most global subset
    return [order[s : s + size] for s in starts]


def subset_cka(inner: torch.Tensor, heads: list[int], ref: int) -> float:
    """CKA(concat of `heads`, reference `ref`) from the accumulated inner products of Ũ matrices."""
    idx = torch.tensor(heads)
    cross = inner[idx, ref].sum()
    self_s = inner[idx][:, idx].sum()
    return float(cross / torch.sqrt(self_s * inner[ref, ref]))


@dataclass
class LocalGlobalCKA(Params):
    block: int = 0  # the ViT block whose heads are ranked by mean attention distance
    subset_size: Optional[int] = (
        None  # heads per subset (sliding window over the ranked heads); null: a quarter of the block's heads, at least 1 (ViT-L/16: 4, ViT-Ti: 1)
    )
    subset_step: int = 1  # window stride; the last window (the most global heads) is always included
    reference_layers: Any = (
        None  # null: the first 5 residual blocks of `reference` (ResNet-50: layer1.0-2, layer2.0-1); or a layer spec
    )

    def check(self) -> None:
        at_least("subset_size", self.subset_size, 1, allow_none=True)
        at_least("subset_step", self.subset_step, 1)


@register(
    "local_global_cka",
    "CKA of local-to-global subsets of one block's heads with early CNN layers (Raghu et al. Fig. 5)",
    LocalGlobalCKA,
    models=("model", "reference"),
)
def local_global_cka(ctx) -> Result:
    cfg, p = ctx.cfg, ctx.params
    vit, ref = ctx.models["model"], ctx.models["reference"]
    site_list = sites(vit.module, vit.data_config.get("input_size"))
    block = p.block
    if not -len(site_list) <= block < len(site_list):
        raise VitstudyError(f"analysis.block={block} is out of range: {vit.label} has {len(site_list)} blocks")
    site = site_list[block]
    if site.kind == "cross":
        raise VitstudyError(
            f"local_global_cka ranks the heads of one block's attention over image tokens; {vit.label}'s "
            f"{site.name} at analysis.block={block} is cross-attention whose only query is a class token"
        )
    if site.kind not in ("global", "pooled") or site.layout not in (None, "bhqk"):
        raise VitstudyError(
            f"local_global_cka needs attention over the whole token grid at analysis.block={block}; "
            f"{vit.label}'s {site.name} uses {site.kind} attention (its heads see windows of the image)"
        )
    if not isinstance(dict(vit.module.named_modules()).get(f"{site.name}.proj"), torch.nn.Linear):
        raise VitstudyError(
            f"local_global_cka reads each head's output at the input of the attention's `proj` linear "
            f"layer; {vit.label}'s {site.name} has none (its heads' outputs are not laid out per token)"
        )
    size = max(1, site.heads // 4) if p.subset_size is None else p.subset_size
    step = p.subset_step
    if not 1 <= size <= site.heads:
        raise VitstudyError(f"analysis.subset_size={size} must be between 1 and the {site.heads} heads of {site.name}")
    spec = p.reference_layers
    if spec is None:
        spec = block_names(ref.module)[:5]  # ResNet-50: layer1.0-2, layer2.0-1 (block1unit1..block2unit2)
        if not spec:
            raise VitstudyError(f"found no residual blocks in {ref.label}; set analysis.reference_layers=[...]")
    ref_layers = ctx.layers(ref, spec)
    proj = Layer(name=f"{site.name}.proj:in", module=f"{site.name}.proj", is_input=True, shape=(), layout="NLC")
    reducer = LocalGlobalReducer(site, proj, ref_layers, cfg.tokens, vit.module, ref.module, ctx.device)
    batching, record = ctx.sample(tail=cfg.cka.tail)
    loader = ctx.loader([vit, ref], batching)
    with unfused(vit.module, [site]):
        stream(
            [vit, ref],
            [[INPUT, site.layer, proj], ref_layers],
            loader,
            reducer,
            ctx.device,
            "local/global cka",
            ctx.progress,
        )
    mean, _ = reducer.stats.mean_std(site.name)
    order = [int(h) for h in np.argsort(mean, kind="stable")]
    inner = reducer.acc.cross.cpu()
    terms = reducer.acc.batch_terms()[0]  # (B, H+R, H+R): the jackknife deletes one batch's inner products
    loo = [inner - t for t in terms]
    rows, reps = [], []
    for k, heads in enumerate(subsets(order, size, step)):
        for j, layer in enumerate(ref_layers):
            value = subset_cka(inner, heads, site.heads + j)
            if not np.isfinite(value) or abs(value) > 1 + 1e-6:
                raise VitstudyError(
                    f"CKA of heads {heads} of {site.name} vs '{layer.name}' is {value:.6g}, outside [-1, 1]"
                )
            reps.append([subset_cka(i, heads, site.heads + j) for i in loo])
            rows.append(
                {
                    "model": vit.name,
                    "weights": vit.weights,
                    "reference": ref.name,
                    "reference_weights": ref.weights,
                    "layer": site.name,
                    "block": site.block,
                    "subset": k,
                    "heads": " ".join(map(str, heads)),
                    "subset_size": size,
                    "subset_mean_distance": float(mean[heads].mean()),
                    "reference_layer": layer.name,
                    "cka": value,
                    "tokens": cfg.tokens,
                    "estimator": "unbiased",
                    "num_images": reducer.stats.n,
                    "batch_size": cfg.dataset.batch_size,
                    "dataset": cfg.dataset.name,
                }
            )
    df = pd.DataFrame(rows)
    reps = np.asarray(reps, dtype=np.float64).T  # (B, rows)
    ci = uncertainty.se_columns("cka", df.cka.to_numpy(), uncertainty.jackknife_se(reps), len(reps) - 1)
    df.insert(df.columns.get_loc("cka") + 1, "cka_se", ci["cka_se"])
    df.insert(df.columns.get_loc("cka") + 2, "cka_ci_low", ci["cka_ci_low"])
    df.insert(df.columns.get_loc("cka") + 3, "cka_ci_high", ci["cka_ci_high"])
    df["uncertainty"] = "jackknife_batches"  # given the ranking of the heads (itself measured on these images)
    heads_df = pd.DataFrame({"head": range(site.heads), "mean_distance": mean})
    fig = plots_attention.local_global(
        df,
        f"{vit.label} block {site.block} heads vs {ref.label}\n"
        f"subsets of {size} heads, step {step}, {reducer.stats.n} images, tokens={cfg.tokens}",
    )
    units = uncertainty.unit_ids(batching.batches)
    info = {
        "head_distances": heads_df.to_dict("list"),
        "reference_layers": [l.name for l in ref_layers],
        "uncertainty": {
            "local_global_cka": {
                "method": "jackknife_batches",
                "df": len(reps) - 1,
                "description": uncertainty.METHODS["jackknife_batches"] + "; the heads' ranking is taken as given",
            }
        },
    }
    jackknife = Replicates(
        values=reps, strata=np.zeros(len(reps), dtype=np.int64), units=units, estimate=df.cka.to_numpy(), column="cka"
    )
    return Result(
        tables={"local_global_cka": df},
        figures={"local_global_cka": fig},
        info=info,
        images=[record],
        replicates={"local_global_cka": jackknife},
    )
