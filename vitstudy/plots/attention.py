"""Figures of the attention analyses, in the papers' styles .

sorted_heads: Raghu et al. Figs 3-4 (heads sorted by mean distance, one panel per block, one row per model);
depth_scatter: Dosovitskiy et al. Fig. 7 right; local_global: Raghu et al. Fig. 5; rollout_grid:
Dosovitskiy et al. Fig. 6; position_similarity: Fig. 7 centre; pca_filters: Fig. 7 left.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import model_label, sns, wrap  # noqa: F401  (Agg backend and theme)

UNIFORM = dict(color="0.45", ls="--", lw=1.0)  # the uniform-attention reference line


def _label(d: pd.DataFrame) -> str:
    return model_label(d.label.iloc[0], d.weights.iloc[0] if "weights" in d else None)


def _uniform(d: pd.DataFrame) -> float | None:
    """The uniform-attention mean distance of one block's rows (the table's `uniform_distance`), if known."""
    if "uniform_distance" not in d:
        return None
    u = d.uniform_distance.dropna()
    return float(u.iloc[0]) if len(u) else None


def _top(df: pd.DataFrame) -> float:
    """One y range for every panel (compared models are read on one scale), above the uniform reference."""
    highs = [float(df.mean_distance.max())]
    if "mean_distance_ci_high" in df:
        highs.append(float(df.mean_distance_ci_high.max()))
    if "uniform_distance" in df and df.uniform_distance.notna().any():
        highs.append(float(df.uniform_distance.max()))
    return max(1.0, max(h for h in highs if np.isfinite(h)) * 1.12)


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
    fig, axes = plt.subplots(len(names), cols, figsize=(2.6 * cols, 2.5 * len(names) + 0.4), sharey=True, squeeze=False)
    top = _top(df)
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
                ax.errorbar(
                    np.arange(len(rows)),
                    rows.mean_distance,
                    yerr=_err(rows, "mean_distance"),
                    fmt="none",
                    ecolor=sns.color_palette()[0],
                    elinewidth=0.8,
                    capsize=1.5,
                )
            uniform = _uniform(rows)
            if uniform is not None:
                ax.axhline(uniform, **UNIFORM, label="uniform attention")
            ax.set_title(wrap(_label(rows), 30) + f"\nblock {block} ({rows.layer.iloc[0]})", fontsize=7)
            ax.set_ylim(0, top)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("sorted attention head", fontsize=8)
            if c == 0:
                ax.set_ylabel("mean distance (px)", fontsize=8)
    note = ", dashed: uniform attention" if "uniform_distance" in df and df.uniform_distance.notna().any() else ""
    fig.suptitle(
        wrap(
            f"Mean attention distance, {int(df.num_images.iloc[0])} images (bars: 95% interval over images{note})",
            int(16 * cols),
        ),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def depth_scatter(df: pd.DataFrame):
    """One panel per model: every head's mean distance against the block index (network depth), one colour per
    head (legend beside the panels), the uniform-attention distance of each block as a dashed line."""
    names = _models(df)
    # at least 7 in wide: the report shows figures at full width, and a narrow one would be blown up (huge fonts)
    fig, axes = plt.subplots(1, len(names), figsize=(max(7.0, 3.4 * len(names) + 1.6), 3.0), sharey=True, squeeze=False)
    top = _top(df)
    heads = int(df["head"].max()) + 1
    palette = sns.color_palette("husl", heads)
    for ax, name in zip(axes[0], names):
        d = df[df.model == name]
        for h in range(heads):
            sel = d[d["head"] == h]
            if sel.empty:
                continue
            ax.scatter(sel.block, sel.mean_distance, s=10, color=palette[h], alpha=0.85, label=f"head {h}")
            if "mean_distance_ci_low" in sel:
                ax.errorbar(
                    sel.block,
                    sel.mean_distance,
                    yerr=_err(sel, "mean_distance"),
                    fmt="none",
                    ecolor=palette[h],
                    alpha=0.6,
                    elinewidth=0.6,
                )
        if "uniform_distance" in d:
            per_block = d.groupby("block").uniform_distance.first()
            values = per_block.dropna().unique()
            name = f"uniform attention ({values[0]:.1f} px)" if len(values) == 1 else "uniform attention"
            ax.plot(per_block.index, per_block.to_numpy(), **UNIFORM, label=name)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("network depth (block)", fontsize=8)
        ax.set_title(wrap(_label(d), 36), fontsize=8)
        ax.set_ylim(0, top)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("mean attention distance (px)", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if heads <= 16:  # one entry per head; beyond that the colours only say "different heads"
        axes[0, -1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def local_global(df: pd.DataFrame, title: str):
    """CKA of head subsets against their mean attention distance, one line per reference layer."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for layer in dict.fromkeys(df.reference_layer):
        d = df[df.reference_layer == layer].sort_values("subset_mean_distance")
        (line,) = ax.plot(d.subset_mean_distance, d.cka, marker="o", markersize=3, label=layer)
        if "cka_ci_low" in d:  # 95% interval, jackknife over batches
            ax.errorbar(
                d.subset_mean_distance,
                d.cka,
                yerr=_err(d, "cka"),
                fmt="none",
                ecolor=line.get_color(),
                elinewidth=0.8,
                capsize=1.5,
            )
    ax.set_xlabel("mean distance of head subset (px)")
    ax.set_ylabel("CKA")
    ax.set_title(wrap(title, 60), fontsize=8)
    ax.legend(
        fontsize=7,
        title="reference layer",
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
    )  # beside the curves, never over them
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
            mosaic[y : y + gh, x : x + gw] = sim[r, c]
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
