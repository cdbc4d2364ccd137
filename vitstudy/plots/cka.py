"""CKA figures: layer-by-layer heatmaps (Raghu et al. Figs 1-2), the same-layer curve (Fig. 12), model grids."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from . import sns  # noqa: F401  (Agg backend and theme)


def cka_heatmap(matrix: np.ndarray, xlabel: str, ylabel: str, title: str):
    """Layer-by-layer CKA as in Raghu et al.: rows = y layers, columns = x layers, origin bottom left.

    `matrix[i, j]` is CKA(x layer i, y layer j).
    """
    nx, ny = matrix.shape
    side = 4.2
    fig, ax = plt.subplots(figsize=(side * max(0.6, min(1.6, nx / max(ny, 1))) + 1.0, side))
    im = ax.imshow(matrix.T, origin="lower", cmap="magma", vmin=0.0, vmax=1.0, aspect="auto",
                   interpolation="nearest", extent=(-0.5, nx - 0.5, -0.5, ny - 0.5))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    for axis, n in ((ax.xaxis, nx), (ax.yaxis, ny)):
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=8, integer=True))
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("CKA")
    fig.tight_layout()
    return fig


def cka_diagonal_curve(diag, label: str, subtitle: str):
    """Per-layer CKA between two models of one architecture against layer index (Raghu et al. Fig. 12)."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.errorbar(diag.index_x, diag.cka, yerr=diag.cka_std.fillna(0), marker="o", ms=4, capsize=2)
    ax.set_xlabel("layer index (input to output)")
    ax.set_ylabel("CKA with the same layer")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{label}\n{subtitle}", fontsize=8)
    fig.tight_layout()
    return fig


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
