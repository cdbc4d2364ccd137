"""Calibration of the jackknife standard error of minibatch CKA on trained models: R disjoint image samples, one
`cka_across` matrix each; the standard error one run reports against the standard deviation of the estimate
across the R runs, cell by cell, and how often a run's 95% interval holds the pooled estimate of all runs.

    python scripts/calibrate_cka.py --model vit_mini_cifar --model-ckpt A.pt --reference resnet_mini_cifar \
        --reference-ckpt B.pt --root /tmp/cifar10/test --runs 15 --batches 10 --batch-size 64 --out docs/calibration
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-ckpt", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--reference-ckpt", required=True)
    ap.add_argument("--root", required=True, help="an image folder (class subfolders)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--layers", default="blocks")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/calibration")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import torchvision

    from vitstudy.api import cka_matrix
    from vitstudy.metrics import uncertainty as U
    from vitstudy.pipeline.models import create, training_metadata

    mods = []
    for name, ckpt in ((args.model, args.model_ckpt), (args.reference, args.reference_ckpt)):
        meta = training_metadata(ckpt) or {}
        kwargs = dict((meta.get("model_config") or {}).get("kwargs") or {})
        mods.append((create(name, checkpoint=ckpt, **kwargs).eval(), meta.get("data_config") or {}))
    dc = mods[0][1]
    if dc != mods[1][1]:
        print("note: the two checkpoints were trained with different data configs; the first one's is used")
    tf = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize(dc["input_size"][-1]),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(dc["mean"], dc["std"]),
        ]
    )
    data = torchvision.datasets.ImageFolder(args.root, transform=tf)
    per_run = args.batches * args.batch_size
    if per_run * args.runs > len(data):
        raise SystemExit(
            f"{args.runs} disjoint samples of {per_run} images need {per_run * args.runs}; the folder has {len(data)}"
        )
    order = np.random.default_rng(0).permutation(len(data))
    frames = []
    for r in range(args.runs):
        subset = torch.utils.data.Subset(data, order[r * per_run : (r + 1) * per_run].tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=args.batch_size, shuffle=False, num_workers=0)
        df = cka_matrix(mods[0][0], loader, mods[1][0], layers=args.layers, device="cpu")
        df["run"] = r
        frames.append(df)
        print(f"run {r + 1}/{args.runs}: median se {df.cka_se.median():.4f}", flush=True)
    runs = pd.concat(frames, ignore_index=True)
    g = runs.groupby(["index_x", "index_y"])
    cells = g.agg(
        layer_x=("layer_x", "first"),
        layer_y=("layer_y", "first"),
        cka_mean=("cka", "mean"),
        sd_across_runs=("cka", "std"),
        mean_reported_se=("cka_se", "mean"),
    ).reset_index()
    cells["ratio_se_to_sd"] = cells.mean_reported_se / cells.sd_across_runs
    pooled = runs.merge(cells[["index_x", "index_y", "cka_mean"]], on=["index_x", "index_y"])
    pooled["covers"] = (pooled.cka_ci_low <= pooled.cka_mean) & (pooled.cka_mean <= pooled.cka_ci_high)
    cells = cells.merge(pooled.groupby(["index_x", "index_y"]).covers.mean().rename("coverage_of_pooled").reset_index())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "calibration_runs.csv", index=False)
    cells.to_csv(out / "calibration_cells.csv", index=False)
    q = cells.ratio_se_to_sd.quantile([0.1, 0.5, 0.9])
    print(
        f"{len(cells)} cells, {args.runs} disjoint runs of {args.batches} x {args.batch_size} images: "
        f"se / sd across runs: median {q[0.5]:.2f} (10%: {q[0.1]:.2f}, 90%: {q[0.9]:.2f}); "
        f"cells within 1.5x: {np.mean((cells.ratio_se_to_sd > 1 / 1.5) & (cells.ratio_se_to_sd < 1.5)):.0%}; "
        f"intervals holding the pooled mean: {pooled.covers.mean():.1%} (t({U.critical(args.batches - 1):.3f}))"
    )


if __name__ == "__main__":
    main()
