"""Massive activations (Sun et al. 2024, *Massive Activations in Large Language Models*, Sec. 6 on ViTs).

For each tapped token layer (default: the residual stream after every block) and each image: the k largest
|activation| over all (token, channel) entries with where they sit, and the median |activation|. Streamed: per
layer and rank only sums and counts of the (token, channel) sites are kept, so memory does not grow with the
number of images. Per layer and rank: the mean magnitude over images, the median |activation| (mean over images
of each image's median, numpy's: the mean of the two middle values), their ratio, the most frequent site and
the share of images whose rank-r activation sits there (and in that channel): whether massive activations keep
fixed channels and tokens. A layer is massive when its top-1 ratio reaches `analysis.min_ratio` (Sun et al.:
about 1,000x the median; 100 by default); the first such layer is where they appear.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..anatomy.residual import positions_channels
from ..errors import VitstudyError
from ..metrics import uncertainty
from ..pipeline.engine import Reducer, stream
from ..plots import tokens as plots_tokens
from ._registry import Params, Result, at_least, register
from .token_norms import TokenLayer, token_layers


def median_abs(x: torch.Tensor) -> torch.Tensor:
    """(B,) median of |x| over every entry of each image, the mean of the two middle values when the count is even."""
    a = x.abs().flatten(1)
    n = a.shape[1]
    hi = a.kthvalue(n // 2 + 1, dim=1).values
    return hi if n % 2 else (hi + a.kthvalue(n // 2, dim=1).values) / 2


class MassiveReducer(Reducer):
    """Per layer and rank: Σ|top|, Σ|top|², Σ signed top, Σ median, Σ median², and Counters of the sites and
    channels; the first image's |activation| of every layer (float16) for the map."""

    def __init__(self, tls: list[TokenLayer], top_k: int):
        self.tls = {t.layer.name: t for t in tls}
        self.k = top_k
        self.stats = {
            t.layer.name: {s: np.zeros(top_k) for s in ("v", "v2", "signed")} | {"med": 0.0, "med2": 0.0} for t in tls
        }
        self.sites = {t.layer.name: [Counter() for _ in range(top_k)] for t in tls}
        self.channels = {t.layer.name: [Counter() for _ in range(top_k)] for t in tls}
        self.first: dict[str, np.ndarray] = {}
        self.images = 0

    def on_tensor(self, model_index, layer, tensor) -> None:
        t = self.tls[layer.name]
        tensor = positions_channels(tensor, layer.layout)
        if tensor.dim() != 3 or tensor.shape[1] != t.tokens:
            raise VitstudyError(f"layer '{layer.name}' gave {tuple(tensor.shape)}; the probe saw {t.tokens} tokens")
        x = tensor.to(torch.float64)
        b, _, c = x.shape
        flat = x.flatten(1)
        top = flat.abs().topk(min(self.k, flat.shape[1]), dim=1)
        signed = flat.gather(1, top.indices)
        med = median_abs(x)
        st = self.stats[layer.name]
        v = top.values.cpu().numpy()
        st["v"][: v.shape[1]] += v.sum(0)
        st["v2"][: v.shape[1]] += (v * v).sum(0)
        st["signed"][: v.shape[1]] += signed.cpu().numpy().sum(0)
        m = med.cpu().numpy()
        st["med"] += float(m.sum())
        st["med2"] += float((m * m).sum())
        idx = top.indices.cpu().numpy()
        for r in range(idx.shape[1]):
            self.sites[layer.name][r].update(zip((idx[:, r] // c).tolist(), (idx[:, r] % c).tolist()))
            self.channels[layer.name][r].update((idx[:, r] % c).tolist())
        if layer.name not in self.first:
            self.first[layer.name] = x[0].abs().to(torch.float16).cpu().numpy()

    def end_batch(self, labels, outputs) -> None:
        self.images += len(labels)


@dataclass
class MassiveActivations(Params):
    layers: Any = "blocks"  # layer spec (blocks = the residual stream after every block); null = the global `layers` / `model.layers`
    top_k: int = 3  # largest |activation| per layer and image (Sun et al. show the top 3)
    min_ratio: float = 100.0  # a layer's top-1 / median ratio from which its largest activation counts as massive

    def check(self) -> None:
        at_least("top_k", self.top_k, 1)
        if not self.min_ratio > 1:
            raise VitstudyError(f"analysis.min_ratio must exceed 1, got {self.min_ratio!r}")


@register(
    "massive_activations",
    "top |activation| per layer against the median: massive activations (Sun et al. 2024)",
    MassiveActivations,
)
def massive_activations(ctx) -> Result:
    p = ctx.params
    m = ctx.models["model"]
    layers = ctx.layers(m, p.layers)  # None: the model node's layers
    tls = token_layers(m, layers, "massive_activations")
    reducer = MassiveReducer(tls, int(p.top_k))
    batching, record = ctx.sample()
    stream([m], [layers], ctx.loader([m], batching), reducer, ctx.device, "massive_activations", ctx.progress)
    n = reducer.images
    rows = []
    first_massive = None
    for t in tls:
        st = reducer.stats[t.layer.name]
        med, med_se = uncertainty.mean_se(st["med"], st["med2"], n)
        for r in range(min(int(p.top_k), t.tokens * int(t.layer.shape[-1]))):
            v, v_se = uncertainty.mean_se(st["v"][r], st["v2"][r], n)
            (tok, ch), hits = reducer.sites[t.layer.name][r].most_common(1)[0]
            ch_hits = reducer.channels[t.layer.name][r][ch]
            ratio = float(v / med) if med > 0 else float("inf")
            if r == 0 and ratio >= p.min_ratio and first_massive is None:
                first_massive = t.layer.name
            patch = tok >= t.prefix
            rows.append(
                {
                    "model": m.name,
                    "weights": m.weights,
                    "layer": t.layer.name,
                    "depth": t.depth,
                    "rank": r + 1,
                    "token": int(tok),
                    "position": int(tok - t.prefix) if patch else None,
                    "kind": t.kinds[tok],
                    "channel": int(ch),
                    "value": float(v),
                    **{c: float(x) for c, x in uncertainty.se_columns("value", v, v_se, n - 1).items()},
                    "signed_mean": float(st["signed"][r] / n),
                    "median_abs": float(med),
                    "median_abs_se": float(med_se),
                    "ratio": ratio,
                    "massive": bool(ratio >= p.min_ratio),
                    "site_share": hits / n,
                    "channel_share": ch_hits / n,
                    "num_images": n,
                    "dataset": ctx.cfg.dataset.name,
                    "uncertainty": "se_images",
                }
            )
    table = pd.DataFrame(rows)
    table["first_massive_layer"] = table.layer == first_massive
    label = f"{m.label} ({m.weights})"
    top1 = table[table["rank"] == 1].set_index("layer")
    shown = first_massive or str(top1.ratio.idxmax())
    t_shown = next(t for t in tls if t.layer.name == shown)
    figures = {
        "massive_activations": plots_tokens.massive_by_layer(
            table, f"Largest |activations| and the median by layer, {label}, {n} images"
        ),
        "massive_activations_map": plots_tokens.massive_map(
            reducer.first[shown],
            list(t_shown.kinds),
            f"|activation| of the first image at {shown} ({'first massive layer' if first_massive else 'largest top-1 ratio'}), "
            f"top-1 ratio {top1.ratio[shown]:.3g}",
        ),
    }
    info = {
        "layers": [t.layer.name for t in tls],
        "prefix_tokens": list(tls[0].kinds[: tls[0].prefix]),
        "first_massive_layer": first_massive,
        "min_ratio": p.min_ratio,
        "median": "per image, the median of |activation| over all tokens and channels (mean of the two middle values); "
        "value and median_abs are means over images; ratio = value / median_abs",
        "uncertainty": {"massive_activations": uncertainty.METHODS["se_images"]},
    }
    return Result(tables={"massive_activations": table}, figures=figures, info=info, images=[record])
