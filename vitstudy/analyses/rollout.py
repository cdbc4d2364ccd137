"""Attention rollout (Abnar & Zuidema 2020) as in Dosovitskiy et al. 2020 Fig. 6 / Fig. 14 (App. D.8).

Head-averaged attention of each block with the residual correction Ã = 0.5 A + 0.5 I, multiplied over all
blocks inside the hooks (R <- Ã_l R, first block first, float64). The map is the CLS row of R over the patch
columns; models without a CLS token use the mean of the patch rows (recorded in `query`). Per image:
entropy of the map (normalised to sum 1) and the share of its mass in the central box.

Windows and stages (Swin, PVT-v2, Twins, MaxViT/CoAtNet, NesT, MViT-v2, LeViT, EfficientFormer, Hiera, PiT): each
block's attention is read over its own queries and keys (windows, grids and shifts put back at their pixels); a key
or query that pools tokens (a patch merging, a strided conv or pool) is the mean of the block's input tokens nearest
to it (metrics.attention.nearest_links), so Ã_l = r A_l P_keys + (1 - r) P_queries and the rollout is carried through
each merge's pooling matrix to the first block's full-resolution grid. It is computed backwards from the map's query
(v^T Ã_L ... Ã_1) so no full-resolution matrix is ever formed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..anatomy.attention import Counter, Site, grouped_of, positions, sites, unfused
from ..errors import VitstudyError
from ..metrics import attention as am
from ..metrics import uncertainty
from ..pipeline.engine import Reducer, stream
from ..pipeline.layers import Layer
from ..plots import attention as plots_attention
from ._registry import Params, Result, at_least, register
from .common import INPUT

ROW_TOL = 1e-6


class RolloutReducer(Reducer):
    def __init__(self, site_list, has_cls: bool, residual: float, num_show: int, centre: float, indices: list[int]):
        self.sites = site_list
        self.prefix = site_list[0].num_prefix
        self.grid = site_list[0].grid
        self.has_cls, self.residual, self.num_show, self.centre = has_cls, residual, num_show, centre
        self.indices = indices
        self.counter = Counter([s.name for s in site_list])
        self.r: torch.Tensor | None = None
        self.inputs: torch.Tensor | None = None
        self.rows: list[dict] = []
        self.shown_maps: list[np.ndarray] = []
        self.shown_inputs: list[torch.Tensor] = []
        self.checked = False

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        if layer is INPUT:
            self.inputs = tensor
            return
        self.counter.add(layer.name)
        site = next(s for s in self.sites if s.name == layer.name)
        if not self.checked:
            site.check(tensor, self.inputs.shape[0])  # the batch from the input: grouped layouts fold groups into dim 0
        self.add(site, tensor)

    def add(self, site, tensor: torch.Tensor) -> None:
        """One block's captured attention: multiplied into the running rollout."""
        a = am.residual_attention(site.probabilities(tensor).to(torch.float64).mean(dim=1), self.residual)
        self.r = a if self.r is None else a @ self.r

    def check_rows(self, rollout: torch.Tensor) -> None:
        """Rollout rows must sum to 1, or the captured tensors were not the softmax; checked on the first batch."""
        err = float((rollout.sum(-1) - 1).abs().max())
        if err > ROW_TOL:
            raise VitstudyError(f"rollout rows sum to 1 +- {err:.3g}: the captured attention is not row-stochastic")
        self.checked = True

    def end_batch(self, labels, outputs) -> None:
        self.counter.end_batch()
        r, self.r = self.r, None
        self.check_rows(r)
        p = self.prefix
        rows = r[:, 0, p:] if self.has_cls else r[:, p:, p:].mean(dim=1)
        self._record(rows.reshape(len(rows), *self.grid).cpu(), labels)

    def _record(self, maps: torch.Tensor, labels) -> None:
        """Per-image statistics of (B, gh, gw) rollout maps over the first block's grid; the first maps kept to draw."""
        mass = maps.sum(dim=(1, 2))
        ent = am.entropy(maps)
        share = am.centre_share(maps, self.centre)
        n_patches = self.grid[0] * self.grid[1]
        start = len(self.rows)
        for i in range(len(maps)):
            self.rows.append(
                {
                    "order": start + i,
                    "dataset_index": self.indices[start + i],
                    "label": int(labels[i]),
                    "entropy": float(ent[i]),
                    "entropy_normalised": float(ent[i]) / am.max_entropy(n_patches),
                    "centre_share": float(share[i]),
                    "patch_mass": float(mass[i]),
                }
            )
        take = max(0, min(self.num_show - len(self.shown_maps), len(maps)))
        self.shown_maps += [m.numpy() for m in maps[:take]]
        self.shown_inputs += [x.float().cpu() for x in self.inputs[:take]]


@dataclass
class Step:
    """One block of the staged rollout: how its keys and queries pool its input tokens."""

    site: Site
    num_inputs: int
    outputs: torch.Tensor  # flat (group, query) indices that are the block's output tokens (prefix, real queries)
    keys: am.Links  # flat keys -> input tokens
    queries: am.Links  # flat queries -> input tokens (the residual path)
    shape: tuple = field(default=())  # (groups, Q, K)


def plan(site_list: list[Site], label: str) -> tuple[list[Step], int]:
    """The steps from the first block's raster grid (and prefix tokens) to the last block's outputs."""
    s0 = site_list[0]
    prefix = s0.num_prefix
    cur = torch.cat(
        [
            torch.full((prefix, 2), float("nan"), dtype=torch.float64),
            (am.grid_coords(*s0.grid) + 0.5) * torch.tensor(s0.stride, dtype=torch.float64),
        ]
    )
    steps = []
    for s in site_list:
        if s.num_prefix != prefix:
            raise VitstudyError(
                f"attention rollout multiplies the maps of all blocks, but {label}'s blocks attend over "
                f"{sorted({x.num_prefix for x in site_list})} prefix tokens (a class token joins mid-depth)"
            )
        q, k = positions(s)
        g, nq, nk = q.shape[0], q.shape[1], k.shape[1]
        qf, kf = q.reshape(-1, 2), k.reshape(-1, 2)
        real = torch.arange(prefix, len(qf))[~qf[prefix:].isnan().any(-1)]
        outputs = torch.cat([torch.arange(prefix), real])
        steps.append(
            Step(
                s, len(cur), outputs, am.nearest_links(kf, cur, prefix), am.nearest_links(qf, cur, prefix), (g, nq, nk)
            )
        )
        cur = qf[outputs]
    return steps, prefix


def compose(steps: list[Step], maps: list[torch.Tensor], v: torch.Tensor, residual: float) -> torch.Tensor:
    """v^T Ã_L ... Ã_1 over the first block's tokens (prefix, then its raster grid), from v (B, last block's outputs)
    and each block's head-averaged map (B, groups, Q, K); Ã_l = r A_l P_keys + (1 - r) P_queries."""
    b = v.shape[0]
    for step, a in zip(reversed(steps), reversed(maps)):
        g, nq, nk = step.shape
        vq = v.new_zeros(b, g * nq)
        vq[:, step.outputs.to(v.device)] = v
        u = torch.einsum("bgq,bgqk->bgk", vq.reshape(b, g, nq), a).reshape(b, g * nk)
        v = residual * am.pull_back(u, step.keys, step.num_inputs) + (1 - residual) * am.pull_back(
            vq, step.queries, step.num_inputs
        )
    return v


class StagedRolloutReducer(RolloutReducer):
    """Rollout through windows and stages: head-averaged maps kept per block, composed backwards at batch end."""

    def __init__(
        self, site_list, has_cls: bool, residual: float, num_show: int, centre: float, indices: list[int], label: str
    ):
        super().__init__(site_list, has_cls, residual, num_show, centre, indices)
        self.steps, self.prefix = plan(site_list, label)
        self.maps: dict[str, torch.Tensor] = {}

    def add(self, site, tensor: torch.Tensor) -> None:
        """One block's head-averaged map, kept until the batch's blocks are all in."""
        self.maps[site.name] = grouped_of(site, tensor).to(torch.float64).mean(dim=2)  # (B, groups, Q, K)

    def end_batch(self, labels, outputs) -> None:
        self.counter.end_batch()
        last = self.steps[-1]
        b = len(labels)
        n_out = len(last.outputs)
        v = torch.zeros(b, n_out, dtype=torch.float64, device=self.maps[last.site.name].device)
        if self.has_cls:
            v[:, 0] = 1.0
        else:
            v[:, self.prefix :] = 1.0 / (n_out - self.prefix)
        v = compose(self.steps, [self.maps.pop(s.site.name) for s in self.steps], v, self.residual)
        self.check_rows(v)
        self._record(v[:, self.prefix :].reshape(b, *self.grid).cpu(), labels)


def to_images(inputs: list[torch.Tensor], data_config: dict) -> np.ndarray:
    """Model inputs back to displayable RGB in [0, 1] with the model's own normalisation."""
    mean = torch.tensor(data_config.get("mean", (0, 0, 0)))[:, None, None]
    std = torch.tensor(data_config.get("std", (1, 1, 1)))[:, None, None]
    return np.stack([(x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() for x in inputs])


@dataclass
class AttentionRollout(Params):
    residual: float = 0.5  # Ã = residual * A + (1 - residual) * I (Abnar & Zuidema 2020 use 0.5)
    num_show: int = 8  # images drawn in the figure (the first ones sampled); the CSV has every image
    centre: float = 0.5  # side of the central box, as a fraction of the image, for the centre_share column

    def check(self) -> None:
        if not 0.0 < self.residual <= 1.0:
            raise VitstudyError(
                f"analysis.residual={self.residual} must be in (0, 1]: the weight of attention against identity (0.5 in the paper)"
            )
        at_least("num_show", self.num_show, 0)
        if not 0.0 < self.centre <= 1.0:
            raise VitstudyError(
                f"analysis.centre={self.centre} must be in (0, 1]: the side of the central box as a fraction of the image"
            )


@register(
    "attention_rollout",
    "attention rollout maps of the CLS token over the image (Dosovitskiy et al. Fig. 6, Abnar & Zuidema 2020)",
    AttentionRollout,
)
def attention_rollout(ctx) -> Result:
    cfg = ctx.cfg
    residual, num_show, centre = ctx.params.residual, ctx.params.num_show, ctx.params.centre
    m = ctx.models["model"]
    site_list = sites(m.module, m.data_config.get("input_size"))
    kind = type(m.module).__name__
    if kind in ("CrossVit", "TNT"):
        how = (
            "two branches with their own grids, joined only through their class tokens' cross-attention"
            if kind == "CrossVit"
            else "pixel and patch tokens, joined by a linear projection of each patch's pixel tokens"
        )
        raise VitstudyError(
            f"attention rollout multiplies one chain of token maps, but {m.label} ({kind}) runs two token "
            f"sets side by side ({how})"
        )
    # the class token must be among the attended tokens (CaiT's joins only in its class-attention blocks)
    has_cls = getattr(m.module, "cls_token", None) is not None and site_list[0].num_prefix > 0
    query = "cls" if has_cls else "mean of patch tokens (no CLS token)"
    flat_plain = (
        all(s.kind == "global" and s.layout is None for s in site_list) and len({s.tokens for s in site_list}) == 1
    )
    if not flat_plain:
        plan(site_list, m.label)  # refuse (e.g. ConViT's late class token) before any image is loaded
    batching, record = ctx.sample()
    flat = [i for b in batching.batches for i in b]
    reducer = (
        RolloutReducer(site_list, has_cls, residual, num_show, centre, flat)
        if flat_plain
        else StagedRolloutReducer(site_list, has_cls, residual, num_show, centre, flat, m.label)
    )
    loader = ctx.loader([m], batching)
    with unfused(m.module, site_list):
        stream(
            [m],
            [[INPUT] + [s.layer for s in site_list]],
            loader,
            reducer,
            ctx.device,
            "attention rollout",
            ctx.progress,
        )
    df = pd.DataFrame(reducer.rows)
    df.insert(0, "model", m.name)
    df.insert(1, "weights", m.weights)
    for k, v in {
        "query": query,
        "residual": residual,
        "centre_fraction": centre,
        "blocks": len(site_list),
        "composition": "one grid" if flat_plain else "windows and stages (nearest-token pooling)",
        "grid": f"{site_list[0].grid[0]}x{site_list[0].grid[1]}",
        "dataset": cfg.dataset.name,
    }.items():
        df[k] = v
    summary = []
    for stat in ("entropy", "entropy_normalised", "centre_share", "patch_mass"):
        v = df[stat].to_numpy(dtype=np.float64)
        n = len(v)
        mean, se = uncertainty.mean_se(v.sum(), (v * v).sum(), n)
        summary.append(
            {
                "model": m.name,
                "weights": m.weights,
                "statistic": stat,
                "mean": float(mean),
                **{k: float(x) for k, x in uncertainty.se_columns("mean", mean, se, n - 1).items()},
                "std": float(v.std(ddof=1)) if n > 1 else np.nan,
                "median": float(np.median(v)),
                "num_images": n,
                "uncertainty": "se_images",
            }
        )
    figures = {}
    if reducer.shown_maps:
        images = to_images(reducer.shown_inputs, m.data_config)
        title = (
            f"Attention rollout, {m.label} ({len(site_list)} blocks, {query}, {residual}A + {1 - residual:g}I)\n"
            f"mean normalised entropy {df.entropy_normalised.mean():.3f}, centre share {df.centre_share.mean():.3f}"
        )
        figures["attention_rollout"] = plots_attention.rollout_grid(images, np.stack(reducer.shown_maps), title)
    return Result(
        tables={"attention_rollout": df, "attention_rollout_summary": pd.DataFrame(summary)},
        figures=figures,
        info={"rollout_query": query, "uncertainty": {"attention_rollout_summary": uncertainty.METHODS["se_images"]}},
        images=[record],
    )
