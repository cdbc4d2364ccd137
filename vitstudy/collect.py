"""`vitstudy collect DIR...`: combine run directories (sweeps, figure targets, single runs) into tidy summary
tables, readable figure grids, a list of failed and missing jobs, and `index.html`, a report that reads like the
papers' figure pages (vitstudy.report).

Idempotent and separate from the runs themselves, so it works after partial failures and under SLURM.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import claims
from .errors import VitstudyError
from .pipeline.results import write_csv, write_figure, write_text
from .report.grid import figure_grid
from .report.page import write_page
from .report.runs import PROBLEM_COLUMNS, find_runs, summarise, varying
from .report.sections import Section, missing_experiments, paper_order, sections

__all__ = ["collect", "find_runs", "summarise", "varying", "figure_grid", "attach_findings"]


def attach_findings(found: list[Section], root: Path) -> list:
    """Every figure target's claims on its jobs, and the tour's claims on the runs outside figure targets (those
    whose analyses ran here), each attached to its section; returns them all (findings.csv, in the papers' order)."""
    out = []
    for s in found:
        if s.experiment is not None:
            s.findings = claims.for_target(s.experiment.name, s.runs, root)
            out += s.findings
    generic = [s for s in found if s.experiment is None and s.root is None]
    by_analysis = {s.analysis: s for s in generic}
    rest = claims.for_runs([r for s in generic for r in s.runs], root=root)
    for f in rest:
        first = next(iter(f.claim.needs.values()))
        if first.analysis in by_analysis:
            by_analysis[first.analysis].findings.append(f)
    for s in generic:  # a tour section is named by the paper figures it checks
        figures = list(dict.fromkeys(f"{f.claim.paper}, {f.claim.figure}" for f in s.findings))
        if figures:
            s.title = f"{'; '.join(figures)}: {s.title}"
    return out + rest


def collect(dirs: list[str], out: str | None = None) -> Path:
    """Write the summary folder (tables, grids, failed.csv, index.html with index_files/) for the runs under
    `dirs`; returns its path (default: <first dir>/summary)."""
    if not dirs:
        raise VitstudyError("give at least one sweep or run directory: vitstudy collect outputs/multirun/DATE")
    roots = [Path(d) for d in dirs]
    runs, problems = find_runs(roots)
    if not runs and not problems:
        raise VitstudyError(f"no run directories (with .hydra/) under {', '.join(dirs)}")
    out_dir = Path(out) if out else roots[0] / "summary"
    tables = summarise(runs)
    written = {}
    for name, df in tables.items():
        written[name] = out_dir / f"{name}.csv"
        write_csv(written[name], df)
    found = sections(runs, problems)
    findings = attach_findings(found, roots[0])
    found = paper_order(found)
    grids = {}
    for s in found:
        if s.root is None and s.analysis and s.runs:
            fig = figure_grid(s.runs, s.analysis)
            if fig is not None:
                grids[s.analysis] = write_figure(out_dir / f"{s.analysis}_grid", fig)[0]
    failed = pd.DataFrame(problems, columns=PROBLEM_COLUMNS)
    write_csv(out_dir / "failed.csv", failed[["dir", "status", "error", "overrides", "log"]])
    missing = missing_experiments(found, roots) if any(s.experiment for s in found) else []
    findings += [
        claims.Finding(c, target=e.name, note=why)
        for e, why in missing
        if not why.startswith("not run")
        for c in claims.CLAIMS.get(e.name, [])
    ]  # a target that stopped before its jobs: its claims missing
    write_csv(out_dir / "findings.csv", claims.frame(findings))
    write_text(out_dir / "index.html", write_page(out_dir, found, failed, roots, written, grids, missing))
    return out_dir
