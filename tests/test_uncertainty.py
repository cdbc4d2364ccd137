"""Uncertainty numbers against independent derivations: the jackknife written out in float64 numpy from the
per-batch features, textbook formulas for the binomial and ratio intervals, an analytic population CKA for
coverage and calibration, and permutation p-values under a true null."""

import math

import numpy as np
import pytest
import torch

from helpers import minibatch_reference, song_hsic
from vitstudy.metrics import uncertainty as U
from vitstudy.metrics.cka import MinibatchCKA, gram, u_center

rng = np.random.default_rng(13)


def _u(x, dtype=torch.float64):
    return u_center(gram(torch.as_tensor(x), dtype)).flatten()


def _feed(acc, batches, perms=None):
    """Two models (x, y) per batch; x has two layers (x and a function of x)."""
    for b, (x, y) in enumerate(batches):
        ux = torch.stack([_u(x), _u(np.tanh(x) + 0.3 * x)])
        acc.update(ux, _u(y)[None], None if perms is None else perms[b])


def _reference_jackknife(batches):
    """Leave each batch out, recompute Nguyen et al.'s minibatch CKA from the features, and jackknife: float64 numpy."""
    layers = [lambda x: x, lambda x: np.tanh(x) + 0.3 * x]
    B = len(batches)
    est = np.array([minibatch_reference([f(x) for x, _ in batches], [y for _, y in batches]) for f in layers])
    reps = np.array(
        [
            [
                minibatch_reference(
                    [f(x) for c, (x, _) in enumerate(batches) if c != b],
                    [y for c, (_, y) in enumerate(batches) if c != b],
                )
                for f in layers
            ]
            for b in range(B)
        ]
    )
    se = np.sqrt((B - 1) / B * ((reps - reps.mean(0)) ** 2).sum(0))
    return est, reps, se


def _batches(B=6, n=12, seed=0):
    r = np.random.default_rng(seed)
    out = []
    for _ in range(B):
        x = r.normal(size=(n, 9))
        out.append((x, x[:, :4] @ r.normal(size=(4, 5)) + r.normal(size=(n, 5))))
    return out


def test_jackknife_se_of_minibatch_cka_matches_leave_one_batch_out_recomputation():
    batches = _batches()
    acc = MinibatchCKA(2, 1)
    _feed(acc, batches)
    reps = U.cka_replicates(*[None if t is None else t.numpy() for t in acc.batch_terms()])
    se = U.jackknife_se(reps)
    want_est, want_reps, want_se = _reference_jackknife(batches)
    np.testing.assert_allclose(acc.result().numpy()[:, 0], want_est, rtol=1e-10)
    np.testing.assert_allclose(reps[:, :, 0], want_reps, rtol=1e-10)
    np.testing.assert_allclose(se[:, 0], want_se, rtol=1e-8)
    low, high = U.interval(want_est, se[:, 0], len(batches) - 1)
    t = 2.570581835636314  # Student t, 0.975 quantile, 5 degrees of freedom (tables)
    np.testing.assert_allclose(high - want_est, t * want_se, rtol=1e-7)
    np.testing.assert_allclose(want_est - low, t * want_se, rtol=1e-7)


def test_within_model_terms_are_the_diagonal_and_jackknife_matches_reference():
    batches = _batches(B=5, seed=1)
    acc = MinibatchCKA(2)
    for x, _ in batches:
        acc.update(torch.stack([_u(x), _u(np.tanh(x) + 0.3 * x)]))
    cross, sx, sy = acc.batch_terms()
    assert sy is None
    reps = U.cka_replicates(cross.numpy(), sx.numpy())
    f2 = lambda x: np.tanh(x) + 0.3 * x  # noqa: E731
    want = [
        minibatch_reference(
            [x for c, (x, _) in enumerate(batches) if c != b], [f2(x) for c, (x, _) in enumerate(batches) if c != b]
        )
        for b in range(5)
    ]
    np.testing.assert_allclose(reps[:, 0, 1], want, rtol=1e-10)
    np.testing.assert_allclose(reps[:, 1, 0], want, rtol=1e-10)
    np.testing.assert_allclose(reps[:, 0, 0], 1.0, rtol=1e-12)


def test_checkpointed_accumulator_carries_the_per_batch_terms():
    batches = _batches(B=6, seed=2)
    whole = MinibatchCKA(2, 1)
    _feed(whole, batches)
    first = MinibatchCKA(2, 1)
    _feed(first, batches[:3])
    state = first.state_dict()
    resumed = MinibatchCKA(2, 1)
    resumed.load_state_dict(state)
    _feed(resumed, batches[3:])
    for a, b in zip(whole.batch_terms(), resumed.batch_terms()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    old = dict(state, cross_terms=None, self_x_terms=None, self_y_terms=None)  # a checkpoint without the terms
    with pytest.raises(ValueError):
        MinibatchCKA(2, 1).load_state_dict(old)


def test_repeats_are_strata_of_the_jackknife():
    """The mean of R independent estimates: se = sqrt(sum of each repeat's jackknife variance) / R."""
    runs = [_reference_jackknife(_batches(B=4 + r, seed=10 + r)) for r in range(3)]
    mean, reps, strata = U.combine_repeats([e for e, _, _ in runs], [r for _, r, _ in runs])
    se = U.jackknife_se(reps, strata)
    np.testing.assert_allclose(mean, np.mean([e for e, _, _ in runs], axis=0), rtol=1e-12)
    np.testing.assert_allclose(se, np.sqrt(sum(s**2 for _, _, s in runs)) / 3, rtol=1e-10)
    assert U.jackknife_df(strata) == (4 + 5 + 6) - 3


@pytest.mark.parametrize(
    "df,want",
    [
        (1, 12.706204736174698),
        (4, 2.7764451051977987),
        (9, 2.2621571627409915),
        (30, 2.0422724563012373),
        (1e9, 1.959963984540054),
    ],
)
def test_t_critical_values_match_tables(df, want):
    assert U.critical(df) == pytest.approx(want, rel=1e-9)


def test_wilson_interval_solves_its_defining_quadratic():
    """Wilson's bounds are the p with |k/n - p| = z sqrt(p (1 - p) / n): the roots of a quadratic (numpy.roots)."""
    z = 1.959963984540054
    for k, n in [(0, 20), (3, 20), (81, 263), (50, 50), (700, 1000)]:
        ph = k / n
        roots = np.sort(np.roots([1 + z * z / n, -(2 * ph + z * z / n), ph * ph]).real)
        low, high = U.wilson(k, n)
        assert low == pytest.approx(max(roots[0], 0.0), abs=1e-12)
        assert high == pytest.approx(min(roots[1], 1.0), abs=1e-12)
        cols = U.proportion_columns("acc", k, n, 100.0)
        assert cols["acc_se"] == pytest.approx(100 * math.sqrt(ph * (1 - ph) / n))
        assert cols["acc_ci_low"] == pytest.approx(100 * low)


def test_mean_ratio_and_paired_standard_errors_match_per_image_formulas():
    n = 57
    v = rng.gamma(2.0, size=n)
    mean, se = U.mean_se(v.sum(), (v * v).sum(), n)
    assert se == pytest.approx(v.std(ddof=1) / math.sqrt(n), rel=1e-10)
    z, f = rng.gamma(3.0, size=n), rng.gamma(2.0, size=n) + 0.5
    r = z.sum() / f.sum()
    want = math.sqrt(((z - r * f) ** 2).sum() / (n * (n - 1))) / f.mean()  # delta method, ratio of means
    got = U.ratio_se(z.sum(), f.sum(), (z * z).sum(), (f * f).sum(), (z * f).sum(), n)
    assert got == pytest.approx(want, rel=1e-10)
    before, after = rng.random(n) < 0.6, rng.random(n) < 0.5
    d = after.astype(float) - before.astype(float)
    diff, dse = U.paired_difference((after & ~before).sum(), (before & ~after).sum(), n)
    assert diff == pytest.approx(d.mean(), abs=1e-12)
    assert dse == pytest.approx(d.std(ddof=1) / math.sqrt(n), rel=1e-10)


# ---------------------------------------------------------------- simulations with a known population CKA

P, Q, SIGMA = 6, 4, 1.5
A = np.random.default_rng(99).normal(size=(P, Q))


def population_cka():
    """x ~ N(0, I_P), y = x A + SIGMA e: linear-kernel HSIC is ||Cov(x, y)||_F^2, so CKA is analytic."""
    sxy, sxx, syy = A, np.eye(P), A.T @ A + SIGMA**2 * np.eye(Q)
    return np.sum(sxy**2) / math.sqrt(np.sum(sxx**2) * np.sum(syy**2))


def _simulated_run(r, B, n):
    acc = MinibatchCKA(1, 1)
    for _ in range(B):
        x = r.normal(size=(n, P))
        y = x @ A + SIGMA * r.normal(size=(n, Q))
        acc.update(_u(x)[None], _u(y)[None])
    reps = U.cka_replicates(*[t.numpy() for t in acc.batch_terms()])
    return float(acc.result()[0, 0]), float(U.jackknife_se(reps)[0, 0]), len(reps) - 1


def test_population_cka_formula_agrees_with_song_on_a_large_sample():
    r = np.random.default_rng(5)
    x = r.normal(size=(1200, P))
    y = x @ A + SIGMA * r.normal(size=(1200, Q))
    k, l = x @ x.T, y @ y.T
    big = song_hsic(k, l) / math.sqrt(song_hsic(k, k) * song_hsic(l, l))
    assert big == pytest.approx(population_cka(), abs=0.02)


def test_jackknife_intervals_cover_the_population_cka_and_se_is_calibrated():
    """Coverage of the 95% intervals in 90-99% of 300 runs; the mean reported se within 1.5x of the sd across runs."""
    r = np.random.default_rng(2023)
    truth = population_cka()
    runs = np.array([_simulated_run(r, B=10, n=16) for _ in range(300)])
    est, se, df = runs[:, 0], runs[:, 1], int(runs[0, 2])
    q = U.critical(df)
    covered = np.mean((est - q * se <= truth) & (truth <= est + q * se))
    assert 0.90 <= covered <= 0.99, covered
    ratio = se.mean() / est.std(ddof=1)
    assert 1 / 1.5 <= ratio <= 1.5, ratio


# ---------------------------------------------------------------- permutation null


def test_permuted_cross_terms_equal_cka_of_permuted_images():
    """Ũ(P K Pᵀ) = P Ũ(K) Pᵀ: the null sums equal minibatch CKA recomputed with y's images shuffled in each batch."""
    batches = _batches(B=4, seed=3)
    K = 3
    perms = [
        torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(10 * b + k)) for k in range(K)])
        for b in range(4)
    ]
    acc = MinibatchCKA(2, 1, permutations=K)
    _feed(acc, batches, perms)
    null = acc.null_result().numpy()
    for k in range(K):
        # the smaller side (y, one layer) is permuted: pair image i of x with image perm[i] of y
        shuffled = [(x, y[perms[b][k].numpy()]) for b, (x, y) in enumerate(batches)]
        assert null[k, 0, 0] == pytest.approx(
            minibatch_reference([x for x, _ in shuffled], [y for _, y in shuffled]), rel=1e-9
        )
    np.testing.assert_allclose(acc.result().numpy()[:, 0], _reference_jackknife(batches)[0], rtol=1e-10)


def _null_p(r, related, K=19, B=4, n=10):
    acc = MinibatchCKA(1, 1, permutations=K)
    for _ in range(B):
        x = r.normal(size=(n, P))
        y = x @ A + 0.1 * r.normal(size=(n, Q)) if related else r.normal(size=(n, Q))
        acc.update(_u(x)[None], _u(y)[None], torch.stack([torch.from_numpy(r.permutation(n)) for _ in range(K)]))
    return float(U.permutation_pvalue(acc.result().numpy(), acc.null_result().numpy())[0, 0])


def test_permutation_pvalues_are_uniform_under_the_null_and_small_for_a_real_relation():
    r = np.random.default_rng(7)
    ps = np.array([_null_p(r, related=False) for _ in range(150)])
    # (1 + #{null >= obs}) / 20 is uniform on {0.05, ..., 1} under exchangeability: mean 0.525, P(p <= 0.1) = 0.1
    assert abs(ps.mean() - 0.525) < 0.07, ps.mean()
    assert np.mean(ps <= 0.1) < 0.2
    assert _null_p(r, related=True) == pytest.approx(1 / 20)


# ---------------------------------------------------------------- paired comparisons (vitstudy compare)


def _fake_run(path, model, values, reps, units):
    """A finished run directory as the runner writes it: run.json, the table and its replicates."""
    import json

    import pandas as pd

    from vitstudy.pipeline.results import write_npz

    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"analysis": "attention_distance", "status": "complete"}))
    pd.DataFrame({"model": model, "block": [0, 0, 1, 1], "head": [0, 1, 0, 1], "mean_distance": values}).to_csv(
        path / "attention_distance.csv", index=False
    )
    write_npz(
        path / "attention_distance.replicates.npz",
        {
            "values": reps,
            "strata": np.zeros(len(reps), dtype=np.int64),
            "units": units,
            "estimate": values,
            "column": "mean_distance",
            "method": "jackknife_batches",
        },
    )


def test_paired_comparison_is_the_jackknife_of_the_difference(tmp_path, capsys):
    from helpers import cli
    from vitstudy.compare import compare

    r = np.random.default_rng(4)
    B, units = 7, np.arange(7, dtype=np.int64) * 1000 + 3
    shared = r.normal(size=(B, 1))  # what the images share: cancels in the paired difference
    va, vb = np.array([10.0, 12.0, 30.0, 31.0]), np.array([9.0, 12.5, 25.0, 27.0])
    ra = va + shared + 0.1 * r.normal(size=(B, 4))
    rb = vb + shared + 0.1 * r.normal(size=(B, 4))
    _fake_run(tmp_path / "a", "in1k", va, ra, units)
    _fake_run(tmp_path / "b", "in21k", vb, rb, units)
    got = compare(tmp_path / "a", tmp_path / "b", by=["block"]).set_index("block")
    for block, cols in ((0, [0, 1]), (1, [2, 3])):
        d = ra[:, cols].mean(1) - rb[:, cols].mean(1)
        se = math.sqrt((B - 1) / B * ((d - d.mean()) ** 2).sum())
        assert got.loc[block, "diff"] == pytest.approx(va[cols].mean() - vb[cols].mean())
        assert got.loc[block, "diff_se"] == pytest.approx(se, rel=1e-10)
        assert got.loc[block, "diff_ci_high"] - got.loc[block, "diff"] == pytest.approx(
            U.critical(B - 1) * se, rel=1e-9
        )
    unpaired = compare(tmp_path / "a", tmp_path / "b", by=["block"], paired=False).set_index("block")
    assert (unpaired.diff_se > 3 * got.diff_se).all()  # the shared image luck no longer cancels
    _fake_run(tmp_path / "c", "other", vb, rb, units + 1)  # other images: no paired comparison
    code, _, err = cli(["compare", str(tmp_path / "a"), str(tmp_path / "c")], capsys)
    assert (
        code != 0
        and err.strip().startswith("vitstudy: error:")
        and "same batches" in err
        and len(err.strip().splitlines()) == 1
    )


def test_replicates_record_writes_the_npz_format_and_reads_every_older_file(tmp_path, capsys):
    """The typed record writes what the hand-built dicts wrote (same keys, same arrays, same dtypes), reads those
    files back, reads files without `estimate`/`method` (older hand-written ones), and refuses a broken file."""
    from helpers import cli
    from vitstudy.pipeline.results import Replicates, write_npz

    r = np.random.default_rng(2)
    values, estimate = r.normal(size=(6, 4)), r.normal(size=4)
    strata, units = np.array([0, 0, 0, 1, 1, 1]), np.arange(6, dtype=np.int64) * 7 + 1
    old = {
        "values": values,
        "strata": strata,
        "units": units,
        "estimate": estimate,
        "column": "cka",
        "method": "jackknife_batches",
    }  # what analyses built by hand before the record
    write_npz(tmp_path / "old.npz", old)
    new = Replicates(values=values, strata=strata, units=units, estimate=estimate, column="cka")
    new.write(tmp_path / "new.npz")
    with np.load(tmp_path / "old.npz") as a, np.load(tmp_path / "new.npz") as b:
        assert a.files == b.files == list(old)
        for k in old:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    got = Replicates.read(tmp_path / "old.npz")
    assert got.column == "cka" and got.method == "jackknife_batches" and got.rows == 4
    for k in ("values", "strata", "units", "estimate"):
        np.testing.assert_array_equal(getattr(got, k), old[k])
    np.savez(tmp_path / "bare.npz", values=values, strata=strata, units=units, column=np.array("mean_distance"))
    bare = Replicates.read(tmp_path / "bare.npz")
    assert bare.estimate is None and bare.method == "jackknife_batches" and bare.column == "mean_distance"
    with pytest.raises(ValueError, match="do not match"):
        Replicates(values=values, strata=strata[:5], units=units, column="cka")
    with pytest.raises(ValueError, match="estimate"):
        Replicates(values=values, strata=strata, units=units, estimate=estimate[:3], column="cka")
    with pytest.raises(TypeError):
        Replicates(values, strata, units, "cka")  # keyword-only
    run = tmp_path / "run"  # a run whose replicates file lacks the batches' ids: one line, no traceback
    run.mkdir()
    (run / "run.json").write_text('{"analysis": "cka_within"}')
    (run / "cka_within.csv").write_text("cka\n" + "\n".join("0.5" for _ in range(4)) + "\n")
    np.savez(run / "cka_within.replicates.npz", values=values, strata=strata, column=np.array("cka"))
    code, _, err = cli(["compare", str(run), "--a", "cka > 0", "--b", "cka > 0"], capsys)
    assert code != 0 and err.strip().startswith("vitstudy: error:") and "lacks units" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------- end to end


def test_cka_across_with_null_end_to_end(tmp_path, capsys):
    """A model against itself: every diagonal cell is far above chance (the smallest p, 1/(K + 1)); intervals hold the value."""
    import pandas as pd
    import timm

    from helpers import SMALL_DATA, TINY_VIT, assert_one_line_error, cli

    ckpt = tmp_path / "vit.pth"  # one set of weights for both sides: the same model twice
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3).state_dict(), ckpt)
    both = [*TINY_VIT, f"model.checkpoint={ckpt}"]
    both += [a.replace("model.", "reference.", 1) for a in both]
    code, _, err = cli(
        [
            "run",
            "analysis=cka_across",
            *both,
            *SMALL_DATA,
            "dataset.batch_size=6",
            "cka.null=9",
            "cache.results=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(tmp_path / "run" / "cka_across.csv")
    assert {"cka_se", "cka_ci_low", "cka_ci_high", "cka_chance", "cka_p", "uncertainty"} <= set(df.columns)
    assert (df.uncertainty == "jackknife_batches").all() and (df.null_permutations == 9).all()
    assert ((df.cka_ci_low <= df.cka + 1e-12) & (df.cka <= df.cka_ci_high + 1e-12)).all()
    diag = df[df.index_x == df.index_y]
    np.testing.assert_allclose(diag.cka, 1.0, atol=1e-6)
    np.testing.assert_allclose(diag.cka_p, 0.1)
    assert (diag.cka_chance < 0.9).all()
    assert (tmp_path / "run" / "cka_across.replicates.npz").is_file()
    assert_one_line_error(
        ["run", "analysis=cka_within", *TINY_VIT, *SMALL_DATA, "cka.null=5"], "cka.null", tmp_path / "bad", capsys
    )
