"""Representational similarity analysis (Kriegeskorte et al. 2008): do two layers order image pairs alike?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import Measure, register

TIE_DECIMALS = 12  # dissimilarities equal to this many decimals are ties: matmul rounding must not break them


def rdm(x: np.ndarray) -> np.ndarray:
    """The (n, n) correlation-distance RDM, 1 - Pearson(x_i, x_j) between images (rows); n x n, however wide x is."""
    z = x - x.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant image has no correlation: NaN (so is RSA)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return 1.0 - z @ z.T


@register
@dataclass(frozen=True, kw_only=True)
class RSA(Measure):
    """Spearman correlation of the upper triangles of the two layers' RDMs, RDM[i, j] = 1 - Pearson(x_i, x_j).

    `prepare` ranks each layer's n(n-1)/2 dissimilarities once (average ranks for ties, as scipy's rankdata)
    and centres and normalises the ranks, so `compare` is one dot product: the Pearson correlation of ranks.
    Correlation distance removes each image's mean and scale over features, so the value is unchanged by
    scaling and by permuting neurons, but not by rotations or shifts of the feature space, which change it.
    """

    name = "rsa"
    label = "RSA (Spearman of RDMs)"
    summary = "Spearman correlation of the two correlation-distance RDMs' upper triangles (Kriegeskorte et al.)"
    citation = "Kriegeskorte et al. 2008"
    range = (-1.0, 1.0)
    invariances = ("isotropic_scaling", "permutation")

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Centred, unit-norm average ranks of the RDM's upper triangle (i < j)."""
        d = rdm(x)[np.triu_indices(len(x), k=1)].round(TIE_DECIMALS)
        import pandas as pd  # imported here: the registry loads without it (`vitstudy list`)

        r = pd.Series(d).rank(method="average").to_numpy()
        r = r - r.mean()
        return r / np.linalg.norm(r)

    def compare(self, px: np.ndarray, py: np.ndarray) -> float:
        return float(px @ py)
