"""mutual_knn, cknna, svcca and pwcca against independent float64 numpy versions of their definitions.

References written here, not taken from vitstudy: brute-force loops over images for the neighbour measures
(cknna: a dense transcription of Huh et al.'s `metrics.cknna`), textbook CCA by whitening the covariance
matrices for svcca and pwcca; analytic cases whose value follows by hand; a p > n case (thin-SVD / Gram path);
and where the maintained `repsim` package is installed (test extra), its numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from vitstudy import measures as M
from vitstudy.errors import VitstudyError
from vitstudy.measures import neighbours as nb_module


def _pair(n=50, p=12, q=9, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) + 0.3
    y = np.tanh(x @ rng.normal(size=(p, q)) / 3.0) + 0.4 * rng.normal(size=(n, q)) + 1.0
    return x, y


def _low_rank(n, p, r, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, r)) @ rng.normal(size=(r, p))


# ---- references -----------------------------------------------------------------------------------------------


def _cos(a, b):
    na, nb = np.sqrt(sum(v * v for v in a)), np.sqrt(sum(v * v for v in b))
    return 0.0 if na == 0 or nb == 0 else float(sum(u * v for u, v in zip(a, b)) / (na * nb))


def _knn_brute(x, k):
    """Per image, sort the other images by (-cosine, index) and keep k: loops, no matrix algebra."""
    n = len(x)
    out = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (-_cos(x[i], x[j]), j))
        out.append(others[:k])
    return out


def _mutual_knn_ref(x, y, k):
    a, b = _knn_brute(x, k), _knn_brute(y, k)
    return float(np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(x))]))


def _hsic_unbiased_dense(K, L):
    """Song et al. 2012 Eq. 5 as Huh et al.'s `hsic_unbiased` writes it (note L transposed in the first term)."""
    m = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    v = (Kt * Lt.T).sum() + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2)) - 2 * (Kt @ Lt).sum() / (m - 2)
    return v / (m * (m - 3))


def _cknna_code(x, y, k):
    """Huh et al.'s metrics.cknna (unbiased=True) on row-normalised features, dense, one argument order."""

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    n = len(x)
    K, L = unit(x) @ unit(x).T, unit(y) @ unit(y).T

    def mask(G):
        out = np.zeros((n, n))
        for i in range(n):
            row = [(-G[i, j], j) for j in range(n) if j != i]  # diagonal excluded, ties by index
            for _, j in sorted(row)[:k]:
                out[i, j] = 1.0
        return out

    mK, mL = mask(K), mask(L)

    def sim(A, B, m):
        return _hsic_unbiased_dense(m * A, m * B)

    return sim(K, L, mK * mL) / np.sqrt(sim(K, K, mK) * sim(L, L, mL))


def _centre(a):
    return a - a.mean(axis=0)


def _inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return v @ np.diag(w**-0.5) @ v.T


def _cca_whitened(x, y):
    """Textbook CCA: SVD of Σxx^{-1/2} Σxy Σyy^{-1/2} (x, y of full column rank); returns (ρ, x-side weights a_i)."""
    xc, yc = _centre(x), _centre(y)
    n = len(x)
    sxx, syy, sxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    wx, wy = _inv_sqrt(sxx), _inv_sqrt(syy)
    u, rho, _ = np.linalg.svd(wx @ sxy @ wy)
    r = min(x.shape[1], y.shape[1])
    return rho[:r], wx @ u[:, :r]


def _reduce(x, variance):
    """SVCCA's first step with numpy's SVD of the centred data: the top directions keeping `variance`."""
    u, s, _ = np.linalg.svd(_centre(x), full_matrices=False)
    s = s[s > 1e-10 * s[0]]
    share = np.cumsum(s**2) / np.sum(s**2)
    d = next(i + 1 for i, v in enumerate(share) if v >= variance - 1e-12)
    return u[:, :d] * s[:d]


def _svcca_ref(x, y, variance):
    rho, _ = _cca_whitened(_reduce(x, variance), _reduce(y, variance))
    return float(rho.mean())


def _pwcca_ref(x, y):
    """Morcos et al. 2018: ρ_i weighted by Σ_j |⟨h_i, x̃_j⟩|, h_i = X̃ a_i scaled to unit norm (loops over i, j)."""
    rho, a = _cca_whitened(x, y)
    xc = _centre(x)
    weights = []
    for i in range(len(rho)):
        h = xc @ a[:, i]
        h = h / np.linalg.norm(h)
        weights.append(sum(abs(float(h @ xc[:, j])) for j in range(x.shape[1])))
    weights = np.array(weights)
    return float(weights @ rho / weights.sum())


# ---- mutual_knn -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 10])
def test_mutual_knn_matches_brute_force(k):
    x, y = _pair()
    assert M.get("mutual_knn", k=k).value(x, y) == pytest.approx(_mutual_knn_ref(x, y, k), abs=1e-12)


def test_mutual_knn_over_several_row_blocks(monkeypatch):
    monkeypatch.setattr(nb_module, "BLOCK", 7)  # the similarity pass in blocks of 7 images: same neighbours
    x, y = _pair(n=40)
    assert M.get("mutual_knn", k=6).value(x, y) == pytest.approx(_mutual_knn_ref(x, y, 6), abs=1e-12)


def _circle(degrees):
    t = np.deg2rad(degrees)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def test_mutual_knn_analytic_circle():
    # x: nearest neighbours 0<->1, 2<->3; y: 0 -> 1, 1 -> 0, 2 -> 1 (80° vs 90°), 3 -> 2: three of four agree (k=1)
    x = _circle([0, 10, 90, 100])
    y = _circle([0, 10, 90, 180])
    assert M.get("mutual_knn", k=1).value(x, y) == pytest.approx(0.75, abs=1e-15)
    swapped = _circle([0, 90, 10, 100])  # 0<->2, 1<->3: no image keeps its neighbour
    assert M.get("mutual_knn", k=1).value(x, swapped) == 0.0
    assert M.get("mutual_knn", k=3).value(x, swapped) == 1.0  # k = n - 1: everyone is everyone's neighbour


def test_mutual_knn_ties_go_to_the_lower_index():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    index = M.get("mutual_knn", k=2).prepare(x)
    assert index[0].tolist() == [1, 2]  # 1 and 2 tie at cosine 1
    assert index[3].tolist() == [0, 1]  # the zero row: cosine 0 to all, so the lowest indices
    assert index[4].tolist() == [0, 1]  # cosine 0 to rows 0-3: ties again


def test_mutual_knn_with_many_exact_ties_matches_brute_force():
    rng = np.random.default_rng(9)  # 0/1 features: dot products and norms exact, so many cosines tie exactly
    x, y = rng.integers(0, 2, size=(30, 4)).astype(float), rng.integers(0, 2, size=(30, 3)).astype(float)
    for k in (1, 4, 9):
        assert M.get("mutual_knn", k=k).value(x, y) == pytest.approx(_mutual_knn_ref(x, y, k), abs=1e-12)
        assert M.get("mutual_knn", k=k).prepare(x).tolist() == _knn_brute(x, k)


def test_mutual_knn_refuses_k_not_below_n():
    x, y = _pair(n=10)
    with pytest.raises(VitstudyError, match=r"mutual_knn: k=10 needs 1 <= k < the number of images \(10\)"):
        M.get("mutual_knn", k=10).value(x, y)
    with pytest.raises(VitstudyError, match="mutual_knn: k=0 must be at least 1"):
        M.get("mutual_knn", k=0)
    assert M.get("mutual_knn").parameters() == {"k": 10}


# ---- cknna ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 5, 10])
def test_cknna_matches_the_papers_code_mean_of_both_orders(k):
    x, y = _pair()
    forward, backward = _cknna_code(x, y, k), _cknna_code(y, x, k)
    assert forward != backward  # their code is not symmetric: the mean of the two orders is
    got = M.get("cknna", k=k).value(x, y)
    assert got == pytest.approx(0.5 * (forward + backward), abs=1e-12)
    assert got == pytest.approx(forward, abs=1e-2)
    assert M.get("cknna", k=k).value(y, x) == pytest.approx(got, abs=1e-14)


def test_neighbour_measures_with_more_features_than_images():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(30, 400))  # p > n
    y = np.tanh(x[:, :250] + 0.5 * rng.normal(size=(30, 250)))
    assert M.get("mutual_knn", k=5).value(x, y) == pytest.approx(_mutual_knn_ref(x, y, 5), abs=1e-12)
    got = M.get("cknna", k=5).value(x, y)
    assert got == pytest.approx(0.5 * (_cknna_code(x, y, 5) + _cknna_code(y, x, 5)), abs=1e-12)


def test_cknna_analytic_same_neighbourhoods():
    x, _ = _pair()
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    assert M.get("cknna").value(x, 2.5 * x @ q) == pytest.approx(1.0, abs=1e-12)


def test_cknna_refuses_k_below_two():
    x, y = _pair()
    with pytest.raises(VitstudyError, match="cknna: k=1 is too small"):
        M.get("cknna", k=1)


# ---- svcca ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99, 1.0])
def test_svcca_matches_whitened_cca_on_reduced_sides(variance):
    x, y = _pair(n=80)
    got = M.get("svcca", variance=variance).value(x, y)
    assert got == pytest.approx(_svcca_ref(x, y, variance), abs=1e-10)


def test_svcca_analytic_one_shared_direction_of_two():
    # centred orthogonal columns a, b, c: x = [a, b], y = [a, c]: canonical correlations 1 and 0
    q, _ = np.linalg.qr(_centre(np.random.default_rng(2).normal(size=(30, 3))))
    a, b, c = q.T
    x, y = np.stack([a, b], 1), np.stack([a, c], 1)
    assert M.get("svcca", variance=1.0).value(x, y) == pytest.approx(0.5, abs=1e-12)
    assert M.get("svcca", variance=1.0).value(x, x @ np.array([[2.0, 1.0], [0.5, 3.0]])) == pytest.approx(
        1.0, abs=1e-12
    )


def test_svcca_more_features_than_images():
    n = 40
    rng = np.random.default_rng(4)
    x = _low_rank(n, 500, 6, 5) + 1e-3 * rng.normal(size=(n, 500))  # p > n: the n x n Gram path
    y = _low_rank(n, 300, 4, 6) + x[:, :300] * 0.5
    got = M.get("svcca").value(x, y)
    assert got == pytest.approx(_svcca_ref(x, y, 0.99), abs=1e-8)


def test_svcca_refuses_too_many_directions_and_bad_variance():
    x, y = _pair(n=20)  # 12 + 9 directions > 19
    with pytest.raises(VitstudyError, match=r"svcca: 12 \+ 9 CCA directions need more than 21 images \(have 20\)"):
        M.get("svcca", variance=1.0).value(x, y)
    with pytest.raises(VitstudyError, match=r"variance=1.5 must be in \(0, 1\]"):
        M.get("svcca", variance=1.5)


# ---- pwcca ----------------------------------------------------------------------------------------------------


def test_pwcca_matches_projection_weighted_textbook_cca():
    x, y = _pair(n=80)
    assert M.get("pwcca").value(x, y) == pytest.approx(_pwcca_ref(x, y), abs=1e-10)
    assert M.get("pwcca").value(y, x) == pytest.approx(_pwcca_ref(y, x), abs=1e-10)


def test_pwcca_analytic_weights_and_asymmetry():
    # x's neurons are 3a and b, y's are a and c (a, b, c centred orthonormal): ρ = (1, 0), x's weights 3 and 1
    q, _ = np.linalg.qr(_centre(np.random.default_rng(2).normal(size=(30, 3))))
    a, b, c = q.T
    x, y = np.stack([3 * a, b], 1), np.stack([a, c], 1)
    assert M.get("pwcca").value(x, y) == pytest.approx(0.75, abs=1e-12)
    assert M.get("pwcca").value(y, x) == pytest.approx(0.5, abs=1e-12)  # y's neurons weigh 1 and 1
    assert not M.MEASURES["pwcca"].symmetric


def test_pwcca_more_features_than_images_of_low_rank():
    x, y = _low_rank(40, 500, 5, 7), _low_rank(40, 300, 4, 8)  # p > n, rank 5 and 4
    y = y + x[:, :300]
    got = M.get("pwcca").value(x, y)
    # the reference on an exact rank-5 basis of x's columns: PWCCA depends on x's neurons, so use them all
    u, s, vt = np.linalg.svd(_centre(x), full_matrices=False)
    rho, weights_dirs = _cca_whitened(u[:, :5] * s[:5], _reduce(y, 1.0))
    h = (u[:, :5] * s[:5]) @ weights_dirs
    h = h / np.linalg.norm(h, axis=0)
    weights = np.abs(h.T @ _centre(x)).sum(axis=1)
    assert got == pytest.approx(float(weights @ rho / weights.sum()), abs=1e-8)


def test_pwcca_refuses_full_rank_features_wider_than_the_images():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 100)), rng.normal(size=(30, 5))
    with pytest.raises(VitstudyError, match=r"pwcca: a layer with 29 CCA directions fills the 29 that 30 images span"):
        M.get("pwcca").value(x, y)  # refused in prepare: no pair could be computed
    with pytest.raises(VitstudyError, match=r"pwcca: 20 \+ 15 CCA directions need more than 35 images \(have 30\)"):
        M.get("pwcca").value(x[:, :20], rng.normal(size=(30, 15)))


# ---- a maintained package: repsim (test extra; skipped when absent) --------------------------------------------


def test_cca_family_against_repsim():
    repsim = pytest.importorskip("repsim")
    x, y = _pair(n=80)
    pw = M.get("pwcca")
    # repsim's pwcca averages the two directions (x's weights, then y's)
    assert 0.5 * (pw.value(x, y) + pw.value(y, x)) == pytest.approx(repsim.pwcca([x, y])[0, 1], abs=1e-10)
    # repsim.cca with Pillai's trace / min(d_x, d_y) is the mean canonical correlation: svcca keeping everything
    assert M.get("svcca", variance=1.0).value(x, y) == pytest.approx(repsim.cca([x, y], "pillai")[0, 1], abs=1e-10)
    # and on sides reduced to 90% of their variance (repsim.svcca itself denoises an orthonormal basis instead)
    rx, ry = _reduce(x, 0.9), _reduce(y, 0.9)
    assert M.get("svcca", variance=0.9).value(x, y) == pytest.approx(repsim.cca([rx, ry], "pillai")[0, 1], abs=1e-10)


# ---- the layer-monotonicity share of scripts/measure_sanity.py ------------------------------------------------


def test_monotonicity_share_on_analytic_matrices():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from measure_sanity import monotonicity

    idx = np.arange(5)
    distance = np.abs(idx[:, None] - idx[None, :]).astype(float)
    assert monotonicity(-distance) == {"share": 1.0, "share_first": 1.0, "share_last": 1.0, "triples": 10, "skipped": 0}
    assert monotonicity(distance)["share"] == 0.0  # farther = more similar: every check fails
    assert monotonicity(np.ones((5, 5)))["share"] == 0.5  # ties score one half
    # asymmetric: the first end ranks correctly, the last end backwards (V[k, j] = V[k, i] - 1 for i < j < k)
    v = np.where(idx[:, None] < idx[None, :], -distance, distance)
    got = monotonicity(v)
    assert (got["share_first"], got["share_last"], got["share"]) == (1.0, 0.0, 0.5)
    v[0, 1] = np.nan  # a refused pair: the triples that need it are skipped
    assert monotonicity(v)["skipped"] == 3 and monotonicity(v)["triples"] == 7
