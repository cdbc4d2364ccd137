"""The jobs under a set of directories: finished runs (their run.json), failed and missing jobs, and what varies.

A job is a directory with Hydra's `.hydra/`; it finished when it holds `run.json` (written last), failed when it
holds `failed.json` (a VitstudyError inside a multirun), and is missing otherwise (killed, crashed, still running).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from ..config import flatten, is_neutral
from ..errors import VitstudyError
from ..pipeline.results import RECORD
from .experiments import experiment_of

SKIP_PARTS = ("summary",)  # collect's own output folder, when it lies inside a collected directory
PROBLEM_COLUMNS = ["dir", "status", "error", "overrides", "log", "analysis", "experiment"]


def find_runs(roots: list[Path]) -> tuple[list[dict], list[dict]]:
    """(finished runs: run.json records with `dir`, failed or missing jobs) under the given directories."""
    runs, problems, seen = [], [], set()
    for root in roots:
        if not root.is_dir():
            raise VitstudyError(f"not a directory: {root}; give sweep or run directories")
        for hydra_dir in sorted(root.rglob(".hydra")):
            job = hydra_dir.parent
            if any(p in SKIP_PARTS for p in job.relative_to(root).parts) or job.resolve() in seen:
                continue
            seen.add(job.resolve())
            if (job / RECORD).is_file():
                rec = json.loads((job / RECORD).read_text())
                rec["dir"] = job
                runs.append(rec)
                continue
            overrides = _hydra_overrides(hydra_dir)
            problem = {"dir": str(job), "error": "", "log": "", "analysis": _hydra_analysis(hydra_dir)}
            if (job / "failed.json").is_file():
                info = json.loads((job / "failed.json").read_text())
                overrides = info.get("overrides", overrides)
                problem.update(status="failed", error=info.get("error", ""), log=info.get("log") or "")
            else:
                problem.update(status="missing (killed, crashed or still running)")
            problem.update(
                overrides=" ".join(overrides),
                experiment=experiment_of(overrides) or "",
                log=problem["log"] or job_log(job),
            )
            problems.append(problem)
    return runs, problems


def _hydra_overrides(hydra_dir: Path) -> list[str]:
    path = hydra_dir / "overrides.yaml"
    return [str(o) for o in (OmegaConf.load(path) or [])] if path.is_file() else []


def _hydra_analysis(hydra_dir: Path) -> str:
    path = hydra_dir / "config.yaml"
    if not path.is_file():
        return ""
    return str(OmegaConf.select(OmegaConf.load(path), "analysis.name", default="") or "")


def job_log(job: Path) -> str:
    """Where a job's output went: Hydra's job log in its directory, or the launcher's (submitit) log that names it."""
    logs = sorted(job.glob("*.log"))
    if logs:
        return str(logs[0])
    submitit = job.parent / ".submitit"
    if (job / ".hydra" / "hydra.yaml").is_file():  # submitit's log of the job id Hydra recorded (123_4: an array task)
        job_id = OmegaConf.select(OmegaConf.load(job / ".hydra" / "hydra.yaml"), "hydra.job.id", default=None)
        found = sorted((submitit / str(job_id)).glob("*_log.err")) if job_id else []
        if found:
            return str(found[0])
    if submitit.is_dir():
        needle = str(job)
        for path in sorted(submitit.rglob("*.err")) + sorted(submitit.rglob("*.out")):
            try:
                if needle in path.read_text(errors="replace")[:1_000_000]:
                    return str(path)
            except OSError:
                continue
        return str(submitit)
    return ""


def flat_config(run: dict) -> dict:
    """Dotted config keys; lists as JSON text so that they fit in a table cell."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(run.get("config", {})).items()}


def varying(runs: list[dict]) -> list[str]:
    """Config keys whose value differs between the runs (the sweep's axes)."""
    flats = [flat_config(r) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    return [k for k in keys if not is_neutral(k) and len({json.dumps(f.get(k), default=str) for f in flats}) > 1]


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
            flat = flat_config(r)
            for key in axes:
                df[key] = flat.get(key)
            df["run_dir"] = str(r["dir"])
            frames.append(df)
        if frames:
            tables[analysis] = pd.concat(frames, ignore_index=True)
    return tables
