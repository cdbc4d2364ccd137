"""Figures of Park & Kim 2022 in the style of the official notebooks: Δ log-amplitude curves coloured by
depth (Fig. 2a), quantities against normalised depth with attention sublayers shaded grey and
downsampling blue (Figs 8, 9, lesions), and accuracy drop against noise frequency (Fig. 2b).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter

from . import sns, wrap  # noqa: F401  (Agg backend and theme)

STYLE = {"transformer": ("tab:red", "o"), "cnn": ("tab:blue", "D")}
SHADE = {"attention": ("tab:gray", "attention sublayer"), "downsampling": ("tab:blue", "downsampling")}


def _panels(n: int, width: float, height: float = 4.0, layout: str | None = None):
    """One row of panels sharing the y axis: compared models are read on one scale."""
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=True, layout=layout)
    return fig, axes[0]


def _title_width(width: float) -> int:
    """Characters of a 9-pt title that fit over a panel `width` inches wide."""
    return max(16, int(width * 11))


def frequency_curves(panels: Sequence[dict], title: str):
    """Fig. 2a: one Δ log-amplitude curve per latent, from 0.0π to 1.0π, coloured by normalised depth.

    Each panel: {"title", "curves": [(depth, frequency, delta[, low, high]), ...]}; deeper latents are drawn first;
    low/high (the 95% interval over images) are drawn as a faint band around each curve.
    """
    fig, axes = _panels(len(panels), 3.6, layout="constrained")  # suptitle, titles and colorbar laid out together
    cmap = plt.get_cmap("plasma")
    for ax, panel in zip(axes, panels):
        for curve in sorted(panel["curves"], key=lambda c: -c[0]):
            depth, freq, delta = curve[:3]
            ax.plot(freq, delta, color=cmap(depth), lw=1.6)
            if len(curve) == 5:
                ax.fill_between(freq, curve[3], curve[4], color=cmap(depth), alpha=0.15, lw=0)
        ax.set_xlim(0, 1)
        ax.set_xlabel("Frequency")
        ax.set_title(wrap(panel["title"], _title_width(3.0)), fontsize=9)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.1fπ"))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    axes[0].set_ylabel(r"$\Delta$ Log amplitude")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=list(axes), fraction=0.046, pad=0.04).set_label("Normalized depth")
    fig.suptitle(wrap(title, _title_width(3.6 * len(panels))), fontsize=9)
    return fig


def _shade(ax, depths: np.ndarray, kinds: Sequence[str], step: float | None = None) -> set[str]:
    """Grey/blue band from the previous latent to each attention/downsampling latent (official notebooks)."""
    step = step if step is not None else 1.0 / max(len(depths) - 1, 1)
    used = set()
    for d, kind in zip(depths, kinds):
        if kind in SHADE:
            ax.axvspan(d - step, d, color=SHADE[kind][0], alpha=0.15, lw=0)
            used.add(kind)
    return used


def depth_profile(panels: Sequence[dict], ylabel: str, title: str, zero_line: bool = False, ylim_bottom=None):
    """Figs 8, 9 and the lesion figure: a value per latent against normalised depth, with shading.

    Each panel: {"title", "depths", "values", "kinds", "family"} and optionally "step" (the depth between two
    latents, when the points are not every latent) and "low"/"high" (the 95% interval, drawn as error bars);
    NaN values are left out of the line.
    """
    fig, axes = _panels(len(panels), 5.2)
    for ax, panel in zip(axes, panels):
        color, marker = STYLE.get(panel["family"], ("tab:green", "s"))
        depths, values = np.asarray(panel["depths"], float), np.asarray(panel["values"], float)
        ok = np.isfinite(values)
        ax.plot(depths[ok], values[ok], marker=marker, color=color, markersize=5, lw=1.5)
        if panel.get("low") is not None:
            low, high = np.asarray(panel["low"], float)[ok], np.asarray(panel["high"], float)[ok]
            err = np.vstack([values[ok] - low, high - values[ok]])
            if np.isfinite(err).any():
                ax.errorbar(
                    depths[ok],
                    values[ok],
                    yerr=np.nan_to_num(np.clip(err, 0, None)),
                    fmt="none",
                    ecolor=color,
                    elinewidth=1.0,
                    capsize=2,
                )
        used = _shade(ax, depths, panel["kinds"], panel.get("step"))
        if zero_line:
            ax.axhline(0, color="black", lw=0.8)
        ax.set_xlim(0, 1)
        if ylim_bottom is not None and ok.any():
            ax.set_ylim(bottom=ylim_bottom)
        ax.set_xlabel("Normalized depth")
        ax.set_title(wrap(panel["title"], _title_width(4.6)), fontsize=9)
        if used:
            ax.legend(
                handles=[Patch(color=SHADE[k][0], alpha=0.3, label=SHADE[k][1]) for k in sorted(used)],
                fontsize=7,
                loc="best",
                frameon=False,
            )
    axes[0].set_ylabel(ylabel)
    fig.suptitle(wrap(title, _title_width(5.2 * len(panels))), fontsize=9)
    fig.tight_layout()
    return fig


def noise_drop(series: Sequence[dict], ylabel: str, title: str):
    """Fig. 2b: change of the metric under band-limited noise against the band centre, one line per model.

    Each series: {"label", "family", "bands", "drops"} and optionally "low"/"high" (the 95% interval of each drop,
    drawn as error bars).
    """
    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    for s in series:
        color, marker = STYLE.get(s["family"], ("tab:green", "s"))
        ax.plot(s["bands"], s["drops"], marker=marker, color=color, label=s["label"], lw=1.5)
        if s.get("low") is not None:
            drops = np.asarray(s["drops"], float)
            err = np.vstack([drops - np.asarray(s["low"], float), np.asarray(s["high"], float) - drops])
            ax.errorbar(
                s["bands"],
                drops,
                yerr=np.nan_to_num(np.clip(err, 0, None)),
                fmt="none",
                ecolor=color,
                elinewidth=1.0,
                capsize=2,
            )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("Noise frequency")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%.1fπ"))
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(wrap(title, _title_width(4.6)), fontsize=9)
    fig.tight_layout()
    return fig
