"""Layer-monotonicity sanity benchmark (in the spirit of ReSi, Klabunde et al. 2024): does a measure rank the
nearer of two layers as the more similar one?

Features: the bundled trained models (`vit_cifar10_demo`, `resnet_cifar10_demo`) on the bundled CIFAR-10
images (`cifar10_sample`, 1,000 test images), `layers=blocks`, `tokens=mean`, captured by the project's own
engine (`pipeline.engine.stream` with a reducer that keeps each layer's token-reduced rows, float64).
Measures: every one in `vitstudy.measures.MEASURES`, with its default parameters; a full-set measure through
`prepare`/`compare`, a streaming-only one through its kernel on the full set (biased CKA of its centred Grams).

The share. With V[a, b] the value of layer a against layer b (a predicting b for an asymmetric measure; the
anchor is always x), for every triple of layers i < j < k of one model, two checks:
  - from the first end: V[i, j] > V[i, k]  (j, nearer to i than k is, is the more similar to i);
  - from the last end:  V[k, j] > V[k, i]  (j, nearer to k than i is, is the more similar to k);
each scores 1 when it holds, 1/2 on an exact tie, 0 otherwise. share = mean over both checks of all
C(L, 3) triples (share_first / share_last: each end alone). 0.5 is what a measure unrelated to depth scores;
1.0 means every layer is more similar to its nearer than to its farther layers. Triples with a value the
measure refused (e.g. CCA with more directions than images) are left out and counted in `skipped`.
`--repeats R` splits the images into R disjoint class-balanced subsets (image r, r+R, ... of the interleaved
order) and reports the mean share over them and its range (share_min, share_max); R=1 uses them all at once.

Usage: python scripts/measure_sanity.py [--images 1000] [--repeats 1] [--measures a,b] [--out sanity.csv]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from vitstudy import measures as M
from vitstudy.errors import VitstudyError
from vitstudy.pipeline import data, models
from vitstudy.pipeline.engine import Reducer, stream
from vitstudy.pipeline.layers import Layer, features, resolve

MODELS = ("vit_cifar10_demo", "resnet_cifar10_demo")


@dataclass(frozen=True)
class LayerFeatures:
    """One model's token-reduced features: layer names and one (n, p) float64 array per layer."""

    model: str
    layers: list[str]
    arrays: list[np.ndarray]


class Keep(Reducer):
    """Keeps every tapped layer's token-reduced rows (float64, CPU) over all batches."""

    def __init__(self, module: torch.nn.Module, layers: list[Layer], tokens: str):
        self.module, self.tokens = module, tokens
        self.rows: dict[str, list[np.ndarray]] = {layer.name: [] for layer in layers}

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        x = features(tensor, layer, self.tokens, self.module)
        self.rows[layer.name].append(x.detach().to("cpu", torch.float64).numpy())


def extract(preset: str, images: int, batch_size: int = 100, tokens: str = "mean") -> LayerFeatures:
    """Features of `images` bundled CIFAR-10 images (the first of each class in turn) at every block of `preset`."""
    loaded = models.load(models.node(preset), "model")
    loaded.module.eval()
    layers = resolve(loaded.module, "blocks", tuple(loaded.data_config["input_size"]))
    base = data.ImageFiles(str(data.CIFAR10_SAMPLE))  # dataset=cifar10_sample
    labels = data.labels(base)
    within = np.zeros(len(labels), dtype=np.int64)  # each image's position inside its class
    for c in np.unique(labels):
        within[labels == c] = np.arange(int((labels == c).sum()))
    order = np.lexsort((labels, within))[:images].tolist()  # classes interleaved: image i of every class, then i+1
    keep = Keep(loaded.module, layers, tokens)
    stream(
        [loaded],
        [layers],
        data.loader(base, data.make_batches(order, batch_size), [loaded.transform]),
        keep,
        torch.device("cpu"),
        "batches",
        False,
    )
    return LayerFeatures(loaded.label, [l.name for l in layers], [np.concatenate(keep.rows[l.name]) for l in layers])


def kernel_alignment(measure: M.Measure, x: np.ndarray, y: np.ndarray) -> float:
    """A streaming-only measure on the full set: biased CKA of its centred kernel matrices."""
    n = len(x)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kx = h @ measure.kernel(torch.from_numpy(x), torch.float64) @ h
    ky = h @ measure.kernel(torch.from_numpy(y), torch.float64) @ h
    return float((kx * ky).sum() / torch.sqrt((kx * kx).sum() * (ky * ky).sum()))


def _prepare(measure: M.Measure, x: np.ndarray):
    try:
        return measure.prepare(x)
    except VitstudyError:  # a layer the measure refuses outright (e.g. CCA directions filling the image space)
        return None


def matrix(measure: M.Measure, arrays: list[np.ndarray]) -> np.ndarray:
    """V[a, b] for every pair of layers (a as x); NaN where the measure refuses the pair."""
    n = len(arrays)
    v = np.full((n, n), np.nan)
    cls = type(measure)
    prepared = [_prepare(measure, a) for a in arrays] if cls.full_set else arrays
    for a, b in itertools.product(range(n), repeat=2):
        if cls.symmetric and b < a:
            v[a, b] = v[b, a]
            continue
        if prepared[a] is None or prepared[b] is None:
            continue
        try:
            v[a, b] = (
                measure.compare(prepared[a], prepared[b])
                if cls.full_set
                else kernel_alignment(measure, prepared[a], prepared[b])
            )
        except VitstudyError:
            pass
    return v


def _score(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def monotonicity(v: np.ndarray) -> dict[str, float]:
    """The shares defined in the module docstring, from the value matrix V."""
    first, last, skipped = [], [], 0
    for i, j, k in itertools.combinations(range(len(v)), 3):
        values = (v[i, j], v[i, k], v[k, j], v[k, i])
        if not np.all(np.isfinite(values)):
            skipped += 1
            continue
        first.append(_score(v[i, j], v[i, k]))
        last.append(_score(v[k, j], v[k, i]))
    mean = lambda s: float(np.mean(s)) if s else float("nan")  # noqa: E731
    return {
        "share": mean(first + last),
        "share_first": mean(first),
        "share_last": mean(last),
        "triples": len(first),
        "skipped": skipped,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="bundled images to use (at most 1,000)")
    ap.add_argument("--repeats", type=int, default=1, help="disjoint image subsets, each scored on its own")
    ap.add_argument("--measures", default="", help="comma-separated measure names (default: every registered one)")
    ap.add_argument("--out", default="", help="write the table as CSV here")
    args = ap.parse_args(argv)
    names = [s for s in args.measures.split(",") if s] or sorted(M.MEASURES)
    rows = []
    for preset in MODELS:
        t0 = time.perf_counter()
        feats = extract(preset, args.images)
        print(
            f"{feats.model}: {len(feats.layers)} layers, {args.images} images, features in "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        for name in names:
            measure = M.get(name)
            t0 = time.perf_counter()
            runs, refused = [], 0
            for r in range(args.repeats):
                v = matrix(measure, [a[r :: args.repeats] for a in feats.arrays])
                runs.append(monotonicity(v))
                refused += int(np.isnan(v).sum())
            shares = [run["share"] for run in runs]
            params = ",".join(f"{k}={val}" for k, val in measure.parameters().items())
            rows.append(
                {
                    "model": feats.model,
                    "measure": name,
                    "parameters": params,
                    **{
                        key: float(np.mean([run[key] for run in runs]))
                        for key in ("share", "share_first", "share_last")
                    },
                    "share_min": min(shares),
                    "share_max": max(shares),
                    "triples": runs[0]["triples"],
                    "skipped": sum(run["skipped"] for run in runs),
                    "refused_pairs": refused,
                    "layers": len(feats.layers),
                    "images": args.images,
                    "repeats": args.repeats,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
            print(f"  {name}: share {rows[-1]['share']:.3f} ({rows[-1]['seconds']} s)", file=sys.stderr)
    table = pd.DataFrame(rows)
    print(table.pivot(index="measure", columns="model", values="share").round(3).to_string())
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
