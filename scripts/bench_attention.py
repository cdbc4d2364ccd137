"""Cost of attention_distance against the bare forward pass (target: at most 1.3x).

Random-init ViT-B/16 (timm `vit_base_patch16_224`, 224 px), 256 random images in batches of 32, under
`torch.inference_mode()`. The bare pass is the model as timm builds it (fused attention, no hooks); the
analysis pass is exactly what `analysis=attention_distance` runs per batch: fused attention off, the softmax
captured at every block's `attn_drop` and reduced to per-image mean distances inside the hook
(vitstudy.analyses.attention.DistanceReducer through engine.stream). The two are timed batch by batch,
interleaved, so load from other processes hits both alike; image loading is left out of both.

    .venv/bin/python scripts/bench_attention.py --threads 2            # CPU
    .venv/bin/python scripts/bench_attention.py --device cuda          # GPU
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from vitstudy.analyses.attention import DistanceReducer
from vitstudy.analyses.common import INPUT
from vitstudy.anatomy.attention import sites, unfused
from vitstudy.pipeline.engine import stream
from vitstudy.pipeline.models import LoadedModel


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = timm.create_model(args.model, pretrained=False).eval().to(device)
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
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(args.batch_size, *size, generator=g).to(device) for _ in range(args.images // args.batch_size)
    ]
    labels = torch.zeros(args.batch_size)
    site_list = sites(module)
    layers = [[INPUT] + [s.layer for s in site_list]]
    reducer = DistanceReducer(site_list)
    with torch.inference_mode():  # warm-up: one batch each
        module(batches[0])
        with unfused(module):
            stream([m], layers, [((batches[0],), labels)], DistanceReducer(site_list), device, progress=False)
    bare = analysis = 0.0
    for x in batches:
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            module(x)
        sync(device)
        bare += time.perf_counter() - t
        t = time.perf_counter()
        with unfused(module):
            stream([m], layers, [((x,), labels)], reducer, device, progress=False)
        sync(device)
        analysis += time.perf_counter() - t
    mean, _ = reducer.stats.mean_std(site_list[0].name)
    print(
        f"{args.model} random init, {len(batches) * args.batch_size} images, batch {args.batch_size}, "
        f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, timm {timm.__version__}"
    )
    print(f"bare forward (fused attention):        {bare:8.2f} s")
    print(f"attention_distance (capture + reduce): {analysis:8.2f} s")
    print(f"ratio: {analysis / bare:.3f}x (target <= 1.3x); block 0 head 0 mean distance {mean[0]:.2f} px")


if __name__ == "__main__":
    main()
