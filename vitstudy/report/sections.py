"""The report's sections: one per paper-figure target (jobs run with `experiment=NAME`), one per analysis for the
other runs; and the short labels that tell a section's jobs apart (only what varies between them)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .experiments import Experiment, experiment_of, experiments, sort_key, target_name
from .runs import flat_config, varying


@dataclass
class Section:
    key: str  # anchor and folder name: fig-raghu-1, or the analysis name
    title: str
    experiment: Experiment | None = None
    analysis: str | None = None
    root: Path | None = None  # the sweep directory (a figure target's directory)
    runs: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # str(run dir) -> what tells it apart from the others
    axes: list[str] = field(default_factory=list)  # the config keys that vary between its runs
    findings: list = field(default_factory=list)  # claims.Finding: the paper's findings checked on these runs

    @property
    def jobs(self) -> int:
        return len(self.runs) + len(self.problems)

    def label(self, run: dict) -> str:
        return self.labels.get(str(run["dir"]), "")


def sweep_root(job: Path) -> Path:
    """The multirun directory a job belongs to (Hydra writes multirun.yaml there), or the job itself."""
    return job.parent if (job.parent / "multirun.yaml").is_file() else job


def sections(runs: list[dict], problems: list[dict]) -> list[Section]:
    """Figure-target sections in the papers' order, then one section per analysis of the other runs."""
    known = experiments()
    by_target: dict[tuple[str, Path], Section] = {}
    others: dict[str, Section] = {}

    def section_for(exp_name: str | None, job: Path, analysis: str) -> Section:
        if exp_name:
            root = sweep_root(job)
            key = (exp_name, root)
            if key not in by_target:
                exp = known.get(exp_name)
                title = exp.title if exp else f"experiment {exp_name}"
                by_target[key] = Section(
                    key=root.name if root.name.startswith("fig-") else target_name(exp_name),
                    title=title,
                    experiment=exp,
                    root=root,
                )
            return by_target[key]
        name = analysis or "unknown analysis"
        if name not in others:
            others[name] = Section(key=f"analysis-{name}", title=name, analysis=name)
        return others[name]

    for run in runs:
        section_for(experiment_of(run.get("overrides")), Path(run["dir"]), run.get("analysis", "")).runs.append(run)
    for problem in problems:
        section_for(
            problem.get("experiment") or None, Path(problem["dir"]), problem.get("analysis", "")
        ).problems.append(problem)

    figure = sorted(
        by_target.values(), key=lambda s: (sort_key(s.experiment.name) if s.experiment else (9,), str(s.root))
    )
    _unique_keys(figure)
    out = figure + [others[k] for k in sorted(others)]
    for s in out:
        s.runs.sort(key=lambda r: _job_order(Path(r["dir"])))
        s.problems.sort(key=lambda p: _job_order(Path(p["dir"])))
        s.axes = varying(s.runs)
        s.labels = job_labels(s.runs, s.axes)
        if s.analysis is None and len({r.get("analysis") for r in s.runs}) == 1 and s.runs:
            s.analysis = s.runs[0]["analysis"]
    return out


def _job_order(job: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(job))]


def _unique_keys(sections: list[Section]) -> None:
    seen: dict[str, int] = {}
    for s in sections:
        n = seen.get(s.key, 0)
        seen[s.key] = n + 1
        if n:
            s.key = f"{s.key}-{n + 1}"


LABEL_FIRST = ("analysis.name", "model.name", "reference.name", "dataset.name")  # what a reader tells jobs apart by


def job_labels(runs: list[dict], axes: list[str]) -> dict[str, str]:
    """`key=value` of the varying keys that tell the jobs apart: `analysis.name` alone when the analysis varies;
    else the model (then the reference, the dataset) and every other varying key that is not fixed by those (a
    preset's architecture kwargs or input size vary with the model and say nothing more); keys shortened to their
    last part (`model` for model.name), long values to the part that differs, timm tags dropped when still unique."""
    if len(runs) < 2 or not axes:
        return {str(r["dir"]): "" for r in runs}
    flats = {str(r["dir"]): flat_config(r) for r in runs}
    if "analysis.name" in axes:
        return {d: str(f.get("analysis.name")) for d, f in flats.items()}

    def groups(keys) -> int:
        return len({tuple(value_text(f.get(k)) for k in keys) for f in flats.values()})

    chosen = []
    for key in [k for k in LABEL_FIRST if k in axes]:  # the names, each only when it splits jobs the others do not
        if groups([*chosen, key]) > groups(chosen):
            chosen.append(key)
    named = list(chosen)
    chosen += [k for k in axes if k not in LABEL_FIRST and groups([*named, k]) > groups(named)]
    chosen = [k for k in axes if k in chosen]  # in the config's order
    names = short_keys(chosen)
    values = {key: shorten_values([value_text(f.get(key)) for f in flats.values()]) for key in chosen}
    return {d: ", ".join(f"{names[k]}={values[k][i]}" for k in chosen) for i, d in enumerate(flats)}


def value_text(value) -> str:
    return "-" if value is None else (value if isinstance(value, str) else json.dumps(value))


def short_keys(keys: list[str]) -> dict[str, str]:
    """model.name -> model, analysis.blocks -> blocks, dataset.num_images -> num_images (longer when ambiguous)."""

    def short(key: str, n: int) -> str:
        parts = key.split(".")
        if parts[-1] == "name" and len(parts) > 1:
            parts = parts[:-1]
        return ".".join(parts[-n:])

    out = {}
    for key in keys:
        n = 1
        while n < len(key.split(".")) and sum(short(k, n) == short(key, n) for k in keys) > 1:
            n += 1
        out[key] = short(key, n)
    return out


def shorten_values(values: list[str], limit: int = 24) -> list[str]:
    """Long values without what they all share: timm tags when the architectures differ, else common prefixes
    and suffixes (kept whole up to a word boundary)."""
    if all(len(v) <= limit for v in values):
        return values
    bare = [v.split(".")[0] if re.fullmatch(r"[\w-]+\.[\w-]+", v) else v for v in values]
    if len(set(bare)) == len(set(values)):
        values = bare
    if all(len(v) <= limit for v in values) or len(set(values)) < 2:
        return values
    prefix = os.path.commonprefix(values)
    prefix = prefix[: max(prefix.rfind("_"), prefix.rfind("."), prefix.rfind("/")) + 1]
    cut = [v[len(prefix) :] for v in values]
    if not (len(set(cut)) == len(set(values)) and all(cut)):
        cut, prefix = values, ""
    suffix = os.path.commonprefix([v[::-1] for v in cut])[::-1]
    suffix = suffix[
        min([i for i in (suffix.find("_"), suffix.find("."), suffix.find("/")) if i >= 0], default=len(suffix)) :
    ]
    if suffix:
        trimmed = [v[: len(v) - len(suffix)] for v in cut]
        if len(set(trimmed)) == len(set(values)) and all(trimmed):
            return [("…" if prefix else "") + v + "…" for v in trimmed]
    return [("…" if prefix else "") + v for v in cut]


def missing_experiments(sections: list[Section], roots: list[Path]) -> list[tuple[Experiment, str]]:
    """The paper figures with no job in these directories, each with what is known: a target directory without
    jobs (the make target stopped before Hydra started) or nothing at all."""
    have = {s.experiment.name for s in sections if s.experiment}
    out = []
    for name, exp in experiments().items():
        if name in have:
            continue
        dirs = [r / exp.target for r in roots if (r / exp.target).is_dir()]
        out.append(
            (
                exp,
                f"{dirs[0]} has no job directory (the make target stopped before any job started)"
                if dirs
                else f"not run here (make {exp.target})",
            )
        )
    return out


def paper_order(found: list[Section]) -> list[Section]:
    """The sections in the papers' order: figure targets first (already so), then the analysis sections by the
    earliest figure their claims check (the tour reads like the papers), those without claims last."""
    figure = [s for s in found if s.root is not None or s.experiment is not None]
    other = [s for s in found if s not in figure]

    def rank(s: Section):
        targets = [f.target for f in s.findings if f.target]
        return (0, min(sort_key(t) for t in targets)) if targets else (1, (9,), s.title)

    return figure + sorted(other, key=rank)
