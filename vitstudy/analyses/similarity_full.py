"""The full-set path of the similarity analyses (issue 21): measures that need every image at once.

`compute` has the contract of `cka.compute` (an Estimate of the (L, M) value matrix and the image samples used) for
a measure's full-set form (`prepare`/`compare`, vitstudy.measures), with two estimators (docs/measures_fullset.md):

- full_set: one stream fills a bounded on-disk feature store (pipeline.store); then every layer pair's
  `compare(prepare(x), prepare(y))` over all images, `analysis.groups` delete-a-group jackknife replicates (groups of
  whole, contiguous batches) and `analysis.null` permutations of the image pairing (the y side's rows);
- batch_mean: the measure on each batch alone, the mean over batches weighted by batch size, and its
  delete-one-batch jackknife; nothing but one batch's features is ever held.

Repeats and the tail come from `cka.*` as in cka.compute; checkpoints (with a cache) let a killed run continue
and give the same numbers. The similarity analyses (similarity.py) call it; it registers no analysis itself.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import VitstudyError
from ..metrics import uncertainty
from ..pipeline import data
from ..pipeline.engine import FeatureSource, Reducer, stream
from ..pipeline.layers import Layer, features
from ..pipeline.store import FeatureStore
from .cka import Estimate

FORMAT = 1  # checkpoint layout; other checkpoints are not resumed
KIND = "similarity_full"
ESTIMATORS = ("full_set", "batch_mean")
PREPARED_BUDGET = 2 * 2**30  # bytes of prepared layers kept for reuse while a matrix is computed (the rest re-prepared)
TOLERANCE = 1e-6  # a value may leave the measure's declared range by rounding only
BATCH_WEIGHTS = "batch size: every image counts once (the folded tail batch is larger than the others)"

Key = tuple[int, str]  # (model index, layer name)


@dataclass
class Pairs:
    """The rows (x, predicting) and columns (y) of the value matrix; within: one list of every model's layers."""

    x: list[Key]
    y: list[Key]
    names: dict[Key, str]
    within: bool


def pairs_of(models, layers, stacked: bool | None) -> Pairs:
    within = len(models) != 2 if stacked is None else stacked
    keys = [[(i, layer.name) for layer in ls] for i, ls in enumerate(layers)]
    names = {
        (i, layer.name): (f"{m.key}:{layer.name}" if len(models) > 1 else layer.name)
        for i, (m, ls) in enumerate(zip(models, layers))
        for layer in ls
    }
    if within:
        flat = [k for ks in keys for k in ks]
        return Pairs(flat, flat, names, True)
    return Pairs(keys[0], keys[1], names, False)


def nbytes(obj: Any) -> int:
    """Memory held by a prepared object: arrays and tensors in it (containers and dataclasses searched)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(nbytes(o) for o in obj.values())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 64


class Prepared:
    """Prepared layers by key, least recently used dropped beyond `budget` bytes; `made` counts prepare calls."""

    def __init__(self, budget: int = PREPARED_BUDGET):
        self.budget, self.items, self.sizes, self.total, self.made = budget, OrderedDict(), {}, 0, 0

    def get(self, key, make: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        obj = make()
        self.made += 1
        size = nbytes(obj)
        if size <= self.budget:
            while self.items and self.total + size > self.budget:
                old, _ = self.items.popitem(last=False)
                self.total -= self.sizes.pop(old)
            self.items[key], self.sizes[key] = obj, size
            self.total += size
        return obj


def _reason(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _prepare(measure, x: np.ndarray, name: str) -> Any:
    if len(x) > 1 and (x == x[:1]).all():
        raise VitstudyError(
            f"layer '{name}' gives the same features for every image (e.g. the CLS token before the "
            f"first attention), so {measure.name} is undefined: drop it from the layers"
        )
    try:
        return measure.prepare(x)
    except VitstudyError:
        raise
    except (ValueError, ArithmeticError, IndexError, np.linalg.LinAlgError) as err:
        raise VitstudyError(
            f"{measure.name} cannot use layer '{name}' ({x.shape[0]} images x {x.shape[1]} features): "
            f"{_reason(err)}; use more images (dataset.num_images) or other measure parameters"
        ) from None


def _compare(measure, px, py, name_x: str, name_y: str, n: int) -> float:
    try:
        value = float(measure.compare(px, py))
    except VitstudyError:
        raise
    except (ValueError, ArithmeticError, IndexError, np.linalg.LinAlgError) as err:
        raise VitstudyError(
            f"{measure.name} of layer '{name_x}' vs '{name_y}' failed on {n} images: {_reason(err)}; "
            "use more images (dataset.num_images) or other measure parameters"
        ) from None
    lo, hi = measure.range
    if not np.isfinite(value) or value < lo - TOLERANCE or value > hi + TOLERANCE:
        raise VitstudyError(
            f"{measure.name} of layer '{name_x}' vs '{name_y}' is {value:.6g} on {n} images, outside "
            f"its range [{lo}, {hi}]: a layer may give (nearly) the same features for every image; "
            "drop it from the layers"
        )
    return value


def matrix(
    read: Callable[[Key], np.ndarray],
    pairs: Pairs,
    measure,
    perm: np.ndarray | None = None,
    budget: int = PREPARED_BUDGET,
) -> np.ndarray:
    """The (L, M) values compare(prepare(x_i), prepare(y_j)) over one image set (`read` gives a layer's rows).

    `perm` permutes the rows of every y layer (the permutation null). Columns outer: each y layer is prepared
    once; the x side's prepared layers are kept within `budget` bytes. Within one model and a symmetric measure,
    only i <= j is computed and mirrored; asymmetric measures get (i, j) and (j, i) separately.
    """
    cache = Prepared(budget)
    out = np.full((len(pairs.x), len(pairs.y)), np.nan)
    mirror = pairs.within and measure.symmetric and perm is None
    n = None

    def prepared(key):
        nonlocal n

        def make():
            nonlocal n
            x = read(key)
            n = len(x)
            return _prepare(measure, x, pairs.names[key])

        return cache.get(key, make)

    for j, ky in enumerate(pairs.y):
        if perm is None:
            py = prepared(ky)
        else:
            y = read(ky)
            n = len(y)
            py = _prepare(measure, y[perm], pairs.names[ky])
        for i, kx in enumerate(pairs.x):
            if mirror and i > j:
                continue
            out[i, j] = _compare(measure, prepared(kx), py, pairs.names[kx], pairs.names[ky], n)
    if mirror:
        iu = np.triu_indices(len(pairs.x), 1)
        out[iu[1], iu[0]] = out[iu]
    return out


def check_images(measure, n: int, where: str, fix: str) -> None:
    """Fail in one line when the smallest image set a value is computed on is too small for the measure."""
    k = getattr(measure, "k", None)
    if isinstance(k, int) and not isinstance(k, bool) and k >= n:
        raise VitstudyError(
            f"{measure.name} with k={k} needs more than k images in every set it is computed on, but "
            f"{where} has {n}: use a smaller analysis.k or {fix}"
        )
    if n < 3:
        raise VitstudyError(f"{measure.name} needs at least 3 images, but {where} has {n}: {fix}")


def _group_index(batches: int, groups: int) -> list[np.ndarray]:
    """min(groups, batches) groups of contiguous batch numbers, as equal in size as they can be."""
    return np.array_split(np.arange(batches), min(groups, batches))


def groups_of(batches: list[list[int]], groups: int) -> list[np.ndarray]:
    """The jackknife groups of whole, contiguous batches, each as its rows in the store (rows in batch order)."""
    starts = np.cumsum([0] + [len(b) for b in batches])
    return [np.arange(starts[g[0]], starts[g[-1] + 1]) for g in _group_index(len(batches), groups)]


def _params(params) -> tuple[str, int, int, str]:
    estimator = getattr(params, "estimator", "full_set") or "full_set"
    estimator = "full_set" if estimator == "auto" else estimator
    if estimator not in ESTIMATORS:
        raise VitstudyError(
            f"the full-set path computes analysis.estimator={' or '.join(ESTIMATORS)}; got {estimator!r} "
            "(minibatch is the streaming kernel path)"
        )
    null, groups = int(getattr(params, "null", 0) or 0), int(getattr(params, "groups", 10))
    dtype = getattr(params, "store_dtype", "float32")
    if null < 0:
        raise VitstudyError(f"analysis.null must be 0 (off) or a number of permutations, got {null}")
    if groups < 2:
        raise VitstudyError(f"analysis.groups must be at least 2 (jackknife groups), got {groups}")
    return estimator, null, groups, dtype


def compute(
    ctx, models, layers: list[list[Layer]], measure, params, stacked: bool | None = None
) -> tuple[Estimate, dict]:
    """The measure's value matrix over `cka.repeats` image samples with its jackknife interval (and null).

    Same contract as cka.compute: within one model (or stacked: every model's layers) L x L, else model x
    reference; (i, j) is layer i predicting layer j for asymmetric measures. With a cache the run checkpoints
    (fill: every `cache.checkpoint_every` batches; pairs: every that many matrices; each repeat) and resumes.
    """
    cfg, cache = ctx.cfg, ctx.cache
    estimator, permutations, groups, dtype = _params(params)
    pairs = pairs_of(models, layers, stacked)
    state = cache.load_checkpoint() if cache is not None else None
    if state is not None and (
        state.get("format") != FORMAT or state.get("kind") != KIND or state.get("estimator") != estimator
    ):
        state = None
    runs = list(state["runs"]) if state else []
    used = list(state["used"]) if state else []
    namespaces = [ctx.features.namespace(m, cfg.dataset) for m in models] if ctx.features is not None else None
    info: dict[str, Any] = {"estimator": estimator}
    for r in range(len(runs), cfg.cka.repeats):
        batching, record = ctx.sample(tail=cfg.cka.tail, repeat=r)
        resume = state if state and state.get("repeat") == r else None

        def save(extra, r=r):
            cache.save_checkpoint(
                {
                    "format": FORMAT,
                    "kind": KIND,
                    "estimator": estimator,
                    "repeat": r,
                    "runs": runs,
                    "used": used,
                    **extra,
                }
            )

        def feats(batches):
            return (
                FeatureSource(cache=ctx.features, namespaces=namespaces, batches=batches)
                if namespaces is not None
                else None
            )

        desc = f"{measure.name} repeat {r + 1}/{cfg.cka.repeats}" if cfg.cka.repeats > 1 else measure.name
        if estimator == "full_set":
            run, start, extra = _full_set(
                ctx,
                models,
                layers,
                pairs,
                measure,
                batching,
                (cfg.seed, r),
                groups,
                permutations,
                dtype,
                resume,
                save,
                feats,
                desc,
            )
        else:
            run, start, extra = _batch_mean(
                ctx, models, layers, pairs, measure, batching, (cfg.seed, r), permutations, resume, save, feats, desc
            )
        info.update(extra)
        runs.append({**run, "units": torch.from_numpy(run["units"])})
        used.append({**record, "resumed_at_batch": start})
        state = None
        if cache is not None:
            save({"repeat": r + 1, "batches_done": 0}, r=r + 1)

    def arrays(key):
        return [None if run[key] is None else np.asarray(run[key], dtype=np.float64) for run in runs]

    est = Estimate.from_runs(
        arrays("matrix"),
        arrays("replicates"),
        [np.asarray(run["units"]) for run in runs],
        arrays("null"),
        range=tuple(measure.range),
    )  # intervals cut to this measure's range
    info.update(interval_range=list(measure.range), null_permutations=permutations)
    return est, {"repeats": used, **info}


# ------------------------------------------------------------------ full set


def _store_root(cache) -> Path | None:
    return None if cache is None else Path(cache.root) / "store" / cache.key


def _full_set(
    ctx, models, layers, pairs, measure, batching, keys, groups, permutations, dtype, resume, save, feats, desc
):
    """One repeat on the whole image set: fill the store, then the value, group replicates and null matrices."""
    cfg, cache = ctx.cfg, ctx.cache
    store, start, parts = None, 0, []
    if resume is not None and resume.get("store"):
        store = FeatureStore.reopen(resume["store"], models, layers, cfg.tokens)
        if store is not None:
            start, parts = int(resume["batches_done"]), list(resume.get("parts") or [])
    root = _store_root(cache)
    if store is None:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)  # a killed run's store that cannot be continued
        store = FeatureStore(models, layers, cfg.tokens, root, dtype)
    every = cache.every if cache is not None else 0
    ok = False
    try:
        remaining = data.Batching(batching.batches[start:], batching.tail, batching.dropped)

        def checkpoint(done):
            if every and (start + done) % every == 0:
                save({"batches_done": start + done, "store": store.state(), "parts": []})

        if remaining.batches:
            stream(
                models,
                layers,
                ctx.loader(models, remaining),
                store,
                ctx.device,
                desc,
                ctx.progress,
                after_batch=checkpoint,
                features=feats(remaining.batches),
            )
        n, nbatches = store.rows, len(batching.batches)
        held = groups_of(batching.batches, groups)
        if len(held) > 1:
            check_images(
                measure,
                n - max(len(g) for g in held),
                "the image set less its largest jackknife group",
                "more images (dataset.num_images) or more analysis.groups",
            )
        else:
            check_images(measure, n, "the image set", "more images (dataset.num_images)")
        outside = [np.setdiff1d(np.arange(n), g) for g in held] if len(held) > 1 else []
        perms = [np.random.default_rng(uncertainty.null_seed(*keys, k)).permutation(n) for k in range(permutations)]
        tasks = [(None, None)] + [(rows, None) for rows in outside] + [(None, p) for p in perms]
        for t in range(len(parts), len(tasks)):
            rows, perm = tasks[t]
            parts.append(torch.from_numpy(matrix(lambda key: store.read(key, rows), pairs, measure, perm)))
            if every and (t + 1) % every == 0 and t + 1 < len(tasks):
                save({"batches_done": nbatches, "store": store.state(), "parts": parts})
        ok = True
        stored = store.nbytes()
    except VitstudyError:  # bad input: nothing to continue
        ok = True
        raise
    finally:
        if ok or cache is None:  # a killed or crashed run's store stays for the rerun to continue (with a cache)
            store.close()
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)
    reps = torch.stack(parts[1 : 1 + len(outside)]) if outside else None
    null = torch.stack(parts[1 + len(outside) :]) if permutations else None
    run = {
        "matrix": parts[0],
        "replicates": reps,
        "null": null,
        "units": uncertainty.unit_ids(
            [
                [i for b in g for i in batching.batches[b]]  # each deleted group's images
                for g in _group_index(nbatches, groups)
            ]
        ),
    }
    extra = {"groups": len(held), "store_dtype": dtype, "store_bytes": stored}
    return run, start, extra


# ------------------------------------------------------------------ batch mean


class BatchMeanReducer(Reducer):
    """Per batch: the measure's value matrix on that batch's images alone (and its K permuted ones); one batch held."""

    def __init__(
        self, models, pairs: Pairs, tokens: str, measure, permutations: int = 0, null_keys: tuple[int, ...] = (0, 0)
    ):
        self.modules, self.pairs, self.tokens, self.measure = [m.module for m in models], pairs, tokens, measure
        self.permutations, self.null_keys = permutations, tuple(null_keys)
        self.buffer: dict[Key, np.ndarray] = {}
        self.values: list[torch.Tensor] = []
        self.weights: list[int] = []
        self.nulls: list[torch.Tensor] = []

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        x = features(tensor, layer, self.tokens, self.modules[model_index])
        self.buffer[(model_index, layer.name)] = (
            x.detach().to("cpu", torch.float64, copy=True).reshape(len(x), -1).numpy()
        )

    def end_batch(self, labels, outputs) -> None:
        n, b = len(labels), len(self.values)
        check_images(self.measure, n, f"batch {b + 1}", "a larger dataset.batch_size")
        self.values.append(torch.from_numpy(matrix(self.buffer.__getitem__, self.pairs, self.measure)))
        if self.permutations:  # seeded by (seed, repeat, batch): a resumed run draws the same
            g = np.random.default_rng(uncertainty.null_seed(*self.null_keys, b))
            self.nulls.append(
                torch.from_numpy(
                    np.stack(
                        [
                            matrix(self.buffer.__getitem__, self.pairs, self.measure, g.permutation(n))
                            for _ in range(self.permutations)
                        ]
                    )
                )
            )
        self.weights.append(n)
        self.buffer = {}

    def state(self) -> dict:
        return {"values": list(self.values), "weights": list(self.weights), "nulls": list(self.nulls)}


def batch_mean(values: np.ndarray, weights: np.ndarray, nulls: np.ndarray | None = None):
    """(mean, delete-one-batch replicates or None, null mean or None) of per-batch (B, L, M) values weighted by size."""
    w = np.asarray(weights, dtype=np.float64)
    total = np.tensordot(w, values, axes=1)
    mean = total / w.sum()
    reps = None
    if len(w) > 1:
        reps = np.stack([(total - w[b] * values[b]) / (w.sum() - w[b]) for b in range(len(w))])
    null = None if nulls is None else np.tensordot(w, nulls, axes=1) / w.sum()
    return mean, reps, null


def _batch_mean(ctx, models, layers, pairs, measure, batching, keys, permutations, resume, save, feats, desc):
    cfg, cache = ctx.cfg, ctx.cache
    start = int(resume["batches_done"]) if resume is not None and resume.get("values") is not None else 0
    reducer = BatchMeanReducer(models, pairs, cfg.tokens, measure, permutations, keys)
    if start:  # the batches before the checkpoint (the reducer numbers batches by how many it holds)
        reducer.values, reducer.weights, reducer.nulls = (
            list(resume["values"]),
            list(resume["weights"]),
            list(resume["nulls"]),
        )
    every = cache.every if cache is not None else 0
    remaining = data.Batching(batching.batches[start:], batching.tail, batching.dropped)

    def checkpoint(done):
        if every and (start + done) % every == 0:
            save({"batches_done": start + done, **reducer.state()})

    stream(
        models,
        layers,
        ctx.loader(models, remaining),
        reducer,
        ctx.device,
        desc,
        ctx.progress,
        after_batch=checkpoint,
        features=feats(remaining.batches),
    )
    values = torch.stack(reducer.values).numpy()
    nulls = torch.stack(reducer.nulls).numpy() if permutations else None  # (B, K, L, M)
    mean, reps, null = batch_mean(values, np.asarray(reducer.weights), nulls)
    run = {
        "matrix": torch.from_numpy(mean),
        "replicates": None if reps is None else torch.from_numpy(reps),
        "null": None if null is None else torch.from_numpy(null),
        "units": uncertainty.unit_ids(batching.batches),
    }
    return run, start, {"batches": len(batching.batches), "batch_weights": BATCH_WEIGHTS}
