"""CKA figures: layer-by-layer heatmaps (Raghu et al. Figs 1-2), the same-layer curve (Fig. 12), model grids."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from . import sns, wrap  # noqa: F401  (Agg backend and theme)


def _panel(ax, fig, matrix, xlabel, ylabel, title, cmap, vmin, vmax, label):
    nx, ny = matrix.shape
    im = ax.imshow(
        matrix.T,
        origin="lower",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        extent=(-0.5, nx - 0.5, -0.5, ny - 0.5),
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=8, integer=True))
    ax.grid(False)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label(label)


def cka_heatmap(
    matrix: np.ndarray,
    xlabel: str,
    ylabel: str,
    title: str,
    width: np.ndarray | None = None,
    chance: np.ndarray | None = None,
    label: str = "CKA",
    vmin: float = 0.0,
    vmax: float = 1.0,
):
    """Layer-by-layer CKA as in Raghu et al.: rows = y layers, columns = x layers, origin bottom left.

    `matrix[i, j]` is CKA(x layer i, y layer j). `width` (same shape): the 95% interval widths, drawn as a second
    panel; `chance` (bool, same shape): cells whose permutation p-value says they are indistinguishable from
    chance, marked with a small cross. Other measures (similarity_*): `label` names the colour bar and
    `vmin`/`vmax` are its range (the measure's).
    """
    nx, ny = matrix.shape
    side = 4.2
    panel_w = side * max(0.6, min(1.6, nx / max(ny, 1))) + 1.0
    panels = 1 if width is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(panel_w * panels, side), squeeze=False)
    ax = axes[0, 0]
    chars = max(24, int((panel_w - 1.0) * 11))  # a 9-pt title over the panel, not over its neighbour
    xlabel, ylabel, title = wrap(xlabel, chars), wrap(ylabel, int(side * 9)), wrap(title, chars)
    _panel(ax, fig, matrix, xlabel, ylabel, title, "magma", vmin, vmax, label)
    if chance is not None and chance.any():
        i, j = np.nonzero(chance)
        size = max(2.0, min(30.0, 2400.0 / max(nx * ny, 1)))
        ax.scatter(
            i,
            j,
            marker="x",
            s=size,
            c="tab:cyan",
            linewidths=0.6,
            label=f"not above chance (p > 0.05): {int(chance.sum())} of {chance.size}",
        )
        ax.legend(fontsize=6, loc="upper left", framealpha=0.8)
    if width is not None:
        finite = width[np.isfinite(width)]
        top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        _panel(
            axes[0, 1],
            fig,
            width,
            xlabel,
            ylabel,
            "width of the 95% interval\n(jackknife over batches)",
            "viridis",
            0.0,
            top,
            "interval width",
        )
    fig.tight_layout()
    return fig


def cka_diagonal_curve(diag, label: str, subtitle: str):
    """Per-layer CKA between two models of one architecture against layer index (Raghu et al. Fig. 12), with its
    95% interval as a band (jackknife over batches) and the std over repeats as error bars when there are repeats."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    (line,) = ax.plot(diag.index_x, diag.cka, marker="o", ms=4, label="CKA")
    if "cka_ci_low" in diag and diag.cka_ci_low.notna().any():
        ax.fill_between(
            diag.index_x,
            diag.cka_ci_low,
            diag.cka_ci_high,
            color=line.get_color(),
            alpha=0.25,
            lw=0,
            label="95% interval (jackknife over batches)",
        )
    if diag.cka_std.notna().any():
        ax.errorbar(
            diag.index_x,
            diag.cka,
            yerr=diag.cka_std,
            fmt="none",
            capsize=2,
            color=line.get_color(),
            label="std over repeats",
        )
    ax.set_xlabel("layer index (input to output)")
    ax.set_ylabel("CKA with the same layer")
    ax.set_ylim(0, 1.02)
    ax.set_title(wrap(f"{label}\n{subtitle}", 60), fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def cka_grid_figure(
    blocks: dict[tuple[int, int], np.ndarray],
    labels: list[str],
    title: str,
    label: str = "CKA",
    vmin: float = 0.0,
    vmax: float = 1.0,
):
    """Panel (i, j), i <= j: CKA(layers of model i on x, layers of model j on y), origin bottom left.

    Other measures: `label` and `vmin`/`vmax` as in cka_heatmap; asymmetric ones also fill the panels i > j."""
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
            im = ax.imshow(
                b.T, origin="lower", cmap="magma", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if j == m - 1 or (i, j + 1) not in blocks:
                ax.set_xlabel(labels[i], fontsize=8)
            if i == 0 or (i - 1, j) not in blocks:
                ax.set_ylabel(labels[j], fontsize=8)
    fig.suptitle(wrap(title, int(16 * m)), fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label=label)
    return fig
