"""Batch weights, interval range and the few-batches flag of minibatch CKA (issue 20, items 4-6).

Simulations draw x ~ N(0, I_P), y = x A + SIGMA e, whose population CKA is analytic (test_uncertainty.py); the
per-batch HSIC terms of the old, equal-weight estimator are recomputed here in float64 numpy (Song et al. 2012).
"""

import numpy as np
import pytest
import torch

from helpers import song_hsic
from test_uncertainty import SIGMA, A, P, Q, _u, population_cka
from vitstudy.analyses.cka import Estimate
from vitstudy.metrics import uncertainty as U
from vitstudy.metrics.cka import MinibatchCKA


def _draw(r, n):
    x = r.normal(size=(n, P))
    return x, x @ A + SIGMA * r.normal(size=(n, Q))


def _equal_weight(batches):
    """The estimator before the weights: every batch's HSIC₁ counts 1, then leave-one-batch-out and jackknife."""
    t = np.array(
        [[song_hsic(x @ x.T, y @ y.T), song_hsic(x @ x.T, x @ x.T), song_hsic(y @ y.T, y @ y.T)] for x, y in batches]
    )
    s = t.sum(0)
    est = s[0] / np.sqrt(s[1] * s[2])
    reps = np.array([(s[0] - b[0]) / np.sqrt((s[1] - b[1]) * (s[2] - b[2])) for b in t])
    return est, float(U.jackknife_se(reps[:, None])[0])


def _ours(batches):
    acc = MinibatchCKA(1, 1)
    for x, y in batches:
        acc.update(_u(x)[None], _u(y)[None])
    se = U.jackknife_se(U.cka_replicates(*[t.numpy() for t in acc.batch_terms()]))
    return float(acc.result()[0, 0]), float(se[0, 0])


def test_a_five_image_tail_no_longer_inflates_the_estimate_or_its_jackknife_se():
    """4 batches of 50 with and without a 5-image tail, 300 runs each: with equal weights the tail triples the sd
    of the estimate (issue 20: 0.022 -> 0.064) and inflates the se; weighted by n(n - 3) both stay within 10%,
    and the reported se still matches the sd across runs."""
    r = np.random.default_rng(4)
    truth = population_cka()
    full, tail = [], []
    for _ in range(300):
        batches = [_draw(r, 50) for _ in range(4)]
        extra = _draw(r, 5)
        full.append(_ours(batches))
        tail.append((*_ours(batches + [extra]), *_equal_weight(batches + [extra])))
    full, tail = np.array(full), np.array(tail)
    sd_full, sd_tail, sd_old = full[:, 0].std(ddof=1), tail[:, 0].std(ddof=1), tail[:, 2].std(ddof=1)
    se_full, se_tail, se_old = np.median(full[:, 1]), np.median(tail[:, 1]), np.median(tail[:, 3])
    print(
        f"population CKA {truth:.4f}; sd of the estimate: no tail {sd_full:.4f}, tail weighted {sd_tail:.4f}, "
        f"tail equal weights {sd_old:.4f}; median jackknife se: {se_full:.4f}, {se_tail:.4f}, {se_old:.4f}"
    )
    assert sd_old > 2 * sd_full and se_old > 1.5 * se_full  # the defect the weights remove, as derived here
    assert sd_tail < 1.1 * sd_full and se_tail < 1.1 * se_full
    assert abs(tail[:, 0].mean() - truth) < 3 * sd_tail / np.sqrt(300) + 0.01
    assert 1 / 1.3 < tail[:, 1].mean() / sd_tail < 1.3


def test_weighted_batches_match_the_pooled_u_statistic_and_its_leave_one_out():
    """Batches of 12, 12, 12 and 5: each HSIC₁ weighted by n(n - 3), in float64 numpy from the features."""
    r = np.random.default_rng(8)
    batches = [_draw(r, n) for n in (12, 12, 12, 5)]
    est, _ = _ours(batches)
    w = np.array([len(x) * (len(x) - 3) for x, _ in batches], dtype=float)

    def weighted(bs, ws):
        t = np.array(
            [[song_hsic(x @ x.T, y @ y.T), song_hsic(x @ x.T, x @ x.T), song_hsic(y @ y.T, y @ y.T)] for x, y in bs]
        )
        s = (ws[:, None] * t).sum(0)
        return s[0] / np.sqrt(s[1] * s[2])

    assert est == pytest.approx(weighted(batches, w), rel=1e-12)
    acc = MinibatchCKA(1, 1)
    for x, y in batches:
        acc.update(_u(x)[None], _u(y)[None])
    reps = U.cka_replicates(*[t.numpy() for t in acc.batch_terms()])[:, 0, 0]
    want = [weighted([b for c, b in enumerate(batches) if c != k], np.delete(w, k)) for k in range(4)]
    np.testing.assert_allclose(reps, want, rtol=1e-12)


def test_equal_batches_give_the_same_bits_as_the_unweighted_sums():
    """Equal batches: every number is bit for bit what Σ_b Ũ_x Ũ_yᵀ / (n(n - 3)) gave before the weights."""
    r = np.random.default_rng(9)
    ux = [torch.stack([_u(r.normal(size=(16, 7))) for _ in range(3)]) for _ in range(5)]
    uy = [torch.stack([_u(r.normal(size=(16, 4))) for _ in range(2)]) for _ in range(5)]
    acc = MinibatchCKA(3, 2)
    cross, sx, sy = (
        torch.zeros(3, 2, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
    )
    for a, b in zip(ux, uy):
        acc.update(a, b)
        scale = 1.0 / (16 * 13)
        cross += (a @ b.T) * scale
        sx += (a * a).sum(dim=1) * scale
        sy += (b * b).sum(dim=1) * scale
    assert torch.equal(acc.result(), cross / torch.sqrt(sx[:, None] * sy[None, :]))


def _estimate(batches_per_repeat, repeats=1, value=0.97, spread=0.05, seed=0):
    r = np.random.default_rng(seed)
    mats = [np.full((1, 1), value) for _ in range(repeats)]
    reps = [np.clip(value + spread * r.normal(size=(batches_per_repeat, 1, 1)), 0, 1) for _ in range(repeats)]
    units = [np.arange(batches_per_repeat) + 100 * k for k in range(repeats)]
    return Estimate.from_runs(mats, reps, units)


def test_intervals_are_cut_to_the_range_of_cka_and_keep_the_estimate():
    """CKA 0.97 from 4 batches with replicates spread 0.05: the t interval's upper end (est + t₃ se) passes 1."""
    est = _estimate(4)
    raw_low, raw_high = U.interval(est.mean, est.se, est.df)
    assert raw_high[0, 0] > 1  # the uncut interval leaves [0, 1]
    assert est.high[0, 0] == 1.0 and est.low[0, 0] == pytest.approx(raw_low[0, 0])
    low, high = U.clip_interval(np.array([-0.01, 0.5]), np.array([-0.2, 0.4]), np.array([0.1, 0.6]), 0.0, 1.0)
    np.testing.assert_array_equal(low, [-0.01, 0.4])  # a slightly negative estimate stays inside its interval
    np.testing.assert_array_equal(high, [0.1, 0.6])
    assert est.info()["interval_range"] == [0.0, 1.0] and "n(n-3)" in est.info()["batch_weights"]


def test_fewer_than_ten_batches_are_flagged_in_run_json_and_the_report():
    from vitstudy.report.settings import settings

    few, enough = _estimate(4), _estimate(5, repeats=2)
    assert few.info()["few_batches"] and "only 4 batches" in few.info()["note"]
    assert not enough.info()["few_batches"] and "note" not in enough.info()
    run = {"analysis": "cka_across", "uncertainty": {"cka_across": few.info()}}
    assert "only 4 batches" in settings(run)["intervals"]
    assert "intervals" not in settings({"analysis": "cka_across", "uncertainty": {"cka_across": enough.info()}})


def test_a_run_from_three_batches_says_so_in_its_output_line_and_run_json(tmp_path, capsys):
    import json

    from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, cli

    out = tmp_path / "run"
    code, stdout, err = cli(
        [
            "run",
            "analysis=cka_across",
            *TINY_VIT,
            *TINY_RESNET,
            *SMALL_DATA,
            "cache.results=false",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    line = [s for s in stdout.splitlines() if "cka_across done" in s][0]
    assert "WARNING: intervals from only 3 batches (under 10)" in line
    info = json.loads((out / "run.json").read_text())["uncertainty"]["cka_across"]
    assert info["few_batches"] and info["batches"] == 3 and info["interval_range"] == [0.0, 1.0]


def test_a_cached_result_repeats_the_few_batches_warning(tmp_path, capsys):
    """A result served from the cache says the same WARNING as the run that computed it (read from its run.json)."""
    from helpers import SMALL_DATA, TINY_VIT, cli

    args = [
        "run",
        "analysis=cka_within",
        *TINY_VIT,
        *SMALL_DATA,
        "model.layers=[blocks.0,blocks.2]",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    lines = []
    for name in ("a", "b"):
        code, stdout, err = cli([*args, f"hydra.run.dir={tmp_path / name}"], capsys)
        assert code == 0, err
        lines.append([s for s in stdout.splitlines() if "cka_within " in s][0])
    assert "done" in lines[0] and "cached" in lines[1]
    assert all("WARNING: intervals from only 3 batches (under 10)" in line for line in lines), lines
