"""`vitstudy collect DIR...`: combine the run directories of sweeps into tidy summary tables, figure grids,
a list of failed and missing jobs, and a self-contained HTML report (figures embedded, viewable offline).

Idempotent and separate from the sweep itself, so it works after partial failures and under SLURM.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from .config import flatten, is_neutral
from .errors import VitstudyError
from .pipeline.results import RECORD, write_csv, write_figure, write_text



def find_runs(roots: list[Path]) -> tuple[list[dict], list[dict]]:
    """(finished runs, failed or missing jobs) under the given directories."""
    runs, problems = [], []
    for root in roots:
        if not root.is_dir():
            raise VitstudyError(f"not a directory: {root}; give sweep or run directories")
        for hydra_dir in sorted(root.rglob(".hydra")):
            job = hydra_dir.parent
            if "summary" in job.parts:
                continue
            if (job / RECORD).is_file():
                rec = json.loads((job / RECORD).read_text())
                rec["dir"] = job
                runs.append(rec)
            elif (job / "failed.json").is_file():
                info = json.loads((job / "failed.json").read_text())
                problems.append({"dir": str(job), "status": "failed", "error": info.get("error", ""),
                                 "overrides": " ".join(info.get("overrides", [])), "log": _log(job)})
            else:
                overrides = (hydra_dir / "overrides.yaml").read_text().strip() if (hydra_dir / "overrides.yaml").is_file() else ""
                problems.append({"dir": str(job), "status": "missing (killed, crashed or still running)", "error": "",
                                 "overrides": " ".join(l.lstrip("- ") for l in overrides.splitlines()), "log": _log(job)})
    return runs, problems


def _log(job: Path) -> str:
    """The job's error log: the one its failed.json names, else submitit's log of the job id Hydra recorded
    (`.hydra/hydra.yaml`: hydra.job.id, e.g. 123_4 for a SLURM array task), else a log in the job directory."""
    if not job.exists():
        return ""
    if (job / "failed.json").is_file():
        log = json.loads((job / "failed.json").read_text()).get("log")
        if log:
            return str(log)
    if (job / ".hydra" / "hydra.yaml").is_file():
        from omegaconf import OmegaConf

        job_id = OmegaConf.select(OmegaConf.load(job / ".hydra" / "hydra.yaml"), "hydra.job.id", default=None)
        logs = sorted((job.parent / ".submitit" / str(job_id)).glob("*_log.err")) if job_id else []
        if logs:
            return str(logs[0])
    logs = sorted(job.glob("*.log"))
    return str(logs[0]) if logs else ""


def _flatten(d) -> dict:
    """Dotted config keys; lists as JSON text so that they fit in a table cell."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(d).items()}


def varying(runs: list[dict]) -> list[str]:
    """Config keys whose value differs between the runs (the sweep's axes)."""
    flats = [_flatten(r.get("config", {})) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if not is_neutral(k)
            and len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


def summarise(runs: list[dict]) -> dict[str, pd.DataFrame]:
    """One tidy table per analysis: every run's main table plus the varied config keys as columns."""
    tables = {}
    for analysis in sorted({r["analysis"] for r in runs}):
        group = [r for r in runs if r["analysis"] == analysis]
        axes = varying(group)
        frames = []
        for r in group:
            path = r["dir"] / f"{analysis}.csv"
            if not path.is_file():
                continue
            df = pd.read_csv(path)
            flat = _flatten(r.get("config", {}))
            for key in axes:
                df[key] = flat.get(key)
            df["run_dir"] = str(r["dir"])
            frames.append(df)
        if frames:
            tables[analysis] = pd.concat(frames, ignore_index=True)
    return tables


def _label(r: dict, key: str) -> str:
    value = _flatten(r.get("config", {})).get(key)
    return str(value).split(".")[0] if key.endswith(".name") else str(value)


def figure_grid(runs: list[dict], analysis: str):
    """The runs' own figures side by side: one row per value of the first varied key (the model when it
    varies), one column per combination of the other varied keys (reference, dataset, ...)."""
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    from . import plots  # noqa: F401  (backend and theme)

    group = [r for r in runs if r["analysis"] == analysis and (r["dir"] / f"{analysis}.png").is_file()]
    if not group:
        return None
    axes = varying(group)
    row_key = "model.name" if "model.name" in axes else (axes[0] if axes else None)
    col_keys = [k for k in axes if k != row_key]

    def row_of(r):
        return _label(r, row_key) if row_key else ""

    def col_of(r):
        return ", ".join(_label(r, k) for k in col_keys)

    rows = sorted({row_of(r) for r in group})
    cols = sorted({col_of(r) for r in group})
    fig, ax = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.2 * len(rows)), squeeze=False)
    for a in ax.flat:
        a.axis("off")
    for r in group:  # a repeated combination (e.g. other seeds) keeps the last run
        ax[rows.index(row_of(r))][cols.index(col_of(r))].imshow(mpimg.imread(r["dir"] / f"{analysis}.png"))
    for i, name in enumerate(rows):
        ax[i][0].text(-0.03, 0.5, name, transform=ax[i][0].transAxes, rotation=90, ha="right", va="center", fontsize=10)
    for j, name in enumerate(cols):
        ax[0][j].set_title(name, fontsize=10)
    fig.suptitle(f"{analysis}: rows {row_key or '-'}; columns {', '.join(col_keys) or '-'}", fontsize=11)
    fig.tight_layout()
    return fig


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def report(out: Path, tables: dict[str, pd.DataFrame], grids: dict[str, Path], problems: pd.DataFrame, runs: list[dict]) -> str:
    parts = [f"<h1>vitstudy summary</h1><p>{len(runs)} finished runs, {len(problems)} failed or missing jobs.</p>"]
    for analysis, df in tables.items():
        parts.append(f"<h2>{html.escape(analysis)}</h2>")
        if analysis in grids:
            parts.append(_img(grids[analysis]))
        shown = df.head(200)
        note = f" (first 200 of {len(df)} rows; all in {analysis}.csv)" if len(df) > 200 else ""
        parts.append(f"<p>Table{html.escape(note)}</p>" + shown.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
        figs = sorted({p for r in runs if r["analysis"] == analysis for p in r["dir"].glob("*.png")})
        if figs:
            parts.append("<details><summary>every run's figures</summary>" +
                         "".join(f"<figure>{_img(p)}<figcaption>{html.escape(str(p.parent.name))}/{html.escape(p.name)}</figcaption></figure>" for p in figs)
                         + "</details>")
    parts.append("<h2>Failed and missing jobs</h2>" + (problems.to_html(index=False) if len(problems) else "<p>none</p>"))
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px} img{max-width:100%} table{border-collapse:collapse;"
             "font-size:12px} td,th{border:1px solid #ccc;padding:2px 6px} figure{display:inline-block;width:31%;margin:4px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>vitstudy summary</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"


def collect(dirs: list[str], out: str | None = None) -> Path:
    """Write `summary/` (tables, grids, failed.csv, index.html) for the sweeps under `dirs`; returns its path."""
    if not dirs:
        raise VitstudyError("give at least one sweep or run directory: vitstudy collect outputs/multirun/DATE")
    roots = [Path(d) for d in dirs]
    runs, problems = find_runs(roots)
    if not runs and not problems:
        raise VitstudyError(f"no run directories (with .hydra/) under {', '.join(dirs)}")
    out_dir = Path(out) if out else roots[0] / "summary"
    tables = summarise(runs)
    for name, df in tables.items():
        write_csv(out_dir / f"{name}.csv", df)
    grids = {}
    for analysis in tables:
        fig = figure_grid(runs, analysis)
        if fig is not None:
            grids[analysis] = write_figure(out_dir / f"{analysis}_grid", fig)[0]
    failed = pd.DataFrame(problems, columns=["dir", "status", "error", "overrides", "log"])
    write_csv(out_dir / "failed.csv", failed)
    write_text(out_dir / "index.html", report(out_dir, tables, grids, failed, runs))
    return out_dir
