"""Orthogonal Procrustes similarity (Ding et al. 2021; Williams et al. 2021): how far one layer is a rotation of another."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import Measure, register


def _normalised(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=0, keepdims=True)
    return xc / np.linalg.norm(xc)


@register
@dataclass(frozen=True, kw_only=True)
class Procrustes(Measure):
    """‖X̃ᵀỸ‖_* (nuclear norm), X̃ and Ỹ column-centred and scaled to unit Frobenius norm.

    1 means equal up to a rotation (and a shift and a scale); the angular Procrustes distance is its arccos.
    With more features than images, each side is first replaced by Rᵀ from a QR of its transpose (n columns):
    X̃ = Rᵀ Qᵀ with Q orthonormal, so the nuclear norm is unchanged and the product stays small.
    """

    name = "procrustes"
    label = "Procrustes similarity"
    summary = "nuclear norm of the cross-covariance of centred, unit-norm features (1 = equal up to rotation)"
    citation = "Ding et al. 2021; Williams et al. 2021 (angular distance = arccos)"
    range = (0.0, 1.0)
    invariances = ("rotation", "isotropic_scaling", "permutation", "translation")

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """The centred unit-norm features, reduced to at most n columns by a thin QR factor (exact)."""
        xn = _normalised(x)
        if xn.shape[1] > xn.shape[0]:  # X̃ᵀ = Q R: ‖X̃ᵀỸ‖_* = ‖Q R Ỹ‖_* = ‖R Ỹ‖_*, a quarter of a wide SVD's time
            xn = np.linalg.qr(xn.T, mode="r").T
        return xn

    def compare(self, px: np.ndarray, py: np.ndarray) -> float:
        return float(np.linalg.svd(px.T @ py, compute_uv=False).sum())
