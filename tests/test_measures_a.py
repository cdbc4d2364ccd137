"""cka, procrustes, rbf_cka, linear_regression and rsa against float64 numpy versions of their definitions.

Each reference below is written from the paper's formula (explicit centring matrix H, loops over image pairs,
least squares by lstsq on [1, X], ranks counted by hand), not from the measure's code path. Cases: fewer and
more features than images (p > n is where the measures switch to n x n or thin-SVD forms), analytic values
(identical features, exact linear maps, a target orthogonal to the predictor), and rsatoolbox's RSA numbers
when it is installed (test extra).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vitstudy import measures as M
from vitstudy.errors import VitstudyError
from vitstudy.metrics.cka import cka as engine_cka

SHAPES = [pytest.param(60, 12, 9, id="p<n"), pytest.param(30, 500, 400, id="p>n")]


def _pair(n: int, p: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x, and y a noisy non-linear function of it (so no measure sits at 0 or 1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) + 0.5
    y = np.tanh(x @ rng.normal(size=(p, q)) / np.sqrt(p)) + 0.3 * rng.normal(size=(n, q)) + 1.0
    return x, y


def _nontrivial(value: float) -> None:
    """The case tells something: the value is neither 0 nor 1 (wide random features push kernels towards 1)."""
    assert 0.05 < value < 0.999


# ---- references (float64 numpy, textbook forms) ----


def _hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Biased HSIC, tr(K H L H) / (n - 1)², H = I - 11ᵀ/n (Gretton et al. 2005; Kornblith et al. 2019 Eq. 3)."""
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def _cka(k: np.ndarray, l: np.ndarray) -> float:
    return _hsic(k, l) / np.sqrt(_hsic(k, k) * _hsic(l, l))


def _hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012, Eq. 5, with the diagonals zeroed."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return float(
        np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ k @ l @ one)
    ) / (n * (n - 3))


def _distances(x: np.ndarray) -> np.ndarray:
    """Euclidean distances between every pair of rows, one pair at a time."""
    n = len(x)
    d = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        d[i, j] = d[j, i] = np.sqrt(np.sum((x[i] - x[j]) ** 2))
    return d


def _rbf(x: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel, σ = bandwidth x the median distance over pairs i < j (Kornblith et al. 2019, Sec. 3)."""
    d = _distances(x)
    sigma = bandwidth * np.median(d[np.triu_indices(len(x), 1)])
    return np.exp(-(d**2) / (2 * sigma**2))


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    """1 - ‖Y - Ŷ‖²_F / ‖Y - Ȳ‖²_F, Ŷ the least-squares fit of Y on [1, X]."""
    a = np.hstack([np.ones((len(x), 1)), x])
    b, *_ = np.linalg.lstsq(a, y, rcond=None)
    return 1 - np.sum((y - a @ b) ** 2) / np.sum((y - y.mean(axis=0)) ** 2)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _rdm_upper(x: np.ndarray) -> np.ndarray:
    """1 - Pearson(x_i, x_j) for i < j, row-major (Kriegeskorte et al. 2008)."""
    return np.array([1 - _pearson(x[i], x[j]) for i, j in itertools.combinations(range(len(x)), 2)])


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span: (# smaller) + (# equal + 1) / 2."""
    return np.array([(v < a).sum() + ((v == a).sum() + 1) / 2 for a in v])


def _rsa(x: np.ndarray, y: np.ndarray, ranks=_average_ranks) -> float:
    return _pearson(ranks(_rdm_upper(x)), ranks(_rdm_upper(y)))


def _orthogonal_target(x: np.ndarray, q: int, seed: int = 1) -> np.ndarray:
    """Features whose centred columns are orthogonal to every centred column of x (residuals of a fit on [1, x])."""
    noise = np.random.default_rng(seed).normal(size=(len(x), q))
    a = np.hstack([np.ones((len(x), 1)), x])
    b, *_ = np.linalg.lstsq(a, noise, rcond=None)
    return noise - a @ b + 2.0


# ---- linear CKA ----


@pytest.mark.parametrize("n,p,q", SHAPES)
def test_cka_equals_biased_hsic_formula_and_feature_space_form(n, p, q):
    x, y = _pair(n, p, q)
    value = M.get("cka").value(x, y)
    assert value == pytest.approx(_cka(x @ x.T, y @ y.T), abs=1e-10)
    xc, yc = x - x.mean(0), y - y.mean(0)  # Kornblith et al. Eq. 5: ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)
    feature_form = np.sum((yc.T @ xc) ** 2) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert value == pytest.approx(feature_form, abs=1e-10)
    _nontrivial(value)


def test_cka_analytic_values():
    x, _ = _pair(40, 6, 1)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(6, 6)))
    assert M.get("cka").value(x, x) == pytest.approx(1, abs=1e-12)
    assert M.get("cka").value(x, 2.5 * x @ q - 4.0) == pytest.approx(1, abs=1e-12)
    assert M.get("cka").value(x, _orthogonal_target(x, 5)) == pytest.approx(0, abs=1e-12)


def test_cka_streaming_kernel_is_the_linear_gram_up_to_centring():
    x, _ = _pair(16, 20, 1)
    k = M.get("cka").kernel(torch.from_numpy(x), torch.float64).numpy()
    h = np.eye(16) - 1 / 16
    np.testing.assert_allclose(h @ k @ h, h @ (x @ x.T) @ h, atol=1e-10)


# ---- Procrustes ----


def _nuclear(m: np.ndarray) -> float:
    """Nuclear norm as tr((MᵀM)^½): square roots of the non-zero eigenvalues of the smaller Gram of M."""
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    w = np.linalg.eigvalsh(g)
    return float(np.sqrt(w[w > 1e-12 * w.max()]).sum())


@pytest.mark.parametrize("n,p,q", SHAPES)
def test_procrustes_equals_nuclear_norm_by_eigenvalues(n, p, q):
    x, y = _pair(n, p, q)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = _nuclear((xc / np.linalg.norm(xc)).T @ (yc / np.linalg.norm(yc)))
    assert M.get("procrustes").value(x, y) == pytest.approx(expected, abs=1e-9)
    _nontrivial(expected)


def test_procrustes_analytic_values():
    x, _ = _pair(30, 500, 1)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(500, 500)))
    assert M.get("procrustes").value(x, 0.2 * x @ q + 7.0) == pytest.approx(1, abs=1e-10)
    x, _ = _pair(40, 6, 1)
    assert M.get("procrustes").value(x, _orthogonal_target(x, 5)) == pytest.approx(0, abs=1e-10)


# ---- RBF CKA ----


@pytest.mark.parametrize("bandwidth", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("n,p,q", SHAPES)
def test_rbf_cka_equals_hsic_of_gaussian_grams(n, p, q, bandwidth):
    x, y = _pair(n, p, q)
    value = M.get("rbf_cka", bandwidth=bandwidth).value(x, y)
    assert value == pytest.approx(_cka(_rbf(x, bandwidth), _rbf(y, bandwidth)), abs=1e-10)
    _nontrivial(value)


@pytest.mark.parametrize("n", [8, 9])  # 28 pairs (median = mean of the middle two) and 36
def test_rbf_kernel_is_the_gaussian_gram_with_median_bandwidth(n):
    x, _ = _pair(n, 50, 1)
    measure = M.get("rbf_cka", bandwidth=1.5)
    k64 = measure.kernel(torch.from_numpy(x), torch.float64)
    assert k64.dtype == torch.float64
    np.testing.assert_allclose(k64.numpy(), _rbf(x, 1.5), atol=1e-12)
    k32 = measure.kernel(torch.from_numpy(x).float(), torch.float32)  # distances from the float32 Gram
    np.testing.assert_allclose(k32.numpy(), _rbf(x, 1.5), atol=1e-5)


def test_rbf_kernel_gives_the_engine_the_unbiased_cka_of_gaussian_grams():
    x, y = _pair(24, 40, 30)
    measure = M.get("rbf_cka")
    k, l = (measure.kernel(torch.from_numpy(a), torch.float64) for a in (x, y))
    kr, lr = _rbf(x, 1.0), _rbf(y, 1.0)
    expected = _hsic_unbiased(kr, lr) / np.sqrt(_hsic_unbiased(kr, kr) * _hsic_unbiased(lr, lr))
    assert engine_cka(k, l, "unbiased") == pytest.approx(expected, abs=1e-10)


def test_rbf_cka_analytic_values_and_linear_limit():
    x, y = _pair(40, 6, 5)
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(6, 6)))
    rbf = M.get("rbf_cka")
    assert rbf.value(x, x) == pytest.approx(1, abs=1e-12)
    assert rbf.value(x, 3.0 * x @ q + 1.0) == pytest.approx(1, abs=1e-10)  # σ follows the scale
    # σ -> ∞: exp(-d²/2σ²) ≈ 1 - d²/2σ², and -d²/2 double-centred is the centred linear Gram
    assert M.get("rbf_cka", bandwidth=1e3).value(x, y) == pytest.approx(M.get("cka").value(x, y), abs=1e-6)
    assert abs(M.get("rbf_cka", bandwidth=0.3).value(x, y) - M.get("cka").value(x, y)) > 1e-2


def test_rbf_kernel_with_a_zero_median_distance_is_the_coincidence_indicator():
    x = np.zeros((6, 3))
    x[5] = 1.0  # 10 of 15 pairs coincide: median distance 0
    k = M.get("rbf_cka").kernel(torch.from_numpy(x), torch.float64).numpy()
    expected = np.ones((6, 6))
    expected[5, :5] = expected[:5, 5] = 0
    np.testing.assert_array_equal(k, expected)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "1", True])
def test_rbf_cka_refuses_a_non_positive_bandwidth_in_one_line(bad):
    with pytest.raises(VitstudyError, match="rbf_cka: bandwidth must be a positive number"):
        M.get("rbf_cka", bandwidth=bad)


# ---- linear regression ----


@pytest.mark.parametrize("n,p,q", [pytest.param(60, 12, 9, id="p<n"), pytest.param(60, 40, 9, id="p<n wide")])
def test_linear_regression_equals_least_squares_r2(n, p, q):
    x, y = _pair(n, p, q)
    value = M.get("linear_regression").value(x, y)
    assert value == pytest.approx(_r2(x, y), abs=1e-10)
    _nontrivial(value)
    assert M.get("linear_regression").value(y, x) == pytest.approx(_r2(y, x), abs=1e-10)  # the other direction
    assert abs(M.get("linear_regression").value(y, x) - value) > 1e-3


@pytest.mark.parametrize("p", [29, 30, 500])  # n - 1 independent centred features already fit anything
def test_linear_regression_is_one_once_features_reach_the_image_count(p):
    x, _ = _pair(30, p, 1)
    y = np.random.default_rng(5).normal(size=(30, 7))  # unrelated to x
    assert _r2(x, y) == pytest.approx(1, abs=1e-9)
    assert M.get("linear_regression").value(x, y) == pytest.approx(1, abs=1e-10)


def test_linear_regression_analytic_values():
    x, _ = _pair(50, 8, 1)
    rng = np.random.default_rng(4)
    lr = M.get("linear_regression")
    assert lr.value(x, x @ rng.normal(size=(8, 5)) - 3.0) == pytest.approx(1, abs=1e-12)
    e = _orthogonal_target(x, 5)
    assert lr.value(x, e) == pytest.approx(0, abs=1e-12)
    # y = X w + e, e orthogonal to [1, X]: R² = ‖X_c w‖² / (‖X_c w‖² + ‖e_c‖²)
    signal = (x - x.mean(0)) @ rng.normal(size=(8, 5))
    noise = e - e.mean(0)
    expected = np.sum(signal**2) / (np.sum(signal**2) + np.sum(noise**2))
    assert lr.value(x, signal + e) == pytest.approx(expected, abs=1e-12)
    assert lr.value(np.ones((50, 3)), e) == 0  # a constant predictor explains nothing
    assert np.isnan(lr.value(x, np.ones((50, 3))))  # a constant target has nothing to explain


# ---- RSA ----


@pytest.mark.parametrize("n,p,q", SHAPES)
def test_rsa_equals_spearman_of_correlation_rdms(n, p, q):
    x, y = _pair(n, p, q)
    value = M.get("rsa").value(x, y)
    assert value == pytest.approx(_rsa(x, y), abs=1e-10)
    _nontrivial(value)


def test_rsa_analytic_values():
    x, _ = _pair(30, 20, 1)
    assert M.get("rsa").value(x, x) == pytest.approx(1, abs=1e-12)
    # a positive scale and a shift per image keep every correlation between images: equal RDMs, RSA 1
    rng = np.random.default_rng(2)
    y = x * rng.uniform(0.5, 2, (30, 1)) + rng.normal(size=(30, 1))
    assert M.get("rsa").value(x, y) == pytest.approx(1, abs=1e-12)


def test_rsa_of_an_image_without_variance_is_nan():
    x, y = _pair(20, 10, 8)
    x[3] = 1.5  # no correlation with any image
    assert np.isnan(M.get("rsa").value(x, y))


def test_rsa_ties_take_average_ranks():
    x, y = _pair(24, 30, 20, seed=3)
    x[1], x[5], x[9] = x[0], x[4], x[8]  # duplicate images: whole rows of the RDM tie exactly
    y[3] = y[2]
    value = M.get("rsa").value(x, y)
    assert value == pytest.approx(_rsa(x, y), abs=1e-10)

    def first_seen(v):  # ties broken by position: what ignoring ties would give
        return np.argsort(np.argsort(v, kind="stable"), kind="stable") + 1.0

    assert abs(value - _rsa(x, y, ranks=first_seen)) > 1e-6


def test_rsa_matches_rsatoolbox():
    rsatoolbox = pytest.importorskip("rsatoolbox")
    for n, p, q in [(60, 12, 9), (30, 500, 400)]:
        x, y = _pair(n, p, q, seed=n)
        rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(a), method="correlation") for a in (x, y)]
        expected = float(rsatoolbox.rdm.compare(rdms[0], rdms[1], method="spearman")[0, 0])
        assert M.get("rsa").value(x, y) == pytest.approx(expected, abs=1e-10)


def test_measures_declare_their_shape():
    assert M.MEASURES["rbf_cka"].streams and M.MEASURES["rbf_cka"].parameters() == {"bandwidth": 1.0}
    assert not M.MEASURES["linear_regression"].symmetric and not M.MEASURES["linear_regression"].streams
    assert M.MEASURES["rsa"].range == (-1.0, 1.0) and M.MEASURES["rsa"].parameters() == {}
