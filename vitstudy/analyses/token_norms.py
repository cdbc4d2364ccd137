"""High-norm tokens (Darcet et al. 2024, *Vision Transformers Need Registers*, Figs 2, 3, 5a).

For each tapped token layer (default: the residual stream after every block) the L2 norm of every token of every
image, reduced in one streaming pass to per-token histograms over fixed log10 bins (vitstudy.metrics.token_norms)
and per-token sums: memory does not grow with the number of images. Per layer, patch tokens are high-norm above
`analysis.threshold` when given, else above the minimum-error cut of the patch-norm histogram when it is bimodal
(else there are none). Per token: mean norm, its standard error over images and the share of images where the token
is high-norm. Registers, class and distillation tokens are the model's prefix tokens, indexed in its order.
Beside the norms, Darcet's redundancy measure: the mean cosine similarity of each patch's embedding (the patch
embedding's output) with its four neighbours, for the patches that are high-norm at a layer against the others.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from ..anatomy import tokens as anatomy_tokens
from ..anatomy.attention import sites, unfused
from ..anatomy.residual import positions_channels
from ..errors import VitstudyError
from ..metrics import token_norms as tn
from ..metrics import token_probes, uncertainty
from ..pipeline.engine import Reducer, stream
from ..pipeline.layers import Layer
from ..pipeline.progress import log_line
from ..plots import tokens as plots_tokens
from ._registry import Params, Result, at_least, register
from .common import INPUT
from .rollout import to_images


@dataclass(frozen=True, kw_only=True)
class TokenLayer:
    """A token layer and what each of its tokens is: (rows, cols) patch grid after `prefix` prefix tokens."""

    layer: Layer
    depth: int  # index among the tapped layers
    rows: int
    cols: int
    prefix: int
    kinds: tuple  # per token: 'class', 'distillation', 'register', 'prefix' or 'patch'

    @property
    def tokens(self) -> int:
        return self.prefix + self.rows * self.cols


def token_layers(m, layers: list[Layer], analysis: str) -> list[TokenLayer]:
    """The tapped layers as token layers; a one-line refusal when one holds no token sequence (a CNN's maps)."""
    out = []
    kinds = anatomy_tokens.prefix_kinds(m.module)
    for d, layer in enumerate(layers):
        if layer.layout not in ("NLC", "NHWC"):  # NHWC: a token grid without prefix tokens (Swin)
            raise VitstudyError(
                f"{analysis} needs a token sequence (a ViT-family model); {m.label}'s layer "
                f"'{layer.name}' is a {layer.layout} feature map of shape {tuple(layer.shape)}"
            )
        rows, cols, prefix = anatomy_tokens.token_grid(m.module, layer)
        pk = tuple(kinds) if len(kinds) == prefix else ("prefix",) * prefix
        out.append(
            TokenLayer(
                layer=layer,
                depth=d,
                rows=int(rows),
                cols=int(cols),
                prefix=int(prefix),
                kinds=pk + ("patch",) * (rows * cols),
            )
        )
    return out


def neighbour_cosine(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, rows*cols) mean cosine similarity of each patch's vector with its 4 neighbours (fewer at the border)."""
    g = torch.nn.functional.normalize(x.to(torch.float64), dim=-1).reshape(x.shape[0], rows, cols, -1)
    total = torch.zeros(g.shape[:3], dtype=torch.float64, device=x.device)
    count = torch.zeros(rows, cols, dtype=torch.float64, device=x.device)
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        r0, r1 = max(dr, 0), rows + min(dr, 0)
        c0, c1 = max(dc, 0), cols + min(dc, 0)
        if r1 <= r0 or c1 <= c0:
            continue
        sim = (g[:, r0:r1, c0:c1] * g[:, r0 - dr : r1 - dr, c0 - dc : c1 - dc]).sum(-1)
        total[:, r0:r1, c0:c1] += sim
        count[r0:r1, c0:c1] += 1
    return (total / count.clamp_min(1)).flatten(1)


class TokenNormReducer(Reducer):
    """Per layer and token: histogram counts over the fixed bins, Σ norm, Σ norm², count above a given threshold;
    per layer and bin: Σ and count of the patches' neighbour cosine (patch embedding); the first images' norms."""

    def __init__(
        self, tls: list[TokenLayer], bins: tn.Bins, threshold: float | None, num_show: int, embed: Layer | None
    ):
        self.tls = {t.layer.name: t for t in tls}
        self.bins, self.threshold, self.num_show, self.embed = bins, threshold, num_show, embed
        nb = bins.count + 2
        self.counts = {t.layer.name: torch.zeros(t.tokens, nb, dtype=torch.int64) for t in tls}
        self.s1 = {t.layer.name: torch.zeros(t.tokens, dtype=torch.float64) for t in tls}
        self.s2 = {t.layer.name: torch.zeros(t.tokens, dtype=torch.float64) for t in tls}
        self.above = {t.layer.name: torch.zeros(t.tokens, dtype=torch.int64) for t in tls}
        self.cos_sum = {t.layer.name: torch.zeros(nb, dtype=torch.float64) for t in tls}
        self.cos_n = {t.layer.name: torch.zeros(nb, dtype=torch.float64) for t in tls}
        self.shown: dict[str, list[torch.Tensor]] = {t.layer.name: [] for t in tls}
        self.shown_inputs: list[torch.Tensor] = []
        self.cos: torch.Tensor | None = None
        self.attention: dict[str, tuple] = {}  # attention site name -> (site, tapped layer whose norms bin it)
        self.att_sum = {t.layer.name: torch.zeros(nb, dtype=torch.float64) for t in tls}
        self.att_n = {t.layer.name: torch.zeros(nb, dtype=torch.float64) for t in tls}
        self.idx: dict[str, torch.Tensor] = {}  # this batch's bin of every token, per layer (for the attention)
        self.images = 0
        self.taken = 0  # images kept for the maps so far (before this batch)

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        take = max(0, min(self.num_show - self.taken, tensor.shape[0]))
        if layer is INPUT:
            self.shown_inputs += [x.float().cpu() for x in tensor[:take]]
            return
        if layer.name in self.attention:
            site, prev = self.attention[layer.name]
            t = self.tls[prev]
            cls = site.probabilities(tensor).to(torch.float64).mean(1)[:, 0, t.prefix :]  # (B, patches): head mean
            pidx = self.idx[prev][:, t.prefix :].flatten()
            nb = self.bins.count + 2
            self.att_sum[prev] += (
                torch.zeros(nb, dtype=torch.float64, device=cls.device).index_add_(0, pidx, cls.flatten()).cpu()
            )
            self.att_n[prev] += torch.bincount(pidx, minlength=nb).double().cpu()
            return
        if self.embed is not None and layer.name == self.embed.name:
            t = next(iter(self.tls.values()))
            x = positions_channels(tensor, layer.layout)
            self.cos = (
                neighbour_cosine(x[:, -t.rows * t.cols :], t.rows, t.cols) if x.shape[1] >= t.rows * t.cols else None
            )
            if layer.name not in self.tls:
                return
        t = self.tls[layer.name]
        tensor = positions_channels(tensor, layer.layout)
        if tensor.dim() != 3 or tensor.shape[1] != t.tokens:
            raise VitstudyError(f"layer '{layer.name}' gave {tuple(tensor.shape)}; the probe saw {t.tokens} tokens")
        norms = torch.linalg.vector_norm(tensor.to(torch.float64), dim=-1)  # (B, L)
        idx = self.bins.index(norms)
        nb = self.bins.count + 2
        onehot = torch.zeros(norms.shape[1], nb, dtype=torch.int64, device=norms.device)
        onehot.scatter_add_(1, idx.transpose(0, 1), torch.ones_like(idx.transpose(0, 1)))
        name = layer.name
        if self.attention:
            self.idx[name] = idx
        self.counts[name] += onehot.cpu()
        self.s1[name] += norms.sum(0).cpu()
        self.s2[name] += (norms * norms).sum(0).cpu()
        if self.threshold is not None:
            self.above[name] += (norms > self.threshold).sum(0).cpu()
        if self.cos is not None and self.cos.shape[1] == t.rows * t.cols:
            pidx = idx[:, t.prefix :].flatten()
            self.cos_sum[name] += (
                torch.zeros(nb, dtype=torch.float64, device=norms.device).index_add_(0, pidx, self.cos.flatten()).cpu()
            )
            self.cos_n[name] += torch.bincount(pidx, minlength=nb).double().cpu()
        if take:
            self.shown[name] += [n.float().cpu() for n in norms[:take]]

    def end_batch(self, labels, outputs) -> None:
        self.images += len(labels)
        self.taken = min(self.num_show, self.images)
        self.cos = None
        self.idx = {}


class ProbeReducer(Reducer):
    """Second pass, once each layer's cut is known: per image and probed layer, the features of its high-norm patch
    tokens and of as many random normal ones as `per_image` allows (seeded), with their positions and image index."""

    def __init__(self, tls: list[TokenLayer], splits: dict, bins: tn.Bins, per_image: int, seed: int):
        self.tls = {t.layer.name: t for t in tls}
        self.splits, self.bins, self.per_image = splits, bins, per_image
        self.generator = torch.Generator().manual_seed(seed)
        self.kept = {(t.layer.name, g): {"x": [], "position": [], "image": []} for t in tls for g in ("high", "normal")}
        self.labels: list[np.ndarray] = []
        self.images = 0

    def high(self, name: str, norms: torch.Tensor) -> torch.Tensor:
        """The high-norm mask of patch norms (B, N) by the layer's rule of the first pass."""
        s = self.splits[name]
        if s.rule == "analysis.threshold":
            return norms > s.threshold
        if s.first_high_bin is None:
            return torch.zeros_like(norms, dtype=torch.bool)
        return self.bins.index(norms) >= s.first_high_bin

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        t = self.tls[layer.name]
        x = positions_channels(tensor, layer.layout)[:, t.prefix :]
        high = self.high(layer.name, torch.linalg.vector_norm(x.to(torch.float64), dim=-1))
        for group, idx in zip(("high", "normal"), token_probes.pick(high, self.per_image, self.generator)):
            b, k = torch.nonzero(idx >= 0, as_tuple=True)
            pos = idx[b, k]
            kept = self.kept[(layer.name, group)]
            kept["x"].append(x[b, pos].to(torch.float32).cpu().numpy())
            kept["position"].append(pos.cpu().numpy())
            kept["image"].append(b.cpu().numpy() + self.images)

    def end_batch(self, labels, outputs) -> None:
        self.labels.append(np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels))
        self.images += len(labels)


def probe_rows(
    reducer: ProbeReducer, layers: list[str], test_fraction: float, alpha: float, seed: int
) -> tuple[list[dict], dict]:
    """Per probed layer, target (position, label) and token group: the ridge probe's test accuracy with a Wilson
    interval over test tokens, beside the majority baseline (the most frequent train class); train and test are
    disjoint sets of images. A group without tokens gets a note."""
    labels = np.concatenate(reducer.labels) if reducer.labels else np.zeros(0, dtype=np.int64)
    n = reducer.images
    order = np.random.default_rng(seed).permutation(n)
    num_test = min(max(1, int(round(n * test_fraction))), n - 1)
    is_test = np.zeros(n, dtype=bool)
    is_test[order[:num_test]] = True
    rows = []
    for name in layers:
        for target in ("position", "label"):
            for group in ("high", "normal"):
                kept = reducer.kept[(name, group)]
                x = np.concatenate(kept["x"]) if kept["x"] else np.zeros((0, 0), np.float32)
                image = np.concatenate(kept["image"]).astype(np.int64) if kept["image"] else np.zeros(0, np.int64)
                y = np.concatenate(kept["position"]) if target == "position" else labels[image]
                test = is_test[image]
                row = {
                    "layer": name,
                    "target": target,
                    "tokens": group,
                    "accuracy": float("nan"),
                    "accuracy_ci_low": float("nan"),
                    "accuracy_ci_high": float("nan"),
                    "num_train": int((~test).sum()),
                    "num_test": int(test.sum()),
                    "note": "",
                    "majority_accuracy": float("nan"),
                }
                if not len(y):
                    row["note"] = (
                        "no high-norm tokens at this layer" if group == "high" else "no normal tokens at this layer"
                    )
                elif row["num_train"] == 0 or row["num_test"] == 0:
                    row["note"] = f"no {group} tokens in the {'train' if row['num_train'] == 0 else 'test'} images"
                else:
                    score = token_probes.ridge_accuracy(
                        x[~test].astype(np.float64), y[~test], x[test].astype(np.float64), y[test], alpha
                    )
                    low, high = uncertainty.wilson(score.correct, score.num_test)
                    classes, counts = np.unique(y[~test], return_counts=True)
                    row.update(
                        accuracy=score.correct / score.num_test,
                        accuracy_ci_low=float(low),
                        accuracy_ci_high=float(high),
                        majority_accuracy=float((y[test] == classes[np.argmax(counts)]).mean()),
                    )
                    if len(np.unique(y[~test])) == 1:
                        row["note"] = "one class among the train tokens: a constant predictor"
                rows.append(row)
    return rows, {"test_images": int(num_test), "train_images": int(n - num_test)}


@dataclass(kw_only=True)
class LayerSplit:
    """One layer's high-norm rule: the cut's bin (None: no high-norm tokens), the norm threshold and the rule."""

    first_high_bin: int | None
    threshold: float
    rule: str
    separation: float
    bic_gain: float = float("nan")


def layer_splits(reducer: TokenNormReducer, tls: list[TokenLayer], threshold: float | None) -> dict[str, LayerSplit]:
    out = {}
    for t in tls:
        if threshold is not None:
            out[t.layer.name] = LayerSplit(
                first_high_bin=None, threshold=float(threshold), rule="analysis.threshold", separation=float("nan")
            )
            continue
        hist = reducer.counts[t.layer.name][t.prefix :].sum(0).numpy()
        s = tn.split(hist, reducer.bins)
        rule = (
            "minimum-error cut of the bimodal patch-norm histogram"
            if s.first_high_bin is not None
            else f"not bimodal (separation {s.separation:.2f}, needs > {tn.MIN_SEPARATION:g}; the upper side must be under half; "
            f"BIC gain {s.bic_gain:.1f}, needs > 0): no high-norm tokens"
        )
        out[t.layer.name] = LayerSplit(
            first_high_bin=s.first_high_bin,
            threshold=s.threshold,
            rule=rule,
            separation=s.separation,
            bic_gain=s.bic_gain,
        )
    return out


def attention_pairs(m, tls: list[TokenLayer]) -> list[tuple]:
    """(attention site of block i, the tapped layer feeding it: block i-1's output) for a class-token ViT whose
    tapped layers are its blocks; a one-line refusal otherwise."""
    need = "analysis.cls_attention needs a ViT with a class token, global attention and layers=blocks"
    if not tls or tls[0].kinds[:1] != ("class",):
        raise VitstudyError(f"{need}; {m.label} has no class token first")
    try:
        site_list = sites(m.module)
    except VitstudyError as err:
        raise VitstudyError(f"{need}: {err}") from None
    names = [t.layer.name for t in tls]
    pairs = []
    for site in site_list:
        block = site.name.rsplit(".", 1)[0]
        if site.kind != "global" or block not in names:
            raise VitstudyError(
                f"{need}; its attention '{site.name}' is not inside a tapped block ({', '.join(names[:3])}, ...)"
            )
        j = names.index(block)
        if j > 0:
            pairs.append((site, names[j - 1]))
    return pairs


def _ratio(total: torch.Tensor, count: torch.Tensor) -> float:
    n = float(count.sum())
    return float(total.sum()) / n if n else float("nan")


def high_counts(reducer: TokenNormReducer, t: TokenLayer, s: LayerSplit) -> np.ndarray:
    """Per token: the number of images where it is high-norm."""
    if s.rule == "analysis.threshold":
        return reducer.above[t.layer.name].numpy()
    if s.first_high_bin is None:
        return np.zeros(t.tokens, dtype=np.int64)
    return reducer.counts[t.layer.name][:, s.first_high_bin :].sum(1).numpy()


@dataclass
class TokenNorms(Params):
    layers: Any = "blocks"  # layer spec (blocks = the residual stream after every block); null = the global `layers` / `model.layers`
    threshold: Optional[float] = (
        None  # high-norm above this L2 norm at every layer; null = the minimum-error cut of each layer's patch-norm histogram when bimodal
    )
    bins: int = 200  # equal log10-norm bins from log_low to log_high (plus an under- and an overflow bin)
    log_low: float = -3.0  # log10 of the lowest bin edge
    log_high: float = 5.0  # log10 of the highest bin edge
    num_show: int = 4  # images whose norm maps are drawn (the first ones sampled)
    map_layers: int = 3  # layers drawn in the maps (evenly spaced, the last one included)
    cls_attention: bool = False  # true: also the class token's attention (next block, head mean) to high-norm vs other patches (unfused attention: slower)
    probes: bool = False  # true: ridge probes of position and image label from high-norm vs normal patch tokens (a second pass over the images)
    probe_layers: Any = None  # tapped layer names to probe; null = the layer with the largest high-norm share (the last block when none has any)
    probe_tokens: int = (
        4  # per image and layer: up to this many high-norm patch tokens and this many random normal ones
    )
    probe_test_fraction: float = 0.3  # share of the images whose tokens are the probes' test set (the others train)
    probe_alpha: float = 1e-2  # ridge strength, relative: lambda = alpha * trace(C) / D

    def check(self) -> None:
        at_least("bins", self.bins, 2)
        at_least("num_show", self.num_show, 0)
        at_least("map_layers", self.map_layers, 1)
        at_least("probe_tokens", self.probe_tokens, 1)
        if not 0 < self.probe_test_fraction < 1:
            raise VitstudyError(
                f"analysis.probe_test_fraction must be between 0 and 1, got {self.probe_test_fraction!r}"
            )
        if not self.probe_alpha > 0:
            raise VitstudyError(f"analysis.probe_alpha must be a positive ridge strength, got {self.probe_alpha!r}")
        if self.threshold is not None and not self.threshold > 0:
            raise VitstudyError(f"analysis.threshold must be a positive norm or null, got {self.threshold!r}")
        if not self.log_high > self.log_low:
            raise VitstudyError(f"analysis.log_high ({self.log_high}) must exceed analysis.log_low ({self.log_low})")


def _embed_layer(ctx, m) -> Layer | None:
    if getattr(m.module, "patch_embed", None) is None:
        return None
    try:
        return ctx.layers(m, ["patch_embed"])[0]
    except VitstudyError:
        return None


@register(
    "token_norms",
    "L2 norm of every token per layer: high-norm artifact tokens and registers (Darcet et al. 2024)",
    TokenNorms,
)
def token_norms(ctx) -> Result:
    p = ctx.params
    m = ctx.models["model"]
    layers = ctx.layers(m, p.layers)  # None: the model node's layers
    tls = token_layers(m, layers, "token_norms")
    asked = None
    if p.probes and p.probe_layers is not None:  # checked before the first pass
        asked = [p.probe_layers] if isinstance(p.probe_layers, str) else [str(x) for x in p.probe_layers]
        missing = [x for x in asked if x not in [t.layer.name for t in tls]]
        if missing:
            raise VitstudyError(
                f"analysis.probe_layers: {', '.join(missing)} not among the tapped layers "
                f"({', '.join(t.layer.name for t in tls)})"
            )
    embed = _embed_layer(ctx, m)
    bins = tn.Bins(low=float(p.log_low), high=float(p.log_high), count=int(p.bins))
    reducer = TokenNormReducer(tls, bins, p.threshold, int(p.num_show), embed)
    batching, record = ctx.sample()
    taps = [INPUT] + ([embed] if embed is not None and embed.name not in {t.layer.name for t in tls} else []) + layers
    attention_sites = attention_pairs(m, tls) if p.cls_attention else []
    reducer.attention = {site.name: (site, prev) for site, prev in attention_sites}
    with unfused(m.module, [site.name for site, _ in attention_sites]) if attention_sites else nullcontext():
        stream(
            [m],
            [taps + [site.layer for site, _ in attention_sites]],
            ctx.loader([m], batching),
            reducer,
            ctx.device,
            "token_norms",
            ctx.progress,
        )
    n = reducer.images
    splits = layer_splits(reducer, tls, p.threshold)
    base = {"model": m.name, "weights": m.weights}
    rows, hist_rows, layer_rows = [], [], []
    lows, highs = bins.bounds()
    for t in tls:
        name, s = t.layer.name, splits[t.layer.name]
        mean, se = uncertainty.mean_se(reducer.s1[name].numpy(), reducer.s2[name].numpy(), n)
        ci = uncertainty.se_columns("norm_mean", mean, se, n - 1)
        high = high_counts(reducer, t, s)
        for k in range(t.tokens):
            patch = k >= t.prefix
            pos = k - t.prefix if patch else None
            rows.append(
                {
                    **base,
                    "layer": name,
                    "depth": t.depth,
                    "token": k,
                    "position": pos,
                    "row": pos // t.cols if patch else None,
                    "col": pos % t.cols if patch else None,
                    "kind": t.kinds[k],
                    "norm_mean": float(mean[k]),
                    **{c: float(v[k]) for c, v in ci.items()},
                    "high_norm_rate": float(high[k] / n),
                    "high_norm_images": int(high[k]),
                    "threshold": s.threshold,
                    "num_images": n,
                    "dataset": ctx.cfg.dataset.name,
                    "uncertainty": "se_images",
                }
            )
        counts = reducer.counts[name].numpy()
        groups = {"patch": counts[t.prefix :].sum(0)}
        for kind in dict.fromkeys(t.kinds[: t.prefix]):
            groups[kind] = counts[[i for i in range(t.prefix) if t.kinds[i] == kind]].sum(0)
        for kind, c in groups.items():
            for b in range(len(c)):
                hist_rows.append(
                    {
                        **base,
                        "layer": name,
                        "depth": t.depth,
                        "kind": kind,
                        "bin": b,
                        "log10_low": lows[b],
                        "log10_high": highs[b],
                        "norm_low": 10.0 ** lows[b],
                        "norm_high": 10.0 ** highs[b],
                        "count": int(c[b]),
                    }
                )
        cs, cn = reducer.cos_sum[name].numpy(), reducer.cos_n[name].numpy()
        first = s.first_high_bin
        if s.rule == "analysis.threshold":  # the cosine bins are log10 bins: the threshold's own bin counts as high
            first = int(bins.index(torch.tensor([s.threshold]))[0])
        hi = slice(first, None) if first is not None else slice(0, 0)
        lo = slice(0, first) if first is not None else slice(None)
        patch_high = high[t.prefix :].sum()
        layer_rows.append(
            {
                **base,
                "layer": name,
                "depth": t.depth,
                "threshold": s.threshold,
                "rule": s.rule,
                "separation": s.separation,
                "bic_gain": s.bic_gain,
                "high_norm_share": float(patch_high / (n * t.rows * t.cols)),
                "high_norm_per_image": float(patch_high / n),
                "patch_norm_mean": float(mean[t.prefix :].mean()),
                **{
                    f"{kind}_norm_mean": float(mean[[i for i in range(t.prefix) if t.kinds[i] == kind]].mean())
                    for kind in dict.fromkeys(t.kinds[: t.prefix])
                },
                "neighbour_cosine_high": float(cs[hi].sum() / cn[hi].sum()) if cn[hi].sum() else float("nan"),
                "neighbour_cosine_normal": float(cs[lo].sum() / cn[lo].sum()) if cn[lo].sum() else float("nan"),
                **(
                    {
                        "cls_attention_high": _ratio(reducer.att_sum[name][hi], reducer.att_n[name][hi]),
                        "cls_attention_normal": _ratio(reducer.att_sum[name][lo], reducer.att_n[name][lo]),
                    }
                    if p.cls_attention
                    else {}
                ),
                "num_images": n,
            }
        )
    table, hist, summary = pd.DataFrame(rows), pd.DataFrame(hist_rows), pd.DataFrame(layer_rows)
    tables = {"token_norms": table, "token_norms_layers": summary, "token_norms_histogram": hist}
    probe_info = None
    if p.probes:
        names = [t.layer.name for t in tls]
        if p.probe_layers is None:
            share = summary.high_norm_share.to_numpy()
            chosen = [names[int(np.argmax(share))] if share.max() > 0 else names[-1]]
        else:
            chosen = asked
        probed = [t for t in tls if t.layer.name in chosen]
        preducer = ProbeReducer(probed, splits, bins, int(p.probe_tokens), int(ctx.cfg.seed))
        stream(
            [m],
            [[t.layer for t in probed]],
            ctx.loader([m], batching),
            preducer,
            ctx.device,
            "token_norms probes",
            ctx.progress,
        )
        if preducer.images != n:
            raise VitstudyError(f"token_norms probes: the second pass saw {preducer.images} images, the first {n}")
        prows, split_info = probe_rows(
            preducer, chosen, float(p.probe_test_fraction), float(p.probe_alpha), int(ctx.cfg.seed)
        )
        for r in prows:
            if r["note"]:
                log_line(f"token_norms probes: {r['layer']}, {r['target']} from {r['tokens']} tokens: {r['note']}")
        tables["token_norms_probes"] = pd.DataFrame(
            [{**base, **r, "alpha": float(p.probe_alpha), "num_images": n} for r in prows]
        )
        probe_info = {
            "layers": chosen,
            "second_pass": True,
            "rule": "a second pass over the same images once each layer's high-norm cut is known; per image up to "
            f"{p.probe_tokens} high-norm patch tokens and {p.probe_tokens} random normal ones (seed "
            f"{ctx.cfg.seed}); ridge to one-hot targets (alpha {p.probe_alpha}, relative) fitted on the "
            "train images' tokens, accuracy on the test images' tokens with a Wilson interval over test "
            "tokens (tokens of one image are not independent: the interval is optimistic)",
            **split_info,
        }
    label = f"{m.label} ({m.weights})"
    figures = {
        "token_norms": plots_tokens.norm_histograms(hist, summary, f"Token norms by depth, {label}, {n} images"),
        "token_norms_prefix": plots_tokens.prefix_norms(summary, f"Mean token norm by kind, {label}, {n} images"),
    }
    if reducer.shown_inputs and p.num_show:
        k = min(int(p.map_layers), len(tls))
        shown = [tls[i] for i in sorted({round((i + 1) * len(tls) / k) - 1 for i in range(k)})]
        maps = {
            t.layer.name: np.stack([x[t.prefix :].reshape(t.rows, t.cols).numpy() for x in reducer.shown[t.layer.name]])
            for t in shown
        }
        figures["token_norms_maps"] = plots_tokens.norm_maps(
            to_images(reducer.shown_inputs, m.data_config),
            maps,
            {k: splits[k].threshold for k in maps},
            f"Patch-token norms, {label} (outlined: high-norm)",
        )
    info = {
        "layers": [t.layer.name for t in tls],
        "prefix_tokens": list(tls[0].kinds[: tls[0].prefix]),
        "bins": {
            "log10_low": bins.low,
            "log10_high": bins.high,
            "count": bins.count,
            "note": "plus an underflow (bin 0) and an overflow (last bin) bin; bins are [low, high)",
        },
        "threshold_rule": "analysis.threshold"
        if p.threshold is not None
        else f"per layer, Kittler-Illingworth minimum-error cut of the patch tokens' log10-norm histogram, kept when "
        f"mean_hi - mean_lo > {tn.MIN_SEPARATION:g} (sd_lo + sd_hi), the upper side is the minority and two Gaussians "
        f"beat one by BIC; else none",
        "neighbour_cosine": "mean cosine of each patch's patch-embedding vector with its 4 neighbours, by the patch's norm bin at the layer",
        "cls_attention": "mean attention probability (head mean) from the class token to a patch in the next block, for the "
        "patches high-norm at this layer against the others (analysis.cls_attention=true)",
        "uncertainty": {"token_norms": uncertainty.METHODS["se_images"]},
    }
    if probe_info is not None:
        info["probes"] = probe_info
    return Result(tables=tables, figures=figures, info=info, images=[record])
