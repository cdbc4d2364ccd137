"""Linear-probe figures: accuracy per layer and representation (Raghu et al. Figs 11, 13)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from . import sns  # noqa: F401  (Agg backend and theme)


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
