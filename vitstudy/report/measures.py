"""`make fig-measures`' last step: from the similarity_within / similarity_across runs of a measure sweep, Raghu et
al. Figs 1-2 side by side per measure (plots.measures) and the Fig. 1-2 claims evaluated per measure
(claims.measures), written to one folder:

    measures.png/.pdf           one row per measure: ViT within, CNN within, ViT vs CNN, verdicts in the row title
    measures_verdicts.png/.pdf  claim x measure: verdict, statistic and 95% interval
    measures_verdicts.csv       the same as a table (one row per measure and claim)
    measures_verdicts.md        the same as a markdown table (for docs/measures_answer.md)
    findings.csv                the claims' rows, as `vitstudy collect` writes them

    python -m vitstudy.report.measures FIG_OUT/fig-measures-1 FIG_OUT/fig-measures-2 --out FIG_OUT/fig-measures
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..claims import for_target
from ..claims.core import Finding, frame, kind_of, model_name
from ..claims.measures import FIG1_TARGET, FIG2_TARGET, KEY, ORDER, key_of, measure_of
from ..config import flatten
from ..errors import VitstudyError
from ..measures import MEASURES
from ..pipeline.results import write_csv, write_figure, write_text
from ..plots import model_label
from ..plots.measures import Heatmap, MeasureRow, Verdict, measures_figure, verdicts_figure
from .runs import find_runs

SHORT = {
    "fig1": "Fig. 1: lowest vs highest layers, ViT minus ResNet (> 0)",
    "fig2_lower": "Fig. 2: ResNet lower half with ViT lowest minus highest quarter (> 0)",
    "fig2_top": "Fig. 2: ViT final third vs first two thirds, best match (< 0)",
}
VERDICT_COLUMNS = [
    "measure",
    "label",
    "claim",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "threshold",
    "verdict",
    "method",
    "runs",
    "note",
]


@dataclass
class MeasureRuns:
    """The runs of one measure: the ViT's and the CNN's similarity_within, the ViT-vs-CNN similarity_across."""

    vit: dict | None = None
    cnn: dict | None = None
    across: dict | None = None


def measure_name(run: dict) -> str | None:
    value = flatten(run.get("config", {})).get(KEY)
    return None if value is None else str(value)


def group_runs(runs: list[dict]) -> dict[str, MeasureRuns]:
    """{measure: its runs}, registered measures first in registry order (the first run of each role wins)."""
    out: dict[str, MeasureRuns] = {}
    for run in runs:
        name, analysis = measure_name(run), run.get("analysis")
        if name is None or analysis not in ("similarity_within", "similarity_across"):
            continue
        group = out.setdefault(name, MeasureRuns())
        kind = kind_of(model_name(run))
        role = "across" if analysis == "similarity_across" else kind
        reference = str(((run.get("models") or {}).get("reference") or {}).get("name", ""))
        if role == "across" and (kind != "vit" or kind_of(reference) != "cnn"):
            continue  # Fig. 2 reads a ViT (model) against a CNN (reference)
        if getattr(group, role) is None:
            setattr(group, role, run)
    order = [m for m in MEASURES if m in out] + sorted(m for m in out if m not in MEASURES)
    return {m: out[m] for m in order}


def _label(run: dict, key: str = "model") -> str:
    node = (run.get("config") or {}).get(key) or {}
    weights = ((run.get("models") or {}).get(key) or {}).get("weights")
    name = node.get("label") or str(node.get("name", key)).split(".")[0]
    return model_label(name, weights)


def matrix(run: dict, table: str) -> np.ndarray:
    """The (layers x, layers y) value matrix of a run's table: the rows whose model_x is the run's model (one
    direction of an across table that holds both); a within table written as one triangle is mirrored."""
    path = Path(run["dir"]) / f"{table}.csv"
    if not path.is_file():
        raise VitstudyError(f"{path} is absent: the run did not write its table")
    df = pd.read_csv(path)
    missing = {"index_x", "index_y", "value"} - set(df.columns)
    if missing:
        raise VitstudyError(f"{path} lacks the columns {sorted(missing)} of a similarity table")
    if "model_x" in df and df.model_x.nunique() > 1:
        df = df[df.model_x.astype(str) == str(model_name(run))]
    nx, ny = int(df.index_x.max()) + 1, int(df.index_y.max()) + 1
    out = np.full((nx, ny), np.nan)
    out[df.index_x.to_numpy(int), df.index_y.to_numpy(int)] = df.value.to_numpy(float)
    if table == "similarity_within" and nx == ny:
        fill = np.isnan(out) & ~np.isnan(out.T)
        out[fill] = out.T[fill]
    return out


def _panel(run: dict | None, table: str, title: str, xlabel: str, ylabel: str, what: str) -> Heatmap:
    if run is None:
        return Heatmap(None, xlabel, ylabel, title, note=f"missing: no finished {what} run")
    return Heatmap(matrix(run, table), xlabel, ylabel, title)


def _short(f: Finding) -> str:
    if f.verdict == "missing":
        return "missing"
    return f"{f.verdict} {f.value:.2g} [{f.ci_low:.2g}, {f.ci_high:.2g}]"


def row(name: str, group: MeasureRuns, findings: dict[str, Finding]) -> MeasureRow:
    """A measure's figure row: its three panels and its verdicts in the title."""
    cls = MEASURES.get(name)
    label = cls.label if cls else name
    vrange = cls.range if cls else (float("-inf"), float("inf"))
    vit = _label(group.vit) if group.vit else _label(group.across) if group.across else "ViT"
    cnn = _label(group.cnn) if group.cnn else _label(group.across, "reference") if group.across else "CNN"
    layer = "layer"  # index 0 nearest the input, as every heatmap's origin (bottom left)
    asym = cls is not None and not cls.symmetric
    within_y = f"{layer} (predicted)" if asym else layer
    panels = (
        _panel(
            group.vit,
            "similarity_within",
            f"{vit}: within (Fig. 1)",
            f"{vit} {layer}",
            f"{vit} {within_y}",
            "similarity_within ViT",
        ),
        _panel(
            group.cnn,
            "similarity_within",
            f"{cnn}: within (Fig. 1)",
            f"{cnn} {layer}",
            f"{cnn} {within_y}",
            "similarity_within CNN",
        ),
        _panel(
            group.across,
            "similarity_across",
            f"{vit} vs {cnn} (Fig. 2)" + (", x predicts y" if asym else ""),
            f"{vit} {layer}",
            f"{cnn} {within_y}",
            "similarity_across ViT vs CNN",
        ),
    )
    parts = [
        f"{k.replace('fig', 'Fig. ').replace('_lower', ' lower half').replace('_top', ' final third')} "
        f"{_short(findings[k])}"
        for k in ORDER
        if k in findings
    ]
    return MeasureRow(name, label, vrange, panels, f"{label} ({name}): " + "; ".join(parts))


@dataclass
class Assembly:
    """What `assemble` wrote and found: the output folder, the measures drawn, every finding."""

    out: Path
    measures: list[str]
    findings: list[Finding]
    verdicts: pd.DataFrame


def verdict_table(findings: list[Finding]) -> pd.DataFrame:
    rows = []
    for f in findings:
        name = measure_of(f.claim)
        rows.append(
            {
                "measure": name,
                "label": MEASURES[name].label if name in MEASURES else name,
                "claim": key_of(f.claim),
                "statistic": f.claim.statistic,
                "value": f.value,
                "ci_low": f.ci_low,
                "ci_high": f.ci_high,
                "threshold": f.claim.rule,
                "verdict": f.verdict,
                "method": f.method,
                "runs": "; ".join(f.runs),
                "note": f.note,
            }
        )
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def markdown(verdicts: pd.DataFrame) -> str:
    """measure x claim: verdict, value [95% interval]."""
    head = "| measure | " + " | ".join(SHORT[k] for k in ORDER) + " |"
    lines = [head, "| --- |" + " --- |" * len(ORDER)]
    for name, g in verdicts.groupby("measure", sort=False):
        cells = []
        for k in ORDER:
            r = g[g.claim == k]
            if r.empty or r.iloc[0].verdict == "missing":
                cells.append("missing")
            else:
                r = r.iloc[0]
                cells.append(f"{r.verdict}, {r.value:.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]")
        lines.append(f"| {g.iloc[0].label} (`{name}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def assemble(dirs: list[str | Path], out: str | Path) -> Assembly:
    """Figure, verdict panel and tables of the similarity runs under `dirs`, into `out`."""
    roots = [Path(d) for d in dirs]
    if not roots:
        raise VitstudyError("give the sweep directories of fig-measures-1 and fig-measures-2")
    runs, _ = find_runs(roots)
    groups = group_runs(runs)
    if not groups:
        raise VitstudyError(
            f"no finished similarity_within or similarity_across run under {', '.join(map(str, roots))}; "
            "run `make fig-measures` (or fig-measures-1 and fig-measures-2) first"
        )
    root = roots[0].parent if len(roots) > 1 else roots[0]
    found = [f for t in (FIG1_TARGET, FIG2_TARGET) for f in for_target(t, runs, root)]
    found = [f for f in found if measure_of(f.claim) in groups]
    by = {m: {key_of(f.claim): f for f in found if measure_of(f.claim) == m} for m in groups}
    rows = [row(m, g, by[m]) for m, g in groups.items()]
    out = Path(out)
    title = (
        "Raghu et al. 2021 Figs 1-2 under each similarity measure (one row each, its own colour range; "
        "values are not comparable across rows)"
    )
    write_figure(out / "measures", measures_figure(rows, title))
    verdicts = verdict_table(found)
    labels = [r.label for r in rows]
    cells = [
        Verdict(MEASURES[m].label if m in MEASURES else m, SHORT[k], f.verdict, f.value, f.ci_low, f.ci_high)
        for m in groups
        for k, f in by[m].items()
    ]
    write_figure(
        out / "measures_verdicts",
        verdicts_figure(
            cells,
            labels,
            [SHORT[k] for k in ORDER],
            "Raghu et al. Figs 1-2 claims per measure: verdict, statistic [95% interval]",
        ),
    )
    write_csv(out / "measures_verdicts.csv", verdicts)
    write_text(out / "measures_verdicts.md", markdown(verdicts))
    write_csv(out / "findings.csv", frame(found))
    return Assembly(out, list(groups), found, verdicts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vitstudy.report.measures", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="sweep or run directories (fig-measures-1 and fig-measures-2)")
    ap.add_argument("--out", required=True, help="folder for the figure and the tables")
    args = ap.parse_args(argv)
    try:
        done = assemble(args.dirs, args.out)
    except VitstudyError as err:
        print(f"vitstudy: error: {err}", file=sys.stderr)
        return 2
    counts = done.verdicts.verdict.value_counts().to_dict()
    print(
        f"vitstudy: Raghu Figs 1-2 under {len(done.measures)} measures ({', '.join(done.measures)}) -> {done.out}; "
        + ", ".join(f"{n} {v}" for v, n in counts.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
