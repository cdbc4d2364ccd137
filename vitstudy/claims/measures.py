"""Raghu et al. 2021 Figs 1-2 under every similarity measure (`make fig-measures`): the same statistics as
`raghu.FIG1`, `FIG2_LOWER` and `FIG2_TOP`, computed on the `value` column of the similarity_within /
similarity_across tables, once per registered measure. Each measure's claims read only the runs of that measure
(`Need.config`: `analysis.measure=NAME`), so a claim never compares values of two measures, whose ranges differ.

Asymmetric measures (x predicts y): Fig. 1 averages both directions between the lowest and the highest quarter;
Fig. 2 reads the ViT's layers predicting the ResNet's (the rows whose model_x is the ViT, when the table holds both
directions)."""

from __future__ import annotations

from dataclasses import replace

from ..measures import MEASURES
from . import raghu
from .core import Claim, Need, Tables, kind_of

KEY = "analysis.measure"
FIG1_TARGET, FIG2_TARGET = "measures_fig1", "measures_fig2"
ORDER = ("fig1", "fig2_lower", "fig2_top")  # the three claims per measure, in the figure's column order


def vit_rows(t: Tables, role: str = "across") -> str | None:
    """A row selection (pandas expression) of the ViT predicting the CNN, when the across table holds both
    directions; None when it holds one (every row then has the ViT as x: `Need(..., 'vit')` chose the run)."""
    xs = [str(m) for m in t.df(role).model_x.unique()] if "model_x" in t.df(role) else []
    if len(xs) <= 1:
        return None
    vit = [m for m in xs if kind_of(m) == "vit"]
    return f"model_x == {vit[0]!r}" if vit else None


def _fig1(t: Tables) -> float:
    return raghu._fig1(t, both=True)


def _fig2_lower(t: Tables) -> float:
    return raghu._fig2_lower(t, vit_rows(t))


def _fig2_top(t: Tables) -> float:
    return raghu._fig2_top(t, vit_rows(t))


def for_measure(name: str) -> dict[str, Claim]:
    """The three claims ({'fig1', 'fig2_lower', 'fig2_top'}) on the runs of measure `name`."""
    cls = MEASURES[name]
    label, where = cls.label, ((KEY, name),)
    direction = "" if cls.symmetric else " (asymmetric: the ViT's layers predicting the ResNet's)"

    def need(analysis: str, kind: str) -> Need:
        return Need(analysis, kind, config=where)

    def text(claim: Claim, statistic: str) -> dict:
        return {
            "text": f"{claim.text} (measure: {label})",
            "statistic": statistic.replace("CKA", label),
            "column": "value",
            "caveat": claim.caveat,
        }

    both = (
        raghu.FIG1.statistic if cls.symmetric else raghu.FIG1.statistic.replace("layers,", "layers (both directions),")
    )
    fig1 = replace(
        raghu.FIG1,
        needs={"vit": need("similarity_within", "vit"), "cnn": need("similarity_within", "cnn")},
        compute=_fig1,
        **text(raghu.FIG1, both),
    )
    across = {"across": need("similarity_across", "vit")}
    lower = replace(
        raghu.FIG2_LOWER,
        needs=across,
        compute=_fig2_lower,
        **text(raghu.FIG2_LOWER, raghu.FIG2_LOWER.statistic + direction),
    )
    top = replace(
        raghu.FIG2_TOP, needs=across, compute=_fig2_top, **text(raghu.FIG2_TOP, raghu.FIG2_TOP.statistic + direction)
    )
    return {"fig1": fig1, "fig2_lower": lower, "fig2_top": top}


BY_MEASURE: dict[str, dict[str, Claim]] = {name: for_measure(name) for name in MEASURES}


def measure_of(claim: Claim) -> str | None:
    """The measure a claim of this module reads (None for any other claim)."""
    for need in claim.needs.values():
        found = dict(need.config).get(KEY)
        if found is not None:
            return found
    return None


def key_of(claim: Claim) -> str | None:
    """'fig1', 'fig2_lower' or 'fig2_top' for a claim of this module (None for any other claim)."""
    name = measure_of(claim)
    if name is None or name not in BY_MEASURE:
        return None
    return next((k for k, c in BY_MEASURE[name].items() if c is claim), None)


CLAIMS = {
    FIG1_TARGET: [c["fig1"] for c in BY_MEASURE.values()],
    FIG2_TARGET: [c[k] for c in BY_MEASURE.values() for k in ("fig2_lower", "fig2_top")],
}
