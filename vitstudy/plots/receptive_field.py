"""Effective receptive fields: input-gradient maps per sublayer, after and before the residual (Raghu et al. Fig. 6)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import sns  # noqa: F401  (Agg backend and theme)


def erf_figure(maps: list[tuple[str, str, np.ndarray]], title: str):
    """Fig. 6 / C.1-C.4: one panel per layer (columns), post- and pre-residual rows."""
    kinds = list(dict.fromkeys(k for _, k, _ in maps))
    names = list(dict.fromkeys(n for n, _, _ in maps))
    fig, axes = plt.subplots(
        len(kinds), len(names), figsize=(1.9 * len(names) + 0.5, 2.0 * len(kinds) + 0.6), squeeze=False
    )
    lookup = {(n, k): m for n, k, m in maps}
    for i, k in enumerate(kinds):
        for j, n in enumerate(names):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (n, k) in lookup:
                ax.imshow(lookup[(n, k)], cmap="viridis", interpolation="nearest")
            if i == 0:
                ax.set_title(n, fontsize=7)
            if j == 0:
                ax.set_ylabel(k, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
