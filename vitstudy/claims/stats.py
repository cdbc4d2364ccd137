"""Small building blocks the claims share: parts of a network by relative depth, model kinds in a table, and
the group-wise means the statistics are made of. Each returns the rows to read; the values come through `Tables`
so that the interval follows them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .core import Tables, kind_of


def quarter(n: int, part: float = 0.25) -> int:
    """How many of n layers make the lowest (or highest) `part` of the network: at least one."""
    return max(1, math.ceil(part * n))


def of_kind(column: str, kind: str):
    """A row selection: the rows whose model (in `column`) is a ViT ('vit') or a CNN ('cnn')."""
    return lambda df: df[column].astype(str).map(kind_of) == kind


def within(query: str, where: str | None) -> str:
    """`query` restricted to the rows of `where` (both pandas expressions; None: every row)."""
    return query if where is None else f"({where}) and ({query})"


def far_cka(t: Tables, role: str, part: float = 0.25, both: bool = False) -> float:
    """Mean value (CKA, or any similarity) between the lowest and the highest `part` of one model's layers (a
    *_within table): lower layer x against higher layer y, and with `both` also higher x against lower y (the two
    directions of an asymmetric measure; for a symmetric one the same mean)."""
    n = int(t.df(role).index_y.max()) + 1
    k = quarter(n, part)
    query = f"index_x < {k} and index_y >= {n - k}"
    if both:
        query = f"({query}) or (index_y < {k} and index_x >= {n - k})"
    return float(t.values(role, query).mean())


def mean(t: Tables, role: str, query=None) -> float:
    return float(t.values(role, query).mean())


def group_means(t: Tables, role: str, by: str, query=None) -> pd.Series:
    """The value column's mean per group of `by` (e.g. per block), of the selected rows."""
    df = t.frame(role, query)
    return df.groupby(by, sort=True)[t.tables[role].column].mean()


def step_change(t: Tables, role: str, kind: str, query=None, log: bool = False) -> float:
    """Mean change of the value from the latent before each `kind` latent to it (Park & Kim: across an MSA or MLP
    sublayer), over one model's latents ordered by `index`; on a log scale when `log`."""
    df = t.frame(role, query).sort_values("index")
    col = t.tables[role].column
    v = np.log(df[col].to_numpy()) if log else df[col].to_numpy()
    kinds = df["kind"].astype(str).to_numpy()
    steps = [v[i] - v[i - 1] for i in range(1, len(v)) if kinds[i] == kind]
    if not steps:
        from .core import Missing

        raise Missing(f"{role}: no latent of kind {kind} after another")
    return float(np.mean(steps))
