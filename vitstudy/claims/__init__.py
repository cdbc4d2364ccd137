"""Claims as checks: each figure target's paper findings, declared once (one module per paper: `raghu`,
`dosovitskiy`, `parkkim`, plus `measures`: Raghu Figs 1-2 once per similarity measure; each a dict
`CLAIMS[target] = [Claim, ...]`), evaluated on a collection of runs into `findings.csv` rows with a value, a 95%
interval and a verdict (`core`). See docs/claims.md.

Why Python and not a declarative spec: a statistic selects rows (pandas expressions), groups them by depth and
compares two runs; a short function says that plainly, and the interval machinery (`core.estimate`) recomputes it
on the runs' replicates without the claim's code knowing."""

from __future__ import annotations

from pathlib import Path

from . import dosovitskiy, measures, parkkim, raghu
from .core import COLUMNS, VERDICTS, Claim, Finding, Need, evaluate, frame, resolve

CLAIMS: dict[str, list[Claim]] = {**raghu.CLAIMS, **dosovitskiy.CLAIMS, **parkkim.CLAIMS, **measures.CLAIMS}

# the tour's runs (vitstudy.demo.TOUR_RUNS) on the bundled CIFAR-10 ViT and ResNet, in the papers' order
TOUR: list[tuple[str, Claim]] = [
    ("raghu_fig1", raghu.FIG1),
    ("raghu_fig2", raghu.FIG2_LOWER),
    ("raghu_fig2", raghu.FIG2_TOP),
    ("raghu_fig3", raghu.FIG3),
    ("raghu_fig7", raghu.FIG7),
    ("raghu_fig9", raghu.FIG9),
    ("raghu_fig13", raghu.FIG13),
    ("vit_fig7", dosovitskiy.FIG7_DEPTH),
    ("vit_fig7", dosovitskiy.FIG7_POSITION),
    ("vit_fig7", dosovitskiy.FIG7_ROWS),
    ("parkkim_fig2a", parkkim.FIG2A),
    ("parkkim_fig8", parkkim.FIG8),
    ("parkkim_fig9", parkkim.FIG9_MSA),
    ("parkkim_fig9", parkkim.FIG9_MLP),
]
DEMO = TOUR[:3]  # the demo's three CKA runs answer Figs 1 and 2


def for_target(target: str, runs: list[dict], root: Path | None = None) -> list[Finding]:
    """A figure target's claims on its jobs; a target without declared claims gives one `missing` row saying so."""
    claims = CLAIMS.get(target)
    if not claims:
        placeholder = Claim(
            paper="",
            figure="",
            text="(no claim declared for this target yet)",
            statistic="",
            needs={},
            compute=lambda t: float("nan"),
        )
        return [Finding(placeholder, target=target, note=f"no claim declared for {target} in vitstudy/claims")]
    return [f for c in claims for f in resolve(c, runs, target=target, root=root)]


def for_runs(runs: list[dict], pairs=TOUR, root: Path | None = None) -> list[Finding]:
    """The claims of `pairs` ((target, claim)) whose inputs are at least partly among these runs (analysis runs
    outside figure targets, as the tour's): the others are about analyses that did not run here."""
    present = {r.get("analysis") for r in runs}
    out = []
    for target, claim in pairs:
        if any(n.analysis in present for n in claim.needs.values()):
            out += resolve(claim, runs, target=target, root=root)
    return out


__all__ = [
    "CLAIMS",
    "TOUR",
    "DEMO",
    "COLUMNS",
    "VERDICTS",
    "Claim",
    "Need",
    "Finding",
    "evaluate",
    "frame",
    "resolve",
    "for_target",
    "for_runs",
]
