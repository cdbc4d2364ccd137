"""Figures in the papers' styles, one module per analysis family; analyses pass arrays and labels, never style.

Importing the package selects matplotlib's file-only Agg backend (no display on clusters) and the seaborn theme.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import seaborn as sns  # noqa: E402

sns.set_theme(context="paper", style="white", font_scale=1.1)
