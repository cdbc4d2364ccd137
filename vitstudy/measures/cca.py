"""CCA-family measures: SVCCA (Raghu et al. 2017) and projection-weighted CCA (Morcos et al. 2018).

Canonical correlations between two layers are the singular values of Q_xᵀQ_y, Q_x and Q_y orthonormal bases of
the centred features' column spaces (Björck & Golub 1973), so each layer is reduced once (`prepare`) to an
orthonormal (n, d) basis from a thin SVD: of the features when p <= n, of the n x n Gram matrix otherwise.
CCA with d_x + d_y > n - 1 directions is ill-posed: the two subspaces of the (n-1)-dimensional centred image
space then share at least d_x + d_y - (n-1) directions whatever the features, each a correlation of exactly 1;
such a pair is refused in one line rather than reported as similar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import VitstudyError
from . import INVARIANCES, Measure, register

RANK_TOLERANCE = 1e-10  # singular values below this fraction of the largest are numerical zeros (rank deficiency)
# ... and through the Gram matrix (p > n), whose eigenvalues carry an error of ~n·eps·λ_max: s below
# sqrt(n·eps)·s_max (1e-6 at n = 4,096) cannot be told from zero there


@dataclass(frozen=True)
class Basis:
    """A layer reduced for CCA: orthonormal directions u (n, d) of the centred features, their singular values s
    (d,), and for projection weighting the features' coordinates on them, uᵀX̃ (d, p), else None."""

    u: np.ndarray
    s: np.ndarray
    coordinates: np.ndarray | None = None


def centred_svd(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of column-centred features xc, rank-truncated (largest first).

    p > n: from the eigendecomposition of the n x n Gram matrix X̃X̃ᵀ = U S² Uᵀ (exact, and O(n² p) not O(n p²)).
    """
    n, p = xc.shape
    if p > n:
        w, u = np.linalg.eigh(xc @ xc.T)
        w, u = w[::-1], u[:, ::-1]
        s = np.sqrt(np.clip(w, 0.0, None))
        tolerance = max(RANK_TOLERANCE, float(np.sqrt(n * np.finfo(np.float64).eps)))
    else:
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        tolerance = RANK_TOLERANCE
    keep = s > tolerance * s[0] if s.size and s[0] > 0 else np.zeros(s.shape, bool)
    return u[:, keep], s[keep]


def check_room(d: int, n: int, measure: str) -> None:
    """A layer with d >= n - 1 directions leaves no room for any other (d + 1 > n - 1): refuse it at once,
    before its coordinates (d x p, large for tokens=flatten) are computed."""
    if n >= 2 and d > n - 2:
        lower = ", or a lower analysis.variance" if measure == "svcca" else ""
        raise VitstudyError(
            f"{measure}: a layer with {d} CCA directions fills the {n - 1} that {n} images span: "
            f"every canonical correlation would be 1; use more images (dataset.num_images), "
            f"tokens=mean{lower}"
        )


def correlations(bx: Basis, by: Basis, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """Canonical correlations (largest first, min(d_x, d_y) of them) and x's canonical directions in the
    basis of bx (d_x, min(d_x, d_y)); refuses a pair whose directions outnumber the images."""
    n, dx = bx.u.shape
    dy = by.u.shape[1]
    if dx == 0 or dy == 0:
        raise VitstudyError(f"{measure}: a layer's features are constant over the images; CCA is undefined")
    if dx + dy > n - 1:
        lower = ", or a lower analysis.variance" if measure == "svcca" else ""
        raise VitstudyError(
            f"{measure}: {dx} + {dy} CCA directions need more than {dx + dy} images (have {n}): "
            f"correlations of 1 would come from the image count alone; use more images "
            f"(dataset.num_images), tokens=mean{lower}"
        )
    left, rho, _ = np.linalg.svd(bx.u.T @ by.u, full_matrices=False)
    r = min(dx, dy)
    return np.clip(rho[:r], 0.0, 1.0), left[:, :r]


@register
@dataclass(frozen=True, kw_only=True)
class SVCCA(Measure):
    """Mean canonical correlation between the top singular directions of each layer that keep `variance` of it.

    Each side: centre, thin SVD, keep the fewest d directions with Σ_{i<=d} s_i² >= variance · Σ s_i²
    (Raghu et al. 2017 keep 99%); then CCA between the reduced sides, averaged over its min(d_x, d_y)
    correlations. The cut depends on the spectrum, so an invertible linear map of the features is not ignored.
    """

    name = "svcca"
    label = "SVCCA"
    summary = "mean canonical correlation between each layer's top SVD directions keeping `variance` of its variance"
    citation = "Raghu et al. 2017, SVCCA (NeurIPS)"
    range = (0.0, 1.0)
    invariances = ("rotation", "isotropic_scaling", "permutation", "translation")

    variance: float = 0.99

    def __post_init__(self):
        if not 0.0 < self.variance <= 1.0:
            raise VitstudyError(f"svcca: variance={self.variance} must be in (0, 1] (the share of variance kept)")

    def prepare(self, x: np.ndarray) -> Basis:
        u, s = centred_svd(x - x.mean(axis=0, keepdims=True))
        share = np.cumsum(s**2) / np.sum(s**2) if s.size else s
        d = min(int(np.searchsorted(share, self.variance - 1e-12)) + 1, s.size)
        check_room(d, len(x), self.name)
        return Basis(u[:, :d], s[:d])

    def compare(self, px: Basis, py: Basis) -> float:
        rho, _ = correlations(px, py, self.name)
        return float(rho.mean())


@register
@dataclass(frozen=True, kw_only=True)
class PWCCA(Measure):
    """Canonical correlations weighted by how much of layer x's neurons each canonical variate accounts for.

    CCA between the centred features X̃ and Ỹ (all directions, up to numerical rank) gives correlations ρ_i and
    x's canonical variates h_i (unit vectors over images, i < min(d_x, d_y)); the weight of ρ_i is
    α_i = Σ_j |⟨h_i, x̃_j⟩| over x's neurons x̃_j (Morcos et al. 2018, Eq. 2), PWCCA = Σ α_i ρ_i / Σ α_i.
    The weights come from x only, so PWCCA(X, Y) != PWCCA(Y, X): asymmetric, x's neurons weigh.
    Morcos et al.'s code (google/svcca pwcca.py) weighs by whichever side has fewer neurons (x on a tie) and
    projects with uncentred activations; here it is always x, centred (translation then leaves it unchanged).
    """

    name = "pwcca"
    label = "PWCCA"
    summary = "canonical correlations weighted by each variate's projection onto layer x's neurons (asymmetric)"
    citation = (
        "Morcos et al. 2018, Insights on representational similarity in neural networks with canonical correlation"
    )
    range = (0.0, 1.0)
    invariances = ("isotropic_scaling", "permutation", "translation")
    invariances_y = tuple(INVARIANCES)  # y enters only through its column space
    symmetric = False

    def prepare(self, x: np.ndarray) -> Basis:
        xc = x - x.mean(axis=0, keepdims=True)
        u, s = centred_svd(xc)
        check_room(len(s), len(x), self.name)
        return Basis(u, s, u.T @ xc)

    def compare(self, px: Basis, py: Basis) -> float:
        rho, directions = correlations(px, py, self.name)
        weights = np.abs(directions.T @ px.coordinates).sum(axis=1)  # |⟨h_i, x̃_j⟩| summed over neurons j
        return float(weights @ rho / weights.sum())
