"""Skip-connection figures: norm ratios per block and token (Raghu et al. Fig. 7)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import sns  # noqa: F401  (Agg backend and theme)

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
        name = f"{label} {SUBLAYER_NAMES.get(sub, sub)}" + {"cls": " CLS", "registers": " registers"}.get(group, "")
        g = g.sort_values("index")
        y = g.ratio.to_numpy(dtype=float)
        ok = np.isfinite(y)
        line, = ax.plot(g["index"].to_numpy()[ok], y[ok], marker="o", ms=3, label=name,
                        ls={"cls": "--", "registers": ":"}.get(group, "-"))
        if "ratio_ci_low" in g:  # 95% interval over images
            ax.fill_between(g["index"].to_numpy()[ok], g.ratio_ci_low.to_numpy(dtype=float)[ok],
                            g.ratio_ci_high.to_numpy(dtype=float)[ok], color=line.get_color(), alpha=0.2, lw=0)
        if (~ok).any():  # infinite ratios: a marker at the top edge
            ax.plot(g["index"].to_numpy()[~ok], np.full((~ok).sum(), 1.0), "^", color=line.get_color(),
                    transform=ax.get_xaxis_transform(), clip_on=False, label=f"{name}: ∞ (zero branch)")
    ax.set_xlabel("block index")
    ax.set_ylabel(f"‖z‖ / ‖f(z)‖ ({aggregate})")
    ax.set_title("mean over tokens / positions (bands: 95% interval over images)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
