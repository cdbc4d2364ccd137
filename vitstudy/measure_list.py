"""What `vitstudy list` says about the similarity measures, read from their registry.

The measures package imports only numpy (torch and pandas are imported where a Gram or a ranking is formed), so
listing them costs a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MeasureInfo:
    """One measure as `vitstudy list` shows it."""

    name: str
    summary: str
    range: tuple[float, float]
    invariances: tuple[str, ...]
    invariances_y: tuple[str, ...] | None
    symmetric: bool
    streams: bool
    full_set: bool
    parameters: dict = field(default_factory=dict)


def from_registry() -> list[MeasureInfo]:
    from . import measures

    return [
        MeasureInfo(
            name,
            c.summary,
            tuple(c.range),
            tuple(c.invariances),
            None if c.invariances_y is None else tuple(c.invariances_y),
            c.symmetric,
            c.streams,
            c.full_set,
            c.parameters(),
        )
        for name, c in sorted(measures.MEASURES.items())
    ]


def lines(infos: list[MeasureInfo] | None = None) -> list[str]:
    """The `measures` section of `vitstudy list`: name and summary, then range, forms, symmetry, invariances, parameters."""
    if infos is None:
        infos = from_registry()
    out = [
        "measures (analysis=similarity_within|similarity_across|similarity_grid analysis.measure=NAME; docs/measures.md):"
    ]
    for m in infos:
        forms = " and ".join(f for f, has in (("streams (minibatch)", m.streams), ("full set", m.full_set)) if has)
        params = ", ".join(f"analysis.{k}={v}" for k, v in m.parameters.items()) or "none"
        inv = ", ".join(m.invariances) or "none of the listed"
        if m.invariances_y is not None:
            inv = f"{inv} (x side); {', '.join(m.invariances_y) or 'none'} (y side)"
        out.append(f"  {m.name:<22} {m.summary}")
        out.append(
            f"  {'':<22}   range [{m.range[0]:g}, {m.range[1]:g}]; {forms}; "
            f"{'symmetric' if m.symmetric else 'asymmetric (x predicts y)'}; invariant to {inv}; parameters: {params}"
        )
    return out
