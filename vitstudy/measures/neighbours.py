"""Nearest-neighbour measures (Huh et al. 2024, The Platonic Representation Hypothesis): mutual kNN and CKNNA.

Both compare which images each layer puts next to each image under cosine similarity, so they see local
structure that CKA (dominated by the largest directions of variance) can miss. Neighbours: the k images of
highest cosine similarity, the image itself excluded, equal similarities ordered by image index (the lower
first, as a stable sort would); an all-zero feature row has similarity 0 to every image. Both keep only (n, k)
arrays per layer, so a pair costs O(n k²) after a per-layer O(n² p) similarity pass (row blocks of 1,024 images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import VitstudyError
from . import Measure, register

BLOCK = 1024  # images per block of the similarity pass: memory O(BLOCK x n), not O(n²)


@dataclass(frozen=True)
class Neighbours:
    """A layer's k nearest neighbours per image (n, k; nearest first) and their cosine similarities (n, k)."""

    index: np.ndarray
    similarity: np.ndarray


def neighbours(x: np.ndarray, k: int, measure: str) -> Neighbours:
    """The k nearest neighbours of every image by cosine similarity, itself excluded (ties: lower index first).

    Cosines come from blocks of the Gram matrix divided by the row norms, so x (possibly n x 200k) is not copied.
    """
    n = x.shape[0]
    if k < 1 or k >= n:
        raise VitstudyError(
            f"{measure}: k={k} needs 1 <= k < the number of images ({n}); set analysis.k lower or use more images"
        )
    norms = np.linalg.norm(x, axis=1)
    norms = np.where(norms > 0, norms, 1.0)  # an all-zero row: cosine 0 to every image
    index = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float64)
    for start in range(0, n, BLOCK):
        rows = np.arange(start, min(start + BLOCK, n))
        s = (x[rows] @ x.T) / np.outer(norms[rows], norms)
        s[np.arange(len(rows)), rows] = -np.inf  # the image itself is no neighbour
        index[rows], sim[rows] = top_k(s, k)
    return Neighbours(index, sim)


def top_k(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of s, the columns of the k largest values, largest first, equal values by column index.

    Only the candidates (values >= the row's k-th largest, ties included) are sorted: O(n) per row, not O(n log n).
    """
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1]
    r, c = np.nonzero(s >= kth[:, None])
    v = s[r, c]
    order = np.lexsort((c, -v, r))  # by row, then value descending, then column
    r, c, v = r[order], c[order], v[order]
    starts = np.searchsorted(r, np.arange(len(s)))
    take = starts[:, None] + np.arange(k)
    return c[take], v[take]


def shared(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, k) boolean: a[i, j] is also among b[i] (the neighbour lists of image i under two layers)."""
    return (a[:, :, None] == b[:, None, :]).any(axis=2)


@register
@dataclass(frozen=True, kw_only=True)
class MutualKNN(Measure):
    """Mean over images of |kNN_X(i) ∩ kNN_Y(i)| / k, neighbours by cosine similarity, the image itself excluded."""

    name = "mutual_knn"
    label = "mutual kNN"
    summary = "share of each image's k nearest neighbours (cosine) that two layers have in common, averaged"
    citation = "Huh et al. 2024, The Platonic Representation Hypothesis (mutual k-nearest-neighbour alignment)"
    range = (0.0, 1.0)
    invariances = ("rotation", "isotropic_scaling", "permutation")

    k: int = 10

    def __post_init__(self):
        if self.k < 1:
            raise VitstudyError(f"mutual_knn: k={self.k} must be at least 1")

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return neighbours(x, self.k, self.name).index

    def compare(self, px: np.ndarray, py: np.ndarray) -> float:
        return float(shared(px, py).sum(axis=1).mean() / px.shape[1])


def _hsic_unbiased(n: int, rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012, Eq. 5) of two sparse n x n matrices A, B with zero diagonals, both given
    at the same distinct positions (rows, cols): (Σ A∘Bᵀ + ΣA ΣB / ((n-1)(n-2)) - 2·1ᵀAB1 / (n-2)) / (n(n-3))."""
    keys = rows * n + cols
    order = np.argsort(keys)
    where = np.searchsorted(keys[order], cols * n + rows).clip(max=len(keys) - 1)
    found = keys[order][where] == cols * n + rows  # B_ji is stored (else it is 0)
    b_transposed = np.where(found, b[order][where], 0.0)
    col_a = np.bincount(cols, weights=a, minlength=n)  # 1ᵀA
    row_b = np.bincount(rows, weights=b, minlength=n)  # B1
    total = float(a @ b_transposed) + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2.0 * float(col_a @ row_b) / (n - 2)
    return total / (n * (n - 3))


@dataclass(frozen=True)
class PreparedCKNNA:
    neighbours: Neighbours
    self_alignment: float  # the layer's own masked HSIC, the normaliser


@register
@dataclass(frozen=True, kw_only=True)
class CKNNA(Measure):
    """CKA restricted to mutual k-nearest-neighbour pairs, as in Huh et al.'s code (`metrics.cknna`, unbiased=True).

    With K, L the cosine Gram matrices and M[i, j] = 1 when j is among the k nearest neighbours of i under both
    (the image itself excluded), align(K, L) = HSIC_unbiased(M∘K, M∘L) and
    CKNNA = align(K, L) / sqrt(align(K, K) align(L, L)); align(K, K) uses K's own neighbour mask.
    M∘K is not symmetric, and the unbiased HSIC's term 1ᵀ(M∘K)(M∘L)1 depends on the order of its arguments,
    so their code gives cknna(X, Y) and cknna(Y, X) that differ in the fourth decimal; this is the mean of the
    two orders, which is symmetric. Their 1e-6 added to the denominator is left out (a guard, not the definition).
    """

    name = "cknna"
    label = "CKNNA"
    summary = "CKA (unbiased HSIC, cosine kernels) restricted to pairs that are k nearest neighbours in both layers"
    citation = "Huh et al. 2024, The Platonic Representation Hypothesis (Appendix A; their metrics.cknna)"
    range = (-1.0, 1.0)
    invariances = ("rotation", "isotropic_scaling", "permutation")
    minimum_images: ClassVar[int] = 4  # unbiased HSIC divides by n(n-3)

    k: int = 10

    def __post_init__(self):
        if self.k < 2:
            raise VitstudyError(f"cknna: k={self.k} is too small; it needs k >= 2 (as in Huh et al.'s code)")

    def prepare(self, x: np.ndarray) -> PreparedCKNNA:
        n = x.shape[0]
        if n < self.minimum_images:
            raise VitstudyError(f"cknna needs at least {self.minimum_images} images, got {n}")
        nb = neighbours(x, self.k, self.name)
        rows = np.repeat(np.arange(n), self.k)
        cols, vals = nb.index.ravel(), nb.similarity.ravel()
        return PreparedCKNNA(nb, _hsic_unbiased(n, rows, cols, vals, vals))

    def _align(self, px: PreparedCKNNA, py: PreparedCKNNA, reverse: bool) -> float:
        n, k = px.neighbours.index.shape
        both = shared(px.neighbours.index, py.neighbours.index)  # (n, k) over x's neighbour lists
        rows = np.repeat(np.arange(n), k).reshape(n, k)[both]
        cols = px.neighbours.index[both]
        a = px.neighbours.similarity[both]
        # y's similarity at the same (i, j): the position of j in y's list of i
        match = px.neighbours.index[:, :, None] == py.neighbours.index[:, None, :]
        b = np.where(match, py.neighbours.similarity[:, None, :], 0.0).sum(axis=2)[both]
        return _hsic_unbiased(n, rows, cols, b, a) if reverse else _hsic_unbiased(n, rows, cols, a, b)

    def compare(self, px: PreparedCKNNA, py: PreparedCKNNA) -> float:
        cross = 0.5 * (self._align(px, py, False) + self._align(px, py, True))
        return float(cross / np.sqrt(px.self_alignment * py.self_alignment))
