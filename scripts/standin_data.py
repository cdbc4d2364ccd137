#!/usr/bin/env python
"""Stand-in image data for dry runs of the paper figures: generated images in the layouts the figures read.

    OUT/imagenet/val/<wnid>/*.jpg     ImageNet val layout: --val-classes class folders (default 1000, so the
                                      heads' "top-1 on the 1,000 classes" code paths run) x --val-per-class images
    OUT/imagenet/train/<wnid>/*.jpg   ImageNet train layout for the 10-shot probes: --train-classes x --train-per-class
    OUT/cifar/cifar-10-batches-py/    CIFAR-10 in torchvision's pickled layout (data_batch_1..5, test_batch, batches.meta)
    OUT/cifar/cifar-100-python/       CIFAR-100 likewise (train, test, meta)

The images are vitstudy's SyntheticImages (shapes on textured backgrounds), the labels are the folder / a
balanced cycle over the classes: nothing in them is ImageNet or CIFAR. torchvision checks the MD5 sums of the
real CIFAR files, which generated files cannot match, so the CIFAR folders carry a STANDIN file and
scripts/standin_vitstudy.py (vitstudy with that check relaxed for STANDIN folders only) reads them.

    python scripts/standin_data.py OUT            # about 30 MB, a few seconds
Idempotent: an existing OUT/<part> is kept unless --force.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
STANDIN = "STANDIN"
PARTS = ("imagenet-val", "imagenet-train", "cifar10", "cifar100")
NOTE = "generated stand-in images (vitstudy scripts/standin_data.py) for dry runs only; not the real data set\n"


def _images(n: int, size: int, seed: int):
    sys.path.insert(0, str(REPO))
    from vitstudy.pipeline.data import SyntheticImages

    gen = SyntheticImages(size=n, image_size=size, num_classes=10, seed=seed)
    for i in range(n):
        yield gen[i][0]


def image_folder(root: Path, classes: int, per_class: int, size: int, seed: int) -> int:
    """root/n00000000/..., JPEGs; returns the number of images."""
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    images = _images(classes * per_class, size, seed)
    for c in range(classes):
        folder = tmp / f"n{c:08d}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            next(images).save(folder / f"standin_{c:04d}_{k:02d}.JPEG", quality=85)
    (tmp / STANDIN).write_text(NOTE)
    tmp.rename(root)
    return classes * per_class


def _pixels(n: int, seed: int) -> np.ndarray:
    """(n, 3072) uint8 rows in CIFAR's channel-planar order."""
    return np.stack([np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).reshape(-1) for img in _images(n, 32, seed)])


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar10(root: Path, train: int, test: int, seed: int) -> int:
    """torchvision's cifar-10-batches-py: 5 train batches (train images split evenly), one test batch."""
    tmp = root / "cifar-10-batches-py.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    per = -(-train // 5)
    for b in range(5):
        n = min(per, train - b * per)
        labels = [(b * per + i) % 10 for i in range(n)]
        _dump(
            tmp / f"data_batch_{b + 1}",
            {
                "batch_label": f"training batch {b + 1} of 5 (stand-in)",
                "labels": labels,
                "data": _pixels(n, seed + b),
                "filenames": [f"standin_{b}_{i}.png" for i in range(n)],
            },
        )
    _dump(
        tmp / "test_batch",
        {
            "batch_label": "testing batch 1 of 1 (stand-in)",
            "labels": [i % 10 for i in range(test)],
            "data": _pixels(test, seed + 10),
            "filenames": [f"standin_t_{i}.png" for i in range(test)],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(tmp / "batches.meta", {"num_cases_per_batch": per, "label_names": names, "num_vis": 3072})
    (tmp / STANDIN).write_text(NOTE)
    tmp.rename(root / "cifar-10-batches-py")
    return train + test


def cifar100(root: Path, train: int, test: int, seed: int) -> int:
    """torchvision's cifar-100-python: train, test, meta (fine labels cycle over the 100 classes)."""
    tmp = root / "cifar-100-python.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for split, n, s in (("train", train, seed + 20), ("test", test, seed + 21)):
        fine = [i % 100 for i in range(n)]
        _dump(
            tmp / split,
            {
                "filenames": [f"standin_{split}_{i}.png" for i in range(n)],
                "batch_label": f"{split} (stand-in)",
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": _pixels(n, s),
            },
        )
    _dump(
        tmp / "meta",
        {
            "fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"superclass_{i:02d}" for i in range(20)],
        },
    )
    (tmp / STANDIN).write_text(NOTE)
    tmp.rename(root / "cifar-100-python")
    return train + test


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--val-classes", type=int, default=1000)
    ap.add_argument("--val-per-class", type=int, default=1)
    ap.add_argument("--train-classes", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=8)
    ap.add_argument(
        "--image-size", type=int, default=128, help="side of the ImageNet stand-in JPEGs (the models resize)"
    )
    ap.add_argument(
        "--cifar10-train", type=int, default=5120, help="> 5,000: the paper split keeps the last 5,000 for validation"
    )
    ap.add_argument("--cifar10-test", type=int, default=200)
    ap.add_argument("--cifar100-train", type=int, default=1000)
    ap.add_argument("--cifar100-test", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS), help="what to write (default: all)")
    ap.add_argument("--force", action="store_true", help="regenerate parts that exist")
    args = ap.parse_args(argv)

    out = args.out.resolve()
    parts = {
        "imagenet-val": (
            out / "imagenet" / "val",
            lambda p: image_folder(p, args.val_classes, args.val_per_class, args.image_size, args.seed),
        ),
        "imagenet-train": (
            out / "imagenet" / "train",
            lambda p: image_folder(p, args.train_classes, args.train_per_class, args.image_size, args.seed + 1),
        ),
        "cifar10": (
            out / "cifar" / "cifar-10-batches-py",
            lambda p: cifar10(p.parent, args.cifar10_train, args.cifar10_test, args.seed),
        ),
        "cifar100": (
            out / "cifar" / "cifar-100-python",
            lambda p: cifar100(p.parent, args.cifar100_train, args.cifar100_test, args.seed),
        ),
    }
    for part in args.parts:
        path, make = parts[part]
        if path.exists() and not args.force:
            print(f"exists {path}")
            continue
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        n = make(path)
        print(f"wrote  {path}: {n} generated images ({time.perf_counter() - t:.1f} s)")
    print(
        f"stand-in data in {out}: IMAGENET_VAL={out}/imagenet/val IMAGENET_TRAIN={out}/imagenet/train "
        f"CIFAR_ROOT={out}/cifar CIFAR100_ROOT={out}/cifar (generated images: for dry runs only)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
