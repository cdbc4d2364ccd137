"""Skip connections: how much flows through them (Raghu et al. 2021, Fig. 7 / E.1) and what removing one
at inference does to the representations (an inference-time approximation of Fig. 8).

skip_ratio: for every residual sublayer `out = z + f(z)` (see vitstudy.anatomy.residual), the norm ratio
‖z‖ / ‖f(z)‖ per image and token position (ViT token, CNN spatial location; norms over channels),
aggregated over images as the mean of the per-image ratios or the ratio of the mean norms
(`analysis.aggregate`; the paper does not say which). A zero long branch gives an infinite ratio,
counted in `zero_branch` and flagged, never hidden.

skip_ablation: the chosen blocks compute only f(z) (their skip removed at inference, weights unchanged);
CKA of every layer of the lesioned model against every layer of the intact model, and the top-1 change
when the data set's labels are the model's classes. The paper retrained models without the skip.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, List

import numpy as np
import pandas as pd
import torch

from ..anatomy import tokens as anatomy_tokens
from ..anatomy.residual import branches, combine, positions_channels, remove_skip, residual_blocks
from ..anatomy.residual import terms as residual_terms
from ..errors import VitstudyError
from ..metrics import uncertainty
from ..pipeline.engine import Reducer, stream
from ..pipeline.layers import Layer
from ..plots import skip as plots_skip
from ._registry import Params, Result, at_least, choice, register
from .cka import CKAReducer, Estimate, check, heatmap, table
from .common import sample_loader

LESION = "inference-time lesion (skip removed in the trained model, no retraining; Raghu et al. Fig. 8 retrains)"


def position_norms(t: torch.Tensor, layer: Layer) -> torch.Tensor:
    """(B, positions) float64 L2 norms over channels: tokens (NLC), NHWC or NCHW maps."""
    t = t.to(torch.float64)
    if layer.layout == "NCHW":
        return torch.linalg.vector_norm(t, dim=1).flatten(1)
    if layer.layout in ("NLC", "NHWC"):
        return torch.linalg.vector_norm(t, dim=-1).flatten(1)
    raise VitstudyError(
        f"layer '{layer.name}' has layout {layer.layout}; skip_ratio needs token or feature-map outputs"
    )


class SkipRatioReducer(Reducer):
    """Per branch and position: Σ ratio, Σ ratio², Σ‖z‖, Σ‖f‖, zero-branch counts; per image group means.

    z and f(z) are tapped layers, or (`residual.terms`) the stream after the addition minus the other term: those
    layers are kept as float64 (B, positions, C) tensors until the batch ends, every other one as its norms.
    `groups[model][branch]`: the branch's own token groups (a class token may join mid-depth, as ConViT's)."""

    def __init__(
        self,
        specs: list[list],
        first_tokens: int,
        groups: list[list[dict[str, slice]]],
        terms: list[list] | None = None,
    ):
        self.specs = specs  # per model: list of (Branch, skip Layer, branch Layer)
        self.terms = terms or [[(((lz.name, 1.0),), ((lf.name, 1.0),)) for _, lz, lf in spec] for spec in specs]
        self.full = [{n for zt, ft in t for part in (zt, ft) if len(part) > 1 for n, _ in part} for t in self.terms]
        self.first_tokens = first_tokens
        self.groups = groups
        self.cur: list[dict[str, torch.Tensor]] = [{} for _ in specs]
        self.sums: list[list[dict | None]] = [[None] * len(s) for s in specs]
        self.images = [0] * len(specs)

    def on_tensor(self, model_index, layer, tensor):
        if layer.name in self.full[model_index]:
            self.cur[model_index][layer.name] = positions_channels(tensor, layer.layout).to(torch.float64).cpu()
        else:
            self.cur[model_index][layer.name] = position_norms(tensor, layer).cpu()

    def _norms(self, mi: int, part) -> torch.Tensor:
        if len(part) == 1 and part[0][0] not in self.full[mi]:
            return self.cur[mi][part[0][0]]
        return torch.linalg.vector_norm(combine(part, self.cur[mi]), dim=-1)

    def end_batch(self, labels, outputs):
        for mi, spec in enumerate(self.specs):
            for bi, (br, lz, lf) in enumerate(spec):
                zt, ft = self.terms[mi][bi]
                z, f = self._norms(mi, zt), self._norms(mi, ft)
                if z.shape != f.shape:
                    raise VitstudyError(
                        f"skip input '{br.skip_point}' {tuple(z.shape)} and branch output '{br.branch_point}' {tuple(f.shape)} differ in positions"
                    )
                r = torch.where(f > 0, z / f.clamp_min(torch.finfo(torch.float64).tiny), torch.inf)
                finite = torch.where(torch.isfinite(r), r, 0.0)
                s = self.sums[mi][bi]
                if s is None:
                    s = self.sums[mi][bi] = {
                        k: torch.zeros(z.shape[1], dtype=torch.float64)
                        for k in ("r", "r2", "z", "f", "zero", "zz", "ff", "zf")
                    }
                    s.update(first=[], groups={g: [] for g in self.groups[mi][bi]})
                s["r"] += finite.sum(0)
                s["r2"] += (finite**2).sum(0)
                s["z"] += z.sum(0)
                s["f"] += f.sum(0)
                s["zero"] += (~torch.isfinite(r)).sum(0).double()
                s["zz"] += (z * z).sum(0)  # second moments: the ratio of means' standard error (delta method)
                s["ff"] += (f * f).sum(0)
                s["zf"] += (z * f).sum(0)
                s["first"].append(r[:, : self.first_tokens])
                for g, sl in self.groups[mi][bi].items():  # per image: mean ratio, ratio of summed norms, the two sums
                    zs, fs = z[:, sl].sum(1), f[:, sl].sum(1)
                    s["groups"][g].append(torch.stack([r[:, sl].mean(1), zs / fs, zs, fs], 1))
            self.images[mi] += len(labels)
        self.cur = [{} for _ in self.specs]


def _ratio_tables(m, spec, sums, images, branch_groups, aggregate, dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, summary = [], []
    base = {"model": m.name, "label": m.label, "weights": m.weights}
    settings = {"aggregate": aggregate, "num_images": images, "dataset": dataset}
    for (br, lz, lf), s, groups in zip(spec, sums, branch_groups):
        n = images
        zero = s["zero"]
        mean_r = torch.where(zero > 0, torch.inf, s["r"] / n)
        var = (s["r2"] / n - (s["r"] / n) ** 2).clamp_min(0) * n / max(n - 1, 1)
        std_r = torch.where(zero > 0, torch.nan, var.sqrt())
        rom = torch.where(s["f"] > 0, s["z"] / s["f"], torch.inf)
        se_mor = np.where(zero.numpy() > 0, np.nan, std_r.numpy() / np.sqrt(n))
        se_rom = np.where(
            s["f"].numpy() > 0, uncertainty.ratio_se(s["z"], s["f"], s["zz"], s["ff"], s["zf"], n), np.nan
        )
        value = (mean_r if aggregate == "mean_of_ratios" else rom).numpy()
        ci = uncertainty.se_columns("ratio", value, se_mor if aggregate == "mean_of_ratios" else se_rom, n - 1)
        first = (
            np.median(torch.cat(s["first"]).numpy(), axis=0) if s["first"] else None
        )  # numpy: mean of the middle two
        for t in range(len(zero)):
            rows.append(
                {
                    **base,
                    "block": br.block,
                    "index": br.index,
                    "sublayer": br.sublayer,
                    "skip_point": br.skip_point,
                    "branch_point": br.branch_point,
                    "token": t,
                    "is_cls": "cls" in groups and t == 0,  # this branch's own tokens: a CLS may join late
                    "ratio": float((mean_r if aggregate == "mean_of_ratios" else rom)[t]),
                    **{k: float(v[t]) for k, v in ci.items()},
                    "mean_of_ratios": float(mean_r[t]),
                    "ratio_of_means": float(rom[t]),
                    "median_of_ratios": float(first[t]) if first is not None and t < len(first) else np.nan,
                    "std_of_ratios": float(std_r[t]),
                    "zero_branch": int(zero[t]),
                    "flag": "zero branch output: infinite ratio" if zero[t] > 0 else "",
                    **settings,
                    "uncertainty": "se_images",
                }
            )
        for g, sl in groups.items():
            per_image = torch.cat(s["groups"][g])  # (images, 4): mean ratio, ratio of sums, sum of ||z||, sum of ||f||
            zg = int(zero[sl].sum())
            mor = float("inf") if zg else float(s["r"][sl].sum() / (n * len(zero[sl])))
            fsum = float(s["f"][sl].sum())
            rm = float(s["z"][sl].sum()) / fsum if fsum > 0 else float("inf")
            col = 0 if aggregate == "mean_of_ratios" else 1
            pi = per_image.numpy()
            if col == 0:
                se = float(pi[:, 0].std(ddof=1) / np.sqrt(n)) if n > 1 and not zg else float("nan")
            else:
                zs, fs = pi[:, 2], pi[:, 3]
                se = (
                    float(
                        uncertainty.ratio_se(zs.sum(), fs.sum(), (zs * zs).sum(), (fs * fs).sum(), (zs * fs).sum(), n)
                    )
                    if fsum > 0
                    else float("nan")
                )
            value = mor if col == 0 else rm
            ci = uncertainty.se_columns("ratio", value, se, n - 1)
            summary.append(
                {
                    **base,
                    "block": br.block,
                    "index": br.index,
                    "sublayer": br.sublayer,
                    "group": g,
                    "positions": len(zero[sl]),
                    "ratio": value,
                    **{k: float(v) for k, v in ci.items()},
                    "mean_of_ratios": mor,
                    "ratio_of_means": rm,
                    "median_over_images": float(np.median(per_image[:, col].numpy())),
                    "zero_branch": zg,
                    "flag": "zero branch output: infinite ratio" if zg else "",
                    **settings,
                    "uncertainty": "se_images",
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(summary)


def _groups(m, layer: Layer) -> dict[str, slice]:
    """The token groups of one layer's positions, from its own prefix tokens (anatomy.tokens): 'all', and for a
    token layer with prefix tokens 'patches' and (a class token) 'cls'."""
    positions = int(np.prod(layer.shape[:-1])) if layer.layout in ("NLC", "NHWC") else int(np.prod(layer.shape[1:]))
    prefix = anatomy_tokens.prefix_of(m.module, layer, positions) if layer.layout == "NLC" else 0
    if prefix:
        out = {"all": slice(0, positions), "patches": slice(prefix, positions)}
        if anatomy_tokens.has_cls(m.module):
            out["cls"] = slice(0, 1)
        kinds = anatomy_tokens.prefix_kinds(m.module)
        if len(kinds) == prefix and "register" in kinds:  # registers: contiguous, after class / distillation
            first = kinds.index("register")
            out["registers"] = slice(first, first + kinds.count("register"))
        return out
    return {"all": slice(0, positions)}


def measure(
    models,
    layers_of,
    loader,
    device,
    heatmap_tokens: int = 10,
    aggregate: str = "mean_of_ratios",
    dataset: str = "",
    progress=None,
):
    """Skip ratios of every residual sublayer of each model over the loader's images.

    `layers_of(model, names)` resolves layer specs (Context.layers, or layers.resolve). Returns the per-token
    table, the per-group summary table and, per model, the (Branch, skip Layer, branch Layer) triples.
    """
    specs, groups, layer_lists, all_terms = [], [], [], []
    for m in models:
        brs = branches(m.module)
        bterms = [residual_terms(b) for b in brs]
        names = list(dict.fromkeys(n for zt, ft in bterms for part in (zt, ft) for n, _ in part))
        layers = {l.name: l for l in layers_of(m, names)}
        specs.append([(b, layers[zt[0][0]], layers[ft[0][0]]) for b, (zt, ft) in zip(brs, bterms)])
        all_terms.append(bterms)
        groups.append([_groups(m, lz) for _, lz, _ in specs[-1]])  # per branch: ConViT's CLS joins mid-depth
        layer_lists.append(list(layers.values()))
    reducer = SkipRatioReducer(specs, heatmap_tokens, groups, all_terms)
    images = stream(models, layer_lists, loader, reducer, device, "skip_ratio", progress)
    tokens, summary = zip(
        *(
            _ratio_tables(m, s, sums, images, g, aggregate, dataset)
            for m, s, sums, g in zip(models, specs, reducer.sums, groups)
        )
    )
    return pd.concat(tokens, ignore_index=True), pd.concat(summary, ignore_index=True), specs


@dataclass
class SkipRatio(Params):
    aggregate: str = "mean_of_ratios"  # over images: mean_of_ratios (mean of per-image ratios) or ratio_of_means (mean ||z|| / mean ||f(z)||)
    heatmap_tokens: int = 10  # tokens / positions drawn in the heatmap (and given a median over images)
    reference: bool = False  # true: also measure `reference` (e.g. a ResNet) and draw it in the same panel, as Fig. 7

    def check(self) -> None:
        choice("aggregate", self.aggregate, ("mean_of_ratios", "ratio_of_means"))
        at_least("heatmap_tokens", self.heatmap_tokens, 1)


@register(
    "skip_ratio",
    "norm ratio ||z|| / ||f(z)|| of skip input to residual-branch output per block and token "
    "(Raghu et al. 2021, Fig. 7)",
    SkipRatio,
    models=lambda cfg: {"model": cfg.model, **({"reference": cfg.reference} if cfg.analysis.reference else {})},
)
def skip_ratio(ctx) -> Result:
    p = ctx.params
    models = [ctx.models[key] for key in ctx.models.nodes]
    loader, used = sample_loader(ctx, models)
    tokens, summary, specs = measure(
        models, ctx.layers, loader, ctx.device, p.heatmap_tokens, p.aggregate, ctx.cfg.dataset.name, ctx.progress
    )
    fig = plots_skip.skip_ratio_figure(tokens, summary, int(p.heatmap_tokens), p.aggregate)
    infinite = summary[summary.zero_branch > 0][["model", "block", "sublayer"]].drop_duplicates()
    info = {
        "aggregate": p.aggregate,
        "branch_points": {m.key: [dataclasses.asdict(b) for b, _, _ in s] for m, s in zip(models, specs)},
        "zero_branches": infinite.to_dict("records"),
        "uncertainty": {
            "skip_ratio": {"ratio": uncertainty.METHODS["se_images"] + "; ratio_of_means by the delta method"}
        },
    }
    return Result(
        tables={"skip_ratio": tokens, "skip_ratio_summary": summary},
        figures={"skip_ratio": fig},
        info=info,
        images=[used],
    )


# ---- skip_ablation ----


class AblationReducer(CKAReducer):
    """CKA intact vs lesioned, plus top-1 of both when the labels are the model's classes."""

    def __init__(self, *args, accuracy: bool, **kw):
        super().__init__(*args, **kw)
        self.accuracy = accuracy
        self.needs_outputs = accuracy  # top-1 reads the logits: the forwards run to the end
        self.correct = [0, 0]
        self.changed = [0, 0]  # images right only when lesioned (gain), right only when intact (loss)
        self.seen = 0

    def end_batch(self, labels, outputs):
        if self.accuracy:
            hits = [out.argmax(-1).cpu() == labels for out in outputs]
            for i, h in enumerate(hits):
                self.correct[i] += int(h.sum())
            self.changed[0] += int((hits[1] & ~hits[0]).sum())
            self.changed[1] += int((hits[0] & ~hits[1]).sum())
            self.seen += len(labels)
        super().end_batch(labels, outputs)


def _chosen_blocks(model, blocks) -> list[str]:
    known = residual_blocks(model)
    if not known:
        branches(model)  # raises the clear message
    chosen = []
    for b in [blocks] if isinstance(blocks, (int, str)) else list(blocks):
        if isinstance(b, int) or (isinstance(b, str) and b.lstrip("-").isdigit()):
            i = int(b)
            if not -len(known) <= i < len(known):
                raise VitstudyError(
                    f"analysis.blocks: block {i} does not exist; the model has {len(known)} residual blocks (0..{len(known) - 1})"
                )
            chosen.append(known[i])
        elif b in known:
            chosen.append(b)
        else:
            raise VitstudyError(
                f"analysis.blocks: '{b}' is not a residual block; give indices 0..{len(known) - 1} or paths like {known[0]}"
            )
    if not chosen:
        raise VitstudyError("analysis.blocks is empty; name at least one residual block to lesion")
    return chosen


@dataclass
class SkipAblation(Params):
    blocks: List[Any] = field(
        default_factory=lambda: [0]
    )  # residual blocks to lesion: indices in forward order or module paths (e.g. [blocks.6] or [layer3.0])
    sublayer: str = "both"  # transformers: attn, mlp or both; a conv unit's one residual goes with any value (in a MaxViT block: with both only)
    accuracy: Any = (
        "auto"  # auto: top-1 when the data set's classes are the model's classes; true: require it; false: skip
    )

    def check(self) -> None:
        choice("sublayer", self.sublayer, ("attn", "mlp", "both"))
        if self.accuracy not in ("auto", True, False):
            raise VitstudyError(f"analysis.accuracy must be auto, true or false, got {self.accuracy!r}")


@register(
    "skip_ablation",
    "CKA and top-1 of a model with the skip connection of chosen blocks removed at inference "
    "vs intact (inference-time approximation of Raghu et al. 2021, Fig. 8)",
    SkipAblation,
)
def skip_ablation(ctx) -> Result:
    cfg = ctx.cfg
    p = ctx.params
    m = ctx.models["model"]
    chosen = _chosen_blocks(m.module, list(p.blocks))
    classes = getattr(ctx.dataset, "classes", []) or []
    matches = len(classes) > 0 and len(classes) == getattr(m.module, "num_classes", -1)
    if p.accuracy is True and not matches:
        raise VitstudyError(
            f"analysis.accuracy=true needs a data set whose {len(classes)} classes are the model's "
            f"{getattr(m.module, 'num_classes', '?')} classes; use analysis.accuracy=auto"
        )
    accuracy = matches if p.accuracy == "auto" else bool(p.accuracy)
    layers = ctx.layers(m)
    lesioned = dataclasses.replace(m, module=copy.deepcopy(m.module), label=f"{m.label} (lesioned)")
    matrices, reps, units, used, correct = [], [], [], [], []
    with remove_skip(lesioned.module, chosen, p.sublayer):
        for r in range(cfg.cka.repeats):
            batching, rec = ctx.sample(tail=cfg.cka.tail, repeat=r)
            loader = ctx.loader([m, lesioned], batching)
            reducer = AblationReducer(
                [m, lesioned],
                [layers, layers],
                cfg.tokens,
                cfg.cka.estimator,
                cfg.cka.gram_dtype,
                ctx.device,
                accuracy=accuracy,
            )
            stream(
                [m, lesioned],
                [layers, layers],
                loader,
                reducer,
                ctx.device,
                f"skip_ablation {r + 1}/{cfg.cka.repeats}",
                ctx.progress,
            )
            matrix = reducer.result()
            check(matrix, [l.name for l in layers], [l.name for l in layers])
            matrices.append(matrix)
            reps.append(reducer.replicates())
            units.append(uncertainty.unit_ids(batching.batches))
            used.append(rec)
            correct.append((reducer.correct, reducer.changed, reducer.seen))
    del lesioned
    est = Estimate.from_runs(matrices, reps, units)
    images = used[0]["images"]
    df = table(est, m, m, layers, layers, cfg, images)
    df["variant_x"], df["variant_y"] = "intact", "lesioned"
    df["lesioned_blocks"] = " ".join(chosen)
    df["sublayer"] = p.sublayer
    df["lesion"] = LESION
    tables = {"skip_ablation": df}
    uncertainty_info = {"skip_ablation": est.info()}
    if accuracy:
        seen = sum(s for _, _, s in correct)
        hits = [sum(c[i] for c, _, _ in correct) for i in (0, 1)]
        gain, loss = (sum(ch[i] for _, ch, _ in correct) for i in (0, 1))
        top1 = [h / seen for h in hits]
        change, change_se = uncertainty.paired_difference(gain, loss, seen)
        low, high = uncertainty.interval(change, change_se, seen - 1)
        rows = []
        for k, (v, a) in enumerate(zip(("intact", "lesioned"), top1)):
            ci = uncertainty.proportion_columns("top1", hits[k], seen)
            rows.append(
                {
                    "model": m.name,
                    "weights": m.weights,
                    "variant": v,
                    "top1": a,
                    **{c: float(x) for c, x in ci.items()},
                    "top1_change": a - top1[0],
                    "top1_change_se": float(change_se) if k else 0.0,
                    "top1_change_ci_low": float(low) if k else 0.0,
                    "top1_change_ci_high": float(high) if k else 0.0,
                    "lesioned_blocks": " ".join(chosen),
                    "sublayer": p.sublayer,
                    "num_images": seen,
                    "dataset": cfg.dataset.name,
                    "lesion": LESION,
                    "uncertainty": "wilson; top1_change: paired_se_images",
                }
            )
        tables["skip_ablation_accuracy"] = pd.DataFrame(rows)
        uncertainty_info["skip_ablation_accuracy"] = {
            "top1": uncertainty.METHODS["wilson"],
            "top1_change": uncertainty.METHODS["paired_se_images"],
        }
    where = ", ".join(chosen)
    fig = heatmap(
        est,
        f"{m.label} layer (intact)",
        f"{m.label} layer (skip removed)",
        f"Inference-time lesion: skip of {where} ({p.sublayer}) removed, not retrained\n"
        f"CKA, tokens={cfg.tokens}, {images} images x {cfg.cka.repeats}",
    )
    info = {
        "lesion": LESION,
        "lesioned_blocks": chosen,
        "sublayer": p.sublayer,
        "accuracy_measured": accuracy,
        "accuracy_note": None
        if accuracy
        else f"not measured: the data set's {len(classes)} classes are not the model's "
        f"{getattr(m.module, 'num_classes', '?')} classes",
        "layers": [l.name for l in layers],
        "uncertainty": uncertainty_info,
    }
    replicates = {"skip_ablation": est.replicate_record()} if est.replicates is not None else {}
    return Result(tables=tables, figures={"skip_ablation": fig}, info=info, images=used, replicates=replicates)
