"""A paper's finding as a check: a statistic of a run's tables, its 95% interval, a threshold and a verdict.

A `Claim` names the runs it needs (`Need`: an analysis and the kind of model, by role) and a statistic: a plain
Python function of `Tables` that reads values with `t.values(role, query)` (rows of the role's table selected by a
pandas expression). The interval comes from the runs' own uncertainty, never from the claim's code:

- tables with jackknife replicates (`<table>.replicates.npz`: CKA, attention distance): the statistic is recomputed
  on every leave-one-batch-out replicate and jackknifed; two runs measured on the same batches of the same images
  are *paired* (deleting batch b from both, so what the images share cancels, as `vitstudy compare`), runs on
  different images add their jackknife variances;
- tables with a `<value>_se` column only: the first-order (delta-method) bound se <= sum_i |d stat / d v_i| se_i,
  which holds whatever the correlation between rows (they share images), so the interval is conservative;
- tables of weights only (no images: no `_se` column, no `uncertainty` column): the value is exact.

Verdict: `holds` when the interval lies on the claimed side of the threshold, `contradicted` when it lies on the
other side, `inconclusive` when it contains the threshold (or has no width to judge by), `missing` when an input run,
table or row is absent (the reason in `note`).
"""

from __future__ import annotations

import json
import re
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..config import flatten
from ..metrics import uncertainty
from ..pipeline.results import Replicates

VERDICTS = ("holds", "contradicted", "inconclusive", "missing")
COLUMNS = [
    "paper",
    "figure",
    "claim",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "threshold",
    "verdict",
    "models",
    "runs",
    "method",
    "note",
    "target",
]
CNN = re.compile(r"resnet|bit|convnext|regnet|efficientnet|mobilenet|vgg|densenet|cnn", re.I)


class Missing(Exception):
    """An input of a claim is absent: the message says which (it becomes the finding's note)."""


def kind_of(model_name: str) -> str:
    """'cnn' or 'vit' from a timm architecture name (the claims compare the two families)."""
    return "cnn" if CNN.search(model_name.split(".")[0]) else "vit"


@dataclass(frozen=True)
class Need:
    """A run a claim reads: its analysis, the kind of its model ('vit', 'cnn' or None for any), and its table
    (default: the analysis' main table); the fields after `kind` are keyword-only."""

    analysis: str
    kind: str | None = None
    _: KW_ONLY
    table: str | None = None
    independent_rows: bool = False  # rows are independent samples (images, batches): se from their spread
    name: str | None = None  # a regular expression the model's timm name must match (e.g. 'gap')
    config: tuple[tuple[str, str], ...] = ()  # (dotted key, value) the run's config must hold: one job of a sweep

    def describe(self) -> str:
        who = {"vit": "a ViT", "cnn": "a CNN"}.get(self.kind or "", "any model")
        return (
            f"{self.analysis} run of {who}"
            + (f" named like /{self.name}/" if self.name else "")
            + "".join(f" with {key}={value}" for key, value in self.config)
        )


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One finding of a paper figure, as a check. `statistic(t)` returns a float from `t.values(...)`; the claim
    holds when it is above (`direction='>'`) or below (`'<'`) `threshold` with 95% confidence."""

    paper: str
    figure: str
    text: str  # what the paper finds, in one sentence a reader can check
    statistic: str  # what is computed, in words (with units)
    needs: dict[str, Need]  # role -> the run it reads
    compute: Callable[["Tables"], float]
    threshold: float = 0.0
    direction: str = ">"
    column: str | None = None  # the value column (default: the replicates' column, else the first with a _se)
    caveat: str = ""  # when the finding depends on scale or training data, and how to read it on small models

    def judge(self, low: float, high: float) -> str:
        if not (np.isfinite(low) and np.isfinite(high)):
            return "inconclusive"
        above, below = low > self.threshold, high < self.threshold
        if self.direction == ">":
            return "holds" if above else "contradicted" if below else "inconclusive"
        return "holds" if below else "contradicted" if above else "inconclusive"

    @property
    def rule(self) -> str:
        return f"{self.direction} {self.threshold:g}"


@dataclass
class Finding:
    """One evaluated claim: a row of findings.csv."""

    claim: Claim
    value: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    verdict: str = "missing"
    models: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    method: str = ""
    note: str = ""
    target: str = ""

    def row(self) -> dict:
        c = self.claim
        return {
            "paper": c.paper,
            "figure": c.figure,
            "claim": c.text,
            "statistic": c.statistic,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "threshold": f"{c.direction} {c.threshold:g}",
            "verdict": self.verdict,
            "models": "; ".join(self.models),
            "runs": "; ".join(self.runs),
            "method": self.method,
            "note": self.note or c.caveat,
            "target": self.target,
        }

    def summary(self) -> str:
        """'holds, 0.69 [0.66, 0.72] (> 0)' or 'missing: why'."""
        if self.verdict == "missing":
            return f"missing: {self.note}"
        return f"{self.verdict}, {_num(self.value)} [{_num(self.ci_low)}, {_num(self.ci_high)}] (threshold {self.claim.rule})"


def _num(x: float) -> str:
    return (
        "nan"
        if not np.isfinite(x)
        else f"{x:.3g}"
        if abs(x) < 0.01 and x != 0
        else f"{x:.2f}"
        if abs(x) < 100
        else f"{x:.0f}"
    )


@dataclass
class Table:
    """One role's table: the rows, the value column, its replicates (units x rows) or standard errors."""

    df: pd.DataFrame
    column: str
    reps: np.ndarray | None = None
    strata: np.ndarray | None = None
    units: np.ndarray | None = None
    se: np.ndarray | None = None  # per row; None: exact (a table of weights, no sampling)
    independent: bool = False  # rows are independent samples: delta-method se with their sample sd
    run: str = ""
    model: str = ""


def load_table(run_dir: Path, table: str, column: str | None = None) -> Table:
    """A run's table with its uncertainty; `Missing` when the CSV is absent or has no usable value column."""
    csv = Path(run_dir) / f"{table}.csv"
    if not csv.is_file():
        raise Missing(f"{csv} is absent")
    df = pd.read_csv(csv)
    npz = csv.with_name(f"{table}.replicates.npz")
    reps = strata = units = None
    rep_column = None
    if npz.is_file():
        record = Replicates.read(npz)
        rep_column = record.column
        if record.rows == len(df) and (column is None or column == rep_column):
            reps, strata, units = record.values.astype(np.float64), record.strata, record.units
    column = column or rep_column or next((c[:-3] for c in df.columns if c.endswith("_se") and c[:-3] in df), None)
    if column is None or column not in df:
        raise Missing(f"{csv.name} has no column {column or '(value with _se)'}")
    se = None
    if reps is None:
        if f"{column}_se" in df:
            se = df[f"{column}_se"].to_numpy(dtype=np.float64)
        elif "uncertainty" in df or "num_images" in df:  # measured on images but without an error column
            se = np.full(len(df), np.nan)
    return Table(df, column, reps, strata, units, se)


class Tables:
    """What a statistic reads: `values(role, query)` gives the value column of the selected rows (the replicate's
    values while the interval is computed) and records which rows were read."""

    def __init__(self, tables: dict[str, Table]):
        self.tables = tables
        self.current = {r: t.df[t.column].to_numpy(dtype=np.float64) for r, t in tables.items()}
        self.read: dict[str, set[int]] = {r: set() for r in tables}
        self._rows: dict[tuple[str, str], np.ndarray] = {}

    def rows(self, role: str, query=None) -> np.ndarray:
        """Row positions of `query` (a pandas expression, or a function of the table returning a mask)."""
        key = (role, query or "")
        if callable(query) or key not in self._rows:  # a function is evaluated each time (ids are reused)
            df = self.df(role)
            if callable(query):
                try:
                    idx = np.flatnonzero(np.asarray(query(df), dtype=bool))
                except (KeyError, AttributeError) as err:
                    raise Missing(f"{role}: its table lacks {err}") from None
            elif query:
                try:
                    mask = np.asarray(df.eval(query, engine="python"), dtype=bool)
                except Exception as err:  # a column the run's table lacks: the input is not there
                    raise Missing(
                        f"{role}: {query!r} cannot be read from its table ({str(err).splitlines()[0]})"
                    ) from None
                idx = np.flatnonzero(mask)
            else:
                idx = np.arange(len(df))
            if len(idx) == 0:
                raise Missing(f"{role}: no rows with {query}")
            if callable(query):
                return idx
            self._rows[key] = idx
        return self._rows[key]

    def df(self, role: str) -> pd.DataFrame:
        if role not in self.tables:
            raise Missing(f"no table for role {role}")
        return self.tables[role].df

    def values(self, role: str, query=None) -> np.ndarray:
        idx = self.rows(role, query)
        self.read[role].update(idx.tolist())
        return self.current[role][idx]

    def frame(self, role: str, query=None) -> pd.DataFrame:
        """The selected rows with the value column as it currently is (for group-wise statistics)."""
        idx = self.rows(role, query)
        self.read[role].update(idx.tolist())
        out = self.df(role).iloc[idx].copy()
        out[self.tables[role].column] = self.current[role][idx]
        return out


def _derivative(claim: Claim, t, role: str, values: np.ndarray, i: int) -> float:
    """d statistic / d value i of `role`'s table, by a central difference (the statistic is any Python function);
    the table's values are restored afterwards."""
    h = 1e-6 * max(1.0, abs(values[i]))
    t.current[role] = values.copy()
    t.current[role][i] += h
    up = float(claim.compute(t))
    t.current[role][i] -= 2 * h
    down = float(claim.compute(t))
    t.current[role] = values
    return (up - down) / (2 * h)


def estimate(claim: Claim, tables: dict[str, Table]) -> tuple[float, float, float, str]:
    """(value, se, degrees of freedom, method) of the claim's statistic on these tables."""
    t = Tables(tables)
    value = float(claim.compute(t))
    base = {r: v.copy() for r, v in t.current.items()}
    read = {r: sorted(ix) for r, ix in t.read.items() if ix}
    with_reps = [r for r in read if tables[r].reps is not None]
    var, dof, methods = 0.0, np.inf, []
    if with_reps:
        first = tables[with_reps[0]]
        paired = all(
            np.array_equal(tables[r].units, first.units) and np.array_equal(tables[r].strata, first.strata)
            for r in with_reps
        )
        groups = [with_reps] if paired else [[r] for r in with_reps]
        for group in groups:
            strata = tables[group[0]].strata
            reps = []
            for u in range(len(strata)):
                for r in group:
                    t.current[r] = tables[r].reps[u]
                reps.append(float(claim.compute(t)))
                for r in group:
                    t.current[r] = base[r]
            var += float(uncertainty.jackknife_se(np.array(reps)[:, None], strata)[0]) ** 2
            dof = min(dof, uncertainty.jackknife_df(strata))
        methods.append(("paired " if paired and len(with_reps) > 1 else "") + "jackknife over batches")
    bound, exact, unknown = 0.0, True, False
    for r in read:
        tab = tables[r]
        if tab.independent:
            sd = float(np.std(base[r][read[r]], ddof=1)) if len(read[r]) > 1 else float("nan")
            grads = [_derivative(claim, t, r, base[r], i) for i in read[r]]
            var += float(np.sum(np.square(grads))) * sd**2
            dof = min(dof, len(read[r]) - 1)
            methods.append(f"se over {len(read[r])} independent rows ({tab.column}: images or batches)")
            continue
        if tab.reps is not None or tab.se is None:
            continue
        if np.isnan(tab.se[read[r]]).all():
            unknown = True
            continue
        exact = False
        for i in read[r]:
            grad = _derivative(claim, t, r, base[r], i)
            if grad != 0.0:
                bound += abs(grad) * tab.se[i]
    if not exact:
        methods.append(f"se bound sum |d/dv| {tables[next(r for r in read if tables[r].se is not None)].column}_se")
    se = float(np.sqrt(var)) + bound
    if unknown:
        se = float("nan")
        methods.append("no interval: the table has no standard-error column")
    if not methods:
        methods.append("exact (no sampled images)")
    return value, se, dof, "; ".join(methods)


def evaluate(claim: Claim, tables: dict[str, Table]) -> Finding:
    """The claim on these tables (role -> Table): value, 95% interval and verdict; `missing` when an input is."""
    f = Finding(
        claim,
        runs=list(dict.fromkeys(t.run for t in tables.values())),
        models=list(dict.fromkeys(t.model for t in tables.values())),
    )
    try:
        with np.errstate(
            invalid="ignore", divide="ignore"
        ):  # a NaN or infinite cell gives a NaN statistic, judged below
            value, se, dof, f.method = estimate(claim, tables)
    except Missing as why:
        f.note = str(why)
        return f
    f.value = value
    if se == 0.0:
        f.ci_low = f.ci_high = value
    elif np.isfinite(se):
        q = uncertainty.critical(dof) if np.isfinite(dof) and dof > 0 else uncertainty.critical(np.inf)
        f.ci_low, f.ci_high = value - q * se, value + q * se
    f.verdict = claim.judge(f.ci_low, f.ci_high)
    if not np.isfinite(value):
        f.verdict = "inconclusive"
        f.note = f"the statistic is not finite ({value}): an input cell is infinite or undefined (see the table's flag column)"
    return f


# ------------------------------------------------------------------ finding the runs a claim needs


def model_name(run: dict) -> str:
    return str(
        ((run.get("models") or {}).get("model") or {}).get(
            "name", run.get("config", {}).get("model", {}).get("name", "?")
        )
    )


def matches(run: dict, need: Need) -> bool:
    return (
        run.get("analysis") == need.analysis
        and (need.kind is None or kind_of(model_name(run)) == need.kind)
        and (need.name is None or re.search(need.name, model_name(run)) is not None)
        and all(str(flatten(run.get("config", {})).get(key)) == value for key, value in need.config)
    )


def resolve(claim: Claim, runs: list[dict], target: str = "", root: Path | None = None) -> list[Finding]:
    """The claim on these runs: one finding per run of its first role (a sweep gives one each), the other roles
    from the first run that matches them; a `missing` finding, with the reason, when a role has no run."""
    roles = list(claim.needs)
    found = {r: [run for run in runs if matches(run, claim.needs[r])] for r in roles}
    absent = [r for r in roles if not found[r]]
    if absent:
        f = Finding(
            claim, target=target, note="; ".join(f"no finished {claim.needs[r].describe()} ({r})" for r in absent)
        )
        return [f]
    out = []
    firsts = found[roles[0]]
    for first in firsts:
        chosen = {roles[0]: first}
        for r in roles[1:]:
            same = [run for run in found[r] if run["dir"] == first["dir"]] or found[r]
            chosen[r] = same[0]
        tables = {}
        try:
            for r, run in chosen.items():
                need = claim.needs[r]
                tab = load_table(Path(run["dir"]), need.table or need.analysis, claim.column)
                tab.independent = need.independent_rows
                tab.run = _rel(Path(run["dir"]), root)
                tab.model = model_name(run).split(".")[0]
                tables[r] = tab
        except Missing as why:
            out.append(
                Finding(claim, target=target, note=str(why), runs=[_rel(Path(r["dir"]), root) for r in chosen.values()])
            )
            continue
        f = evaluate(claim, tables)
        f.target = target
        out.append(f)
    return out


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def frame(findings: list[Finding]) -> pd.DataFrame:
    return pd.DataFrame([f.row() for f in findings], columns=COLUMNS)


def run_record(run_dir: Path) -> dict:
    rec = json.loads((Path(run_dir) / "run.json").read_text())
    rec["dir"] = Path(run_dir)
    return rec
