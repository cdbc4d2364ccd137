"""Benchmark the full-set path of the similarity analyses: per measure, time and peak memory of the analysis stage
against the bare forward passes, at one or more image counts, in one run.

    make bench-measures                                  # ViT-Ti/16 vs ResNet-18, random init, 256 images, CPU
    python scripts/bench_measures.py --images 1024,4096  # does memory stay flat as the image count grows?
    python scripts/bench_measures.py --estimator batch_mean --measures procrustes

Every measurement runs in a fresh subprocess, so its peak resident memory (ru_maxrss) is its own; models are random
init (speed and memory do not depend on the weights). Each process composes a real config (layers=blocks,
tokens=mean, synthetic images, no cache) and loads the models and data set through the runner (`runner.prepare`)
before the clock starts; then either the bare forwards of both models over the same batches (`bare`), or
`similarity_full.compute` for one measure (feature store fill = the forwards, then every layer pair, the
`--groups` jackknife replicates and `--null` permutations), or the streaming minibatch CKA (`cka.compute`, row
`cka-minibatch`) for scale. Printed: seconds, x the bare forwards, peak MB, and peak MB above the bare process's.
Run one after another (the default), the bare forwards are timed before and after the measures (`bare-after`) and
the ratios use the mean of the two, so that a machine that drifts during the run shows in the drift line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

BARE = ("bare", "bare-after")  # the bare forwards, timed before and after the measures


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from vitstudy.analyses import cka, similarity_full
    from vitstudy.api import compose
    from vitstudy.measures import get
    from vitstudy.pipeline import runner
    from vitstudy.pipeline.engine import Reducer, stream

    cfg = compose(
        [
            "analysis=cka_across",
            f"model.name={args.model1}",
            "model.pretrained=false",
            f"reference.name={args.model2}",
            "reference.pretrained=false",
            f"dataset.num_images={args.images}",
            f"dataset.batch_size={args.batch}",
            f"dataset.image_size={args.image_size}",
            "tokens=mean",
            f"layers={args.layers}",
            "cache.dir=",
            "device=cpu",
        ]
    )
    ctx = runner.prepare(cfg, progress=False)
    models = [ctx.models["model"], ctx.models["reference"]]
    layers = [ctx.layers(m) for m in models]
    out = {"mode": args.mode, "images": args.images, "layers": [len(ls) for ls in layers]}
    t = time.perf_counter()
    if args.mode in BARE:  # the same loader and forwards, every tapped tensor dropped at once
        batching, _ = ctx.sample(tail=cfg.cka.tail)
        stream(models, layers, ctx.loader(models, batching), Reducer(), ctx.device, progress=False)
    elif args.mode == "cka-minibatch":
        cka.compute(ctx, models, layers)
    else:
        params = SimpleNamespace(
            estimator=args.estimator, null=args.null, groups=args.groups, store_dtype=args.store_dtype
        )
        est, info = similarity_full.compute(ctx, models, layers, get(args.mode), params)
        out["store_mb"] = info.get("store_bytes", 0) / 2**20
    out["seconds"] = time.perf_counter() - t
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def command(mode, args, images) -> list[str]:
    return [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        mode,
        "--images",
        str(images),
        "--batch",
        str(args.batch),
        "--model1",
        args.model1,
        "--model2",
        args.model2,
        "--layers",
        args.layers,
        "--threads",
        str(args.threads),
        "--estimator",
        args.estimator,
        "--groups",
        str(args.groups),
        "--null",
        str(args.null),
        "--store-dtype",
        args.store_dtype,
        "--image-size",
        str(args.image_size),
    ]


def collect(mode, images, proc) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"mode": mode, "images": images, "error": (err.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.strip().splitlines()[-1])


def measure_all(modes, args, images) -> list[dict]:
    """Each mode in its own process: one after another, or (--parallel) all at once, so that on a shared, busy
    machine every mode sees the same load and the ratios to the bare forwards stay comparable."""

    def start(mode):
        return subprocess.Popen(command(mode, args, images), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    if args.parallel:
        procs = [(mode, start(mode)) for mode in modes]
        return [collect(mode, images, proc) for mode, proc in procs]
    return [collect(mode, images, start(mode)) for mode in modes]


def main():
    from vitstudy.measures import MEASURES

    full = [name for name, cls in MEASURES.items() if cls.full_set]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--images", default="256", help="image counts, comma-separated (e.g. 1024,4096)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224, help="side of the synthetic images (each model resizes)")
    p.add_argument("--model1", default="vit_tiny_patch16_224")
    p.add_argument("--model2", default="resnet18")
    p.add_argument("--layers", default="blocks")
    p.add_argument("--measures", default=",".join(full), help=f"full-set measures (default all: {', '.join(full)})")
    p.add_argument("--estimator", default="full_set", choices=("full_set", "batch_mean"))
    p.add_argument("--groups", type=int, default=10)
    p.add_argument("--null", type=int, default=0)
    p.add_argument("--store-dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--no-minibatch", action="store_true", help="skip the streaming minibatch CKA row")
    p.add_argument("--parallel", action="store_true", help="run the modes of one image count at the same time")
    p.add_argument(
        "--no-bracket",
        action="store_true",
        help="time the bare forwards once (default: before and after the measures; ratios use the mean of the two)",
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    args = p.parse_args()
    if args.worker:
        args.mode, args.images = args.worker, int(args.images)
        print(json.dumps(worker(args)))
        return
    counts = [int(n) for n in args.images.split(",")]
    modes = ["bare", *([] if args.no_minibatch else ["cka-minibatch"]), *[m for m in args.measures.split(",") if m]]
    if not args.parallel and not args.no_bracket:  # sequential runs drift with the machine: time bare at both ends
        modes.append("bare-after")
    print(
        f"# {args.model1} vs {args.model2} (random init), layers={args.layers}, tokens=mean, batch {args.batch}, "
        f"{args.image_size} px synthetic images, {args.threads} threads; measures: estimator={args.estimator}, "
        f"groups={args.groups}, null={args.null}, store {args.store_dtype}"
        + ("; modes run concurrently" if args.parallel else "")
    )
    print(
        f"{'measure':<14} {'images':>6} {'seconds':>8} {'x bare':>7} {'peak MB':>8} {'+MB vs bare':>11} {'store MB':>8}"
    )
    rows = []
    for n in counts:
        got = measure_all(modes, args, n)
        bares = [r for r in got if r["mode"] in BARE and "error" not in r]
        bare = (
            {
                "seconds": sum(b["seconds"] for b in bares) / len(bares),
                "peak_rss_mb": min(b["peak_rss_mb"] for b in bares),
            }
            if bares
            else None
        )
        for r in got:
            mode = r["mode"]
            rows.append(r)
            if "error" in r:
                print(f"{mode:<14} {n:>6}  failed: {r['error']}", flush=True)
                continue
            ratio = r["seconds"] / bare["seconds"] if bare else float("nan")
            extra = r["peak_rss_mb"] - bare["peak_rss_mb"] if bare else float("nan")
            store = f"{r['store_mb']:.1f}" if "store_mb" in r else ""
            print(
                f"{mode:<14} {n:>6} {r['seconds']:>8.2f} {ratio:>7.2f} {r['peak_rss_mb']:>8.0f} {extra:>+11.0f} "
                f"{store:>8}",
                flush=True,
            )
        if len(bares) == 2:
            drift = bares[1]["seconds"] / bares[0]["seconds"]
            print(f"# {n} images: bare forwards after / before the measures {drift:.3f}; x bare uses their mean")
    if len(counts) > 1:
        for mode in modes:
            got = [r for r in rows if r["mode"] == mode and "error" not in r]
            if len(got) == len(counts):
                a, b = got[0], got[-1]
                print(
                    f"{mode}: peak memory at {b['images']} vs {a['images']} images: "
                    f"{b['peak_rss_mb'] / a['peak_rss_mb'] - 1:+.1%}; time x{b['seconds'] / a['seconds']:.2f}"
                )


if __name__ == "__main__":
    main()
