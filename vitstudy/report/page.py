"""The HTML page: `index.html` plus its figures in `index_files/`, beside it. Light (no embedded images), opens
offline from the file system, and can be copied as a folder; links to run directories and their CSVs are
relative, so they keep working when the collected directory is copied with it."""

from __future__ import annotations

import html
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .sections import Section
from .settings import intervals, settings, tables_of

FILES = "index_files"  # the page's own folder of figures
MARKER = ".vitstudy-report"  # only a folder holding it is ever emptied
MAX_BYTES = 1_500_000  # larger figures are shown downscaled (linked to the original)
MAX_WIDTH = 2600  # px of a downscaled figure: twice the page's width
HEAD_ROWS = 8
MIN_WIDTH = 720  # px: no figure is shown narrower (a tall one then takes more than a screen)
MAX_HEIGHT = 820  # px: a square figure fits on a laptop screen
MIN_SCALE = 0.6  # but never under 0.6 of its own pixels: a tall mosaic of panels keeps readable labels
STRIP = 0.2  # height / width under which a figure scrolls sideways at a readable height
STRIP_HEIGHT = 620  # px: the height such a strip is shown at (at most its own)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;margin:0;background:#fafafa;line-height:1.45}
main{max-width:1320px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:28px;margin:8px 0 4px} h2{font-size:22px;margin:0 0 6px} h3{font-size:16px;margin:18px 0 6px;color:#333}
.meta{color:#555;margin:0 0 12px} .target{font-size:14px;font-weight:normal;color:#666;margin-left:10px;font-family:monospace}
section{border-top:3px solid #2b6cb0;margin:40px 0 0;padding-top:14px}
section.generic{border-top-color:#718096}
.finds{font-size:17px;background:#ebf4ff;border-left:4px solid #2b6cb0;padding:8px 12px;margin:8px 0}
.measures{color:#333;margin:6px 0 10px}
.problem{background:#fff5f5;border-left:4px solid #c53030;padding:6px 12px;margin:8px 0;font-size:14px}
.problem code{font-size:12px} .ok{color:#276749} .bad{color:#c53030;font-weight:600} .dim{color:#777}
figure{margin:10px 0 18px} figure img{display:block;height:auto;max-width:100%;border:1px solid #e2e2e2}
.strip{overflow-x:auto;border:1px solid #e2e2e2} .strip img{border:0}
figcaption{font-size:13px;color:#555;margin-top:3px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} td,th{border:1px solid #d9d9d9;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#f3f3f3} table.settings th{width:110px} table.jobs{width:100%} table.toc td,table.toc th{padding:5px 8px;font-size:14px} table.toc td:nth-child(2){width:48%}
details{margin:8px 0} summary{cursor:pointer;color:#2b6cb0} .csv{overflow-x:auto;max-width:100%}
a{color:#2b6cb0} code{font-size:13px}
.claims{margin:8px 0 12px;padding:0;list-style:none} .claims li{border-left:4px solid #a0aec0;background:#f7fafc;padding:6px 12px;margin:6px 0}
.claims li.holds{border-left-color:#2f855a} .claims li.contradicted{border-left-color:#c53030} .claims li.inconclusive{border-left-color:#b7791f}
.verdict{font-weight:700;padding:0 5px;border-radius:3px;color:#fff;white-space:nowrap} .verdict.holds{background:#2f855a}
.verdict.contradicted{background:#c53030} .verdict.inconclusive{background:#b7791f} .verdict.missing{background:#718096}
.stat{color:#555;font-size:13px} .caveat{color:#744210;font-size:13px}
"""


def write_page(
    out: Path,
    sections: list[Section],
    problems: pd.DataFrame,
    roots: list[Path],
    summary_tables: dict[str, Path],
    grids: dict[str, Path],
    missing: list,
) -> str:
    """The page's HTML; copies the figures it shows into out/index_files/."""
    files = _fresh_files(out)
    figure_sections = [s for s in sections if s.root is not None]
    other = [s for s in sections if s not in figure_sections]
    n_runs = sum(len(s.runs) for s in sections)
    parts = [
        "<h1>vitstudy report</h1>",
        "<p class=meta>"
        + (_plural(len(figure_sections), "paper figure") if figure_sections else "")
        + (" and " if figure_sections and other else "")
        + (
            _plural(
                len(other),
                "other analysis" if figure_sections else "analysis",
                "other analyses" if figure_sections else "analyses",
            )
            if other
            else ""
        )
        + f" from {', '.join(_code(r) for r in roots)}: {_plural(n_runs, 'finished job')}, "
        + (
            f"<span class=bad>{_plural(len(problems), 'failed or missing job')}</span>"
            if len(problems)
            else "no failed or missing jobs"
        )
        + f". Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    parts.append(_contents(sections, missing))
    for s in sections:
        parts.append(_section(s, out, files, grids.get(s.analysis) if s in other else None))
    parts.append(
        "<section class=generic id=failed><h2>Failed and missing jobs</h2>"
        + (_table(problems[["dir", "status", "error", "log", "overrides"]]) if len(problems) else "<p>none</p>")
        + "</section>"
    )
    if summary_tables:
        parts.append(
            "<section class=generic id=tables><h2>Summary tables</h2><p>One tidy table per analysis, every run's "
            "main table with the varied config keys as columns: "
            + ", ".join(_link(out, p, p.name) for p in summary_tables.values())
            + "; failed.csv lists the failed "
            "and missing jobs.</p></section>"
        )
    title = "vitstudy report" + (f": {len(figure_sections)} paper figures" if figure_sections else "")
    return (
        f"<!doctype html><html lang=en><head><meta charset='utf-8'><meta name=viewport content='width=device-width'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><main>{''.join(parts)}</main></body></html>\n"
    )


def _fresh_files(out: Path) -> Path:
    files = out / FILES
    if (files / MARKER).is_file():
        shutil.rmtree(files)
    files.mkdir(parents=True, exist_ok=True)
    (files / MARKER).write_text("figures of index.html, written by vitstudy collect; rewritten on every collect\n")
    return files


def _contents(sections: list[Section], missing: list) -> str:
    rows = []
    for s in sections:
        ok, bad = len(s.runs), len(s.problems)
        status = f"<span class=ok>{ok} finished</span>" if ok else ""
        if bad:
            status += (", " if ok else "") + f"<span class=bad>{bad} failed or missing</span>"
        wall = sum(float(r.get("wall_time_s") or 0) for r in s.runs)
        models = sorted(
            {str(m.get("name", "?")).split(".")[0] for r in s.runs for m in (r.get("models") or {}).values()}
        )
        images = sorted({str(rep.get("images")) for r in s.runs for rep in (r.get("images") or [])[:1]})
        what = s.experiment.finds if s.experiment else _summary(s.analysis)
        rows.append(
            f"<tr><td><a href='#{s.key}'>{html.escape(s.title)}</a><br><span class=dim><code>{html.escape(s.key)}</code></span></td>"
            f"<td>{html.escape(what)}</td><td>{_verdicts(s.findings)}</td><td>{html.escape(_clip(', '.join(models), 110)) or '-'}</td>"
            f"<td>{'/'.join(images) or '-'}</td><td>{status or '-'}</td><td>{_secs(wall) if wall else '-'}</td></tr>"
        )
    figures = any(s.experiment for s in sections)
    table = (
        f"<table class=toc><tr><th>{'figure' if figures else 'analysis'}</th>"
        f"<th>{'the paper finds' if figures else 'what'}</th><th>this run (claims)</th><th>models</th><th>images</th><th>jobs</th><th>wall time</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    absent = [e for e, why in missing if why.startswith("not run")]
    for e, why in missing:
        if e not in absent:
            table += f"<div class=problem><span class=bad>{html.escape(e.target)}</span> ({html.escape(e.title)}): {html.escape(why)}</div>"
    if absent:
        table += (
            f"<p class=dim>Not in these directories ({len(absent)}): "
            + ", ".join(f"<span title='{html.escape(e.title)}'>{html.escape(e.target)}</span>" for e in absent)
            + ".</p>"
        )
    return table


def _summary(analysis: str | None) -> str:
    """The analysis' one-line summary from the registry (what it measures), or its name when unknown."""
    if not analysis:
        return ""
    from ..analyses import REGISTRY

    entry = REGISTRY.get(analysis)
    return getattr(entry, "summary", None) or analysis


def _verdicts(findings: list) -> str:
    """'2 holds · 1 contradicted' in the verdicts' colours, '-' without claims."""
    if not findings:
        return "-"
    counts = {}
    for f in findings:
        counts[f.verdict] = counts.get(f.verdict, 0) + 1
    return " ".join(f"<span class='verdict {v}'>{n} {v}</span>" for v, n in counts.items())


def _claims(findings: list) -> str:
    """Per claim: what the paper finds, and this run's verdict with the value and its 95% interval."""
    if not findings:
        return ""
    items = []
    for f in findings:
        c = f.claim
        where = f"{c.paper}, {c.figure}" if c.paper else ""
        this = (
            f"<span class='verdict missing'>missing</span> {html.escape(f.note)}"
            if f.verdict == "missing"
            else f"<span class='verdict {f.verdict}'>{f.verdict}</span>, {html.escape(f.summary().split(', ', 1)[1])}"
            f" <span class=stat>{html.escape(c.statistic)}; {html.escape(f.method)}"
            + (f"; {html.escape(', '.join(f.models))}" if f.models else "")
            + "</span>"
        )
        caveat = f"<br><span class=caveat>{html.escape(c.caveat)}</span>" if c.caveat else ""
        items.append(
            f"<li class={f.verdict}><b>Paper finds</b> ({html.escape(where)}): {html.escape(c.text)}.<br>"
            f"<b>This run:</b> {this}{caveat}</li>"
        )
    return "<ul class=claims>" + "".join(items) + "</ul>"


def _section(s: Section, out: Path, files: Path, grid: Path | None) -> str:
    exp = s.experiment
    cls = "" if exp else " class=generic"
    head = f"<h2>{html.escape(s.title)}<span class=target>{html.escape(s.key if exp else 'analysis')}</span></h2>"
    parts = [f"<section id='{html.escape(s.key)}'{cls}>", head]
    if exp:
        if exp.finds:
            parts.append(f"<p class=finds><b>The paper finds:</b> {html.escape(exp.finds)}</p>")
        parts.append(_claims(s.findings))
        parts.append(
            f"<p class=measures><b>This run</b> (<code>experiment={html.escape(exp.name)}</code>): {html.escape(exp.measures)}</p>"
        )
    elif s.runs:
        parts.append(_claims(s.findings))
        parts.append(
            f"<p class=measures>{html.escape(_summary(s.analysis))}: {_plural(len(s.runs), 'run')}"
            + (f" varying {', '.join(_code(k) for k in s.axes)}" if s.axes else "")
            + ".</p>"
        )
    shared = _shared_overrides(s)
    for p in s.problems:
        parts.append(_problem(p, out, shared))
    if s.runs:
        parts.append(_settings(s))
    job_tables = {str(r["dir"]): tables_of(Path(r["dir"])) for r in s.runs}
    if grid is not None:
        parts.append(
            _figure(
                out,
                files / s.key,
                grid,
                f"{grid.name}: the runs' {s.analysis}.png side by side; each run's figures are below, under Runs",
                link=grid,
            )
        )
        parts.append("<details><summary>Runs: every run's figures</summary>")
    for i, r in enumerate(s.runs):
        label = s.label(r)
        if len(s.runs) > 1:
            parts.append(f"<h3>{html.escape(label or Path(r['dir']).name)}</h3>")
        for png in _pngs(r):
            parts.append(_figure(out, files / s.key / f"{i:02d}-{Path(r['dir']).name}", png, _caption(out, png)))
    if grid is not None:
        parts.append("</details>")
    parts.append(_intervals(s, job_tables))
    parts.append(_tables(s, out, job_tables))
    parts.append("</section>")
    return "".join(parts)


def _problem(p: dict, out: Path, shared: set[str] = frozenset()) -> str:
    """A failed or missing job: its status, the overrides that set it apart from the section's other jobs (all of
    them on hover), its one-line error and its log."""
    job = Path(p["dir"])
    log = p.get("log") or ""
    every = p.get("overrides", "").split()
    own = [o for o in every if o not in shared]
    overrides = f" <code title='{html.escape(' '.join(every))}'>{html.escape(' '.join(own))}</code>" if own else ""
    return (
        f"<div class=problem><span class=bad>{html.escape(p['status'])}</span>: job {_link(out, job, job.name)}"
        + overrides
        + (f"<br>error: {html.escape(_one_line(p.get('error', '')))}" if p.get("error") else "")
        + (f"<br>log: {_link(out, Path(log), log)}" if log else "<br>log: none found")
        + "</div>"
    )


def _shared_overrides(s: Section) -> set[str]:
    """The overrides every job of a section has (the target's own), when it has more than one job."""
    sets = [set(map(str, r.get("overrides") or [])) for r in s.runs] + [
        set(p.get("overrides", "").split()) for p in s.problems
    ]
    return set.intersection(*sets) if len(sets) > 1 else set()


def _settings(s: Section) -> str:
    per_run = [settings(r) for r in s.runs]
    keys = list(dict.fromkeys(k for d in per_run for k in d))
    common = [k for k in keys if len({d.get(k, "-") for d in per_run}) == 1]
    differ = [k for k in keys if k not in common]
    text = (
        "<table class=settings>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(per_run[0].get(k, '-'))}</td></tr>" for k in common)
        + "</table>"
    )
    if differ:
        label = [s.label(r) or Path(r["dir"]).name for r in s.runs]
        text += (
            "<table class='settings jobs'><tr><th>job</th>"
            + "".join(f"<th>{html.escape(k)}</th>" for k in differ)
            + "</tr>"
            + "".join(
                f"<tr><td>{html.escape(label[i])}</td>"
                + "".join(f"<td>{html.escape(d.get(k, '-'))}</td>" for k in differ)
                + "</tr>"
                for i, d in enumerate(per_run)
            )
            + "</table>"
        )
    return text


def _intervals(s: Section, job_tables: dict) -> str:
    rows = []
    for r in s.runs:
        for row in intervals(job_tables[str(r["dir"])]):
            rows.append({"job": s.label(r) or Path(r["dir"]).name, **row})
    if not rows:
        return (
            "<p class=dim>Uncertainty: no interval or standard-error columns (<code>*_ci_low</code>, "
            "<code>*_ci_high</code>, <code>*_se</code>) in these tables.</p>"
        )
    df = pd.DataFrame(rows)
    if df["job"].nunique() == 1:
        df = df.drop(columns="job")
    return (
        "<p><b>Uncertainty</b> (from the tables' interval and standard-error columns; widths are high minus low):</p>"
        + _table(df)
    )


def _tables(s: Section, out: Path, job_tables: dict) -> str:
    blocks, links = [], []
    for r in s.runs:
        job = Path(r["dir"])
        label = s.label(r) or job.name
        links.append(f"{_link(out, job, label)} ({_link(out, job / 'run.json', 'run.json')})")
        for name, df in job_tables[str(job)].items():
            note = f"{len(df)} rows" + (f", first {HEAD_ROWS}" if len(df) > HEAD_ROWS else "")
            blocks.append(
                f"<p>{_link(out, job / name, name)}"
                + (f" ({html.escape(label)})" if len(s.runs) > 1 else "")
                + f": {note}</p><div class=csv>{_table(df.head(HEAD_ROWS))}</div>"
            )
    text = "<p>Run directories: " + ", ".join(links) + "</p>" if links else ""
    if blocks:
        text += f"<details><summary>Tables ({len(blocks)} CSVs, the first rows of each)</summary>{''.join(blocks)}</details>"
    return text


def _pngs(run: dict) -> list[Path]:
    """A run's figures: its analysis' main figure first, then the others by name."""
    job = Path(run["dir"])
    main = f"{run.get('analysis', '')}.png"
    return sorted(job.glob("*.png"), key=lambda p: (p.name != main, p.name))


def _caption(out: Path, png: Path) -> str:
    pdf = png.with_suffix(".pdf")
    return (
        f"{_link(out, png, png.name)}"
        + (f" · {_link(out, pdf, 'PDF')}" if pdf.is_file() else "")
        + f" · {_link(out, png.parent, 'run directory')}"
    )


def _figure(out: Path, dest_dir: Path, png: Path, caption: str, link: Path | None = None) -> str:
    """A figure at the page's width, but at most MAX_HEIGHT tall (and never under MIN_WIDTH wide nor under
    MIN_SCALE of its own width); a strip much wider than tall (one row of many panels) at a readable height in a
    box that scrolls sideways."""
    width, height = _size(png)
    strip = bool(height) and height / width < STRIP
    shown = _copy_figure(png, dest_dir, STRIP_HEIGHT if strip else None)
    width, height = _size(shown)
    src = os.path.relpath(shown, out).replace(os.sep, "/")
    target = os.path.relpath(link or png, out).replace(os.sep, "/")
    if strip:
        style, box = f"height:{min(height, STRIP_HEIGHT)}px;width:auto;max-width:none", "<div class=strip>"
        caption += " · a wide figure: scroll sideways, or open it"
    else:
        ratio = f"{width / height:.3f}" if height else "1"
        least = max(MIN_WIDTH, round(MIN_SCALE * width))
        style, box = f"width:clamp({least}px,calc({MAX_HEIGHT}px * {ratio}),100%)", "<div>"
    return (
        f"<figure>{box}<a href='{html.escape(target)}'><img src='{html.escape(src)}' alt='{html.escape(png.name)}' "
        f"style='{style}' loading=lazy></a></div><figcaption>{caption}</figcaption></figure>"
    )


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return 0, 0


def _copy_figure(png: Path, dest_dir: Path, strip_height: int | None = None) -> Path:
    """The figure beside the page: copied; over MAX_BYTES, downscaled to twice what the page shows (sharp on a
    high-density screen) and saved as PNG, or as JPEG when that is still large. The figure links the original."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / png.name
    if png.stat().st_size <= MAX_BYTES:
        shutil.copyfile(png, dest)
        return dest
    from PIL import Image

    with Image.open(png) as im:
        scale = min(1.0, 2 * strip_height / im.height) if strip_height else min(1.0, MAX_WIDTH / im.width)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        im.save(dest, optimize=True)
        if dest.stat().st_size > MAX_BYTES:
            dest.unlink()
            dest = dest.with_suffix(".jpg")
            im.convert("RGB").save(dest, quality=85, optimize=True)
    return dest


def _link(out: Path, target: Path, text: str) -> str:
    rel = os.path.relpath(target, out).replace(os.sep, "/")
    return f"<a href='{html.escape(rel)}'>{html.escape(str(text))}</a>"


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}", escape=True)


def _code(x) -> str:
    return f"<code>{html.escape(str(x))}</code>"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _secs(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h")
