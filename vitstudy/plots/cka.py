"""Figure styles the papers use; analyses pass arrays and labels, never style decisions."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed on clusters
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(context="paper", style="white", font_scale=1.1)


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
