"""Linear regression R²: how much of one layer a least-squares linear map (with intercept) from another explains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import Measure, register


@dataclass(frozen=True)
class Basis:
    """One layer's centred features as their thin SVD, U S Vᵀ, numerically zero directions dropped.

    As predictor, the columns of `u` span the centred features (the least-squares fit projects onto them);
    as target, only ‖Uᵀ·(U S)‖ terms are needed, so V is never kept: n x rank numbers per layer, not n x p.
    """

    u: np.ndarray  # (n, r) orthonormal basis of the centred features' column space
    s: np.ndarray  # (r,) their singular values


@register
@dataclass(frozen=True, kw_only=True)
class LinearRegression(Measure):
    """R² = 1 - ‖Y - Ŷ‖²_F / ‖Y - Ȳ‖²_F, Ŷ the least-squares prediction of layer y from layer x with an intercept.

    With centred features the fit is the projection of Y_c onto the column space of X_c, so
    R² = ‖U_xᵀ Y_c‖²_F / ‖Y_c‖²_F, from the thin SVD of each side (stable: no normal equations, and the n x n
    form when features outnumber images). The x side enters only through that column space, so any
    invertible linear map and shift of x leaves R² unchanged; the y side is a ratio of Frobenius norms, unchanged
    by rotations, scaling and shifts but not by general linear maps (they reweight y's directions).
    Unregularised: once x has at least n - 1 linearly independent centred features (p >= n - 1 for generic
    features, so p >= n in particular) the fit is perfect and R² = 1 for any y: compare wide layers on
    held-out images or with a measure that does not fit (cka, procrustes). Asymmetric: x predicts y.
    """

    name = "linear_regression"
    label = "linear regression R²"
    summary = "R² of a least-squares linear fit (with intercept) of layer y from layer x; asymmetric, 1 once p >= n"
    citation = "Kornblith et al. 2019 (related similarity indexes: linear regression); Klabunde et al. 2023 (survey)"
    range = (0.0, 1.0)
    invariances = ("rotation", "isotropic_scaling", "permutation", "translation", "invertible_linear")
    invariances_y = ("rotation", "isotropic_scaling", "permutation", "translation")
    symmetric = False

    def prepare(self, x: np.ndarray) -> Basis:
        """Thin SVD of the centred features; singular values below the matrix_rank tolerance are dropped.

        Wider than tall (p > n), X_c = Rᵀ Qᵀ from a QR of X_cᵀ (R only, n x n): X_c and Rᵀ share U and S, and
        the QR costs a fraction of a wide SVD while staying backward stable (unlike the eigenvalues of X_c X_cᵀ).
        """
        xc = x - x.mean(axis=0, keepdims=True)
        a = np.linalg.qr(xc.T, mode="r").T if xc.shape[1] > xc.shape[0] else xc
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        keep = s > (s[0] * max(xc.shape) * np.finfo(np.float64).eps if s.size else 0.0)
        return Basis(u=u[:, keep], s=s[keep])

    def compare(self, px: Basis, py: Basis) -> float:
        total = float(py.s @ py.s)
        if total == 0:
            return float("nan")  # y is the same for every image: nothing to explain
        explained = ((px.u.T @ py.u) * py.s) ** 2
        return float(min(explained.sum() / total, 1.0))
