"""Raghu et al. 2021 Figs 1-2 under every similarity measure (`make fig-measures`): one row per measure (ViT within,
CNN within, ViT vs CNN), each row in the measure's own colour range with its claims' verdicts in the row title, and a
claim x measure panel of verdicts. Values of different measures are on different scales, so every row has its own
colour bar and no colour is compared across rows."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from . import sns, wrap  # noqa: F401  (Agg backend and theme)

VERDICT_COLOURS = {"holds": "#4c9a5b", "contradicted": "#c0504d", "inconclusive": "#b9b9b9", "missing": "#ffffff"}


@dataclass(frozen=True)
class Heatmap:
    """One panel: `matrix[i, j]` = value(x layer i, y layer j), drawn with x across and y up (origin bottom left);
    None when its run is missing (`note` says why)."""

    matrix: np.ndarray | None
    xlabel: str
    ylabel: str
    title: str
    note: str = ""


@dataclass(frozen=True)
class MeasureRow:
    """A measure's row: its label and value range (the colour range), three panels and the row title."""

    name: str
    label: str
    range: tuple[float, float]
    panels: tuple[Heatmap, ...]
    title: str


@dataclass(frozen=True)
class Verdict:
    """One cell of the verdict panel: a claim's verdict on one measure with its statistic and 95% interval."""

    measure: str  # the measure's label (a row)
    claim: str  # the claim's short name (a column)
    verdict: str
    value: float
    ci_low: float
    ci_high: float


def colour_range(vrange: tuple[float, float], matrices) -> tuple[float, float]:
    """The measure's range where it is finite; an unbounded side is taken from the finite values drawn."""
    lo, hi = (float(v) for v in vrange)
    if np.isfinite(lo) and np.isfinite(hi):
        return lo, hi
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in matrices if m is not None] or [np.zeros(0)])
    data_lo, data_hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    lo, hi = (lo if np.isfinite(lo) else data_lo), (hi if np.isfinite(hi) else data_hi)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _heatmap(ax, panel: Heatmap, vmin: float, vmax: float):
    ax.set_title(wrap(panel.title, 42), fontsize=8)
    if panel.matrix is None:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(
            0.5,
            0.5,
            wrap(panel.note or "missing", 30),
            ha="center",
            va="center",
            fontsize=7,
            transform=ax.transAxes,
            color="0.3",
        )
        return None
    nx, ny = panel.matrix.shape
    im = ax.imshow(
        panel.matrix.T,
        origin="lower",
        cmap="magma",
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        extent=(-0.5, nx - 0.5, -0.5, ny - 0.5),
    )
    ax.set_xlabel(wrap(panel.xlabel, 40), fontsize=7)
    ax.set_ylabel(wrap(panel.ylabel, 36), fontsize=7)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6, integer=True))
    ax.tick_params(labelsize=7)
    ax.grid(False)
    return im


def measures_figure(rows: list[MeasureRow], title: str):
    """One row of heatmaps per measure, each row in its measure's colour range with its own colour bar."""
    n = max(len(rows), 1)
    fig = plt.figure(figsize=(12.5, 3.1 * n + 0.5), layout="constrained")
    fig.suptitle(wrap(title, 130), fontsize=10)
    subfigs = np.atleast_1d(fig.subfigures(n, 1, squeeze=False).ravel())
    for sub, row in zip(subfigs, rows):
        sub.suptitle(wrap(row.title, 150), fontsize=8.5, ha="left", x=0.01)
        axes = sub.subplots(1, len(row.panels), squeeze=False)[0]
        vmin, vmax = colour_range(row.range, [p.matrix for p in row.panels])
        images = [_heatmap(ax, p, vmin, vmax) for ax, p in zip(axes, row.panels)]
        drawn = [im for im in images if im is not None]
        if drawn:
            sub.colorbar(drawn[0], ax=list(axes), fraction=0.025, pad=0.01).set_label(row.label, fontsize=8)
    return fig


def _cell(v: Verdict) -> str:
    if v.verdict == "missing" or not np.isfinite(v.value):
        return v.verdict
    return f"{v.verdict}\n{_num(v.value)}\n[{_num(v.ci_low)}, {_num(v.ci_high)}]"


def _num(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.2g}" if abs(x) < 0.01 and x != 0 else f"{x:.2f}"


def verdicts_figure(cells: list[Verdict], measures: list[str], claims: list[str], title: str):
    """Claim (columns) x measure (rows): the cell's colour is its verdict, its text the statistic and 95% interval."""
    names = list(VERDICT_COLOURS)
    code = np.full((len(measures), len(claims)), names.index("missing"))
    text = np.full(code.shape, "missing", dtype=object)
    for v in cells:
        i, j = measures.index(v.measure), claims.index(v.claim)
        code[i, j], text[i, j] = names.index(v.verdict), _cell(v)
    fig, ax = plt.subplots(figsize=(2.3 * len(claims) + 2.6, 0.62 * len(measures) + 1.6))
    ax.imshow(
        code,
        cmap=ListedColormap([VERDICT_COLOURS[k] for k in names]),
        vmin=-0.5,
        vmax=len(names) - 0.5,
        aspect="auto",
        interpolation="nearest",
    )
    for i in range(len(measures)):
        for j in range(len(claims)):
            ax.text(j, i, text[i, j], ha="center", va="center", fontsize=6.5)
    ax.set_xticks(range(len(claims)), [wrap(c, 24) for c in claims], fontsize=7)
    ax.set_yticks(range(len(measures)), measures, fontsize=7)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    ax.set_xticks(np.arange(len(claims) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(measures) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.6", lw=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_title(wrap(title, int(20 * len(claims) + 30)), fontsize=9)
    fig.tight_layout()
    return fig
