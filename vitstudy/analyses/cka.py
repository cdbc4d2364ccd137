"""CKA within one model (Raghu et al. 2021 Fig. 1) and across two models (Fig. 2).

One pass: each model runs once per batch, each layer's centred Gram is formed once inside its forward
hook, and every layer pair comes from one product of the stacked Ũ matrices (metrics.cka.MinibatchCKA).
Every cell comes with a delete-one-batch jackknife standard error and 95% interval from the same pass
(metrics.uncertainty); `cka.null=K` adds K permutations of the image pairing (cka_across): chance level
and permutation p-value per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..errors import VitstudyError
from ..metrics import uncertainty
from ..metrics.cka import FullSetCKA, MinibatchCKA, gram, u_center
from ..pipeline import data
from ..pipeline.engine import FeatureSource, Reducer, stream
from ..pipeline.layers import Layer, features
from ..pipeline.results import Replicates
from ..plots import cka as plots_cka
from ..plots import model_label
from ._registry import Params, Result, register

TOLERANCE = 1e-6  # |CKA| may exceed 1 by rounding only
RANGE = (0.0, 1.0)  # population linear CKA: intervals are cut to it (docs/uncertainty.md)
BATCH_WEIGHTS = "n(n-3): a batch of n images counts by its image pairs, relative to the first (full) batch"


class CKAReducer(Reducer):
    """Per batch: features -> centred Gram -> Ũ per layer (in the hook); then one product for all pairs."""

    def __init__(
        self,
        models,
        layers,
        tokens: str,
        estimator: str = "unbiased",
        gram_dtype: str = "float32",
        device="cpu",
        stacked: bool | None = None,
        permutations: int = 0,
        null_keys: tuple[int, ...] = (0,),
        kernel: Callable = gram,
        null_key: str = "cka.null",
    ):
        # stacked (one model, or cka_grid's models): every pair of all their layers from one L x L product;
        # otherwise (two models, cka_across): only the cross terms. Default: stacked unless there are two models.
        # kernel(x, dtype): one batch's float64 Gram matrix (linear CKA: `gram`; a streaming measure's `kernel`).
        self.within = len(models) != 2 if stacked is None else stacked
        self.layers = layers
        self.index = [{layer.name: i for i, layer in enumerate(ls)} for ls in layers]
        self.tokens = tokens
        self.modules = [m.module for m in models]
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[gram_dtype]
        self.estimator = estimator
        self.kernel = kernel
        self.permutations, self.null_keys = permutations, tuple(null_keys)
        if permutations and (self.within or estimator != "unbiased"):
            hint = (
                "use it with cka_across and cka.estimator=unbiased"
                if null_key == "cka.null"
                else "use it with similarity_across"
            )
            raise VitstudyError(
                f"{null_key} (a permutation null) needs two models and the unbiased minibatch estimator: {hint}"
            )
        sizes = [len(ls) for ls in layers]
        self.offsets = np.cumsum([0] + sizes[:-1]).tolist() if self.within else [0, 0]
        if estimator == "unbiased":
            self.acc = (
                MinibatchCKA(sum(sizes), None, device)
                if self.within
                else MinibatchCKA(sizes[0], sizes[1], device, permutations)
            )
        else:
            self.acc = FullSetCKA(sum(sizes), None, kernel) if self.within else FullSetCKA(sizes[0], sizes[1], kernel)
        self.buffers: list[list[torch.Tensor | None]] = [[None] * n for n in sizes]

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        x = features(tensor, layer, self.tokens, self.modules[model_index])
        i = self.index[model_index][layer.name]
        if self.estimator == "unbiased":
            self.buffers[model_index][i] = u_center(self.kernel(x, self.dtype)).flatten()
        elif self.within:
            self.acc.add("x", self.offsets[model_index] + i, x)
        else:
            self.acc.add("xy"[model_index], i, x)

    def end_batch(self, labels, outputs) -> None:
        if self.estimator != "unbiased":
            return
        if self.within:
            self.acc.update(torch.stack([u for b in self.buffers for u in b]))
        else:
            perms = None
            if self.permutations:  # seeded by (seed, repeat, batch): a resumed run draws the same permutations
                n = len(labels)
                g = torch.Generator().manual_seed(uncertainty.null_seed(*self.null_keys, self.acc.batches))
                perms = torch.stack([torch.randperm(n, generator=g) for _ in range(self.permutations)])
            self.acc.update(torch.stack(self.buffers[0]), torch.stack(self.buffers[1]), perms)
        self.buffers = [[None] * len(b) for b in self.buffers]

    def result(self) -> np.ndarray:
        return self.acc.result().numpy()

    def replicates(self) -> np.ndarray | None:
        """Leave-one-batch-out CKA matrices (B, L, M), or None for the full-set estimator."""
        if self.estimator != "unbiased" or self.acc.batches == 0:
            return None
        return uncertainty.cka_replicates(*[None if t is None else t.numpy() for t in self.acc.batch_terms()])

    def null(self) -> np.ndarray | None:
        r = self.acc.null_result() if self.estimator == "unbiased" else None
        return None if r is None else r.numpy()


def check(matrix: np.ndarray, names_x: list[str], names_y: list[str], label: str = "CKA") -> None:
    """Non-finite or |CKA| > 1 values mean a numerical or bookkeeping error: fail, naming the layers.

    `label`: the measure's name in the message (kernel measures are CKA of another kernel, so bounded alike).
    """
    bad = ~np.isfinite(matrix) | (np.abs(matrix) > 1 + TOLERANCE)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        value = matrix[i, j]
        hint = (
            (
                "; a layer gives the same features for every image (e.g. the CLS token before the first attention),"
                f" so {label} is undefined: drop it from the layers"
            )
            if not np.isfinite(value)
            else ""
        )
        raise VitstudyError(f"{label} of layer '{names_x[i]}' vs '{names_y[j]}' is {value:.6g}, outside [-1, 1]{hint}")


@dataclass
class Estimate:
    """A CKA matrix over `cka.repeats` image samples with its uncertainty.

    mean/std: over repeats (std NaN for one repeat); se, low, high: delete-one-batch jackknife (repeats are strata),
    95% t interval with `df` degrees of freedom cut to `range` (CKA: RANGE, [0, 1]); replicates (units, L, M) of the mean with `strata` (repeat of each
    unit) and `units` (ids of the batches' image sets) for paired comparisons; null (K, L, M): the mean CKA under
    K permutations of the image pairing (cka.null), or None.
    """

    mean: np.ndarray
    std: np.ndarray
    se: np.ndarray
    low: np.ndarray
    high: np.ndarray
    df: int
    method: str
    replicates: np.ndarray | None = None
    strata: np.ndarray | None = None
    units: np.ndarray | None = None
    null: np.ndarray | None = None
    range: tuple[float, float] = RANGE  # the values the measure can take (the intervals are cut to it)

    @classmethod
    def from_runs(
        cls,
        matrices: list[np.ndarray],
        replicates: list[np.ndarray | None],
        units: list[np.ndarray],
        nulls: list[np.ndarray | None] | None = None,
        range: tuple[float, float] = RANGE,
    ) -> "Estimate":
        stack = np.stack(matrices)
        std = stack.std(axis=0, ddof=1) if len(matrices) > 1 else np.full(stack.shape[1:], np.nan)
        mean = stack.mean(axis=0)
        null = np.mean(np.stack(nulls), axis=0) if nulls and nulls[0] is not None else None
        if any(r is None for r in replicates):
            nan = np.full(mean.shape, np.nan)
            return cls(mean, std, nan, nan, nan, 0, "none", null=null, range=tuple(range))
        _, reps, strata = uncertainty.combine_repeats(matrices, replicates)
        se = uncertainty.jackknife_se(reps, strata)
        df = uncertainty.jackknife_df(strata)
        low, high = uncertainty.clip_interval(mean, *uncertainty.interval(mean, se, df), *range)
        return cls(
            mean, std, se, low, high, df, "jackknife_batches", reps, strata, np.concatenate(units), null, tuple(range)
        )

    def block(self, sx: slice, sy: slice) -> "Estimate":
        """The sub-matrix of layers sx x sy (cka_grid: one pair of models)."""
        cut = lambda a: None if a is None else a[:, sx, sy]
        return Estimate(
            self.mean[sx, sy],
            self.std[sx, sy],
            self.se[sx, sy],
            self.low[sx, sy],
            self.high[sx, sy],
            self.df,
            self.method,
            cut(self.replicates),
            self.strata,
            self.units,
            cut(self.null),
            self.range,
        )

    def columns(self, prefix: str = "cka", calibrated: bool = False) -> dict[str, np.ndarray]:
        """The table columns beside the value column `prefix` (cka tables: "cka"; similarity tables: "value").

        <prefix>_se, <prefix>_ci_low, <prefix>_ci_high and, with a null, <prefix>_chance (the null mean), <prefix>_p
        (permutation p-value) and null_permutations; `calibrated` adds <prefix>_z = (value - null mean) / null sd,
        the calibrated score (docs/measures.md): how many null standard deviations the value stands above chance.
        """
        cols = {
            f"{prefix}_se": self.se.ravel(),
            f"{prefix}_ci_low": self.low.ravel(),
            f"{prefix}_ci_high": self.high.ravel(),
        }
        if self.null is not None:
            cols[f"{prefix}_chance"] = self.null.mean(axis=0).ravel()
            cols[f"{prefix}_p"] = uncertainty.permutation_pvalue(self.mean, self.null).ravel()
            if calibrated:
                cols[f"{prefix}_z"] = calibrated_score(self.mean, self.null).ravel()
            cols["null_permutations"] = len(self.null)
        return cols

    def replicate_record(self, column: str = "cka") -> Replicates | None:
        """What `<table>.replicates.npz` holds for paired comparisons (rows in the table's order)."""
        if self.replicates is None:
            return None
        return Replicates(
            values=self.replicates.reshape(len(self.replicates), -1),
            strata=self.strata,
            units=self.units,
            estimate=self.mean.ravel(),
            column=column,
            method=self.method,
        )

    @property
    def batches(self) -> int:
        """How many batches (over all repeats) the jackknife deleted one at a time; 0 without a jackknife."""
        return 0 if self.strata is None else len(self.strata)

    def note(self) -> str | None:
        """A warning for intervals from fewer than uncertainty.FEW_UNITS batches, or None."""
        if self.method != "jackknife_batches" or self.batches >= uncertainty.FEW_UNITS:
            return None
        return (
            f"intervals from only {self.batches} batches (under {uncertainty.FEW_UNITS}): their se has "
            f"{self.df} degrees of freedom and is itself uncertain; use more images or a smaller dataset.batch_size"
        )

    def info(self) -> dict:
        out = {
            "method": self.method,
            "description": uncertainty.METHODS.get(self.method, "not available for the full-set biased estimator"),
            "level": uncertainty.LEVEL,
            "df": self.df,
            "null_permutations": 0 if self.null is None else len(self.null),
        }
        if self.method == "jackknife_batches":
            out.update(
                batches=self.batches,
                few_batches=self.batches < uncertainty.FEW_UNITS,
                interval_range=list(self.range),
                batch_weights=BATCH_WEIGHTS,
            )
            if self.note():
                out["note"] = self.note()
        return out


def calibrated_score(mean: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(value - null mean) / null sd (ddof=1) per cell: the value in standard deviations of its permutation null.

    Measures differ in scale and chance level (mutual k-NN of unrelated layers is about k/n, CKA's grows with
    features per image); the z-score puts them on one axis. NaN when the null does not vary (or has one draw).
    """
    null = np.asarray(null, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = null.std(axis=0, ddof=1) if len(null) > 1 else np.full(null.shape[1:], np.nan)
        z = (np.asarray(mean, dtype=np.float64) - null.mean(axis=0)) / sd
    return np.where(np.isfinite(z), z, np.nan)


@dataclass(frozen=True)
class Sampling:
    """What `compute` streams and how: the estimator, the image samples, the null, and the measure's kernel.

    `of(cfg)` reads the shared `cka.*` settings (cka_within, cka_across, cka_grid). The similarity analyses keep
    cka.repeats, cka.tail and cka.gram_dtype (the image sampling every CKA-family analysis shares, so one sweep
    setting covers all of them) and take the estimator, the null and the kernel from `analysis.*` and the measure.
    """

    estimator: str = "unbiased"  # unbiased (minibatch HSIC) | biased (full set)
    repeats: int = 1
    tail: str = "fold"
    gram_dtype: str = "float32"
    null: int = 0  # permutations of the image pairing (two models, unbiased only)
    kernel: Callable = gram  # kernel(x, dtype) -> one batch's float64 Gram
    range: tuple[float, float] = RANGE  # intervals are cut to it
    label: str = "CKA"  # the measure's name in messages and progress bars
    null_key: str = "cka.null"  # the setting that asked for the null, named in messages

    @classmethod
    def of(cls, cfg) -> "Sampling":
        return cls(
            cfg.cka.estimator, cfg.cka.repeats, cfg.cka.tail, cfg.cka.gram_dtype, int(cfg.cka.get("null", 0) or 0)
        )


CHECKPOINT_FORMAT = 3  # runs carry their jackknife replicates and batch weights; older checkpoints are not resumed


def compute(
    ctx, models, layers, stacked: bool | None = None, sampling: Sampling | None = None
) -> tuple[Estimate, dict]:
    """The CKA matrix over `cka.repeats` independent image samples with its jackknife interval, and what was used.

    `sampling` (default: Sampling.of(cfg), the cka.* settings) may swap in a streaming measure's kernel: the same
    minibatch HSIC sums, repeats, jackknife, null, checkpoints and feature cache then give kernel CKA.
    With a cache (sweeps), the reducer's sums and per-batch terms are checkpointed every `cache.checkpoint_every`
    batches and after each repeat; a rerun after a kill continues from there and gives the same numbers.
    """
    cfg, cache = ctx.cfg, ctx.cache
    s = Sampling.of(cfg) if sampling is None else sampling
    permutations = s.null
    state = cache.load_checkpoint() if cache is not None else None
    if state is not None and state.get("format") != CHECKPOINT_FORMAT:
        state = None
    runs = list(state["runs"]) if state else []  # per repeat: matrix, replicates, units, null (tensors)
    # the feature cache's namespaces hash every weight: once per run, not once per repeat
    namespaces = [ctx.features.namespace(m, cfg.dataset) for m in models] if ctx.features is not None else None
    used = list(state["used"]) if state else []

    def reducer_for(r):
        return CKAReducer(
            models,
            layers,
            cfg.tokens,
            s.estimator,
            s.gram_dtype,
            ctx.device,
            stacked,
            permutations,
            (cfg.seed, r),
            s.kernel,
            s.null_key,
        )

    for r in range(len(runs), s.repeats):
        batching, record = ctx.sample(tail=s.tail, repeat=r)
        reducer = reducer_for(r)
        start = 0
        if state and state.get("acc") is not None and state.get("repeat") == r:
            try:
                reducer.acc.load_state_dict(state["acc"])
                start = state["batches_done"]
            except (ValueError, KeyError):  # not resumable (other settings): this repeat starts again
                reducer = reducer_for(r)
        remaining = data.Batching(batching.batches[start:], batching.tail, batching.dropped)
        loader = ctx.loader(models, remaining)

        def checkpoint(done, r=r, start=start):
            resumable = s.estimator == "unbiased"
            if cache is not None and cache.every and resumable and (start + done) % cache.every == 0:
                cache.save_checkpoint(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "repeat": r,
                        "batches_done": start + done,
                        "acc": reducer.acc.state_dict(),
                        "runs": runs,
                        "used": used,
                    }
                )

        name = "cka" if s.label == "CKA" else s.label
        desc = f"{name} repeat {r + 1}/{s.repeats}" if s.repeats > 1 else name
        features = (
            FeatureSource(cache=ctx.features, namespaces=namespaces, batches=remaining.batches)
            if namespaces is not None
            else None
        )
        stream(
            models, layers, loader, reducer, ctx.device, desc, ctx.progress, after_batch=checkpoint, features=features
        )
        matrix = reducer.result()
        if reducer.within:
            names = [f"{m.key}:{l.name}" if len(models) > 1 else l.name for m, ls in zip(models, layers) for l in ls]
            check(matrix, names, names, s.label)
        else:
            check(matrix, [l.name for l in layers[0]], [l.name for l in layers[1]], s.label)
        reps, null = reducer.replicates(), reducer.null()
        runs.append(
            {
                "matrix": torch.from_numpy(matrix),
                "units": torch.from_numpy(uncertainty.unit_ids(batching.batches)),
                "replicates": None if reps is None else torch.from_numpy(reps),
                "null": None if null is None else torch.from_numpy(null),
            }
        )
        used.append({**record, "resumed_at_batch": start})
        if cache is not None:
            cache.save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "repeat": r + 1,
                    "batches_done": 0,
                    "acc": None,
                    "runs": runs,
                    "used": used,
                }
            )

    def arrays(key):
        return [None if run[key] is None else run[key].numpy() for run in runs]

    est = Estimate.from_runs(arrays("matrix"), arrays("replicates"), arrays("units"), arrays("null"), s.range)
    return est, {"repeats": used}


def table(est: Estimate, mx, my, lx: list[Layer], ly: list[Layer], cfg, images: int) -> pd.DataFrame:
    """Tidy long form: one row per layer pair, with the jackknife interval (and the permutation null)."""
    ix, iy = np.meshgrid(np.arange(len(lx)), np.arange(len(ly)), indexing="ij")
    ix, iy = ix.ravel(), iy.ravel()
    extra = est.columns()
    null = {k: extra.pop(k) for k in ("cka_chance", "cka_p", "null_permutations") if k in extra}
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
            "cka": est.mean.ravel(),
            "cka_std": est.std.ravel(),
            **extra,
            "repeats": cfg.cka.repeats,
            "estimator": cfg.cka.estimator,
            "tokens": cfg.tokens,
            "num_images": images,
            "batch_size": cfg.dataset.batch_size,
            "dataset": cfg.dataset.name,
            **null,
            "uncertainty": est.method,
        }
    )


def heatmap(est: Estimate, xlabel: str, ylabel: str, title: str, **style):
    """The CKA heatmap with a panel of 95% interval widths; with a null, cells indistinguishable from chance marked.
    `style`: label, vmin, vmax of another measure (plots.cka.cka_heatmap)."""
    chance = None
    if est.null is not None:
        chance = uncertainty.permutation_pvalue(est.mean, est.null) > CHANCE_ALPHA
    width = est.high - est.low if est.method != "none" else None
    return plots_cka.cka_heatmap(est.mean, xlabel, ylabel, title, width=width, chance=chance, **style)


CHANCE_ALPHA = 0.05  # cells with permutation p above this are marked as indistinguishable from chance


def _run(ctx, within: bool) -> Result:
    cfg = ctx.cfg
    models = [ctx.models["model"]] if within else [ctx.models["model"], ctx.models["reference"]]
    layers = [ctx.layers(m) for m in models]
    est, info = compute(ctx, models, layers)
    mx, my = models[0], models[-1]
    lx, ly = layers[0], layers[-1]
    images = info["repeats"][0]["images"]
    name = "cka_within" if within else "cka_across"
    df = table(est, mx, my, lx, ly, cfg, images)
    estimator = "minibatch unbiased" if cfg.cka.estimator == "unbiased" else "full-set biased"
    nx, ny = model_label(mx.label, mx.weights), model_label(my.label, my.weights)  # "(random init)" when untrained
    title = f"CKA within {nx}" if within else f"CKA: {nx} vs {ny}"
    subtitle = f"{estimator}, tokens={cfg.tokens}, {images} images x {cfg.cka.repeats}"
    fig = heatmap(est, f"{nx} layer", f"{ny} layer", f"{title}\n{subtitle}")
    result = Result(
        tables={name: df},
        figures={name: fig},
        info={
            "layers": {m.key: [l.name for l in ls] for m, ls in zip(models, layers)},
            "uncertainty": {name: est.info()},
        },
        images=info["repeats"],
        replicates={name: est.replicate_record()} if est.replicates is not None else {},
    )
    if not within and ctx.params.diagonal:
        diag = diagonal(df, len(lx), len(ly))
        result.tables["cka_diagonal"] = diag
        result.figures["cka_diagonal"] = plots_cka.cka_diagonal_curve(diag, f"{mx.weights} vs {my.weights}", subtitle)
    return result


def diagonal(df: pd.DataFrame, nx: int, ny: int) -> pd.DataFrame:
    """Layer i of one model against layer i of the other (Raghu et al. Fig. 12, App. G): same architecture only."""
    if nx != ny:
        raise VitstudyError(
            f"analysis.diagonal=true pairs layer i with layer i, but the models have {nx} and {ny} layers; "
            "use two models of one architecture (e.g. two pretrained tags) and the same layers"
        )
    diag = df[df.index_x == df.index_y].reset_index(drop=True).copy()
    diag["depth"] = diag.index_x / max(nx - 1, 1)
    return diag


@register(
    "cka_within", "CKA between every pair of layers of one model (Raghu et al. 2021, Fig. 1); settings under cka.*"
)
def cka_within(ctx) -> Result:
    return _run(ctx, within=True)


@dataclass
class CKAAcross(Params):
    diagonal: bool = (
        False  # also write cka_diagonal.csv/.png: layer i vs layer i of two models of one architecture (Fig. 12)
    )


@register(
    "cka_across",
    "CKA between every layer of `model` and every layer of `reference` (Raghu et al. 2021, Fig. 2)",
    CKAAcross,
    models=("model", "reference"),
)
def cka_across(ctx) -> Result:
    return _run(ctx, within=False)
