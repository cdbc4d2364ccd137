"""Figures in the papers' styles, one module per analysis family; analyses pass arrays and labels, never style.

Importing the package selects matplotlib's file-only Agg backend (no display on clusters) and the seaborn theme.
`wrap` and `model_label` are the few text rules every figure shares: titles wrapped to their panel, and random-init
weights named in the label so that an untrained model is never read as a trained one.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import seaborn as sns  # noqa: E402

sns.set_theme(context="paper", style="white", font_scale=1.1)

RANDOM_INIT = "random-init"


def wrap(text: str, width: int) -> str:
    """`text` with each line wrapped at `width` characters (a panel title must not run into its neighbour's)."""
    return "\n".join(textwrap.fill(line, width, break_long_words=False) or line for line in str(text).split("\n"))


def model_label(label: str, weights: str | None = None) -> str:
    """The label shown for a model: its own, plus `(random init)` when its weights are random."""
    label = str(label)
    if weights == RANDOM_INIT and "random" not in label.lower():
        return f"{label} (random init)"
    return label
