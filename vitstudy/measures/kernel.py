"""Kernel measures that stream over minibatches: linear CKA (Kornblith et al. 2019; minibatch form Nguyen et al. 2021)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..metrics.cka import gram
from . import Measure, register


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

    def kernel(self, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return gram(x, dtype)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """H K H, the centred linear Gram, flattened (biased HSIC is its inner product with the other's)."""
        xc = x - x.mean(axis=0, keepdims=True)
        return (xc @ xc.T).ravel()

    def compare(self, px: np.ndarray, py: np.ndarray) -> float:
        return float(px @ py / np.sqrt((px @ px) * (py @ py)))
