"""The full-set path of the similarity analyses (issue 21): feature store, value matrix, delete-a-group jackknife,
permutation null, batch_mean, resume and errors.

A test-only analysis calls `similarity_full.compute` through the real runner on tiny random-init timm models and
synthetic 32 px images. Every number is held against features taken here with plain torch forward hooks and the
measures written out in float64 numpy (Procrustes: nuclear norm; linear CKA: biased HSIC ratio), never against
the engine's own output.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

import vitstudy
from helpers import SMALL_DATA, TINY_VIT, assert_one_line_error
from vitstudy.analyses import Result, register
from vitstudy.analyses import similarity_full as sf
from vitstudy.analyses._registry import Params
from vitstudy.api import compose
from vitstudy.errors import VitstudyError
from vitstudy.measures import Measure, get
from vitstudy.metrics import uncertainty as U
from vitstudy.pipeline import runner
from vitstudy.pipeline.engine import stream
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel
from vitstudy.pipeline.store import FeatureStore

# ------------------------------------------------------------------ test-only measures and analysis


@dataclass(frozen=True, kw_only=True)
class PCR2(Measure):
    """Asymmetric: the share of y's per-image mean feature explained by x's top two principal components (R²)."""

    name = "pc_r2"
    label = "R² of y's mean feature on x's top 2 PCs"
    summary = "test only"
    citation = "test only"
    range = (0.0, 1.0)
    invariances = ()
    symmetric = False

    def prepare(self, x):
        return x - x.mean(axis=0)

    def compare(self, px, py):
        u = np.linalg.svd(px, full_matrices=False)[0][:, :2]
        t = py.mean(axis=1)
        return float(np.sum((u.T @ t) ** 2) / np.sum(t**2))


@dataclass(frozen=True, kw_only=True)
class Neighbours(Measure):
    """Test only: a measure with a neighbour count `k` (as mutual_knn), to check the too-few-images error."""

    name = "neighbours"
    label = summary = citation = "test only"
    range = (0.0, 1.0)
    invariances = ()
    k: int = 10

    def compare(self, px, py):
        return 0.5


# a small real ResNet (4 blocks) with its last BN of each block nonzero, so no two blocks are equal
TINY_RESNET = [
    "reference.name=resnet10t",
    "reference.pretrained=false",
    "reference.data.input_size=[3,32,32]",
    "+reference.kwargs.zero_init_last=false",
]
TEST_MEASURES = {"pc_r2": PCR2(), "neighbours": Neighbours(k=30)}
LAST: dict = {}


@dataclass
class FullParams(Params):
    measure: str = "procrustes"
    estimator: str = "full_set"
    null: int = 0
    groups: int = 10
    store_dtype: str = "float32"
    across: bool = False


def _models(cfg):
    return {"model": cfg.model, "reference": cfg.reference} if cfg.analysis.across else {"model": cfg.model}


def _analysis(ctx) -> Result:
    p = ctx.params
    models = [ctx.models["model"]] + ([ctx.models["reference"]] if p.across else [])
    layers = [ctx.layers(m) for m in models]
    measure = TEST_MEASURES.get(p.measure) or get(p.measure)
    est, info = sf.compute(ctx, models, layers, measure, p)
    LAST.update(est=est, info=info)
    return Result(
        tables={"test_similarity_full": pd.DataFrame({"value": est.mean.ravel(), "value_se": est.se.ravel()})},
        images=info["repeats"],
    )


@pytest.fixture(autouse=True, scope="module")
def registered_analysis():
    """The test-only analysis exists only while this module's tests run (other tests list every registered one)."""
    from hydra.core.config_store import ConfigStore

    from vitstudy.analyses._registry import REGISTRY

    register(
        "test_similarity_full", "test only: similarity_full.compute through the runner", FullParams, models=_models
    )(_analysis)
    yield
    REGISTRY.pop("test_similarity_full", None)
    ConfigStore.instance().repo["analysis"].pop("test_similarity_full.yaml", None)


def run(tmp_path, *extra, name="run"):
    LAST.clear()
    vitstudy.run(
        [
            "analysis=test_similarity_full",
            *TINY_VIT,
            *TINY_RESNET,
            *SMALL_DATA,
            "tokens=mean",
            f"cache.dir={tmp_path / 'cache'}",
            *extra,
        ],
        out_dir=tmp_path / name,
        progress=False,
    )
    return LAST["est"], LAST["info"]


# ------------------------------------------------------------------ independent references


@functools.lru_cache(maxsize=8)
def _by_hand(extra: tuple, repeat: int) -> tuple[dict, list]:
    cfg = compose(["analysis=test_similarity_full", *TINY_VIT, *TINY_RESNET, *SMALL_DATA, "tokens=mean", *extra])
    ctx = runner.prepare(cfg, progress=False)
    batching, _ = ctx.sample(tail=cfg.cka.tail, repeat=repeat)
    order = [i for b in batching.batches for i in b]
    out = {}
    for key, m in ctx.models.items():
        captured = {}
        handles = [
            m.module.get_submodule(layer.name).register_forward_hook(
                lambda mod, args, o, name=layer.name: captured.__setitem__(name, o.detach().clone())
            )
            for layer in ctx.layers(m)
        ]
        x = torch.stack([m.transform(ctx.dataset[i][0]) for i in order])
        with torch.no_grad():
            m.module(x)
        for h in handles:
            h.remove()
        for layer in ctx.layers(m):
            t = captured[layer.name].double()
            out[(key, layer.name)] = (t[:, 1:].mean(1) if t.ndim == 3 else t.mean((2, 3))).numpy()  # CLS excluded
    return out, batching.batches


def by_hand(tmp_path, *extra, repeat=0) -> tuple[dict, list]:
    """Every layer's token-mean features of the run's images (images.csv order) from plain forward hooks, float64."""
    return _by_hand(tuple(extra), repeat)


def procrustes(x, y):
    def unit(a):
        a = a - a.mean(0)
        return a / np.linalg.norm(a)

    return np.linalg.svd(unit(x).T @ unit(y), compute_uv=False).sum()


def linear_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def expected(feats, xs, ys, fn, rows=None, perm=None):
    rows = slice(None) if rows is None else rows
    out = np.empty((len(xs), len(ys)))
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            y = feats[b][rows]
            out[i, j] = fn(feats[a][rows], y if perm is None else y[perm])
    return out


def keys(feats, model):
    return [k for k in feats if k[0] == model]


# ------------------------------------------------------------------ tests


def test_within_values_and_group_jackknife_equal_numpy_leave_group_out(tmp_path):
    """40 images in 5 batches of 8, 3 groups of 2, 2 and 1 batches: the value matrix is Procrustes on the hand
    features; replicate g is Procrustes without group g's images; units are the groups' image ids."""
    extra = ["dataset.num_images=40", "analysis.groups=3"]
    est, info = run(tmp_path, *extra)
    feats, batches = by_hand(tmp_path, *extra)
    xs = keys(feats, "model")
    np.testing.assert_allclose(est.mean, expected(feats, xs, xs, procrustes), atol=2e-6)
    groups = [batches[0] + batches[1], batches[2] + batches[3], batches[4]]
    starts = [0, 16, 32, 40]
    reps = [expected(feats, xs, xs, procrustes, np.r_[0 : starts[g], starts[g + 1] : 40]) for g in range(3)]
    np.testing.assert_allclose(est.replicates, reps, atol=2e-6)
    np.testing.assert_array_equal(est.units, U.unit_ids(groups))
    r = np.asarray(reps)
    se = np.sqrt(2 / 3 * ((r - r.mean(0)) ** 2).sum(0))
    np.testing.assert_allclose(est.se, se, atol=1e-7)
    assert est.df == 2 and est.method == "jackknife_batches" and info["groups"] == 3 and info["estimator"] == "full_set"
    assert info["repeats"][0]["images"] == 40


def test_across_linear_cka_and_an_asymmetric_measure_keep_the_direction(tmp_path):
    """ViT x ResNet: linear CKA's full-set form is the biased HSIC ratio; the asymmetric R² entry (i, j) is ViT
    layer i predicting ResNet layer j, and within one model both directions are computed separately."""
    feats, _ = by_hand(tmp_path, "analysis.across=true")
    xs, ys = keys(feats, "model"), keys(feats, "reference")
    est, _ = run(tmp_path, "analysis.across=true", "analysis.measure=cka", "analysis.groups=2", name="cka")
    np.testing.assert_allclose(est.mean, expected(feats, xs, ys, linear_cka), atol=2e-6)
    r2 = TEST_MEASURES["pc_r2"]
    est, _ = run(tmp_path, "analysis.across=true", "analysis.measure=pc_r2", name="r2")
    np.testing.assert_allclose(est.mean, expected(feats, xs, ys, r2.value), atol=2e-6)
    est, _ = run(tmp_path, "analysis.measure=pc_r2", name="r2within")
    want = expected(feats, xs, xs, r2.value)
    np.testing.assert_allclose(est.mean, want, atol=2e-6)
    assert np.abs(want - want.T).max() > 0.05  # the direction matters


def test_null_permutes_the_pairing_with_seeded_draws(tmp_path):
    """null=4: entry k is the measure with the y rows permuted by default_rng(null_seed(seed, repeat, k)); p-values
    follow (1 + #null >= observed) / (K + 1); the draws depend only on (seed, repeat, k), so a resume draws the same."""
    extra = ["analysis.across=true", "analysis.null=4", "analysis.groups=2"]
    est, info = run(tmp_path, *extra)
    feats, _ = by_hand(tmp_path, "analysis.across=true")
    xs, ys = keys(feats, "model"), keys(feats, "reference")
    assert est.null.shape == (4, 3, 4) and info["null_permutations"] == 4
    for k in range(4):
        perm = np.random.default_rng(U.null_seed(0, 0, k)).permutation(24)
        np.testing.assert_allclose(est.null[k], expected(feats, xs, ys, procrustes, perm=perm), atol=2e-6)
    p = U.permutation_pvalue(est.mean, est.null)
    assert p.shape == (3, 4) and set(np.unique(p)) <= {0.2, 0.4, 0.6, 0.8, 1.0}


def test_batch_mean_is_the_size_weighted_mean_with_a_delete_one_batch_jackknife(tmp_path):
    """26 images in batches of 8: the 2-image tail folds (8, 8, 10); the mean over batches weights each by its size,
    and so does the null (the rows of each batch permuted within it)."""
    extra = ["dataset.num_images=26", "analysis.estimator=batch_mean"]
    est, info = run(tmp_path, *extra, "analysis.null=2")
    feats, batches = by_hand(tmp_path, *extra)
    assert [len(b) for b in batches] == [8, 8, 10]
    xs = keys(feats, "model")
    bounds = [(0, 8), (8, 16), (16, 26)]
    per = np.stack([expected(feats, xs, xs, procrustes, slice(a, b)) for a, b in bounds])
    w = np.array([8.0, 8.0, 10.0])
    np.testing.assert_allclose(est.mean, (w[:, None, None] * per).sum(0) / 26, atol=2e-6)
    reps = [np.delete(w, b) @ np.delete(per, b, axis=0).reshape(2, -1) / (26 - w[b]) for b in range(3)]
    np.testing.assert_allclose(est.replicates.reshape(3, -1), reps, atol=2e-6)
    np.testing.assert_array_equal(est.units, U.unit_ids(batches))
    assert info["estimator"] == "batch_mean"
    null = np.zeros((2, 3, 3))  # per batch b: 2 permutations of its rows from default_rng(null_seed(seed, repeat, b))
    for b, (lo, hi) in enumerate(bounds):
        g = np.random.default_rng(U.null_seed(0, 0, b))
        for k in range(2):
            null[k] += w[b] / 26 * expected(feats, xs, xs, procrustes, slice(lo, hi), g.permutation(hi - lo))
    np.testing.assert_allclose(est.null, null, atol=2e-6)


WHOLE: dict = {}


@pytest.mark.parametrize("stage", ["fill", "pairs", "batch_mean"])
def test_a_run_killed_mid_way_continues_and_gives_the_same_numbers(tmp_path, monkeypatch, stage):
    """cache.checkpoint_every=1; the run raises during the store's fill (3rd batch), the pairs (5th matrix) or a
    batch_mean run (3rd batch); the rerun continues from the checkpoint and equals an uninterrupted run bit for bit."""
    extra = ["dataset.num_images=40", "analysis.groups=4", "analysis.null=2", "cache.checkpoint_every=1"]
    if stage == "batch_mean":
        extra.append("analysis.estimator=batch_mean")
    if stage not in WHOLE:  # an uninterrupted run (fill and pairs share it)
        WHOLE[stage] = WHOLE.get("fill") if stage == "pairs" else None
        WHOLE[stage] = WHOLE[stage] or run(tmp_path / "whole", *extra)[0]
    whole = WHOLE[stage]
    calls = {"n": 0}

    def failing(original, at):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at:
                raise RuntimeError("killed")
            return original(*args, **kwargs)

        return wrapped

    if stage == "fill":
        monkeypatch.setattr(FeatureStore, "end_batch", failing(FeatureStore.end_batch, 3))
    elif stage == "pairs":
        monkeypatch.setattr(sf, "matrix", failing(sf.matrix, 5))
    else:
        monkeypatch.setattr(sf.BatchMeanReducer, "end_batch", failing(sf.BatchMeanReducer.end_batch, 3))
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, *extra, name="killed")
    if stage != "batch_mean":
        assert list((tmp_path / "cache" / "store").rglob("*.bin"))  # the store stays for the rerun
    monkeypatch.undo()
    resumed, info = run(tmp_path, *extra, name="resumed")
    assert info["repeats"][0]["resumed_at_batch"] == (5 if stage == "pairs" else 2)
    for field in ("mean", "se", "replicates", "null"):
        np.testing.assert_array_equal(getattr(resumed, field), getattr(whole, field))
    assert not list((tmp_path / "cache" / "store").rglob("*.bin"))  # a finished run removes its store


def test_float16_store_is_within_its_rounding(tmp_path):
    est32, _ = run(tmp_path, "analysis.groups=3")
    est16, info = run(tmp_path, "analysis.groups=3", "analysis.store_dtype=float16", name="f16")
    assert info["store_dtype"] == "float16"
    assert 0 < np.abs(est16.mean - est32.mean).max() < 2e-3
    np.testing.assert_allclose(est16.se, est32.se, atol=2e-3)


def test_the_store_keeps_nothing_per_image_in_memory(tmp_path, tiny_vit):
    """After a stream the reducer holds file names and counts only; each layer's file is images x features x 2 bytes."""
    m = LoadedModel(
        key="model",
        name="vit",
        label="vit",
        module=tiny_vit,
        transform=None,
        data_config={"input_size": (3, 32, 32)},
        weights="random-init",
    )
    layers = resolve(tiny_vit, "blocks", (3, 32, 32))
    pictures = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    loader = [([pictures[i : i + 5]], torch.zeros(5)) for i in range(0, 20, 5)]
    store = FeatureStore([m], [layers], "flatten", tmp_path, "float16")
    stream([m], [layers], loader, store, "cpu", progress=False)

    def arrays(obj, seen=()):
        if isinstance(obj, (torch.Tensor, np.ndarray)):
            return [obj]
        if isinstance(obj, dict):
            return [a for v in obj.values() for a in arrays(v)]
        if isinstance(obj, (list, tuple)):
            return [a for v in obj for a in arrays(v)]
        return arrays(vars(obj)) if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)) else []

    assert arrays({k: v for k, v in vars(store).items() if k != "modules"}) == []
    width = 17 * 192  # flatten: CLS + 16 patches x 192 channels
    for e in store.files.values():
        assert e.rows == 20 and e.path.stat().st_size == 20 * width * 2
    with torch.no_grad():
        want = tiny_vit.blocks[1](tiny_vit.blocks[0](tiny_vit._pos_embed(tiny_vit.patch_embed(pictures))))
    np.testing.assert_allclose(store.read((0, "blocks.1")), want.reshape(20, -1).numpy(), rtol=2e-3, atol=2e-3)
    store.close()
    assert not store.folder.exists()


def test_too_few_images_and_constant_layers_are_one_line(tmp_path, capsys):
    """k >= the images of a jackknife replicate (24 less a group of 8): `vitstudy run` prints one line, writes no
    result and leaves no store; a layer with the same features for every image is named."""
    args = [
        "run",
        "analysis=test_similarity_full",
        *TINY_VIT,
        *SMALL_DATA,
        "tokens=mean",
        "analysis.measure=neighbours",
        "analysis.groups=3",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    assert_one_line_error(
        args,
        "neighbours with k=30 needs more than k images in every set it is computed on, but "
        "the image set less its largest jackknife group has 16: use a smaller analysis.k",
        tmp_path / "run",
        capsys,
    )
    assert not list((tmp_path / "cache").rglob("*.bin"))
    pairs = sf.Pairs([(0, "a"), (0, "b")], [(0, "a"), (0, "b")], {(0, "a"): "a", (0, "b"): "blocks.0"}, True)
    feats = {(0, "a"): np.random.default_rng(0).normal(size=(10, 4)), (0, "b"): np.ones((10, 4))}
    with pytest.raises(VitstudyError, match="layer 'blocks.0' gives the same features for every image"):
        sf.matrix(feats.__getitem__, pairs, get("procrustes"))


def test_features_served_from_the_feature_cache_give_the_same_values(tmp_path):
    """cache.features=true: the first run fills the feature cache, the second (force=true) is served from it with no
    forward; both equal a run without the feature cache."""
    import json

    plain, _ = run(tmp_path, "analysis.groups=3", name="plain")
    filled, _ = run(tmp_path, "analysis.groups=3", "cache.features=true", "force=true", name="filled")
    served, _ = run(tmp_path, "analysis.groups=3", "cache.features=true", "force=true", name="served")
    record = json.loads((tmp_path / "served" / "run.json").read_text())["feature_cache"]
    assert record["batches_served"] == 3 and record["batches_computed"] == 0
    for est in (filled, served):
        np.testing.assert_allclose(est.mean, plain.mean, atol=1e-12)
        np.testing.assert_allclose(est.replicates, plain.replicates, atol=1e-12)


def test_each_layer_is_prepared_once_when_the_budget_allows_and_values_do_not_depend_on_it(monkeypatch):
    """Within 4 layers: a budget that holds them all prepares each once (and the symmetric matrix is computed on
    i <= j and mirrored); a budget of nothing re-prepares but gives the same matrix; numbers are numpy Procrustes."""
    r = np.random.default_rng(1)
    feats = {(0, f"l{i}"): r.normal(size=(30, 5 + 20 * i)) for i in range(4)}
    pairs = sf.Pairs(list(feats), list(feats), {k: k[1] for k in feats}, True)
    made = []
    original = sf.Prepared.get

    def counting(self, key, make):
        out = original(self, key, make)
        made.append(self.made)
        return out

    monkeypatch.setattr(sf.Prepared, "get", counting)
    big = sf.matrix(feats.__getitem__, pairs, get("procrustes"))
    assert made[-1] == 4
    none = sf.matrix(feats.__getitem__, pairs, get("procrustes"), budget=0)
    assert made[-1] > 4
    want = expected(feats, list(feats), list(feats), procrustes)
    np.testing.assert_allclose(big, want, atol=1e-12)
    np.testing.assert_allclose(none, big, atol=1e-12)  # x.T @ x of one array takes BLAS syrk: last-bit differences


def test_a_float16_store_refuses_features_beyond_its_range(tmp_path, tiny_vit):
    """A feature of 1e5 (past float16's 65504) would be stored as inf: one line pointing at store_dtype=float32."""
    m = LoadedModel(
        key="model",
        name="vit",
        label="vit",
        module=tiny_vit,
        transform=None,
        data_config={"input_size": (3, 32, 32)},
        weights="random-init",
    )
    layer = resolve(tiny_vit, ["head"], (3, 32, 32))[0]
    store = FeatureStore([m], [[layer]], "mean", tmp_path, "float16")
    store.on_tensor(0, layer, torch.full((2, 5), 6e4))
    with pytest.raises(
        VitstudyError, match="layer 'head' has features beyond float16's range .* use analysis.store_dtype=float32"
    ):
        store.on_tensor(0, layer, torch.full((2, 5), 1e5))
    store.close()
