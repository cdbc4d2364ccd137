"""Spatial localization figures: CKA of a token with the input patch at every position (Raghu et al. Figs 9-10)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import sns  # noqa: F401  (Agg backend and theme)


def localization_figure(df: pd.DataFrame, tokens: list[tuple[int, int]], grid: tuple[int, int], title: str):
    """Fig. 9/10: for each chosen token p, the CKA with the input patch at every position q."""
    fig, axes = plt.subplots(1, len(tokens), figsize=(2.9 * len(tokens), 3.0), squeeze=False)
    for i, (ax, (r, c)) in enumerate(zip(axes[0], tokens)):
        sub = df[(df.p_row == r) & (df.p_col == c)]
        m = np.full(grid, np.nan)
        m[sub.q_row.to_numpy(), sub.q_col.to_numpy()] = sub.cka.to_numpy()
        im = ax.imshow(m, cmap="magma", interpolation="nearest")
        ax.plot(c, r, marker="s", mfc="none", mec="cyan", ms=8)
        ax.set_title(f"token ({r}, {c})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if i == len(tokens) - 1:
            cbar.set_label("CKA with the input patch")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
