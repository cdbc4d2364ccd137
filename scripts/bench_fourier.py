"""Cost of `fourier` and `feature_variance` against the bare forward pass (target: at most 1.2x each).

Random-init ViT-B/16 (timm `vit_base_patch16_224`), 256 random images in batches of 32, `layers=latents`
(the residual stream after every sublayer: 25 latents), under `torch.inference_mode()`. The analysis pass is
what the analyses run per batch: vitstudy.analyses.fourier.LatentReducer through engine.stream, each latent
reduced to a float64 sum inside its hook. Bare and analysis passes are timed batch by batch, interleaved, so
load from other processes hits both alike; image loading is left out of both.

    .venv/bin/python scripts/bench_fourier.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from vitstudy.analyses.fourier import LatentReducer
from vitstudy.anatomy import latents
from vitstudy.pipeline.engine import stream
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = timm.create_model(args.model, pretrained=False).eval()
    m = LoadedModel(
        key="model",
        name=args.model,
        label=args.model,
        module=module,
        transform=None,
        data_config={},
        weights="random-init",
    )
    size = module.pretrained_cfg.get("input_size", (3, 224, 224))
    layers = [resolve(module, "latents", size)]
    described = [latents.describe(module, layers[0])]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch_size, *size, generator=g) for _ in range(args.images // args.batch_size)]
    labels = torch.zeros(args.batch_size)
    reducers = {s: LatentReducer(described, s) for s in ("fourier", "variance")}
    with torch.inference_mode():
        module(batches[0])  # warm-up
    times = {"bare": 0.0, "fourier": 0.0, "variance": 0.0}
    for x in batches:
        t = time.perf_counter()
        with torch.inference_mode():
            module(x)
        times["bare"] += time.perf_counter() - t
        for s, reducer in reducers.items():
            t = time.perf_counter()
            stream([m], layers, [((x,), labels)], reducer, "cpu", progress=False)
            times[s] += time.perf_counter() - t
    print(
        f"{args.model} random init, {len(batches) * args.batch_size} images, batch {args.batch_size}, "
        f"{len(layers[0])} latents, torch threads {torch.get_num_threads()}"
    )
    for k, v in times.items():
        print(f"{k:<10} {v:8.2f} s  {v / times['bare']:.3f}x the bare forward")


if __name__ == "__main__":
    main()
