"""The run directory: atomic writes of tables, figures, jackknife replicates and run.json (written last).

Nothing looks finished until it is: outputs are written to temporary names and renamed into place
only after the analysis succeeded, and `run.json` (the record that a run completed) is written last.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import VitstudyError

RECORD = "run.json"


_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a result is as readable as any file the user writes
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_npz(path: Path, arrays: dict) -> Path:
    """Numpy arrays (and short strings) in one uncompressed .npz, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


@dataclass(frozen=True, kw_only=True, eq=False)  # arrays: no element-wise == or hash
class Replicates:
    """A table's delete-one jackknife replicates, kept so that a difference can be jackknifed paired (`vitstudy
    compare`) and a claim's statistic recomputed per replicate (`claims`); on disk `<table>.replicates.npz`.

    values (units, rows): the value column recomputed with one unit (batch) deleted, rows in the table's order;
    strata (units,): the independent sample (repeat) each unit belongs to; units (units,): an id of each unit's
    images (`uncertainty.unit_ids`: two runs pair only on the same batches); estimate (rows,): the full-data
    values (None in files that lack it); column: the table column the values are of; method: the jackknife's
    unit (`uncertainty.METHODS`).
    """

    values: np.ndarray
    strata: np.ndarray
    units: np.ndarray
    column: str
    estimate: np.ndarray | None = None
    method: str = "jackknife_batches"

    def __post_init__(self):
        shape, n = np.shape(self.values), len(self.strata)
        if len(shape) != 2 or shape[0] != n or len(self.units) != n:
            raise ValueError(
                f"replicates of {self.column}: values {shape}, strata ({n},), units ({len(self.units)},)"
                " do not match (values are units x rows)"
            )
        if self.estimate is not None and np.shape(self.estimate) != shape[1:]:
            raise ValueError(f"replicates of {self.column}: estimate {np.shape(self.estimate)} vs {shape[1]} rows")

    @property
    def rows(self) -> int:
        return int(np.shape(self.values)[1])

    def write(self, path: Path) -> Path:
        """`path` (.npz) atomically; the arrays under the field names, the strings as 0-d arrays."""
        arrays = {
            "values": self.values,
            "strata": self.strata,
            "units": self.units,
            "estimate": self.estimate,
            "column": self.column,
            "method": self.method,
        }
        return write_npz(path, {k: v for k, v in arrays.items() if v is not None})

    @classmethod
    def read(cls, path: Path) -> "Replicates":
        """A `<table>.replicates.npz` as written by any vitstudy version (estimate and method are optional)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:
            raise VitstudyError(f"{path} is not a readable replicates file: {str(err).splitlines()[0]}") from None
        missing = [k for k in ("values", "strata", "units", "column") if k not in arrays]
        if missing:
            raise VitstudyError(f"{path} lacks {', '.join(missing)}: not a vitstudy replicates file")
        try:
            return cls(
                values=arrays["values"],
                strata=arrays["strata"],
                units=arrays["units"],
                column=str(arrays["column"]),
                estimate=arrays.get("estimate"),
                method=str(arrays.get("method", "jackknife_batches")),
            )
        except ValueError as err:
            raise VitstudyError(f"{path}: {err}") from None


def write_figure(stem: Path, fig, formats=("png", "pdf")) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=200 if fmt == "png" else None, format=fmt, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def write_result(out_dir: Path, result, record: dict) -> list[Path]:
    """Tables and figures first (each atomically), `run.json` last; returns the paths written.

    The time spent writing is added to `record["timings_s"]["write"]` before run.json is written.
    """
    import time

    t = time.perf_counter()
    out_dir = Path(out_dir)
    written = []
    for name, df in result.tables.items():
        path = out_dir / f"{name}.csv"
        write_csv(path, df)
        written.append(path)
    for name, fig in result.figures.items():
        written += write_figure(out_dir / name, fig)
    for name, reps in result.replicates.items():  # jackknife replicates for paired comparisons
        written.append(reps.write(out_dir / f"{name}.replicates.npz"))
    record = dict(record, outputs=[p.name for p in written] + [RECORD])
    record.setdefault("timings_s", {})["write"] = round(time.perf_counter() - t, 3)
    write_json(out_dir / RECORD, record)
    return written + [out_dir / RECORD]


def clear_finished(out_dir: Path, names) -> None:
    """Remove a previous run's outputs of the same names, so a failed rerun cannot look finished."""
    for name in list(names) + [RECORD]:
        p = Path(out_dir) / name
        if p.exists():
            p.unlink()
