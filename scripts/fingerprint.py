"""A fingerprint of every registered analysis on fixed seeds, to show that a change keeps (or changes) the numbers.

    python scripts/fingerprint.py run OUT            # every analysis on a tiny random-init ViT and ResNet-18
    python scripts/fingerprint.py run OUT --only cka_within,cka_across,cka_grid   # some of them
    python scripts/fingerprint.py compare OLD NEW    # worst numeric difference per table and column

Each analysis runs with its defaults (cost knobs lowered as in tests/test_registry.py) on 16 synthetic images in two
equal batches of 8 (seeded), plus `cka_across` with a 5-image tail (20+5 images, batches of 10) so that changes which
only touch unequal batches show up separately. The CSVs of every run land under OUT/<analysis>__<model>/. `compare`
aligns the rows of each CSV by position and prints, per file, the largest absolute difference of each numeric column
common to both and any text column that differs; columns present in one run only are listed as added or removed.
Exit status 1 when any common column differs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

VIT = [
    "model.name=vit_tiny_patch16_224",
    "model.pretrained=false",
    "model.kwargs.img_size=32",
    "model.kwargs.patch_size=8",
    "model.kwargs.depth=2",
    "model.kwargs.num_classes=10",
]
RESNET = [
    "model.name=resnet18",
    "model.pretrained=false",
    "model.data.input_size=[3,32,32]",
    "model.kwargs.num_classes=10",
    "+model.kwargs.zero_init_last=false",
]
REFERENCE = [
    "reference.name=resnet18",
    "reference.pretrained=false",
    "reference.data.input_size=[3,32,32]",
    "reference.kwargs.num_classes=10",
]
DATA = [
    "dataset=synthetic",
    "dataset.image_size=32",
    "dataset.num_images=16",
    "dataset.batch_size=8",
    "cache.results=false",
    "progress=false",
]
CHEAPER = {
    "hessian": ["analysis.num_batches=1", "analysis.max_iter=5"],
    "loss_landscape": ["analysis.steps=3", "analysis.num_images=16"],
    "linear_probe": ["analysis.num_train=64", "analysis.num_val=32", "analysis.num_test=32"],
    "receptive_field": ["analysis.num_images=4"],
    "cka_grid": ["analysis.models=[vit_tiny,resnet18]", "analysis.pretrained=false"],
    "similarity_grid": ["analysis.models=[vit_tiny,resnet18]", "analysis.pretrained=false"],
}
# Timing and provenance columns that differ between any two runs.
VOLATILE = ("seconds", "wall", "time", "started", "finished", "run_dir", "path", "git", "host")


def run(out: Path, only: list[str] | None = None) -> None:
    import vitstudy
    from vitstudy import analyses
    from vitstudy.errors import VitstudyError

    cases = [
        (name, model) for name in sorted(analyses.REGISTRY) for model in ("vit", "resnet") if not only or name in only
    ]
    for name, model in cases:
        overrides = [
            f"analysis={name}",
            *(VIT if model == "vit" else RESNET),
            *REFERENCE,
            *DATA,
            *CHEAPER.get(name, []),
        ]
        _one(vitstudy, out / f"{name}__{model}", overrides, VitstudyError)
    if only and "cka_across" not in only:
        return
    tail = ["analysis=cka_across", *VIT, *REFERENCE, *DATA, "dataset.num_images=25", "dataset.batch_size=10"]
    _one(vitstudy, out / "cka_across__vit_tail5", tail, VitstudyError)


def _one(vitstudy, run_dir: Path, overrides: list[str], error) -> None:
    try:
        vitstudy.run(overrides, out_dir=run_dir, progress=False)
        print(f"{run_dir.name}: {len(list(run_dir.glob('*.csv')))} CSVs", flush=True)
    except error as e:  # a model that lacks what the analysis needs: the refusal is part of the fingerprint
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "refused.txt").write_text(str(e) + "\n")
        print(f"{run_dir.name}: refused: {e}", flush=True)


def _volatile(column: str) -> bool:
    return any(word in column.lower() for word in VOLATILE)


def compare(old: Path, new: Path) -> int:
    differs = 0
    for a in sorted(old.rglob("*.csv")):
        rel = a.relative_to(old)
        b = new / rel
        if not b.exists():
            print(f"{rel}: missing in {new}")
            differs += 1
            continue
        x, y = pd.read_csv(a), pd.read_csv(b)
        added = [c for c in y.columns if c not in x.columns]
        removed = [c for c in x.columns if c not in y.columns]
        notes = []
        if len(x) != len(y):
            print(f"{rel}: {len(x)} rows -> {len(y)} rows")
            differs += 1
            continue
        worst, texts = 0.0, []
        for c in (c for c in x.columns if c in y.columns and not _volatile(c)):
            if pd.api.types.is_numeric_dtype(x[c]) and pd.api.types.is_numeric_dtype(y[c]):
                u, v = x[c].to_numpy(float), y[c].to_numpy(float)
                same = (np.isnan(u) & np.isnan(v)) | (u == v)  # u == v also holds for equal infinities
                with np.errstate(invalid="ignore"):
                    d = np.where(same, 0.0, np.abs(u - v))
                d = np.where(np.isnan(d), np.inf, d)
                if d.size and d.max() > 0:
                    notes.append(f"{c} {d.max():.3g}")
                worst = max(worst, float(d.max()) if d.size else 0.0)
            elif not x[c].astype(str).equals(y[c].astype(str)):
                texts.append(c)
        if worst > 0 or texts:
            differs += 1
        line = f"{rel}: worst {worst:.3g}" + (f" ({', '.join(notes)})" if notes else "")
        line += f"; text differs: {texts}" if texts else ""
        line += f"; added {added}" if added else ""
        line += f"; removed {removed}" if removed else ""
        print(line)
    for b in sorted(new.rglob("*.csv")):
        if not (old / b.relative_to(new)).exists():
            print(f"{b.relative_to(new)}: new")
    print(f"{differs} files differ in a common column")
    return 1 if differs else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--only", default="", help="comma-separated analyses (default: every registered one)")
    c = sub.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        run(args.out, [a for a in args.only.split(",") if a])
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
