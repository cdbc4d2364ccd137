"""Figures of Raghu et al. 2021 Figs 6, 7, 9-11 and 13: skip ratios, receptive fields, localization, probes."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import cka as plots  # noqa: F401  (Agg backend and theme)
from .cka import plt

SUBLAYER_NAMES = {"attn": "Self-Attention", "mlp": "MLP", "res": "residual block"}


def _inf_heatmap(ax, m: np.ndarray, title: str, xlabel: str, ylabel: str, fig):
    finite = np.where(np.isfinite(m), m, np.nan)
    im = ax.imshow(finite, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest")
    for i, j in np.argwhere(np.isinf(m)):  # NaN = no such position in that block: left blank
        ax.text(j, i, "∞", ha="center", va="center", fontsize=7, color="red")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def skip_ratio_figure(tokens: pd.DataFrame, summary: pd.DataFrame, k: int, aggregate: str):
    """Fig. 7: per-token heatmaps (first k tokens x blocks) of the first model's sublayers, and per-block lines."""
    first = tokens.label.iloc[0]
    t0 = tokens[(tokens.label == first) & (tokens.token < k)]
    subs = list(dict.fromkeys(t0.sublayer))
    fig, axes = plt.subplots(1, len(subs) + 1, figsize=(4.2 * (len(subs) + 1), 3.8), squeeze=False)
    axes = axes[0]
    for ax, sub in zip(axes, subs):
        piv = t0[t0.sublayer == sub].pivot(index="index", columns="token", values="ratio")
        _inf_heatmap(ax, piv.to_numpy(), f"{first}: {SUBLAYER_NAMES.get(sub, sub)}\n‖z‖/‖f(z)‖ ({aggregate})",
                     "token (0 = CLS)" if t0.is_cls.any() else "token / position", "block", fig)
    ax = axes[-1]
    for (label, sub, group), g in summary.groupby(["label", "sublayer", "group"], sort=False):
        if group == "all" and (summary[(summary.label == label)].group == "patches").any():
            continue  # a CLS model: draw spatial tokens and CLS separately, as the paper
        name = f"{label} {SUBLAYER_NAMES.get(sub, sub)}" + (" CLS" if group == "cls" else "")
        g = g.sort_values("index")
        y = g.ratio.to_numpy(dtype=float)
        ok = np.isfinite(y)
        line, = ax.plot(g["index"].to_numpy()[ok], y[ok], marker="o", ms=3, label=name,
                        ls="--" if group == "cls" else "-")
        if (~ok).any():  # infinite ratios: a marker at the top edge
            ax.plot(g["index"].to_numpy()[~ok], np.full((~ok).sum(), 1.0), "^", color=line.get_color(),
                    transform=ax.get_xaxis_transform(), clip_on=False, label=f"{name}: ∞ (zero branch)")
    ax.set_xlabel("block index")
    ax.set_ylabel(f"‖z‖ / ‖f(z)‖ ({aggregate})")
    ax.set_title("mean over tokens / positions", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def localization_figure(df: pd.DataFrame, tokens: list[tuple[int, int]], grid: tuple[int, int], title: str):
    """Fig. 9/10: for each chosen token p, the CKA with the input patch at every position q."""
    fig, axes = plt.subplots(1, len(tokens), figsize=(2.9 * len(tokens), 3.0), squeeze=False)
    for ax, (r, c) in zip(axes[0], tokens):
        sub = df[(df.p_row == r) & (df.p_col == c)]
        m = np.full(grid, np.nan)
        m[sub.q_row.to_numpy(), sub.q_col.to_numpy()] = sub.cka.to_numpy()
        im = ax.imshow(m, cmap="magma", interpolation="nearest")
        ax.plot(c, r, marker="s", mfc="none", mec="cyan", ms=8)
        ax.set_title(f"token ({r}, {c})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def probe_figure(df: pd.DataFrame, title: str):
    """Figs 11/13: test accuracy of linear probes against normalised depth, one line per representation."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    agg = df[df.token.isna()] if "token" in df else df
    for rep, g in agg.groupby("representation", sort=False):
        g = g.sort_values("depth")
        ax.plot(g.depth, 100 * g.accuracy, marker="o", ms=3, label=rep)
    ax.set_xlabel("normalised layer (0 = first, 1 = last)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def erf_figure(maps: list[tuple[str, str, np.ndarray]], title: str):
    """Fig. 6 / C.1-C.4: one panel per layer (columns), post- and pre-residual rows."""
    kinds = list(dict.fromkeys(k for _, k, _ in maps))
    names = list(dict.fromkeys(n for n, _, _ in maps))
    fig, axes = plt.subplots(len(kinds), len(names), figsize=(1.9 * len(names) + 0.5, 2.0 * len(kinds) + 0.6), squeeze=False)
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
