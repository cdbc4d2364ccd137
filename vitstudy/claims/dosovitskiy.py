"""Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words": the findings of the figure targets
(conf/experiment/vit_fig*.yaml) as claims."""

from __future__ import annotations

from .core import Claim, Need
from .raghu import DATA_CAVEAT
from .stats import mean

PAPER = "Dosovitskiy et al. 2020"


def _neighbours(t):
    """Mean cosine of position embeddings of 4-neighbour patches minus of all other pairs of distinct patches."""
    near = "abs(row_a - row_b) + abs(col_a - col_b) == 1"
    far = "abs(row_a - row_b) + abs(col_a - col_b) > 1"
    return mean(t, "vit", near) - mean(t, "vit", far)


def _row_col(t):
    """Same row or column (not the patch itself, not a neighbour) minus neither, mean cosine."""
    same = "(row_a == row_b or col_a == col_b) and abs(row_a - row_b) + abs(col_a - col_b) > 1"
    other = "row_a != row_b and col_a != col_b and abs(row_a - row_b) + abs(col_a - col_b) > 1"
    return mean(t, "vit", same) - mean(t, "vit", other)


def _deeper(t):
    """Mean attention distance (px) of the heads of the last block minus of the first block."""
    df = t.df("vit")
    return mean(t, "vit", f"block == {int(df.block.max())}") - mean(t, "vit", f"block == {int(df.block.min())}")


FIG7_POSITION = Claim(
    paper=PAPER,
    figure="Fig. 7 (centre)",
    text="Position embeddings are most similar for nearby patches",
    statistic="mean cosine similarity: 4-neighbour patches minus farther pairs",
    needs={"vit": Need("position_embedding", "vit")},
    compute=_neighbours,
    threshold=0.0,
    direction=">",
    column="cosine",
)
FIG7_ROWS = Claim(
    paper=PAPER,
    figure="Fig. 7 (centre)",
    text="Position embeddings encode rows and columns",
    statistic="mean cosine similarity: same row or column minus neither (neighbours left out)",
    needs={"vit": Need("position_embedding", "vit")},
    compute=_row_col,
    threshold=0.0,
    direction=">",
    column="cosine",
)
FIG7_DEPTH = Claim(
    paper=PAPER,
    figure="Fig. 7 (right)",
    text="Attention distance grows with depth",
    statistic="mean attention distance (px): last block minus first block",
    needs={"vit": Need("attention_distance", "vit")},
    compute=_deeper,
    threshold=0.0,
    direction=">",
    caveat=DATA_CAVEAT,
)

FIG6 = Claim(
    paper=PAPER,
    figure="Fig. 6",
    text="Attention rollout of the CLS token concentrates on part of the image",
    statistic="mean over images of the rollout map's entropy divided by the uniform map's (1: uniform)",
    needs={"vit": Need("attention_rollout", "vit", independent_rows=True)},
    compute=lambda t: mean(t, "vit"),
    threshold=1.0,
    direction="<",
    column="entropy_normalised",
    caveat="concentration is necessary, not sufficient: whether the region is the object needs the images",
)

CLAIMS = {
    "vit_fig6": [FIG6],
    "vit_fig7": [FIG7_POSITION, FIG7_ROWS, FIG7_DEPTH],
}
