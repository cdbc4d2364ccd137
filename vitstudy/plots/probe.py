"""Linear-probe figures: accuracy per layer and representation (Raghu et al. Figs 11, 13)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from . import sns  # noqa: F401  (Agg backend and theme)


def probe_figure(df: pd.DataFrame, title: str):
    """Figs 11/13: test accuracy of linear probes against normalised depth, one line per representation, with its
    95% interval over the test images as a band."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    agg = df[df.token.isna()] if "token" in df else df
    for rep, g in agg.groupby("representation", sort=False):
        g = g.sort_values("depth")
        line, = ax.plot(g.depth, 100 * g.accuracy, marker="o", ms=3, label=rep)
        if "accuracy_ci_low" in g:  # 95% interval over the test images
            ax.fill_between(g.depth, 100 * g.accuracy_ci_low, 100 * g.accuracy_ci_high, color=line.get_color(),
                            alpha=0.2, lw=0)
    ax.set_xlabel("normalised layer (0 = first, 1 = last)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
