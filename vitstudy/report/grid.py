"""Figure grids for homogeneous sweeps: the runs' own figures side by side, only when a grid stays readable
(one analysis, at most two varied keys as rows and columns, a few columns); otherwise the report shows one
figure per run at full width. Keys that vary together (model.name and its label, say) are one key: they would
otherwise make a diagonal grid with blank cells."""

from __future__ import annotations

from .runs import flat_config, varying
from .sections import short_keys, shorten_values, value_text

MAX_COLUMNS = 3  # at the page's 1,300 px a cell stays over 400 px wide
MAX_ROWS = 6
JOIN = " + "  # an axis of keys that vary together is named by its keys joined with this


def _partition(group: list[dict], key: str) -> frozenset:
    """Which runs share a value of `key`: the set of groups of run indices."""
    by = {}
    for i, r in enumerate(group):
        by.setdefault(value_text(flat_config(r).get(key)), []).append(i)
    return frozenset(frozenset(v) for v in by.values())


def _bundles(group: list[dict], keys: list[str]) -> list[str]:
    """The varied keys with those that vary together (split the runs the same way) merged into one axis, named
    by its keys joined with JOIN, model.name first."""
    merged: dict[frozenset, list[str]] = {}
    for key in sorted(keys, key=lambda k: (k != "model.name", k)):
        merged.setdefault(_partition(group, key), []).append(key)
    return [JOIN.join(ks) for ks in merged.values()]


def _value(run: dict, axis: str | None) -> str:
    """A run's value on an axis: the first key's value (the others follow from it)."""
    return value_text(flat_config(run).get(axis.split(JOIN)[0])) if axis else ""


def _group(runs: list[dict], analysis: str) -> list[dict]:
    return [r for r in runs if r["analysis"] == analysis and (r["dir"] / f"{analysis}.png").is_file()]


def grid_axes(runs: list[dict], analysis: str) -> tuple[str | None, str | None] | None:
    """(row axis, column axis) when the runs of `analysis` make a readable grid, else None; an axis is a varied key,
    or keys that vary together joined with JOIN."""
    group = _group(runs, analysis)
    if len(group) < 2 or len({r["analysis"] for r in runs}) > 1:
        return None
    axes = _bundles(group, varying(group))
    if not axes or len(axes) > 2:
        return None
    if len(axes) == 1:
        row, col = None, axes[0]  # one key: the runs side by side
    else:
        row = next((a for a in axes if a.split(JOIN)[0] == "model.name"), axes[0])
        col = next(a for a in axes if a != row)
    cells = {(_value(r, row), _value(r, col)) for r in group}
    n_rows = len({c[0] for c in cells})
    n_cols = len({c[1] for c in cells})
    if len(cells) < len(group) or n_cols > MAX_COLUMNS or n_rows > MAX_ROWS:
        return None  # a repeated combination (other seeds) or too many cells
    return row, col


def axis_name(axis: str) -> str:
    """The short name of an axis: `model` for model.name, `model (label)` for keys that vary together."""
    keys = axis.split(JOIN)
    names = short_keys(keys)
    return names[keys[0]] + (f" ({', '.join(names[k] for k in keys[1:])})" if len(keys) > 1 else "")


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
    group = _group(runs, analysis)
    names = {a: axis_name(a) for a in axes if a}
    row_raw = [_value(r, row_key) for r in group]
    col_raw = [_value(r, col_key) for r in group]
    row_short = dict(zip(row_raw, shorten_values(row_raw))) if row_key else {"": ""}
    col_short = dict(zip(col_raw, shorten_values(col_raw)))
    rows = sorted(set(row_raw))
    cols = sorted(set(col_raw))
    images = [mpimg.imread(r["dir"] / f"{analysis}.png") for r in group]
    aspect = max(im.shape[0] / im.shape[1] for im in images)
    fig, ax = plt.subplots(
        len(rows),
        len(cols),
        figsize=(6.5 * len(cols), 6.5 * aspect * len(rows) + 0.6),
        squeeze=False,
        dpi=100,
        layout="constrained",
    )
    for a in ax.flat:
        a.axis("off")
    for im, rv, cv in zip(images, row_raw, col_raw):
        a = ax[rows.index(rv)][cols.index(cv)]
        a.imshow(im)
        a.set_title(
            ", ".join(
                x
                for x in (f"{names[row_key]}={row_short[rv]}" if row_key else "", f"{names[col_key]}={col_short[cv]}")
                if x
            ),
            fontsize=18,
        )
    fig.suptitle(
        f"{analysis}: " + (f"rows {names[row_key]}, " if row_key else "") + f"columns {names[col_key]}", fontsize=20
    )
    return fig
