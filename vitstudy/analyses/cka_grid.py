"""CKA between every pair of M models from one pass over the images (`analysis=cka_grid models=[...]`).

Each model runs once per batch and each layer's Ũ is formed once; one product of all models' stacked Ũ
matrices gives every pair's HSIC terms. Comparing 7 models costs 7 forward passes instead of the 42 that
pairwise `cka_across` runs cost. The table has `cka_across`'s columns, one block per pair (model_x <= model_y).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
import pandas as pd

from ..errors import VitstudyError
from ..pipeline import models as model_loading
from ..pipeline.results import Replicates
from ..plots.cka import cka_grid_figure
from ._registry import Params, Result, register
from .cka import compute, table


@dataclass
class CKAGrid(Params):
    models: List[Any] = field(
        default_factory=list
    )  # model presets, timm names or model nodes: analysis.models=[vit_b16,resnet50]
    pretrained: Optional[bool] = None  # true/false: override every listed model's pretrained flag

    def check(self) -> None:
        check_models("cka_grid", self.models)


def check_models(analysis: str, models: list) -> None:
    """`analysis.models` of a grid analysis: at least 2 distinct models."""
    names = [str(m) if not hasattr(m, "get") else m.get("name") for m in models]
    if len(names) < 2 or len(set(names)) != len(names):
        raise VitstudyError(
            f"{analysis} needs a list of at least 2 distinct models, e.g. analysis.models=[vit_b16,resnet50]; "
            f"got {names}"
        )


def grid_models(cfg) -> dict:
    """Every listed model as its own node (the key is its preset or timm name), with the run's layers."""
    nodes = {}
    for entry in cfg.analysis.models:
        node = model_loading.node(entry, cfg.layers, cfg.analysis.pretrained)
        nodes[str(entry) if not hasattr(entry, "get") else node.name] = node
    return nodes


@register(
    "cka_grid",
    "CKA between every pair of M models (`analysis.models=[a,b,c]`) from one pass over the images",
    CKAGrid,
    models=grid_models,
)
def cka_grid(ctx) -> Result:
    cfg = ctx.cfg
    models = [ctx.models[key] for key in ctx.models.nodes]
    layers = [ctx.layers(m) for m in models]
    est, info = compute(ctx, models, layers, stacked=True)
    images = info["repeats"][0]["images"]
    offsets = np.cumsum([0] + [len(ls) for ls in layers])
    frames, blocks, reps = [], {}, []
    for i, (mx, lx) in enumerate(zip(models, layers)):
        for j in range(i, len(models)):
            my, ly = models[j], layers[j]
            sx, sy = slice(offsets[i], offsets[i + 1]), slice(offsets[j], offsets[j + 1])
            part = est.block(sx, sy)
            frames.append(table(part, mx, my, lx, ly, cfg, images))
            blocks[(i, j)] = part.mean
            if part.replicates is not None:
                reps.append(part.replicates.reshape(len(part.replicates), -1))
    fig = cka_grid_figure(
        blocks, [m.label for m in models], f"CKA grid, tokens={cfg.tokens}, {images} images x {cfg.cka.repeats}"
    )
    replicates = {}
    if reps:
        df = pd.concat(frames, ignore_index=True)
        replicates["cka_grid"] = Replicates(
            values=np.concatenate(reps, axis=1),
            strata=est.strata,
            units=est.units,
            estimate=df.cka.to_numpy(),
            column="cka",
            method=est.method,
        )
    return Result(
        tables={"cka_grid": pd.concat(frames, ignore_index=True)},
        figures={"cka_grid": fig},
        info={
            "layers": {m.key: [l.name for l in ls] for m, ls in zip(models, layers)},
            "uncertainty": {"cka_grid": est.info()},
        },
        images=info["repeats"],
        replicates=replicates,
    )
