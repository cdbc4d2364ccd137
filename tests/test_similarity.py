"""similarity_within / similarity_across / similarity_grid: the streaming (kernel) path of the CKA engine.

Numbers are held against independent values: the cka_* tables (linear CKA, itself checked against float64 numpy in
test_cka_math / test_cli), and a kernel measure's minibatch HSIC, jackknife and permutation null written out in
float64 numpy from the very features the engine hands the measure's `kernel`.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, assert_one_line_error, cli, song_hsic
from vitstudy import measures
from vitstudy.metrics import uncertainty as U

RUN = ["cache.results=false", "progress=false"]
T2 = 4.302652729911275  # Student t, 0.975 quantile, 2 degrees of freedom (tables)


def rbf_gram(x: np.ndarray) -> np.ndarray:
    """exp(-|xi - xj|² / mean off-diagonal |xi - xj|²), float64 numpy."""
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    n = len(x)
    return np.exp(-d2 / (d2.sum() / (n * (n - 1))))


@dataclass(frozen=True, kw_only=True)
class RecordingRBF(measures.Measure):
    """A kernel measure for the tests: RBF CKA whose `kernel` keeps every batch's features it is given.

    Its range is narrowed to [0, 0.9] so that the cut of the intervals to the measure's range shows.
    """

    name = "test_rbf"
    label = "test RBF CKA"
    summary = "test only"
    citation = "test only"
    range = (0.0, 0.9)
    invariances = ()
    streams = True
    full_set = False
    seen: ClassVar[list] = []
    interrupt_at: ClassVar[int | None] = None  # raise KeyboardInterrupt at this call (a killed run)

    def kernel(self, x, dtype=torch.float32):
        if len(RecordingRBF.seen) == RecordingRBF.interrupt_at:
            raise KeyboardInterrupt
        x = x.reshape(len(x), -1).to(torch.float64)
        RecordingRBF.seen.append(x.numpy().copy())
        d2 = torch.cdist(x, x).pow(2)
        n = len(x)
        return torch.exp(-d2 / (d2.sum() / (n * (n - 1))))


@pytest.fixture
def test_rbf():
    measures.register(RecordingRBF)
    RecordingRBF.seen.clear()
    yield RecordingRBF
    measures.MEASURES.pop("test_rbf", None)
    RecordingRBF.seen.clear()
    RecordingRBF.interrupt_at = None


def _run(tmp_path, name, args, capsys):
    out = tmp_path / name
    code, _, err = cli(["run", *args, *RUN, f"hydra.run.dir={out}"], capsys)
    assert code == 0, err
    return out


def _equal(a: pd.Series, b: pd.Series) -> bool:
    return a.reset_index(drop=True).equals(b.reset_index(drop=True))  # NaN equals NaN, else exact


def _same_numbers(sim: pd.DataFrame, ref: pd.DataFrame, columns=("", "_std", "_se", "_ci_low", "_ci_high")):
    assert len(sim) == len(ref)
    for key in ("model_x", "layer_x", "index_x", "model_y", "layer_y", "index_y", "num_images", "repeats", "tokens"):
        assert _equal(sim[key], ref[key]), key
    for c in columns:
        assert _equal(sim["value" + c], ref["cka" + c]), c


# ---------------------------------------------------------------- measure=cka is cka_*


def test_measure_cka_within_is_cka_within_bit_for_bit(tmp_path, capsys):
    args = [*TINY_VIT, *SMALL_DATA, "cka.repeats=2"]
    a = _run(tmp_path, "sim", ["analysis=similarity_within", *args], capsys)
    b = _run(tmp_path, "cka", ["analysis=cka_within", *args], capsys)
    sim, ref = pd.read_csv(a / "similarity_within.csv"), pd.read_csv(b / "cka_within.csv")
    _same_numbers(sim, ref)
    assert (sim.measure == "cka").all() and (sim.estimator == "minibatch").all() and sim.parameters.isna().all()
    ra, rb = np.load(a / "similarity_within.replicates.npz"), np.load(b / "cka_within.replicates.npz")
    assert str(ra["column"]) == "value" and np.array_equal(ra["values"], rb["values"])
    assert np.array_equal(ra["units"], rb["units"]) and np.array_equal(ra["strata"], rb["strata"])


def test_measure_cka_across_with_null_is_cka_across_bit_for_bit(tmp_path, capsys):
    args = [*TINY_VIT, *TINY_RESNET, *SMALL_DATA]
    a = _run(tmp_path, "sim", ["analysis=similarity_across", *args, "analysis.null=7"], capsys)
    b = _run(tmp_path, "cka", ["analysis=cka_across", *args, "cka.null=7"], capsys)
    sim, ref = pd.read_csv(a / "similarity_across.csv"), pd.read_csv(b / "cka_across.csv")
    _same_numbers(sim, ref, ("", "_std", "_se", "_ci_low", "_ci_high", "_chance", "_p"))
    assert (sim.null_permutations == 7).all() and sim.value_z.notna().all()
    want = [
        "model_x",
        "weights_x",
        "layer_x",
        "index_x",
        "model_y",
        "weights_y",
        "layer_y",
        "index_y",
        "measure",
        "value",
        "value_std",
        "value_se",
        "value_ci_low",
        "value_ci_high",
        "value_chance",
        "value_p",
        "value_z",
        "null_permutations",
        "repeats",
        "estimator",
        "parameters",
        "tokens",
        "num_images",
        "batch_size",
        "dataset",
        "uncertainty",
    ]
    assert list(sim.columns) == want


@pytest.mark.slow
def test_measure_cka_grid_is_cka_grid_bit_for_bit(tmp_path, capsys):
    args = [
        "analysis.models=[vit_tiny,resnet18]",
        "analysis.pretrained=false",
        "dataset=synthetic",
        "dataset.num_images=16",
        "dataset.batch_size=8",
        "dataset.image_size=32",
    ]
    a = _run(tmp_path, "sim", ["analysis=similarity_grid", *args], capsys)
    b = _run(tmp_path, "cka", ["analysis=cka_grid", *args], capsys)
    _same_numbers(pd.read_csv(a / "similarity_grid.csv"), pd.read_csv(b / "cka_grid.csv"))


# ---------------------------------------------------------------- a kernel measure, against float64 numpy


def _minibatch(xs, ys, skip=None):
    """Nguyen et al.'s minibatch kernel CKA from per-batch Grams (weights n(n - 3)), leaving out batch `skip`."""
    keep = [b for b in range(len(xs)) if b != skip]
    w = [len(xs[b]) * (len(xs[b]) - 3) for b in keep]
    xy = np.average([song_hsic(xs[b], ys[b]) for b in keep], weights=w)
    xx = np.average([song_hsic(xs[b], xs[b]) for b in keep], weights=w)
    yy = np.average([song_hsic(ys[b], ys[b]) for b in keep], weights=w)
    return xy / math.sqrt(xx * yy)


def test_kernel_measure_within_matches_numpy_minibatch_cka_and_jackknife(tmp_path, capsys, test_rbf):
    out = _run(
        tmp_path, "rbf", ["analysis=similarity_within", "analysis.measure=test_rbf", *TINY_VIT, *SMALL_DATA], capsys
    )
    df = pd.read_csv(out / "similarity_within.csv")
    L, B = 3, 3  # blocks of the depth-3 ViT; 24 images in batches of 8
    assert len(test_rbf.seen) == B * L
    grams = [[rbf_gram(test_rbf.seen[b * L + l]) for b in range(B)] for l in range(L)]
    for row in df.itertuples():
        ks, ls = grams[row.index_x], grams[row.index_y]
        want = _minibatch(ks, ls)
        reps = np.array([_minibatch(ks, ls, skip=b) for b in range(B)])
        se = math.sqrt((B - 1) / B * ((reps - reps.mean()) ** 2).sum())
        assert row.value == pytest.approx(want, abs=1e-6)
        assert row.value_se == pytest.approx(se, rel=1e-4, abs=1e-9)
        assert row.value_ci_low == pytest.approx(max(want - T2 * se, min(want, 0.0)), abs=1e-6)
        assert row.value_ci_high == pytest.approx(min(want + T2 * se, max(want, 0.9)), abs=1e-6)  # cut to the range
    assert (df.measure == "test_rbf").all() and (df.estimator == "minibatch").all()
    assert (df.value_ci_high < df.value + T2 * df.value_se - 1e-3).any()  # the cut did happen somewhere


def test_kernel_measure_across_null_and_calibrated_score_match_numpy(tmp_path, capsys, test_rbf):
    K = 9
    out = _run(
        tmp_path,
        "rbf",
        [
            "analysis=similarity_across",
            "analysis.measure=test_rbf",
            f"analysis.null={K}",
            *TINY_VIT,
            *TINY_RESNET,
            *SMALL_DATA,
            "model.layers=[blocks.0,blocks.2]",
        ],
        capsys,
    )
    df = pd.read_csv(out / "similarity_across.csv")
    B, n = 3, 8
    L = 2  # the ViT's two chosen blocks; then the ResNet's residual blocks
    per_batch = len(test_rbf.seen) // B
    M = per_batch - L
    assert M == df.index_y.nunique() and len(df) == L * M
    g = [[rbf_gram(test_rbf.seen[b * per_batch + i]) for b in range(B)] for i in range(per_batch)]
    perms = [
        torch.stack([torch.randperm(n, generator=gen) for _ in range(K)]).numpy()
        for gen in (torch.Generator().manual_seed(U.null_seed(0, 0, b)) for b in range(B))
    ]
    for row in df.itertuples():
        ks, ls = g[row.index_x], g[L + row.index_y]
        want = _minibatch(ks, ls)
        w = [n * (n - 3)] * B
        xx = np.average([song_hsic(k, k) for k in ks], weights=w)
        yy = np.average([song_hsic(l, l) for l in ls], weights=w)
        null = np.array(
            [
                np.average([song_hsic(ks[b][np.ix_(perms[b][k], perms[b][k])], ls[b]) for b in range(B)], weights=w)
                / math.sqrt(xx * yy)
                for k in range(K)
            ]
        )
        assert row.value == pytest.approx(want, abs=1e-6)
        assert row.value_chance == pytest.approx(null.mean(), abs=1e-6)
        assert row.value_p == pytest.approx((1 + (null >= want).sum()) / (K + 1))
        assert row.value_z == pytest.approx((want - null.mean()) / null.std(ddof=1), rel=1e-4)
        assert row.null_permutations == K


def test_calibrated_score_is_the_z_score_of_the_null():
    import statistics

    from vitstudy.analyses.cka import calibrated_score

    r = np.random.default_rng(3)
    null, obs = r.normal(0.2, 0.05, size=(11, 2, 3)), r.uniform(size=(2, 3))
    z = calibrated_score(obs, null)
    for i in range(2):
        for j in range(3):
            draws = [float(v) for v in null[:, i, j]]
            assert z[i, j] == pytest.approx((obs[i, j] - statistics.fmean(draws)) / statistics.stdev(draws), rel=1e-12)
    assert np.isnan(calibrated_score(obs, np.ones((5, 2, 3)))).all()  # a null that does not vary: no score


# ---------------------------------------------------------------- refusals (one line, nothing written)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["analysis.measure=cka_linear"], "unknown measure 'cka_linear'"),
        (["analysis.k=5"], "analysis.k applies to"),
        (["analysis.bandwidth=2.0"], "analysis.bandwidth applies to"),
        (["analysis.measure=procrustes", "analysis.estimator=minibatch"], "has no minibatch (kernel) form"),
        (["analysis.groups=20"], "analysis.groups applies to the full-set estimator"),
        (["analysis.estimator=sometimes"], "analysis.estimator must be one of"),
        (["analysis.null=-1"], "analysis.null must be at least 0"),
        (["cka.null=5"], "analysis.null, not cka.null"),
        (["analysis.null=5"], "analysis.null (a permutation null) needs two models"),
    ],
)
def test_bad_parameters_are_one_line_errors(tmp_path, capsys, extra, expected):
    assert_one_line_error(
        ["run", "analysis=similarity_within", *TINY_VIT, *SMALL_DATA, *extra], expected, tmp_path / "bad", capsys
    )


def _block_features(model_args, layers, tokens="mean"):
    """Each listed layer's token-reduced features of the run's images, from plain forward hooks (float64 numpy)."""
    from vitstudy.compose import compose
    from vitstudy.pipeline import runner

    cfg = compose(model_args)
    ctx = runner.prepare(cfg)
    model = ctx.models["model"]
    batching, _ = ctx.sample(tail=cfg.cka.tail)
    feats = {name: [] for name in layers}
    mods = dict(model.module.named_modules())
    hooks = [
        mods[n].register_forward_hook(
            lambda m, a, o, n=n: feats[n].append(
                (o[:, 1:].mean(1) if o.dim() == 3 else o.mean((2, 3))).double().numpy()
            )
        )
        for n in layers
    ]
    with torch.inference_mode():
        for images, _ in ctx.loader([model], batching):
            model.module(images[0] if isinstance(images, (list, tuple)) else images)
    for h in hooks:
        h.remove()
    return {n: np.concatenate(v) for n, v in feats.items()}


def test_full_set_measure_cka_equals_the_biased_cka_within(tmp_path, capsys):
    """estimator=full_set with measure=cka is biased CKA on the whole image set: the cka_within biased estimator."""
    args = [*TINY_VIT, *SMALL_DATA, "model.layers=[blocks.0,blocks.1,blocks.2]"]
    a = _run(tmp_path, "sim", ["analysis=similarity_within", "analysis.estimator=full_set", *args], capsys)
    b = _run(tmp_path, "cka", ["analysis=cka_within", "cka.estimator=biased", *args], capsys)
    sim, ref = pd.read_csv(a / "similarity_within.csv"), pd.read_csv(b / "cka_within.csv")
    np.testing.assert_allclose(sim.value, ref.cka, atol=1e-6)
    assert (sim.estimator == "full_set").all() and sim.value_se.notna().all()


def test_full_set_asymmetric_measure_matches_numpy_least_squares(tmp_path, capsys):
    """linear_regression within one model, tokens=mean: every (i, j) is the R² of layer j from layer i by least
    squares with an intercept, recomputed here from hooked features; both directions are rows, and they differ."""
    layers = ["blocks.0", "blocks.1", "blocks.2"]
    args = [
        *TINY_VIT,
        *SMALL_DATA,
        f"model.layers=[{','.join(layers)}]",
        "tokens=mean",
        "dataset.num_images=48",
        "model.kwargs.embed_dim=24",
        "model.kwargs.num_heads=2",
    ]  # 24 features < 48 images: R² below 1
    out = _run(tmp_path, "r2", ["analysis=similarity_within", "analysis.measure=linear_regression", *args], capsys)
    df = pd.read_csv(out / "similarity_within.csv")
    feats = _block_features(["analysis=similarity_within", *args], layers)
    for row in df.itertuples():
        x, y = feats[row.layer_x], feats[row.layer_y]
        design = np.hstack([np.ones((len(x), 1)), x])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        r2 = 1 - ((y - design @ coef) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        assert row.value == pytest.approx(r2, abs=1e-6), (row.layer_x, row.layer_y)
    assert len(df) == 9 and (df.estimator == "full_set").all()
    square = df.pivot(index="index_x", columns="index_y", values="value").to_numpy()
    assert np.abs(square - square.T).max() > 1e-6  # i predicting j is not j predicting i


def test_kernel_measure_resumes_after_an_interruption(tmp_path, capsys, test_rbf):
    """Interrupted in its third batch, a rerun continues from the checkpoint and equals an uninterrupted run."""
    import json

    args = [
        "run",
        "analysis=similarity_within",
        "analysis.measure=test_rbf",
        *TINY_VIT,
        *SMALL_DATA,
        "progress=false",
        "cache.checkpoint_every=1",
    ]
    assert cli([*args, f"cache.dir={tmp_path / 'c1'}", f"hydra.run.dir={tmp_path / 'whole'}"], capsys)[0] == 0
    test_rbf.seen.clear()
    test_rbf.interrupt_at = 2 * 3 + 1  # 3 layers per batch: two batches done, then the second layer of the third
    code, _, _ = cli([*args, f"cache.dir={tmp_path / 'c2'}", f"hydra.run.dir={tmp_path / 'cut'}"], capsys)
    assert code == 130 and not (tmp_path / "cut" / "run.json").exists()
    test_rbf.interrupt_at = None
    test_rbf.seen.clear()
    assert cli([*args, f"cache.dir={tmp_path / 'c2'}", f"hydra.run.dir={tmp_path / 'resumed'}"], capsys)[0] == 0
    assert len(test_rbf.seen) == 3  # only the third batch ran again
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["images"][0]["resumed_at_batch"] == 2
    whole = pd.read_csv(tmp_path / "whole" / "similarity_within.csv")
    resumed = pd.read_csv(tmp_path / "resumed" / "similarity_within.csv")
    for column in ("value", "value_se", "value_ci_low", "value_ci_high"):
        np.testing.assert_allclose(resumed[column], whole[column], rtol=0, atol=1e-12)


def test_kernel_measure_is_served_by_the_feature_cache_of_a_cka_run(tmp_path, capsys, test_rbf):
    """Activations cached by cka_within serve a later kernel measure on the same model and images: no forward pass,
    the same numbers as a live run (to float32 rounding of the Gram)."""
    import json

    cache = [f"cache.dir={tmp_path / 'cache'}", "cache.features=true"]
    _run(tmp_path, "cka", ["analysis=cka_within", *TINY_VIT, *SMALL_DATA, *cache], capsys)
    served = _run(
        tmp_path,
        "served",
        ["analysis=similarity_within", "analysis.measure=test_rbf", *TINY_VIT, *SMALL_DATA, *cache],
        capsys,
    )
    record = json.loads((served / "run.json").read_text())["feature_cache"]
    assert record["batches_served"] == 3 and record["batches_computed"] == 0
    live = _run(
        tmp_path, "live", ["analysis=similarity_within", "analysis.measure=test_rbf", *TINY_VIT, *SMALL_DATA], capsys
    )
    a, b = pd.read_csv(served / "similarity_within.csv"), pd.read_csv(live / "similarity_within.csv")
    np.testing.assert_allclose(a.value, b.value, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.value_se, b.value_se, rtol=1e-3, atol=1e-8)


def test_compare_pairs_two_measures_on_the_same_images(tmp_path, capsys, test_rbf):
    """`vitstudy compare` on two similarity tables (replicates column "value"): the RBF kernel against linear CKA."""
    from vitstudy.compare import compare

    a = _run(
        tmp_path, "rbf", ["analysis=similarity_within", "analysis.measure=test_rbf", *TINY_VIT, *SMALL_DATA], capsys
    )
    b = _run(tmp_path, "lin", ["analysis=similarity_within", *TINY_VIT, *SMALL_DATA], capsys)
    da, db = pd.read_csv(a / "similarity_within.csv"), pd.read_csv(b / "similarity_within.csv")
    off = (da.index_x != da.index_y).to_numpy()
    assert not np.allclose(da.value[off], db.value[off], atol=1e-3)  # another kernel: other numbers
    got = compare(a, b, by=["layer_x"]).set_index("layer_x")
    ra, rb = np.load(a / "similarity_within.replicates.npz"), np.load(b / "similarity_within.replicates.npz")
    for layer, rows in da.groupby("layer_x").groups.items():
        rows = np.asarray(rows)
        d = ra["values"][:, rows].mean(1) - rb["values"][:, rows].mean(1)
        B = len(d)
        assert got.loc[layer, "diff"] == pytest.approx(da.value[rows].mean() - db.value[rows].mean(), abs=1e-12)
        assert got.loc[layer, "diff_se"] == pytest.approx(
            math.sqrt((B - 1) / B * ((d - d.mean()) ** 2).sum()), rel=1e-9
        )
        assert got.loc[layer, "value"] == "value"
    code, out, err = cli(["compare", str(a), str(b), "--by", "layer_x"], capsys)
    assert code == 0 and "blocks.2" in out, err


# ---------------------------------------------------------------- the full-set route (its engine: similarity_full)


@dataclass(frozen=True, kw_only=True)
class Asymmetric(measures.Measure):
    """A full-set, asymmetric measure for the tests (the engine is faked: only the routing and tables are checked)."""

    name = "test_asym"
    label = "test predictivity"
    summary = "test only"
    citation = "test only"
    range = (-math.inf, 1.0)
    invariances = ()
    symmetric = False


def test_full_set_route_tables_hold_both_directions_of_an_asymmetric_measure(tmp_path, capsys, monkeypatch):
    """Entry (i, j) of the engine's matrix is layer i predicting layer j: the tables say so, row by row."""
    from vitstudy.analyses import cka as cka_mod
    from vitstudy.analyses import similarity

    calls = []

    def fake(ctx, models, layers, measure, params, stacked):
        size = sum(len(ls) for ls in layers)
        calls.append((measure.name, params.resolved_estimator(), stacked, [len(ls) for ls in layers]))
        mean = 100.0 * np.arange(size)[:, None] + np.arange(size)[None, :]  # (i, j): i predicting j, stacked layers
        null = mean[None] - np.arange(1.0, 5.0)[:, None, None]  # 4 draws: chance = value - 2.5, sd = sqrt(5/3)
        nan = np.full(mean.shape, np.nan)
        _, record = ctx.sample(tail=ctx.cfg.cka.tail)
        return cka_mod.Estimate(mean, nan, nan, nan, nan, 0, "none", null=null), {"repeats": [record]}

    measures.register(Asymmetric)
    monkeypatch.setattr(similarity, "_compute_full", fake)
    try:
        w = _run(
            tmp_path, "w", ["analysis=similarity_within", "analysis.measure=test_asym", *TINY_VIT, *SMALL_DATA], capsys
        )
        x = _run(
            tmp_path,
            "x",
            [
                "analysis=similarity_across",
                "analysis.measure=test_asym",
                *TINY_VIT,
                *TINY_RESNET,
                *SMALL_DATA,
                "model.layers=[blocks.0,blocks.2]",
            ],
            capsys,
        )
    finally:
        measures.MEASURES.pop("test_asym", None)
    assert calls[0] == ("test_asym", "full_set", None, [3]) and calls[1][:3] == ("test_asym", "full_set", True)
    within = pd.read_csv(w / "similarity_within.csv")
    assert len(within) == 9 and (within.value == 100 * within.index_x + within.index_y).all()  # both directions
    across = pd.read_csv(x / "similarity_across.csv")
    M = calls[1][3][1]
    fwd, back = across[across.model_x == "vit_tiny_patch16_224"], across[across.model_x == "resnet18"]
    assert len(fwd) == len(back) == 2 * M
    assert (fwd.value == 100 * fwd.index_x + 2 + fwd.index_y).all()  # ViT layer i predicting ResNet layer j
    assert (back.value == 100 * (2 + back.index_x) + back.index_y).all()  # and back
    np.testing.assert_allclose(across.value_chance, across.value - 2.5)
    np.testing.assert_allclose(across.value_z, 2.5 / math.sqrt(5 / 3))
    assert (
        (across.value_p == 0.2).all()
        and (across.estimator == "full_set").all()
        and (across.null_permutations == 4).all()
    )


# ---------------------------------------------------------------- list and figures


def test_list_names_every_measure_and_the_analysis_parameters(capsys):
    code, out, _ = cli(["list"], capsys)
    assert code == 0 and "measures (" in out
    for name, cls in measures.MEASURES.items():
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        detail = out.splitlines()[out.splitlines().index(line) + 1]
        assert f"range [{cls.range[0]:g}, {cls.range[1]:g}]" in detail and ("streams" in detail) == cls.streams
    code, out, _ = cli(["list", "similarity_within"], capsys)
    for key in (
        "analysis.measure=cka",
        "analysis.estimator=auto",
        "analysis.k=10",
        "analysis.null=0",
        "cka.repeats=1",
        "cka.tail=fold",
        "procrustes",
    ):
        assert key in out, key
    assert "cka.null" not in out and "cka.estimator" not in out  # the similarity analyses take analysis.null/estimator


def test_the_measures_load_without_torch():
    """`vitstudy list` reads the measure registry: importing it must not import torch or pandas (seconds)."""
    import subprocess
    import sys

    code = (
        "import sys, vitstudy.measures as m; assert m.MEASURES; print('torch' in sys.modules, 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_heatmap_takes_the_measures_label_and_range():
    from vitstudy.plots.cka import cka_grid_figure, cka_heatmap

    m = np.array([[0.5, -0.2], [0.1, 0.9]])
    fig = cka_heatmap(m, "x", "y", "t", label="Procrustes similarity", vmin=-1.0, vmax=1.0)
    assert fig.axes[0].images[0].get_clim() == (-1.0, 1.0) and fig.axes[1].get_ylabel() == "Procrustes similarity"
    fig = cka_heatmap(m, "x", "y", "t")  # the CKA figure as before
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0) and fig.axes[1].get_ylabel() == "CKA"
    grid = cka_grid_figure({(0, 0): m, (0, 1): m, (1, 0): m}, ["a", "b"], "t", "R²", -3.0, 1.0)
    shown = [ax for ax in grid.axes if ax.images]
    assert len(shown) == 3 and all(ax.images[0].get_clim() == (-3.0, 1.0) for ax in shown)
    assert grid.axes[-1].get_ylabel() == "R²"


def test_measures_page_has_a_row_per_registered_measure():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "measures.md").read_text()
    for name, cls in measures.MEASURES.items():
        assert f"| `{name}` | {cls.label} |" in page, name


def test_colour_range_is_the_measures_range_with_unbounded_ends_from_the_values():
    from vitstudy.analyses.similarity import colour_range

    m = np.array([[0.5, -2.5], [np.nan, 0.9]])
    assert colour_range(Asymmetric(), m) == (-2.5, 1.0)  # range (-inf, 1]
    assert colour_range(measures.get("cka"), m) == (0.0, 1.0)


def test_grid_needs_two_distinct_models(tmp_path, capsys):
    assert_one_line_error(
        ["run", "analysis=similarity_grid", "analysis.models=[vit_tiny]", *SMALL_DATA],
        "similarity_grid needs a list of at least 2 distinct models",
        tmp_path / "bad",
        capsys,
    )
