"""CKA between every pair of M models from one pass over the images (`analysis=cka_grid models=[...]`).

Each model runs once per batch and each layer's Ũ is formed once; one product of all models' stacked Ũ
matrices gives every pair's HSIC terms. Comparing 7 models costs 7 forward passes instead of the 42 that
pairwise `cka_across` runs cost. The table has `cka_across`'s columns, one block per pair (model_x <= model_y).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..pipeline import models as model_loading
from ..errors import VitstudyError
from ..plots.grid import cka_grid_figure
from . import Result, params, register
from .cka import compute, table

DEFAULTS = {"pretrained": None}  # true/false overrides every listed model's `pretrained`


@register("cka_grid", "CKA between every pair of M models (`models=[a,b,c]`) from one pass over the images", models=())
def cka_grid(ctx) -> Result:
    cfg = ctx.cfg
    p = params(cfg, DEFAULTS)
    names = list(cfg.models)
    if len(names) < 2 or len(set(names)) != len(names):
        raise VitstudyError(f"cka_grid needs a list of at least 2 distinct models, e.g. models=[vit_b16,resnet50]; got {names}")
    with ctx.stage("load_models"):
        for name in names:
            m = model_loading.load(model_loading.node(name, cfg.layers, p["pretrained"]), name)
            m.module.to(ctx.device)
            ctx.models[name] = m
    models = [ctx.models[n] for n in names]
    layers = [ctx.layers(m, cfg.layers) for m in models]
    mean, std, info = compute(ctx, models, layers, stacked=True)
    images = info["repeats"][0]["images"]
    offsets = np.cumsum([0] + [len(ls) for ls in layers])
    frames, blocks = [], {}
    for i, (mx, lx) in enumerate(zip(models, layers)):
        for j in range(i, len(models)):
            my, ly = models[j], layers[j]
            sx, sy = slice(offsets[i], offsets[i + 1]), slice(offsets[j], offsets[j + 1])
            frames.append(table(mean[sx, sy], std[sx, sy], mx, my, lx, ly, cfg, images))
            blocks[(i, j)] = mean[sx, sy]
    fig = cka_grid_figure(blocks, [m.label for m in models], f"CKA grid, tokens={cfg.tokens}, {images} images x {cfg.cka.repeats}")
    return Result({"cka_grid": pd.concat(frames, ignore_index=True)}, {"cka_grid": fig},
                  {"layers": {m.key: [l.name for l in ls] for m, ls in zip(models, layers)}})
