"""Token figures: norm histograms by depth (Darcet et al. 2024, Fig. 3), maps of high-norm patches (Fig. 2),
prefix-token norms beside the patches', and massive activations by layer and in one layer (Sun et al. 2024)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

from . import sns  # noqa: F401  (Agg backend and theme)

KIND_COLORS = {
    "patch": "tab:blue",
    "class": "tab:red",
    "distillation": "tab:purple",
    "register": "tab:green",
    "prefix": "tab:gray",
}


def _layer_picks(layers: list[str], k: int) -> list[str]:
    """Up to k layers evenly spaced over depth, the last one included."""
    k = min(k, len(layers))
    return [layers[i] for i in sorted({round((j + 1) * len(layers) / k) - 1 for j in range(k)})]


def norm_histograms(hist: pd.DataFrame, summary: pd.DataFrame, title: str, panels: int = 6):
    """Fig. 3: per chosen layer, the histogram of token norms (log10 bins) by token kind, the cut as a dashed line."""
    layers = _layer_picks(list(dict.fromkeys(summary.layer)), panels)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.0 * len(layers), 2.9), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        h = hist[hist.layer == layer]
        for kind, g in h.groupby("kind", sort=False):
            finite = g[np.isfinite(g.log10_low) & np.isfinite(g.log10_high)]
            under, over = (
                int(g.loc[~np.isfinite(g.log10_low), "count"].sum()),
                int(g.loc[~np.isfinite(g.log10_high), "count"].sum()),
            )
            counts = finite["count"].to_numpy(dtype=float)
            if counts.sum() + under + over == 0:
                continue
            occupied = np.flatnonzero(counts)
            lo, hi = (occupied[0], occupied[-1] + 1) if len(occupied) else (0, 0)
            if hi > lo:
                ax.stairs(
                    counts[lo:hi],
                    np.append(10 ** finite.log10_low.to_numpy()[lo:hi], 10 ** finite.log10_high.to_numpy()[hi - 1]),
                    color=KIND_COLORS.get(kind, "black"),
                    fill=kind == "patch",
                    alpha=0.6 if kind == "patch" else 1.0,
                    label=kind + (f" (+{under} under, {over} over range)" if under or over else ""),
                )
        thr = summary.loc[summary.layer == layer, "threshold"]
        if len(thr) and np.isfinite(thr.iloc[0]):
            ax.axvline(float(thr.iloc[0]), color="black", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("token norm")
        ax.set_title(layer, fontsize=9)
    axes[0][0].set_ylabel("tokens")
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def prefix_norms(summary: pd.DataFrame, title: str):
    """Mean norm per layer of the patches, the class/distillation token and the registers, and the share of
    high-norm patches (right axis)."""
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    x = summary.depth.to_numpy()
    for col in [c for c in summary.columns if c.endswith("_norm_mean")]:
        kind = col[: -len("_norm_mean")]
        ax.plot(x, summary[col], marker="o", ms=3, color=KIND_COLORS.get(kind, "black"), label=f"{kind} tokens (mean)")
    ax.set_yscale("log")
    ax.set_xlabel("layer (depth index)")
    ax.set_ylabel("mean L2 norm")
    ax2 = ax.twinx()
    ax2.plot(x, 100 * summary.high_norm_share, color="black", ls=":", marker="x", ms=3, label="high-norm patches (%)")
    ax2.set_ylabel("high-norm patches (%)")
    share = float(np.nanmax(100 * summary.high_norm_share.to_numpy(dtype=float), initial=0.0))
    ax2.set_ylim(0, max(1.0, 1.15 * share))  # a share: never below 0, and 0% reads as a line at the bottom
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    # below the axes: inside it would hide points of the lines it names (tests/test_registry.py checks)
    ax.legend(
        lines[0] + lines2[0],
        lines[1] + lines2[1],
        fontsize=7,
        frameon=False,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=2,
    )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def norm_maps(images: np.ndarray, maps: dict[str, np.ndarray], thresholds: dict[str, float], title: str):
    """Fig. 2: each image beside its patch-norm map at a few layers; high-norm patches outlined in red."""
    n, layers = len(images), list(maps)
    fig, axes = plt.subplots(n, 1 + len(layers), figsize=(2.2 * (1 + len(layers)), 2.2 * n), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(images[i])
        for j, layer in enumerate(layers, 1):
            m = maps[layer][i]
            ax = axes[i][j]
            ax.imshow(m, cmap="viridis", interpolation="nearest")
            thr = thresholds.get(layer, float("nan"))
            if np.isfinite(thr):
                for r, c in np.argwhere(m > thr):
                    ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="red", lw=1.2))
            if i == 0:
                ax.set_title(layer, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def massive_by_layer(table: pd.DataFrame, title: str):
    """Sun et al. Fig. 1/4 style: per layer the top-k |activation| magnitudes and the median, log scale."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for rank, g in table.groupby("rank"):
        g = g.sort_values("depth")
        ax.plot(g.depth, g.value, marker="o", ms=3, label=f"top {rank}")
    g = table[table["rank"] == table["rank"].min()].sort_values("depth")
    ax.plot(g.depth, g.median_abs, marker="s", ms=3, color="black", label="median")
    ax.set_yscale("log")
    ax.set_xlabel("layer (depth index)")
    ax.set_ylabel("|activation| (mean over images)")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def massive_map(values: np.ndarray, kinds: list[str], title: str):
    """One image's |activation| over tokens x channels at one layer (Sun et al.'s 3-D view as a heatmap)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    v = np.abs(values.astype(np.float64))
    im = ax.imshow(
        v,
        aspect="auto",
        cmap="magma",
        interpolation="nearest",
        norm=plt.matplotlib.colors.LogNorm(vmin=max(np.percentile(v, 1), 1e-6), vmax=max(v.max(), 1e-5)),
    )
    prefix = sum(k != "patch" for k in kinds)
    if prefix:
        ax.axhline(prefix - 0.5, color="white", lw=0.8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("channel")
    ax.set_ylabel("token (prefix tokens above the line)" if prefix else "token")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("|activation|")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
