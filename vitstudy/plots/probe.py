"""Linear-probe figures: accuracy per layer and representation (Raghu et al. Figs 11, 13)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from . import model_label, sns, wrap  # noqa: F401  (Agg backend and theme)

# What each representation is, in the legend (the CSV keeps the short names of analyses/probe.py)
REPRESENTATION_NAMES = {
    "cls": "CLS token",
    "gap": "GAP: mean of patch tokens",
    "gap_all": "GAP of all tokens, CLS included",
    "first": "first token",
    "tokens": "per token (mean over positions)",
}


def probe_figure(df: pd.DataFrame, title: str):
    """Figs 11/13: test accuracy of linear probes against normalised depth, one line per representation, with its
    95% interval over the test images as a band, chance as a dashed line, on a fixed 0-100% axis."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    agg = df[df.token.isna()] if "token" in df else df
    for rep, g in agg.groupby("representation", sort=False):
        g = g.sort_values("depth")
        (line,) = ax.plot(g.depth, 100 * g.accuracy, marker="o", ms=3, label=REPRESENTATION_NAMES.get(rep, rep))
        if "accuracy_ci_low" in g:  # 95% interval over the test images
            ax.fill_between(
                g.depth, 100 * g.accuracy_ci_low, 100 * g.accuracy_ci_high, color=line.get_color(), alpha=0.2, lw=0
            )
    if (
        "num_classes" in df and len(df) and df.num_classes.iloc[0] > 0
    ):  # guessing: the floor every probe is read against
        ax.axhline(100 / float(df.num_classes.iloc[0]), color="0.45", ls="--", lw=1.0, label="chance")
    ax.set_ylim(0, 100)  # one scale for every model, so two runs' figures side by side compare at a glance
    ax.set_xlabel("normalised layer (0 = first, 1 = last)")
    ax.set_ylabel("test accuracy (%)")
    if "weights" in df and len(df) and df.weights.iloc[0] == "random-init" and "random" not in title.lower():
        title = f"{title} (random init)"
    ax.set_title(wrap(title, 56), fontsize=9)
    ax.legend(
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        title="representation",
        title_fontsize=7,
    )
    fig.tight_layout()
    return fig
