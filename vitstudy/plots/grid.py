"""Figure for cka_grid: an M x M triangle of layer-by-layer CKA heatmaps."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import cka as plots  # noqa: F401  (backend and theme)


def cka_grid_figure(blocks: dict[tuple[int, int], np.ndarray], labels: list[str], title: str):
    """Panel (i, j), i <= j: CKA(layers of model i on x, layers of model j on y), origin bottom left."""
    m = len(labels)
    fig, axes = plt.subplots(m, m, figsize=(2.6 * m + 1, 2.4 * m), squeeze=False)
    im = None
    for i in range(m):
        for j in range(m):
            ax = axes[j][i]
            if (i, j) not in blocks:
                ax.axis("off")
                continue
            b = blocks[(i, j)]
            im = ax.imshow(b.T, origin="lower", cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == m - 1 or (i, j + 1) not in blocks:
                ax.set_xlabel(labels[i], fontsize=8)
            if i == 0 or (i - 1, j) not in blocks:
                ax.set_ylabel(labels[j], fontsize=8)
    fig.suptitle(title, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="CKA")
    return fig
