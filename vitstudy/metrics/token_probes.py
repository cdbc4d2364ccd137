"""Linear probes of single tokens (Darcet et al. 2024, Table 1): which patch tokens to keep per image and a closed-form
ridge probe (vitstudy.metrics.ridge) fitted on the tokens of train images and scored on those of test images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ridge import RidgeAccumulator


def pick(high: torch.Tensor, per_image: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of `high` (B, N bool): up to `per_image` of its high-norm positions and `per_image` random normal
    ones (seeded); returns (high, normal) as (B, per_image) position indices, -1 where an image has fewer."""
    b, n = high.shape
    keys = torch.rand(b, n, generator=generator).to(high.device)
    out = []
    for group in (high, ~high):
        order = torch.argsort(torch.where(group, keys, keys + 2.0), dim=1)[
            :, :per_image
        ]  # the group's first, random order
        ok = torch.gather(group, 1, order)
        out.append(torch.where(ok, order, torch.full_like(order, -1)))
    return out[0], out[1]


@dataclass(frozen=True)
class ProbeScore:
    """A probe's test accuracy as counts: `correct` of `num_test` test tokens, fitted on `num_train` train tokens."""

    correct: int
    num_test: int
    num_train: int


def ridge_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, alpha: float
) -> ProbeScore:
    """Ridge regression to {-1, 1} one-hot targets over the train labels' classes (λ = alpha · tr(C) / D, bias free),
    predicted class = argmax; a test label absent from train counts as wrong."""
    classes = np.unique(y_train)
    acc = RidgeAccumulator(1, x_train.shape[1], len(classes))
    acc.update(
        torch.as_tensor(x_train, dtype=torch.float64)[:, None], torch.as_tensor(np.searchsorted(classes, y_train))
    )
    pred = acc.solve([alpha]).predict(torch.as_tensor(x_test, dtype=torch.float64)[:, None])[0, :, 0].numpy()
    return ProbeScore(int((classes[pred] == y_test).sum()), len(y_test), len(y_train))
