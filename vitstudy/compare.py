"""`vitstudy compare`: do two values differ beyond their uncertainty?

Two models measured on the same images share the images' luck: their difference is much surer than either value
alone. A run writes `<table>.replicates.npz` beside its CSV (the leave-one-batch-out jackknife replicates of the
table's value, one per row); the difference of two selections is then jackknifed *paired*: deleting batch b from
both, so what the images share cancels (metrics.uncertainty.paired_jackknife). The two selections may come from one
run (e.g. the IN-1k and IN-21k models of one `attention_distance` run with `analysis.compare`, Raghu Fig. 4) or from
two runs on the same images (same data set, seed, num_images and batch size: the batches' image ids are checked).

    vitstudy compare RUN --a "model.str.contains('in1k')" --b "model.str.contains('in21k')" --by block
    vitstudy compare VIT_RUN RESNET_RUN --a "index_x == 0 and index_y == index_y.max()"   # first-last CKA
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import VitstudyError
from .metrics import uncertainty
from .pipeline.results import Replicates


def load(run_dir: str | Path, table: str | None = None) -> tuple[pd.DataFrame, Replicates, str]:
    """A finished run's table, its jackknife replicates and the table name."""
    run_dir = Path(run_dir)
    record = run_dir / "run.json"
    if not record.is_file():
        raise VitstudyError(f"{run_dir} is not a finished run directory (no run.json)")
    name = table or json.loads(record.read_text()).get("analysis")
    csv, npz = run_dir / f"{name}.csv", run_dir / f"{name}.replicates.npz"
    if not csv.is_file():
        raise VitstudyError(f"{run_dir} has no table {name}.csv; choose one with --table")
    if not npz.is_file():
        raise VitstudyError(
            f"{run_dir} has no {npz.name}: the table has no jackknife replicates (it needs 2 or more "
            "batches, a vitstudy version that writes them, and an analysis whose values are per-batch sums)"
        )
    reps = Replicates.read(npz)
    df = pd.read_csv(csv)
    if reps.rows != len(df):
        raise VitstudyError(f"{npz} has {reps.rows} rows but {csv.name} has {len(df)}")
    return df, reps, name


def _select(df: pd.DataFrame, query: str | None, which: str) -> np.ndarray:
    if not query:
        return np.arange(len(df))
    try:
        mask = df.eval(query, engine="python")
    except Exception as err:  # a pandas expression error: say which selection and why, in one line
        raise VitstudyError(
            f"--{which} {query!r} is not a valid selection of the table's rows: {str(err).splitlines()[0]}; "
            f"columns: {', '.join(map(str, df.columns))}"
        ) from None
    rows = np.flatnonzero(np.asarray(mask, dtype=bool))
    if len(rows) == 0:
        raise VitstudyError(f"--{which} {query!r} selects no rows")
    return rows


def _groups(df: pd.DataFrame, rows: np.ndarray, by: list[str]) -> dict[tuple, np.ndarray]:
    if not by:
        return {(): rows}
    missing = [c for c in by if c not in df]
    if missing:
        raise VitstudyError(f"--by {','.join(missing)}: no such column; columns: {', '.join(df.columns)}")
    sub = df.iloc[rows]
    return {k if isinstance(k, tuple) else (k,): rows[idx] for k, idx in sub.groupby(by, sort=True).indices.items()}


def compare(
    run_a: str | Path,
    run_b: str | Path | None = None,
    a: str | None = None,
    b: str | None = None,
    by: list[str] | str | None = None,
    table: str | None = None,
    paired: bool = True,
) -> pd.DataFrame:
    """Difference a - b of the mean value of two row selections, with its jackknife interval and p-value.

    `a`, `b`: pandas expressions over the table's columns (b defaults to a when the runs differ). `by`: columns
    whose groups are compared one by one (rows of a group are averaged, e.g. heads of a block); without it the
    selections are averaged whole, or matched row by row when they have the same number of rows and
    `by="row"`. Paired (default): both need the same batches of the same images; `paired=False` treats the two
    as independent (se² = se_a² + se_b²). Returns one row per group.
    """
    df_a, rep_a, name = load(run_a, table)
    df_b, rep_b, _ = load(run_b, name) if run_b is not None else (df_a, rep_a, name)
    if run_b is None and not (a and b):
        raise VitstudyError("comparing within one run needs both --a and --b (two selections of its rows)")
    b = b if b else a
    if paired:
        same = (
            rep_a.units.shape == rep_b.units.shape
            and np.array_equal(rep_a.units, rep_b.units)
            and np.array_equal(rep_a.strata, rep_b.strata)
        )
        if not same:
            raise VitstudyError(
                "the two runs were not measured on the same batches of the same images (same dataset, "
                "seed, num_images, batch_size, cka.repeats): a paired comparison is not possible; "
                "use --unpaired to treat them as independent"
            )
    rows_a, rows_b = _select(df_a, a, "a"), _select(df_b, b, "b")
    by = [by] if isinstance(by, str) else list(by or [])
    if by == ["row"]:
        if len(rows_a) != len(rows_b):
            raise VitstudyError(f"--by row matches rows in order, but --a selects {len(rows_a)} and --b {len(rows_b)}")
        ga = {(i,): np.array([r]) for i, r in enumerate(rows_a)}
        gb = {(i,): np.array([r]) for i, r in enumerate(rows_b)}
        by = ["row"]
    else:
        ga, gb = _groups(df_a, rows_a, by), _groups(df_b, rows_b, by)
    keys = [k for k in ga if k in gb]
    if not keys:
        raise VitstudyError(f"no group of --by {','.join(by)} is in both selections")
    column = rep_a.column
    out = []
    for key in keys:
        ia, ib = ga[key], gb[key]
        est_a, est_b = df_a[column].to_numpy()[ia].mean(), df_b[column].to_numpy()[ib].mean()
        ra, rb = rep_a.values[:, ia].mean(axis=1), rep_b.values[:, ib].mean(axis=1)
        if paired:
            diff, se, dof = uncertainty.paired_jackknife(ra, rb, est_a, est_b, rep_a.strata)
        else:
            diff = est_a - est_b
            se = np.sqrt(
                uncertainty.jackknife_se(ra, rep_a.strata) ** 2 + uncertainty.jackknife_se(rb, rep_b.strata) ** 2
            )
            dof = min(uncertainty.jackknife_df(rep_a.strata), uncertainty.jackknife_df(rep_b.strata))
        se = float(se)
        low, high = uncertainty.interval(diff, se, dof)
        t = float(diff / se) if se > 0 else (0.0 if diff == 0 else float("inf") * np.sign(diff))
        p = (
            2.0 * (1.0 - uncertainty.t_cdf(abs(t), dof))
            if np.isfinite(t) and dof > 0
            else (0.0 if np.isinf(t) else float("nan"))
        )
        out.append(
            {
                **dict(zip(by, key)),
                "a": est_a,
                "b": est_b,
                "diff": float(diff),
                "diff_se": se,
                "diff_ci_low": float(low),
                "diff_ci_high": float(high),
                "t": t,
                "p": float(p),
                "differs": bool(np.isfinite(low) and (low > 0 or high < 0)),
                "rows_a": len(ia),
                "rows_b": len(ib),
                "batches": len(rep_a.units),
                "df": dof,
                "value": column,
                "method": "paired jackknife over batches" if paired else "independent jackknife se",
            }
        )
    return pd.DataFrame(out)


def main(args: list[str]) -> None:
    """`vitstudy compare RUN_A [RUN_B] [--a Q] [--b Q] [--by COLS] [--table T] [--unpaired] [--out CSV]`."""
    import argparse

    from .pipeline.results import write_csv

    parser = argparse.ArgumentParser(prog="vitstudy compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="one run directory (two selections) or two (same images)")
    parser.add_argument("--a", default=None, help="pandas expression selecting rows of the first run's table")
    parser.add_argument("--b", default=None, help="rows of the second (default: the same expression as --a)")
    parser.add_argument(
        "--by", default=None, help="comma-separated columns: compare group by group (rows averaged); 'row': row by row"
    )
    parser.add_argument("--table", default=None, help="table name (default: the run's analysis)")
    parser.add_argument("--unpaired", action="store_true", help="independent samples: se^2 = se_a^2 + se_b^2")
    parser.add_argument("--out", default=None, help="write the comparison as CSV")
    ns = parser.parse_args(args)
    if len(ns.runs) > 2:
        raise VitstudyError(f"give one or two run directories, got {len(ns.runs)}")
    by = [c for c in ns.by.split(",") if c] if ns.by else None
    df = compare(ns.runs[0], ns.runs[1] if len(ns.runs) == 2 else None, ns.a, ns.b, by, ns.table, not ns.unpaired)
    if ns.out:
        write_csv(Path(ns.out), df)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    print(
        f"vitstudy: {int(df.differs.sum())} of {len(df)} differences exclude 0 from their {uncertainty.LEVEL:.0%} interval"
    )
