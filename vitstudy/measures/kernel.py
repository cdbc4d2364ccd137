"""Kernel measures that stream over minibatches: linear and RBF CKA (Kornblith et al. 2019; Nguyen et al. 2021).

Both are CKA of two Gram matrices. Streaming, the engine U-centres each batch's Gram (`kernel`) and sums unbiased
HSIC; on the full set, `prepare` keeps the centred Gram H K H and `compare` is the biased CKA, the cosine of two
centred Grams (biased HSIC(K, L) ∝ <H K H, H L H>).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import VitstudyError
from . import Measure, register

if TYPE_CHECKING:  # torch is imported where a Gram is formed: `vitstudy list` reads the registry without it
    import torch


def _cosine(px: np.ndarray, py: np.ndarray) -> float:
    """Biased CKA from two flattened centred Grams: <HKH, HLH> / (‖HKH‖ ‖HLH‖)."""
    return float(px @ py / np.sqrt((px @ px) * (py @ py)))


def _centred(k: np.ndarray) -> np.ndarray:
    """H K H of a symmetric Gram (row and column means removed), flattened."""
    r = k.mean(axis=0)
    return (k - r[:, None] - r[None, :] + r.mean()).ravel()


@register
@dataclass(frozen=True, kw_only=True)
class LinearCKA(Measure):
    name = "cka"
    label = "linear CKA"
    summary = "linear centred kernel alignment: minibatch unbiased HSIC (streams) or biased on the full set"
    citation = "Kornblith et al. 2019; minibatch estimator: Nguyen et al. 2021"
    range = (0.0, 1.0)
    invariances = ("rotation", "isotropic_scaling", "permutation", "translation")
    streams = True

    def kernel(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        import torch

        from ..metrics.cka import gram

        return gram(x, dtype or torch.float32)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """H K H, the centred linear Gram, flattened (biased HSIC is its inner product with the other's)."""
        xc = x - x.mean(axis=0, keepdims=True)
        return (xc @ xc.T).ravel()

    def compare(self, px: np.ndarray, py: np.ndarray) -> float:
        return _cosine(px, py)


def median_distance(d2: torch.Tensor) -> torch.Tensor:
    """Median Euclidean distance over the pairs i < j of (n, n) squared distances (mean of the two middle ones)."""
    import torch

    n = d2.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=d2.device).triu_(1)
    d = d2[upper].sqrt().sort().values
    m = d.numel()
    return (d[(m - 1) // 2] + d[m // 2]) / 2


def rbf_gram(x: torch.Tensor, bandwidth: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """exp(-|x_i - x_j|² / (2 σ²)), σ = bandwidth x the median pairwise distance of these rows; (n, n) float64.

    Squared distances come from the (shifted) Gram, |a|² + |b|² - 2 a·b, clamped at 0. If at least half the pairs
    coincide (median 0), the kernel is its σ -> 0 limit: 1 for coinciding images, 0 otherwise.
    """
    import torch

    from ..metrics.cka import gram

    g = gram(x, dtype or torch.float32)
    sq = g.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_(min=0).fill_diagonal_(0)
    if d2.shape[0] < 2:
        return torch.ones_like(d2)
    sigma = bandwidth * median_distance(d2)
    if sigma == 0:
        return (d2 == 0).to(torch.float64)
    return torch.exp(-d2 / (2 * sigma**2))


@register
@dataclass(frozen=True, kw_only=True)
class RbfCKA(Measure):
    """CKA with a Gaussian kernel whose width follows the data: σ = bandwidth x the median pairwise distance.

    Streaming, σ is set per minibatch (from that batch's images); on the full set, from all images. Because σ
    scales with the distances, the measure is invariant to isotropic scaling as well as to rotations, shifts and
    neuron permutations; unlike linear CKA it also sees non-linear structure (small bandwidths weigh local
    neighbourhoods; large ones approach linear CKA).
    """

    name = "rbf_cka"
    label = "RBF CKA"
    summary = "CKA with a Gaussian kernel, σ = bandwidth x median pairwise distance (streams; biased on the full set)"
    citation = "Kornblith et al. 2019 (Sec. 3); minibatch estimator: Nguyen et al. 2021"
    range = (0.0, 1.0)
    invariances = ("rotation", "isotropic_scaling", "permutation", "translation")
    streams = True
    bandwidth: float = 1.0

    def __post_init__(self):
        b = self.bandwidth
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not (math.isfinite(b) and b > 0):
            raise VitstudyError(f"rbf_cka: bandwidth must be a positive number, got {self.bandwidth!r}")

    def kernel(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return rbf_gram(x, self.bandwidth, dtype)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """H K H of the full set's RBF Gram (σ from all its images), flattened."""
        import torch

        return _centred(rbf_gram(torch.from_numpy(x), self.bandwidth, torch.float64).numpy())

    def compare(self, px: np.ndarray, py: np.ndarray) -> float:
        return _cosine(px, py)
