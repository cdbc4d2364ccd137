"""Layout checks of a drawn figure: text elements that overlap and legends that hide data, so that a figure that
does not read fails a test instead of reaching a report (used by tests/test_figure_layout.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.legend import Legend
from matplotlib.transforms import Bbox

SHRINK = 1.0  # pixels trimmed from each side of a text box: touching glyph boxes are not an overlap


@dataclass(frozen=True)
class Element:
    """One text element of a figure: what it is (for the message) and its box in display pixels."""

    name: str
    box: Bbox


def _box(artist, renderer) -> Bbox | None:
    box = artist.get_window_extent(renderer)
    if box.width <= 2 * SHRINK or box.height <= 2 * SHRINK:
        return None
    return Bbox.from_extents(box.x0 + SHRINK, box.y0 + SHRINK, box.x1 - SHRINK, box.y1 - SHRINK)


def _drawn_ticklabels(axis) -> list:
    """The tick labels matplotlib draws: ticks inside the view interval only (the others exist but are not shown)."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(1.0, abs(hi - lo))
    out = []
    for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        if lo - eps <= tick.get_loc() <= hi + eps:
            out += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    return out


def _texts(fig, renderer) -> list[Element]:
    """Titles, axis labels, tick labels and legends of every visible axes, and the figure's suptitle."""
    out = []

    def add(name, artist):
        if artist is None or not artist.get_visible():
            return
        if hasattr(artist, "get_text") and not artist.get_text().strip():
            return
        box = _box(artist, renderer)
        if box is not None:
            out.append(Element(name, box))

    if fig._suptitle is not None:
        add(f"suptitle '{fig._suptitle.get_text()}'", fig._suptitle)
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        tag = f"axes {i}"
        for loc, t in (("title", ax.title), ("left title", ax._left_title), ("right title", ax._right_title)):
            add(f"{tag} {loc} '{t.get_text()}'", t)
        if ax.axison:
            add(f"{tag} x label '{ax.xaxis.label.get_text()}'", ax.xaxis.label)
            add(f"{tag} y label '{ax.yaxis.label.get_text()}'", ax.yaxis.label)
            for axis, which in ((ax.xaxis, "x"), (ax.yaxis, "y")):
                for t in _drawn_ticklabels(axis):
                    add(f"{tag} {which} tick '{t.get_text()}'", t)
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            out.append(Element(f"{tag} legend", legend.get_window_extent(renderer)))
    for legend in fig.legends:
        out.append(Element("figure legend", legend.get_window_extent(renderer)))
    return out


def _hidden_points(ax, legend: Legend, renderer) -> int:
    """How many data points of the axes' lines and scatters lie under its legend."""
    box = legend.get_window_extent(renderer)
    n = 0
    for line in ax.lines:
        xy = np.asarray(line.get_xydata(), float)
        if line.get_transform() != ax.transData or not len(xy):
            continue  # reference lines in axes coordinates (axhline) may pass under a legend
        xy = xy[np.isfinite(xy).all(axis=1)]
        n += int(box.count_contains(ax.transData.transform(xy)))
    for coll in ax.collections:
        offsets = np.asarray(coll.get_offsets(), float)
        if offsets.ndim != 2 or len(offsets) < 2 or coll.get_offset_transform() != ax.transData:
            continue
        offsets = offsets[np.isfinite(offsets).all(axis=1)]
        n += int(box.count_contains(ax.transData.transform(offsets)))
    return n


def layout_problems(fig) -> list[str]:
    """Every pair of overlapping text elements and every legend drawn over data points, as readable lines."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = _texts(fig, renderer)
    problems = []
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            if a.box.overlaps(b.box):
                problems.append(f"{a.name} overlaps {b.name}")
    for i, ax in enumerate(fig.axes):
        legend = ax.get_legend()
        if ax.get_visible() and legend is not None and legend.get_visible():
            hidden = _hidden_points(ax, legend, renderer)
            if hidden:
                problems.append(f"axes {i} legend hides {hidden} data point(s)")
    return problems


def empty_cells(fig) -> list[int]:
    """Indices of the axes of a figure grid that are shown (their frame or title drawn) but hold no image."""
    return [i for i, ax in enumerate(fig.axes) if ax.get_visible() and not ax.images and ax.get_title()]
