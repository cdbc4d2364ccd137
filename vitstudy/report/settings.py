"""What a reader needs to judge a run, from its run.json (models and weights, images, repeats, layers, tokens,
device, wall time), and a summary of the uncertainty columns of its tables (`X_se`, `X_ci_low`, `X_ci_high`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

# analysis parameters that are names of the run, not settings
_SKIP_PARAMS = {"name"}


def settings(run: dict) -> dict[str, str]:
    """One line per setting that matters, in reading order."""
    cfg = run.get("config", {})
    out = {}
    models = run.get("models") or {}
    out["models"] = "; ".join(_model(key, m) for key, m in models.items()) or "-"
    ds = cfg.get("dataset", {})
    where = ds.get("root") or ds.get("name", "")
    out["data"] = f"{run.get('dataset') or ds.get('name', '-')}" + (
        f" ({where})" if where and where not in str(run.get("dataset")) else ""
    )
    out["images"] = _images(run)
    analysis = {k: v for k, v in (cfg.get("analysis") or {}).items() if k not in _SKIP_PARAMS}
    out["analysis"] = f"{run.get('analysis', '?')}" + (f": {_params(analysis)}" if analysis else "")
    out["layers"] = _layers(run)
    out["tokens"] = str(cfg.get("tokens", "-"))
    if "cka" in str(run.get("analysis", "")) or any("cka" in k for k in _table_names(run)):
        cka = cfg.get("cka", {})
        out["CKA"] = (
            f"{cka.get('estimator', '?')} estimator, {cka.get('repeats', '?')} repeat(s), gram {cka.get('gram_dtype', '?')}"
        )
    notes = sorted(
        {u["note"] for u in (run.get("uncertainty") or {}).values() if isinstance(u, dict) and u.get("note")}
    )
    if notes:
        out["intervals"] = "WARNING: " + "; ".join(notes)
    out["device"] = run.get("gpu") or str(run.get("device", "-"))
    if run.get("threads"):
        out["device"] += f" ({run['threads']} threads)" if run.get("device") == "cpu" else ""
    out["wall time"] = _wall(run)
    rev = run.get("git_revision") or "?"
    version = (run.get("versions") or {}).get("vitstudy", "?")
    out["code"] = f"vitstudy {version}, git {rev[:10]}{'+dirty' if rev.endswith('+dirty') else ''}"
    out["finished"] = f"{str(run.get('finished', '?'))[:16].replace('T', ' ')} UTC"
    return out


def _table_names(run: dict) -> list[str]:
    return [o for o in run.get("outputs", []) if str(o).endswith(".csv")]


def _model(key: str, m: dict) -> str:
    name = m.get("name", "?")
    weights = str(m.get("weights", "?"))
    if weights == f"timm:{name}":
        weights = "timm pretrained"
    size = (m.get("data_config") or {}).get("input_size")
    size = f", {'x'.join(map(str, size))}" if size else ""
    return f"{key} {name} ({weights}{size})"


def _images(run: dict) -> str:
    reps = run.get("images") or []
    cfg = run.get("config", {})
    ds = cfg.get("dataset", {})
    if not reps:
        return (
            "none recorded: the analysis reads the weights only, or samples its own images (see its parameters; "
            f"dataset.num_images={ds.get('num_images', '?')})"
        )
    if any(r.get("split") for r in reps):  # one record per split (linear_probe's train/val/test), not repeats
        text = ", ".join(f"{r.get('split', '?')} {r.get('images', '?')}" for r in reps) + " images"
        batches = [r.get("batches") for r in reps if r.get("batches") is not None]
        return text + (f" in {'/'.join(map(str, batches))} batches" if batches else "")
    counts = sorted({r.get("images") for r in reps})
    each = "/".join(str(c) for c in counts)
    batches = sorted({r.get("batches") for r in reps} - {None})
    dropped = sum(r.get("dropped", 0) or 0 for r in reps)
    text = f"{each} images" + (f" x {len(reps)} repeats" if len(reps) > 1 else "")
    if batches:
        text += f", {'/'.join(map(str, batches))} batches of {ds.get('batch_size', '?')}"
    if dropped:
        text += f", {dropped} dropped (cka.tail=drop)"
    return text


def _layers(run: dict) -> str:
    cfg = run.get("config", {})
    spec = (cfg.get("analysis") or {}).get("layers") or cfg.get("layers", "-")
    used = run.get("layers")
    if isinstance(used, dict) and used:
        counts = ", ".join(f"{k} {len(v)}" for k, v in used.items() if isinstance(v, list))
        return f"{spec}" + (f" ({counts})" if counts else "")
    return str(spec)


def _wall(run: dict) -> str:
    wall = run.get("wall_time_s")
    text = _seconds(wall) if wall is not None else "?"
    stages = run.get("timings_s") or {}
    if stages:
        text += " (" + ", ".join(f"{k.replace('_', ' ')} {_seconds(v)}" for k, v in stages.items()) + ")"
    if run.get("status") == "cached":
        text += "; this job copied an earlier identical result"
    return text


def _seconds(s: float) -> str:
    s = float(s)
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h")


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in params.items())


def intervals(tables: dict[str, pd.DataFrame]) -> list[dict]:
    """For every `X` with `X_ci_low` and `X_ci_high` (or only `X_se`) in a table: how many values, and the median
    and largest interval width and standard error, so a reader sees how sure the figure's numbers are."""
    rows = []
    for table, df in tables.items():
        for col in df.columns:
            base = None
            if col.endswith("_ci_low") and f"{col[:-7]}_ci_high" in df.columns:
                base = col[:-7]
            elif col.endswith("_se") and f"{col[:-3]}_ci_low" not in df.columns:
                base = col[:-3]
            if base is None:
                continue
            row = {"table": table, "quantity": base, "values": 0}
            if f"{base}_ci_low" in df.columns:
                width = pd.to_numeric(df[f"{base}_ci_high"], errors="coerce") - pd.to_numeric(df[col], errors="coerce")
                width = width[np.isfinite(width)]
                row.update(values=int(width.size), median_ci_width=_median(width), max_ci_width=_max(width))
            if f"{base}_se" in df.columns:
                se = pd.to_numeric(df[f"{base}_se"], errors="coerce")
                se = se[np.isfinite(se)]
                row.update(values=max(row["values"], int(se.size)), median_se=_median(se))
            if base in df.columns:
                v = pd.to_numeric(df[base], errors="coerce")
                row["median_value"] = _median(v[np.isfinite(v)])
            rows.append(row)
    return rows


def _median(s) -> float | None:
    return float(np.median(s)) if len(s) else None


def _max(s) -> float | None:
    return float(np.max(s)) if len(s) else None


def tables_of(job: Path) -> dict[str, pd.DataFrame]:
    """A job's CSV tables (images.csv, the sampled image indices, left out)."""
    out = {}
    for path in sorted(job.glob("*.csv")):
        if path.name == "images.csv":
            continue
        try:
            out[path.name] = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
    return out
