"""Similarity measures by name (`analysis.measure=NAME`): each declared once, the engine gives it the rest.

A measure is a frozen dataclass subclass of `Measure` whose fields are its parameters (e.g. `k` of mutual_knn):
it says what it is (label, range, invariances, symmetry, citation) and how to compute it, in one of two ways:

- streaming (`kernel`): one batch's n x n Gram matrix; the engine sums unbiased HSIC terms over minibatches and
  normalises once (Nguyen et al. 2021), exactly as linear CKA does, so memory never grows with the image count;
- full-set (`prepare` + `compare`): float64 numpy features of every image of one layer (n, p), token-reduced,
  from a bounded feature store; `prepare` runs once per layer and image subset (an RDM, an SVD, a normalisation),
  `compare(px, py)` gives the value of layer x against layer y (x predicting y when the measure is asymmetric).

A measure may offer both (linear CKA: minibatch HSIC, or biased CKA on the full set). The engine adds repeats,
jackknife intervals, permutation nulls, resume, the feature cache and `vitstudy compare` (docs/measures.md).
Importing this package imports every module in it, which registers its measures.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..errors import VitstudyError, closest

# what may leave a measure unchanged, applied to one side's features X (n images x p features)
INVARIANCES = {
    "rotation": "X -> X Q, Q orthogonal (p x p)",
    "isotropic_scaling": "X -> c X, c > 0",
    "permutation": "X -> X P, P a permutation of the features (neurons)",
    "translation": "X -> X + 1 bᵀ, the same vector added to every image",
    "invertible_linear": "X -> X A, A invertible (p x p)",
}


@dataclass(frozen=True, kw_only=True)
class Measure:
    """A similarity measure between two layers' representations of the same images (subclass, then `register`)."""

    name: ClassVar[str]
    label: ClassVar[str]  # axis and colour-bar label, e.g. "linear CKA"
    summary: ClassVar[str]  # one line for `vitstudy list`
    citation: ClassVar[str]  # the paper that defines it
    range: ClassVar[
        tuple[float, float]
    ]  # the values it can take: intervals are cut to it, figures use it as the colour range
    invariances: ClassVar[
        tuple[str, ...]
    ]  # keys of INVARIANCES that hold exactly (x side; both sides unless invariances_y)
    invariances_y: ClassVar[tuple[str, ...] | None] = None  # asymmetric measures: the y side's, when they differ
    symmetric: ClassVar[bool] = (
        True  # False: compare(x, y) != compare(y, x); tables hold both directions, x predicting y
    )
    streams: ClassVar[bool] = False  # True: `kernel` is defined and the value decomposes over minibatches (HSIC sums)
    full_set: ClassVar[bool] = True  # True: `prepare`/`compare` are defined (features of the whole image set)

    def kernel(self, x, dtype) -> Any:
        """Streaming measures: the (n, n) float64 torch Gram matrix of one batch's features x (n, p)."""
        raise NotImplementedError(f"{self.name} does not stream over minibatches")

    def prepare(self, x: np.ndarray) -> Any:
        """Per layer and image set: whatever `compare` needs from the (n, p) float64 features (default: x)."""
        return x

    def compare(self, px: Any, py: Any) -> float:
        """Full-set value of layer x against layer y from their prepared features."""
        raise NotImplementedError(f"{self.name} has no full-set form")

    def value(self, x: np.ndarray, y: np.ndarray) -> float:
        """compare(prepare(x), prepare(y)) on (n, p) and (n, q) features of the same n images."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same images: {x.shape[0]} vs {y.shape[0]} rows")
        return float(self.compare(self.prepare(x.reshape(len(x), -1)), self.prepare(y.reshape(len(y), -1))))

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """The measure's parameters and their defaults (`analysis.<name>` keys of the similarity analyses)."""
        return {f.name: f.default for f in fields(cls)}


MEASURES: dict[str, type[Measure]] = {}


def register(cls: type[Measure]) -> type[Measure]:
    """Class decorator: add a Measure subclass to the registry under its `name`."""
    missing = [k for k in ("name", "label", "summary", "citation", "range", "invariances") if not hasattr(cls, k)]
    if missing:
        raise TypeError(f"{cls.__name__} must declare {', '.join(missing)}")
    unknown = set(cls.invariances) - set(INVARIANCES)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown invariances {sorted(unknown)}; valid: {sorted(INVARIANCES)}")
    MEASURES[cls.name] = cls
    return cls


def get(name: str, **params) -> Measure:
    """The measure `name` with its parameters (unknown names and parameters answered in one line)."""
    if name not in MEASURES:
        raise VitstudyError(f"unknown measure '{name}'; {closest(name, MEASURES)}")
    cls = MEASURES[name]
    valid = cls.parameters()
    for key in params:
        if key not in valid:
            raise VitstudyError(
                f"measure {name} has no parameter '{key}'; its parameters: {', '.join(valid) or 'none'}"
            )
    return cls(**params)


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
