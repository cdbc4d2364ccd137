"""Cost of `token_norms` and `massive_activations` against the bare forward pass (issue target: at most 1.10x),
and their memory: the reducers' state after the first and after the last batch (flat in the number of images).

Random-init ViT (timm, default `vit_base_patch16_224` with 4 registers), random images, `layers=blocks` (the
residual stream after every block), under `torch.inference_mode()`. Each analysis pass is what the analysis runs
per batch: its reducer through engine.stream, every block output reduced inside its hook (token_norms also taps
the patch embedding for the neighbour cosine and the input for the maps). Bare and analysis passes are timed batch
by batch, interleaved, so load from other processes hits all alike; image loading is left out.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_tokens.py --threads 2
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import timm
import torch

from vitstudy.analyses.common import INPUT
from vitstudy.analyses.massive_activations import MassiveReducer
from vitstudy.analyses.token_norms import TokenNormReducer, token_layers
from vitstudy.metrics import token_norms as tn
from vitstudy.pipeline.engine import stream
from vitstudy.pipeline.layers import resolve


def state_bytes(obj) -> int:
    """Bytes held in tensors, arrays and counters of a reducer (recursively through dicts and lists)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(state_bytes(v) or 16 for v in obj.values())  # a counter's entry: about 16 bytes
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(state_bytes(v) for k, v in vars(obj).items() if k not in ("tls", "bins", "embed"))
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--reg-tokens", type=int, default=4)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = timm.create_model(args.model, pretrained=False, reg_tokens=args.reg_tokens).eval()
    m = SimpleNamespace(module=module, label=args.model, stopped_after=None)
    size = module.pretrained_cfg.get("input_size", (3, 224, 224))
    blocks = resolve(module, "blocks", size)
    embed = resolve(module, ["patch_embed"], size)[0]
    tls = token_layers(m, blocks, "bench")
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch_size, *size, generator=g) for _ in range(args.images // args.batch_size)]
    labels = torch.zeros(args.batch_size)
    bins = tn.Bins(low=-3.0, high=5.0, count=200)
    reducers = {
        "token_norms": (TokenNormReducer(tls, bins, None, 4, embed), [INPUT, embed, *blocks]),
        "massive_activations": (MassiveReducer(tls, 3), blocks),
    }
    with torch.inference_mode():
        module(batches[0])  # warm-up
    times = {"bare": 0.0, **{k: 0.0 for k in reducers}}
    memory = {k: [] for k in reducers}
    for x in batches:
        t = time.perf_counter()
        with torch.inference_mode():
            module(x)
        times["bare"] += time.perf_counter() - t
        for name, (reducer, taps) in reducers.items():
            t = time.perf_counter()
            stream([m], [taps], [((x,), labels)], reducer, "cpu", progress=False)
            times[name] += time.perf_counter() - t
            memory[name].append(state_bytes(reducer))
    print(
        f"{args.model} + {args.reg_tokens} registers, random init, {len(batches) * args.batch_size} images, batch "
        f"{args.batch_size}, {len(blocks)} blocks, torch threads {torch.get_num_threads()}"
    )
    for k, v in times.items():
        print(f"{k:<20} {v:8.2f} s  {v / times['bare']:.3f}x the bare forward")
    for k, v in memory.items():
        print(
            f"{k:<20} reducer state {v[0] / 2**20:.2f} MiB after batch 1, {v[-1] / 2**20:.2f} MiB after batch {len(v)}"
        )


if __name__ == "__main__":
    main()
