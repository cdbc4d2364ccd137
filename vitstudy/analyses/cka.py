"""CKA within one model (Raghu et al. 2021 Fig. 1) and across two models (Fig. 2).

One pass: each model runs once per batch, each layer's centred Gram is formed once inside its forward
hook, and every layer pair comes from one product of the stacked Ũ matrices (metrics.cka.MinibatchCKA).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .. import data, plots
from ..engine import Reducer, stream
from ..errors import VitstudyError
from ..layers import Layer, features, token_info
from ..metrics.cka import FullSetCKA, MinibatchCKA, gram, u_center
from . import Result, register

TOLERANCE = 1e-6  # |CKA| may exceed 1 by rounding only


class CKAReducer(Reducer):
    """Per batch: features -> centred Gram -> Ũ per layer (in the hook); then one product for all pairs."""

    def __init__(self, models, layers, tokens: str, estimator: str = "unbiased", gram_dtype: str = "float32", device="cpu"):
        self.within = len(models) == 1
        self.layers = layers
        self.index = [{layer.name: i for i, layer in enumerate(ls)} for ls in layers]
        self.tokens = tokens
        self.token_info = [token_info(m.module) for m in models]
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[gram_dtype]
        self.estimator = estimator
        sizes = [len(ls) for ls in layers]
        if estimator == "unbiased":
            self.acc = MinibatchCKA(sizes[0], None if self.within else sizes[1], device=device)
        else:
            self.acc = FullSetCKA(sizes[0], None if self.within else sizes[1])
        self.buffers: list[list[torch.Tensor | None]] = [[None] * n for n in sizes]

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        x = features(tensor, layer, self.tokens, *self.token_info[model_index])
        i = self.index[model_index][layer.name]
        if self.estimator == "unbiased":
            self.buffers[model_index][i] = u_center(gram(x, self.dtype)).flatten()
        else:
            self.acc.add("xy"[model_index], i, x)

    def end_batch(self, labels, outputs) -> None:
        if self.estimator != "unbiased":
            return
        ux = torch.stack(self.buffers[0])
        uy = None if self.within else torch.stack(self.buffers[1])
        self.acc.update(ux, uy)
        self.buffers = [[None] * len(b) for b in self.buffers]

    def result(self) -> np.ndarray:
        return self.acc.result().numpy()


def check(matrix: np.ndarray, names_x: list[str], names_y: list[str]) -> None:
    """Non-finite or |CKA| > 1 values mean a numerical or bookkeeping error: fail, naming the layers."""
    bad = ~np.isfinite(matrix) | (np.abs(matrix) > 1 + TOLERANCE)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        value = matrix[i, j]
        hint = ("; a layer gives the same features for every image (e.g. the CLS token before the first attention),"
                " so CKA is undefined: drop it from the layers") if not np.isfinite(value) else ""
        raise VitstudyError(f"CKA of layer '{names_x[i]}' vs '{names_y[j]}' is {value:.6g}, outside [-1, 1]{hint}")


def compute(ctx, models, layers) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean and std of the CKA matrix over `cka.repeats` independent image samples, and what was used."""
    cfg = ctx.cfg
    runs, used = [], []
    for r in range(cfg.cka.repeats):
        indices = data.sample_indices(len(ctx.dataset), cfg.dataset.num_images, cfg.seed + r)
        batching = data.make_batches(indices, cfg.dataset.batch_size, cfg.cka.tail)
        loader = data.loader(ctx.dataset, batching, [m.transform for m in models], cfg.dataset.num_workers)
        reducer = CKAReducer(models, layers, cfg.tokens, cfg.cka.estimator, cfg.cka.gram_dtype, ctx.device)
        desc = f"cka repeat {r + 1}/{cfg.cka.repeats}" if cfg.cka.repeats > 1 else "cka"
        stream(models, layers, loader, reducer, ctx.device, desc, ctx.progress)
        matrix = reducer.result()
        check(matrix, [l.name for l in layers[0]], [l.name for l in layers[-1]])
        runs.append(matrix)
        used.append({"repeat": r, "seed": cfg.seed + r, "images": batching.num_images, "batches": len(batching.batches),
                     "tail": batching.tail, "dropped": batching.dropped, "indices": indices})
    stack = np.stack(runs)
    std = stack.std(axis=0, ddof=1) if len(runs) > 1 else np.full(stack.shape[1:], np.nan)
    ctx.record_images(used)
    return stack.mean(axis=0), std, {"repeats": used}


def table(mean, std, mx, my, lx: list[Layer], ly: list[Layer], cfg, images: int) -> pd.DataFrame:
    """Tidy long form: one row per layer pair."""
    ix, iy = np.meshgrid(np.arange(len(lx)), np.arange(len(ly)), indexing="ij")
    ix, iy = ix.ravel(), iy.ravel()
    return pd.DataFrame({
        "model_x": mx.name, "weights_x": mx.weights, "layer_x": [lx[i].name for i in ix], "index_x": ix,
        "model_y": my.name, "weights_y": my.weights, "layer_y": [ly[j].name for j in iy], "index_y": iy,
        "cka": mean.ravel(), "cka_std": std.ravel(), "repeats": cfg.cka.repeats,
        "estimator": cfg.cka.estimator, "tokens": cfg.tokens, "num_images": images,
        "batch_size": cfg.dataset.batch_size, "dataset": cfg.dataset.name,
    })


def _run(ctx, within: bool) -> Result:
    cfg = ctx.cfg
    models = [ctx.models["model"]] if within else [ctx.models["model"], ctx.models["reference"]]
    layers = [ctx.layers(m) for m in models]
    mean, std, info = compute(ctx, models, layers)
    mx, my = models[0], models[-1]
    lx, ly = layers[0], layers[-1]
    images = info["repeats"][0]["images"]
    name = "cka_within" if within else "cka_across"
    df = table(mean, std, mx, my, lx, ly, cfg, images)
    estimator = "minibatch unbiased" if cfg.cka.estimator == "unbiased" else "full-set biased"
    title = f"CKA within {mx.label}" if within else f"CKA: {mx.label} vs {my.label}"
    fig = plots.cka_heatmap(mean, f"{mx.label} layer", f"{my.label} layer",
                            f"{title}\n{estimator}, tokens={cfg.tokens}, {images} images x {cfg.cka.repeats}")
    return Result({name: df}, {name: fig}, {"layers": {m.key: [l.name for l in ls] for m, ls in zip(models, layers)}})


@register("cka_within", "CKA between every pair of layers of one model (Raghu et al. 2021, Fig. 1)")
def cka_within(ctx) -> Result:
    return _run(ctx, within=True)


@register("cka_across", "CKA between every layer of `model` and every layer of `reference` (Raghu et al. 2021, Fig. 2)",
          models=("model", "reference"))
def cka_across(ctx) -> Result:
    return _run(ctx, within=False)
