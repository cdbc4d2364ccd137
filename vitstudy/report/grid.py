"""Figure grids for homogeneous sweeps: the runs' own figures side by side, only when a grid stays readable
(one analysis, at most two varied keys as rows and columns, a few columns); otherwise the report shows one
figure per run at full width."""
from __future__ import annotations

from .runs import flat_config, varying
from .sections import short_keys, value_text, shorten_values

MAX_COLUMNS = 3  # at the page's 1,300 px a cell stays over 400 px wide
MAX_ROWS = 6


def grid_axes(runs: list[dict], analysis: str) -> tuple[str | None, str | None] | None:
    """(row key, column key) when the runs of `analysis` make a readable grid, else None."""
    group = [r for r in runs if r["analysis"] == analysis and (r["dir"] / f"{analysis}.png").is_file()]
    if len(group) < 2 or len({r["analysis"] for r in runs}) > 1:
        return None
    axes = varying(group)
    if not axes or len(axes) > 2:
        return None
    if len(axes) == 1:
        row, col = None, axes[0]  # one key: the runs side by side
    else:
        row = "model.name" if "model.name" in axes else axes[0]
        col = next(k for k in axes if k != row)
    cells = {(value_text(flat_config(r).get(row)) if row else "", value_text(flat_config(r).get(col))) for r in group}
    n_rows = len({c[0] for c in cells})
    n_cols = len({c[1] for c in cells})
    if len(cells) < len(group) or n_cols > MAX_COLUMNS or n_rows > MAX_ROWS:
        return None  # a repeated combination (other seeds) or too many cells
    return row, col


def figure_grid(runs: list[dict], analysis: str):
    """The runs' main figures in a grid (one varied key: a row; two: rows the model when it varies, else the first
    key, columns the other), labelled with the shortened values; None when such a grid would not be readable."""
    axes = grid_axes(runs, analysis)
    if axes is None:
        return None
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    from .. import plots  # noqa: F401  (backend and theme)

    row_key, col_key = axes
    group = [r for r in runs if r["analysis"] == analysis and (r["dir"] / f"{analysis}.png").is_file()]
    names = short_keys([k for k in axes if k])
    row_raw = [value_text(flat_config(r).get(row_key)) if row_key else "" for r in group]
    col_raw = [value_text(flat_config(r).get(col_key)) for r in group]
    row_short = dict(zip(row_raw, shorten_values(row_raw))) if row_key else {"": ""}
    col_short = dict(zip(col_raw, shorten_values(col_raw)))
    rows = sorted(set(row_raw))
    cols = sorted(set(col_raw))
    images = [mpimg.imread(r["dir"] / f"{analysis}.png") for r in group]
    aspect = max(im.shape[0] / im.shape[1] for im in images)
    fig, ax = plt.subplots(len(rows), len(cols), figsize=(6.5 * len(cols), 6.5 * aspect * len(rows) + 0.6),
                           squeeze=False, dpi=100, layout="constrained")
    for a in ax.flat:
        a.axis("off")
    for im, rv, cv in zip(images, row_raw, col_raw):
        a = ax[rows.index(rv)][cols.index(cv)]
        a.imshow(im)
        a.set_title(", ".join(x for x in (f"{names[row_key]}={row_short[rv]}" if row_key else "",
                                          f"{names[col_key]}={col_short[cv]}") if x), fontsize=18)
    fig.suptitle(f"{analysis}: " + (f"rows {names[row_key]}, " if row_key else "") + f"columns {names[col_key]}", fontsize=20)
    return fig
