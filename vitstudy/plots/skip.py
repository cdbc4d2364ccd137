"""Skip-connection figures: norm ratios per block and token (Raghu et al. Fig. 7)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import model_label, sns, wrap  # noqa: F401  (Agg backend and theme)

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
    shown = model_label(first, t0.weights.iloc[0] if "weights" in t0 else None)
    subs = list(dict.fromkeys(t0.sublayer))
    fig, axes = plt.subplots(1, len(subs) + 1, figsize=(4.2 * (len(subs) + 1), 3.8), squeeze=False)
    axes = axes[0]
    for ax, sub in zip(axes, subs):
        piv = t0[t0.sublayer == sub].pivot(index="index", columns="token", values="ratio")
        _inf_heatmap(
            ax,
            piv.to_numpy(),
            wrap(f"{shown}: {SUBLAYER_NAMES.get(sub, sub)}", 40) + f"\n‖z‖/‖f(z)‖ ({aggregate})",
            "token (0 = CLS)" if t0.is_cls.any() else "token / position",
            "block",
            fig,
        )
    ax = axes[-1]
    # spatial tokens and CLS separately, as the paper: per block its patches, or all positions where it has no
    # prefix tokens (a CNN stage, ConViT's blocks before the class token joins)
    keys = list(zip(summary.label, summary.sublayer, summary["index"]))
    with_patches = {k for k, g in zip(keys, summary.group) if g == "patches"}
    drawn = summary[[g != "all" or k not in with_patches for k, g in zip(keys, summary.group)]]
    drawn = drawn.assign(group=drawn.group.replace("all", "patches"))
    for (label, sub, group), g in drawn.groupby(["label", "sublayer", "group"], sort=False):
        name = f"{model_label(label, g.weights.iloc[0] if 'weights' in g else None)} {SUBLAYER_NAMES.get(sub, sub)}" + {
            "cls": " CLS",
            "registers": " registers",
        }.get(group, "")
        g = g.sort_values("index")
        y = g.ratio.to_numpy(dtype=float)
        ok = np.isfinite(y)
        (line,) = ax.plot(
            g["index"].to_numpy()[ok],
            y[ok],
            marker="o",
            ms=3,
            label=name,
            ls={"cls": "--", "registers": ":"}.get(group, "-"),
        )
        if "ratio_ci_low" in g:  # 95% interval over images
            ax.fill_between(
                g["index"].to_numpy()[ok],
                g.ratio_ci_low.to_numpy(dtype=float)[ok],
                g.ratio_ci_high.to_numpy(dtype=float)[ok],
                color=line.get_color(),
                alpha=0.2,
                lw=0,
            )
        if (~ok).any():  # infinite ratios: a marker at the top edge
            ax.plot(
                g["index"].to_numpy()[~ok],
                np.full((~ok).sum(), 1.0),
                "^",
                color=line.get_color(),
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                label=f"{name}: ∞ (zero branch)",
            )
    ax.set_xlabel("block index")
    ax.set_ylabel(f"‖z‖ / ‖f(z)‖ ({aggregate})")
    ax.set_title(wrap("mean over tokens / positions (bands: 95% interval over images)", 40), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)  # beside, never over, the lines
    fig.tight_layout()
    return fig
