"""Any registered similarity measure between layers (issue 21): within one model, across two, over a grid of models.

`analysis.measure=NAME` picks a measure of `vitstudy.measures` (`vitstudy list` names them). A streaming measure
(one with a `kernel`) goes through the CKA engine (analyses.cka.compute with the measure's kernel): minibatch unbiased
HSIC, repeats, delete-one-batch jackknife intervals, the permutation null, checkpoints and the feature cache exactly
as linear CKA, so `analysis.measure=cka` gives cka_within / cka_across / cka_grid's numbers bit for bit. Every other
measure, and `analysis.estimator=full_set|batch_mean`, goes through `_compute_full` (the bounded feature store and
the delete-a-group jackknife of analyses.similarity_full). The image sampling is the CKA family's: cka.repeats,
cka.tail, cka.gram_dtype (docs/measures.md). Tables: tidy long form, one row per (layer_x, layer_y), the value in
`value`; asymmetric measures hold both directions, layer_x predicting layer_y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, List, Optional

import numpy as np
import pandas as pd

from .. import measures
from ..errors import VitstudyError, closest
from ..pipeline.layers import Layer
from ..pipeline.results import Replicates
from ..plots import model_label
from ..plots.cka import cka_grid_figure
from . import cka
from ._registry import Params, Result, at_least, choice, register
from .cka_grid import check_models, grid_models

ESTIMATORS = ("auto", "minibatch", "full_set", "batch_mean")
STORE_DTYPES = ("float32", "float16")
MEASURE_KEYS = ("k", "bandwidth", "variance")  # analysis.* keys that are measure parameters (fixed names project-wide)
ESTIMATOR_TEXT = {"minibatch": "minibatch unbiased HSIC", "full_set": "full set", "batch_mean": "mean over batches"}


@dataclass
class Similarity(Params):
    measure: str = "cka"  # a registered measure (vitstudy list shows them with their ranges and parameters)
    estimator: str = (
        "auto"  # auto (minibatch when the measure streams, else full_set) | minibatch | full_set | batch_mean
    )
    k: int = 10  # neighbours (mutual_knn, cknna)
    bandwidth: float = 1.0  # rbf_cka: sigma as a multiple of the median pairwise distance
    variance: float = 0.99  # svcca: share of the variance its SVD step keeps
    null: int = 0  # permutations of the image pairing: value_chance, value_p and the calibrated score value_z per cell
    groups: int = 10  # full-set estimator: groups of the delete-a-group jackknife
    store_dtype: str = "float32"  # full-set estimator: dtype of the bounded feature store (float32 | float16)

    def measure_class(self) -> type[measures.Measure]:
        if self.measure not in measures.MEASURES:
            raise VitstudyError(
                f"analysis.measure: unknown measure '{self.measure}'; {closest(self.measure, measures.MEASURES)}"
            )
        return measures.MEASURES[self.measure]

    def build(self) -> measures.Measure:
        """The measure with its parameters from `analysis.<name>`."""
        cls = self.measure_class()
        return measures.get(self.measure, **{k: getattr(self, k) for k in MEASURE_KEYS if k in cls.parameters()})

    def resolved_estimator(self) -> str:
        """minibatch | full_set | batch_mean: `auto` is minibatch for a streaming measure, else full_set."""
        if self.estimator != "auto":
            return self.estimator
        return "minibatch" if self.measure_class().streams else "full_set"

    def parameter_text(self) -> str:
        """The measure's parameters as the table's `parameters` column ("k=10"; "" when it has none)."""
        cls = self.measure_class()
        return ",".join(f"{k}={getattr(self, k)}" for k in MEASURE_KEYS if k in cls.parameters())

    def check(self) -> None:
        cls = self.measure_class()
        choice("estimator", self.estimator, ESTIMATORS)
        choice("store_dtype", self.store_dtype, STORE_DTYPES)
        defaults = {f.name: f.default for f in fields(Similarity)}
        for key in MEASURE_KEYS:  # a parameter the measure does not take: refused, not silently ignored
            if getattr(self, key) != defaults[key] and key not in cls.parameters():
                takers = [n for n, c in sorted(measures.MEASURES.items()) if key in c.parameters()]
                raise VitstudyError(
                    f"analysis.{key} applies to {', '.join(takers) or 'no registered measure'}, "
                    f"not to measure={self.measure}"
                )
        at_least("k", self.k, 1)
        at_least("null", self.null, 0)
        at_least("groups", self.groups, 2)
        if not (self.bandwidth > 0 and math.isfinite(self.bandwidth)):
            raise VitstudyError(f"analysis.bandwidth must be a positive number, got {self.bandwidth!r}")
        if not 0 < self.variance <= 1:
            raise VitstudyError(f"analysis.variance is a share of the variance in (0, 1], got {self.variance!r}")
        estimator = self.resolved_estimator()
        if estimator == "minibatch" and not cls.streams:
            raise VitstudyError(
                f"measure={self.measure} has no minibatch (kernel) form: use analysis.estimator=full_set "
                f"or batch_mean (streaming measures: {', '.join(streaming()) or 'none'})"
            )
        if estimator != "minibatch" and not cls.full_set:
            raise VitstudyError(f"measure={self.measure} has no full-set form: use analysis.estimator=minibatch")
        if estimator == "minibatch":
            for key in ("groups", "store_dtype"):
                if getattr(self, key) != defaults[key]:
                    raise VitstudyError(
                        f"analysis.{key} applies to the full-set estimator (estimator=full_set or "
                        f"batch_mean); the minibatch estimator's intervals delete one batch at a time"
                    )


def streaming() -> list[str]:
    return [n for n, c in sorted(measures.MEASURES.items()) if c.streams]


@dataclass
class SimilarityGrid(Similarity):
    models: List[Any] = field(
        default_factory=list
    )  # model presets, timm names or model nodes: analysis.models=[vit_b16,resnet50]
    pretrained: Optional[bool] = None  # true/false: override every listed model's pretrained flag

    def check(self) -> None:
        check_models("similarity_grid", self.models)
        super().check()


@dataclass(frozen=True)
class Block:
    """One (model x, model y) block of the value matrix: its models' indices and the rows/columns it spans."""

    x: int
    y: int
    rows: slice
    cols: slice


def _compute_full(
    ctx, models, layers, measure: measures.Measure, params: Similarity, stacked: bool | None
) -> tuple[cka.Estimate, dict]:
    """Non-streaming measures and estimator=full_set|batch_mean: analyses.similarity_full.compute (same contract as
    cka.compute: the bounded feature store, delete-a-group jackknife, permutation null). The one place that routes
    there."""
    from . import similarity_full

    return similarity_full.compute(ctx, models, layers, measure, params, stacked)


def estimate(
    ctx, models, layers, measure: measures.Measure, params: Similarity, stacked: bool | None = None
) -> tuple[cka.Estimate, dict]:
    """The value matrix with its uncertainty (cka.compute's contract), by the measure's estimator."""
    cfg = ctx.cfg
    if int(cfg.cka.get("null", 0) or 0):
        raise VitstudyError("the similarity analyses take their permutation null from analysis.null, not cka.null")
    if cfg.cka.estimator != "unbiased":
        raise VitstudyError(
            "the similarity analyses take their estimator from analysis.estimator (full_set is the "
            "full-set form), not cka.estimator"
        )
    if params.resolved_estimator() != "minibatch":
        return _compute_full(ctx, models, layers, measure, params, stacked)
    sampling = cka.Sampling(
        estimator="unbiased",
        repeats=cfg.cka.repeats,
        tail=cfg.cka.tail,
        gram_dtype=cfg.cka.gram_dtype,
        null=params.null,
        kernel=measure.kernel,
        range=tuple(measure.range),
        label=measure.label,
        null_key="analysis.null",
    )
    return cka.compute(ctx, models, layers, stacked, sampling)


def table(
    est: cka.Estimate,
    mx,
    my,
    lx: list[Layer],
    ly: list[Layer],
    cfg,
    params: Similarity,
    estimator: str,
    images: int,
    repeats: int,
) -> pd.DataFrame:
    """Tidy long form of one block (BRIEF columns, docs/measures.md): one row per layer pair, x predicting y."""
    ix, iy = np.meshgrid(np.arange(len(lx)), np.arange(len(ly)), indexing="ij")
    ix, iy = ix.ravel(), iy.ravel()
    extra = est.columns("value", calibrated=True)
    null = {k: extra.pop(k) for k in ("value_chance", "value_p", "value_z", "null_permutations") if k in extra}
    return pd.DataFrame(
        {
            "model_x": mx.name,
            "weights_x": mx.weights,
            "layer_x": [lx[i].name for i in ix],
            "index_x": ix,
            "model_y": my.name,
            "weights_y": my.weights,
            "layer_y": [ly[j].name for j in iy],
            "index_y": iy,
            "measure": params.measure,
            "value": est.mean.ravel(),
            "value_std": est.std.ravel(),
            **extra,
            **null,
            "repeats": repeats,
            "estimator": estimator,
            "parameters": params.parameter_text(),
            "tokens": cfg.tokens,
            "num_images": images,
            "batch_size": cfg.dataset.batch_size,
            "dataset": cfg.dataset.name,
            "uncertainty": est.method,
        }
    )


def colour_range(measure: measures.Measure, matrix: np.ndarray) -> tuple[float, float]:
    """The measure's range where it is finite; an unbounded end comes from the values."""
    low, high = measure.range
    finite = matrix[np.isfinite(matrix)]
    if not math.isfinite(low):
        low = float(finite.min()) if finite.size else 0.0
    if not math.isfinite(high):
        high = float(finite.max()) if finite.size else 1.0
    return (low, high) if high > low else (low, low + 1.0)


def _tables(ctx, est, models, layers, blocks: list[Block], params, estimator, info):
    """The table of every block (in order) and the replicates record of the whole table (`vitstudy compare`)."""
    images, repeats = info["repeats"][0]["images"], len(info["repeats"])
    frames, reps = [], []
    for b in blocks:
        part = est.block(b.rows, b.cols)
        frames.append(
            table(part, models[b.x], models[b.y], layers[b.x], layers[b.y], ctx.cfg, params, estimator, images, repeats)
        )
        if part.replicates is not None:
            reps.append(part.replicates.reshape(len(part.replicates), -1))
    df = pd.concat(frames, ignore_index=True)
    record = None
    if reps and len(reps) == len(blocks):
        record = Replicates(
            values=np.concatenate(reps, axis=1),
            strata=est.strata,
            units=est.units,
            estimate=df.value.to_numpy(),
            column="value",
            method=est.method,
        )
    return df, record


def _run(ctx, kind: str) -> Result:
    """kind: within (one model), across (model vs reference) or grid (analysis.models)."""
    cfg, params = ctx.cfg, ctx.params
    measure, estimator = params.build(), params.resolved_estimator()
    if kind == "within":
        models = [ctx.models["model"]]
    elif kind == "across":
        models = [ctx.models["model"], ctx.models["reference"]]
    else:
        models = [ctx.models[key] for key in ctx.models.nodes]
    layers = [ctx.layers(m) for m in models]
    # across: the cross block only, unless the measure is asymmetric (both directions: the stacked matrix's two blocks)
    stacked = True if kind == "grid" else (None if kind == "within" or measure.symmetric else True)
    est, info = estimate(ctx, models, layers, measure, params, stacked)
    offsets = np.cumsum([0] + [len(ls) for ls in layers]).tolist()
    span = [slice(offsets[i], offsets[i + 1]) for i in range(len(models))]
    if kind == "within":
        blocks = [Block(0, 0, slice(None), slice(None))]
    elif kind == "across":
        blocks = (
            [Block(0, 1, slice(None), slice(None))]
            if measure.symmetric
            else [Block(0, 1, span[0], span[1]), Block(1, 0, span[1], span[0])]
        )
    else:
        blocks = [
            Block(i, j, span[i], span[j])
            for i in range(len(models))
            for j in range(len(models))
            if i <= j or not measure.symmetric
        ]
    df, record = _tables(ctx, est, models, layers, blocks, params, estimator, info)
    name = f"similarity_{kind}"
    images, repeats = info["repeats"][0]["images"], len(info["repeats"])
    parameters = params.parameter_text()
    subtitle = (
        f"{ESTIMATOR_TEXT[estimator]}{', ' + parameters if parameters else ''}, tokens={cfg.tokens}, "
        f"{images} images x {repeats}"
    )
    vmin, vmax = colour_range(measure, est.mean)
    if kind == "grid":
        means = {(b.x, b.y): est.block(b.rows, b.cols).mean for b in blocks}
        fig = cka_grid_figure(
            means, [m.label for m in models], f"{measure.label} grid\n{subtitle}", measure.label, vmin, vmax
        )
    else:
        first = est.block(blocks[0].rows, blocks[0].cols)
        mx, my = models[0], models[-1]
        nx, ny = model_label(mx.label, mx.weights), model_label(my.label, my.weights)
        verb = "predicting" if not measure.symmetric else "vs"
        title = f"{measure.label} within {nx}" if kind == "within" else f"{measure.label}: {nx} {verb} {ny}"
        xlabel = f"{nx} layer" + (" (predicting)" if not measure.symmetric else "")
        fig = cka.heatmap(
            first, xlabel, f"{ny} layer", f"{title}\n{subtitle}", label=measure.label, vmin=vmin, vmax=vmax
        )
    about = {
        "name": measure.name,
        "label": measure.label,
        "citation": measure.citation,
        "range": list(measure.range),
        "symmetric": measure.symmetric,
        "estimator": estimator,
        "parameters": parameters,
    }
    return Result(
        tables={name: df},
        figures={name: fig},
        info={
            "layers": {m.key: [l.name for l in ls] for m, ls in zip(models, layers)},
            "uncertainty": {name: uncertainty_record(est, info)},
            "measure": about,
        },
        images=info["repeats"],
        replicates={name: record} if record is not None else {},
    )


FULL_SET_KEYS = ("estimator", "groups", "store_dtype", "store_bytes", "interval_range", "batch_weights")


def uncertainty_record(est: cka.Estimate, info: dict) -> dict:
    """run.json's uncertainty entry: the estimate's, with what the full-set path says about itself (its groups,
    store, batch weights) in place of the minibatch HSIC's batch weights."""
    out = est.info()
    if info.get("estimator") in ("full_set", "batch_mean"):
        out.pop("batch_weights", None)
        out.update({k: info[k] for k in FULL_SET_KEYS if k in info})
    return out


@register(
    "similarity_within",
    "any similarity measure (analysis.measure) between every pair of layers of one model",
    Similarity,
)
def similarity_within(ctx) -> Result:
    return _run(ctx, "within")


@register(
    "similarity_across",
    "any similarity measure (analysis.measure) between the layers of `model` and `reference`",
    Similarity,
    models=("model", "reference"),
)
def similarity_across(ctx) -> Result:
    return _run(ctx, "across")


@register(
    "similarity_grid",
    "any similarity measure (analysis.measure) between every pair of M models (analysis.models)",
    SimilarityGrid,
    models=grid_models,
)
def similarity_grid(ctx) -> Result:
    return _run(ctx, "grid")
