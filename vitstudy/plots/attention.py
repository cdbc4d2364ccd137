"""Figures of the attention analyses, in the papers' styles .

sorted_heads: Raghu et al. Figs 3-4 (heads sorted by mean distance, one panel per block, one row per model);
depth_scatter: Dosovitskiy et al. Fig. 7 right; local_global: Raghu et al. Fig. 5; rollout_grid:
Dosovitskiy et al. Fig. 6; position_similarity: Fig. 7 centre; pca_filters: Fig. 7 left.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

import matplotlib.pyplot as plt

from . import sns  # noqa: F401  (Agg backend and theme)


def _err(df: pd.DataFrame, value: str) -> np.ndarray:
    """Asymmetric error bars (2, n) from the table's `<value>_ci_low/high` columns (0 where not available)."""
    v = df[value].to_numpy(dtype=float)
    err = np.vstack([v - df[f"{value}_ci_low"].to_numpy(dtype=float), df[f"{value}_ci_high"].to_numpy(dtype=float) - v])
    return np.nan_to_num(np.clip(err, 0, None))


def _models(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df.model))


def sorted_heads(df: pd.DataFrame, blocks: list[int]):
    """One row per model, one panel per chosen block: heads sorted by mean distance (x) against distance (y)."""
    names = _models(df)
    chosen = {}
    for name in names:
        depth = sorted(df[df.model == name].block.unique())
        chosen[name] = list(dict.fromkeys(depth[b] for b in blocks))  # -1 and 1 coincide in a 2-block model
    cols = max(len(c) for c in chosen.values())
    fig, axes = plt.subplots(len(names), cols, figsize=(2.6 * cols, 2.4 * len(names)), sharey=True, squeeze=False)
    top = max(1.0, float(df.mean_distance.max()) * 1.1)
    for ax in axes.flat:
        ax.set_visible(False)
    for r, name in enumerate(names):
        d = df[df.model == name]
        for c, block in enumerate(chosen[name]):
            ax = axes[r, c]
            ax.set_visible(True)
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            rows = d[d.block == block].sort_values("mean_distance")
            ax.scatter(np.arange(len(rows)), rows.mean_distance, s=14, color=sns.color_palette()[0])
            if "mean_distance_ci_low" in rows:  # 95% interval over images
                ax.errorbar(np.arange(len(rows)), rows.mean_distance,
                            yerr=_err(rows, "mean_distance"), fmt="none", ecolor=sns.color_palette()[0], elinewidth=0.8, capsize=1.5)
            ax.set_title(f"{rows.label.iloc[0]}\nblock {block} ({rows.layer.iloc[0]})", fontsize=7)
            ax.set_ylim(0, top)
            ax.set_xlabel("sorted attention head", fontsize=8)
            if c == 0:
                ax.set_ylabel("mean distance (px)", fontsize=8)
    fig.suptitle(f"Mean attention distance, {int(df.num_images.iloc[0])} images (bars: 95% interval over images)", fontsize=9)
    fig.tight_layout()
    return fig


def depth_scatter(df: pd.DataFrame):
    """One panel per model: every head's mean distance against the block index (network depth)."""
    names = _models(df)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), sharey=True, squeeze=False)
    top = max(1.0, float(df.mean_distance.max()) * 1.1)
    for ax, name in zip(axes[0], names):
        d = df[df.model == name]
        heads = int(d["head"].max()) + 1
        palette = sns.color_palette("husl", heads)
        for h in range(heads):
            sel = d[d["head"] == h]
            ax.scatter(sel.block, sel.mean_distance, s=8, color=palette[h], alpha=0.8, label=f"head {h}")
            if "mean_distance_ci_low" in sel:
                ax.errorbar(sel.block, sel.mean_distance, yerr=_err(sel, "mean_distance"), fmt="none",
                            ecolor=palette[h], alpha=0.6, elinewidth=0.6)
        ax.set_xlabel("network depth (block)")
        ax.set_title(d.label.iloc[0], fontsize=8)
        ax.set_ylim(0, top)
    axes[0, 0].set_ylabel("mean attention distance (px)")
    fig.tight_layout()
    return fig


def local_global(df: pd.DataFrame, title: str):
    """CKA of head subsets against their mean attention distance, one line per reference layer."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for layer in dict.fromkeys(df.reference_layer):
        d = df[df.reference_layer == layer].sort_values("subset_mean_distance")
        line, = ax.plot(d.subset_mean_distance, d.cka, marker="o", markersize=3, label=layer)
        if "cka_ci_low" in d:  # 95% interval, jackknife over batches
            ax.errorbar(d.subset_mean_distance, d.cka, yerr=_err(d, "cka"), fmt="none", ecolor=line.get_color(),
                        elinewidth=0.8, capsize=1.5)
    ax.set_xlabel("mean distance of head subset (px)")
    ax.set_ylabel("CKA")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, title="reference layer", title_fontsize=7)
    fig.tight_layout()
    return fig


def rollout_grid(images: np.ndarray, maps: np.ndarray, title: str):
    """Top row: input images; bottom row: images multiplied by their upsampled rollout maps (max-normalised)."""
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        img, m = images[i], maps[i]
        up = _upsample(m, *img.shape[:2])
        up = up / up.max() if up.max() > 0 else up
        axes[0, i].imshow(img)
        axes[1, i].imshow(img * up[..., None])
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def _upsample(m: np.ndarray, h: int, w: int) -> np.ndarray:
    import torch

    t = torch.as_tensor(m, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def position_similarity(sim: np.ndarray, gh: int, gw: int, title: str):
    """The grid of grids: tile (r, c) shows the cosine similarity of patch (r, c)'s embedding with every patch."""
    mosaic = np.full((gh * (gw + 1) - 1, gw * (gh + 1) - 1), np.nan)
    sim = sim.reshape(gh, gw, gh, gw)
    for r in range(gh):
        for c in range(gw):
            y, x = r * (gh + 1), c * (gw + 1)
            mosaic[y:y + gh, x:x + gw] = sim[r, c]
    side = min(9.0, 2.5 + 0.3 * max(gh, gw))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([c * (gw + 1) + (gw - 1) / 2 for c in range(gw)], [str(c + 1) for c in range(gw)], fontsize=6)
    ax.set_yticks([r * (gh + 1) + (gh - 1) / 2 for r in range(gh)], [str(r + 1) for r in range(gh)], fontsize=6)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(title, fontsize=9)
    ax.grid(False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("cosine similarity")
    fig.tight_layout()
    return fig


def pca_filters(components: np.ndarray, columns: int, title: str):
    """Principal components (k, 3, P, P) as RGB patches, each min-max normalised, `columns` per row."""
    k = len(components)
    rows = -(-k // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.1 * columns, 1.1 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            c = components[i].transpose(1, 2, 0)
            lo, hi = c.min(), c.max()
            ax.imshow((c - lo) / (hi - lo) if hi > lo else np.zeros_like(c), interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
