"""CKA within one model (Raghu et al. 2021 Fig. 1) and across two models (Fig. 2).

One pass: each model runs once per batch, each layer's centred Gram is formed once inside its forward
hook, and every layer pair comes from one product of the stacked Ũ matrices (metrics.cka.MinibatchCKA).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..pipeline import data
from ..plots import cka as plots_cka
from ..pipeline.engine import Reducer, stream
from ..errors import VitstudyError
from ..pipeline.layers import Layer, features
from ..metrics.cka import FullSetCKA, MinibatchCKA, gram, u_center
from ._registry import Params, Result, register

TOLERANCE = 1e-6  # |CKA| may exceed 1 by rounding only


class CKAReducer(Reducer):
    """Per batch: features -> centred Gram -> Ũ per layer (in the hook); then one product for all pairs."""

    def __init__(self, models, layers, tokens: str, estimator: str = "unbiased", gram_dtype: str = "float32", device="cpu",
                 stacked: bool | None = None):
        # stacked (one model, or cka_grid's models): every pair of all their layers from one L x L product;
        # otherwise (two models, cka_across): only the cross terms. Default: stacked unless there are two models.
        self.within = len(models) != 2 if stacked is None else stacked
        self.layers = layers
        self.index = [{layer.name: i for i, layer in enumerate(ls)} for ls in layers]
        self.tokens = tokens
        self.modules = [m.module for m in models]
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[gram_dtype]
        self.estimator = estimator
        sizes = [len(ls) for ls in layers]
        self.offsets = np.cumsum([0] + sizes[:-1]).tolist() if self.within else [0, 0]
        if estimator == "unbiased":
            self.acc = MinibatchCKA(sum(sizes), None, device) if self.within else MinibatchCKA(sizes[0], sizes[1], device)
        else:
            self.acc = FullSetCKA(sum(sizes)) if self.within else FullSetCKA(sizes[0], sizes[1])
        self.buffers: list[list[torch.Tensor | None]] = [[None] * n for n in sizes]

    def on_tensor(self, model_index: int, layer: Layer, tensor: torch.Tensor) -> None:
        x = features(tensor, layer, self.tokens, self.modules[model_index])
        i = self.index[model_index][layer.name]
        if self.estimator == "unbiased":
            self.buffers[model_index][i] = u_center(gram(x, self.dtype)).flatten()
        elif self.within:
            self.acc.add("x", self.offsets[model_index] + i, x)
        else:
            self.acc.add("xy"[model_index], i, x)

    def end_batch(self, labels, outputs) -> None:
        if self.estimator != "unbiased":
            return
        if self.within:
            self.acc.update(torch.stack([u for b in self.buffers for u in b]))
        else:
            self.acc.update(torch.stack(self.buffers[0]), torch.stack(self.buffers[1]))
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


def compute(ctx, models, layers, stacked: bool | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean and std of the CKA matrix over `cka.repeats` independent image samples, and what was used.

    With a cache (sweeps), the reducer's sums are checkpointed every `cache.checkpoint_every` batches and
    after each repeat; a rerun after a kill continues from there and gives the same sums.
    """
    cfg, cache = ctx.cfg, ctx.cache
    state = cache.load_checkpoint() if cache is not None else None
    runs = [m.numpy() for m in state["runs"]] if state else []
    # the feature cache's namespaces hash every weight: once per run, not once per repeat
    namespaces = [ctx.features.namespace(m, cfg.dataset) for m in models] if ctx.features is not None else None
    used = list(state["used"]) if state else []
    for r in range(len(runs), cfg.cka.repeats):
        batching, record = ctx.sample(tail=cfg.cka.tail, repeat=r)
        reducer = CKAReducer(models, layers, cfg.tokens, cfg.cka.estimator, cfg.cka.gram_dtype, ctx.device, stacked)
        start = 0
        if state and state.get("acc") is not None and state.get("repeat") == r:
            reducer.acc.load_state_dict(state["acc"])
            start = state["batches_done"]
        remaining = data.Batching(batching.batches[start:], batching.tail, batching.dropped)
        loader = ctx.loader(models, remaining)

        def checkpoint(done, r=r, start=start):
            resumable = cfg.cka.estimator == "unbiased"
            if cache is not None and cache.every and resumable and (start + done) % cache.every == 0:
                cache.save_checkpoint({"repeat": r, "batches_done": start + done, "acc": reducer.acc.state_dict(),
                                       "runs": [torch.from_numpy(m) for m in runs], "used": used})

        desc = f"cka repeat {r + 1}/{cfg.cka.repeats}" if cfg.cka.repeats > 1 else "cka"
        features = (ctx.features, namespaces, remaining.batches) if namespaces is not None else None
        stream(models, layers, loader, reducer, ctx.device, desc, ctx.progress, after_batch=checkpoint, features=features)
        matrix = reducer.result()
        if reducer.within:
            names = [f"{m.key}:{l.name}" if len(models) > 1 else l.name for m, ls in zip(models, layers) for l in ls]
            check(matrix, names, names)
        else:
            check(matrix, [l.name for l in layers[0]], [l.name for l in layers[1]])
        runs.append(matrix)
        used.append({**record, "resumed_at_batch": start})
        if cache is not None:
            cache.save_checkpoint({"repeat": r + 1, "batches_done": 0, "acc": None,
                                   "runs": [torch.from_numpy(m) for m in runs], "used": used})
    stack = np.stack(runs)
    std = stack.std(axis=0, ddof=1) if len(runs) > 1 else np.full(stack.shape[1:], np.nan)
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
    subtitle = f"{estimator}, tokens={cfg.tokens}, {images} images x {cfg.cka.repeats}"
    fig = plots_cka.cka_heatmap(mean, f"{mx.label} layer", f"{my.label} layer", f"{title}\n{subtitle}")
    result = Result({name: df}, {name: fig}, {"layers": {m.key: [l.name for l in ls] for m, ls in zip(models, layers)}},
                    info["repeats"])
    if not within and ctx.params.diagonal:
        diag = diagonal(df, len(lx), len(ly))
        result.tables["cka_diagonal"] = diag
        result.figures["cka_diagonal"] = plots_cka.cka_diagonal_curve(diag, f"{mx.weights} vs {my.weights}", subtitle)
    return result


def diagonal(df: pd.DataFrame, nx: int, ny: int) -> pd.DataFrame:
    """Layer i of one model against layer i of the other (Raghu et al. Fig. 12, App. G): same architecture only."""
    if nx != ny:
        raise VitstudyError(f"analysis.diagonal=true pairs layer i with layer i, but the models have {nx} and {ny} layers; "
                            "use two models of one architecture (e.g. two pretrained tags) and the same layers")
    diag = df[df.index_x == df.index_y].reset_index(drop=True).copy()
    diag["depth"] = diag.index_x / max(nx - 1, 1)
    return diag


@register("cka_within", "CKA between every pair of layers of one model (Raghu et al. 2021, Fig. 1); settings under cka.*")
def cka_within(ctx) -> Result:
    return _run(ctx, within=True)


@dataclass
class CKAAcross(Params):
    diagonal: bool = False  # also write cka_diagonal.csv/.png: layer i vs layer i of two models of one architecture (Fig. 12)


@register("cka_across", "CKA between every layer of `model` and every layer of `reference` (Raghu et al. 2021, Fig. 2)",
          CKAAcross, models=("model", "reference"))
def cka_across(ctx) -> Result:
    return _run(ctx, within=False)
