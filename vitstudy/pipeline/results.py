"""The run directory: atomic writes of tables, figures and run.json, and reading run dirs back.

Nothing looks finished until it is: outputs are written to temporary names and renamed into place
only after the analysis succeeded, and `run.json` (the record that a run completed) is written last.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
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
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


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
    for name, arrays in getattr(result, "replicates", {}).items():  # jackknife replicates for paired comparisons
        if arrays is not None:
            written.append(write_npz(out_dir / f"{name}.replicates.npz", arrays))
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


def read_runs(root: Path) -> list[dict]:
    """Every completed run (a directory with run.json) under `root`."""
    runs = []
    for rec in sorted(Path(root).rglob(RECORD)):
        with open(rec) as f:
            r = json.load(f)
        r["dir"] = str(rec.parent)
        runs.append(r)
    return runs


