"""The Python API: the same analyses from a notebook, with or without Hydra configs."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from .errors import VitstudyError
from .pipeline.engine import stream
from .pipeline.layers import resolve
from .pipeline.models import LoadedModel


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved config for command-line style overrides, e.g. ["analysis=cka_within", "model=vit_b16"]."""
    from .compose import compose as _compose

    return _compose(list(overrides))


def run(cfg: DictConfig | Sequence[str], out_dir: str | Path = "outputs/api", progress: bool | str | None = None):
    """Run the configured analysis, write its run directory, and return its Result (tables, figures).

    `progress`: None takes the config's `progress` (auto: a bar on a terminal, else timed lines); True, "log", False.
    """
    from .pipeline.runner import check_config, execute

    overrides = None
    if not isinstance(cfg, DictConfig):
        overrides = list(cfg)
        cfg = compose(overrides)
    check_config(cfg)
    result, written = execute(cfg, out_dir, progress=progress, overrides=overrides)
    if result is None:  # a cached result: its tables are read back (figures stay as files)
        from .analyses import Result

        result = Result(tables={p.stem: pd.read_csv(p) for p in written if p.suffix == ".csv"}, info={"cached": True})
    return result


def _batches(loader: Iterable, copies: int):
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        yield (x,) * copies, torch.zeros(len(x))


def as_module(model, key: str = "model") -> torch.nn.Module:
    """A torch module as given, or one built from a preset or timm name as `vitstudy run` builds it
    (`"vit_cifar10_demo"`, `"resnet18"`: pretrained weights where the preset or timm has them)."""
    if isinstance(model, torch.nn.Module):
        return model
    if isinstance(model, str):
        from .pipeline import models

        return models.load(models.node(model), key).module
    raise VitstudyError(
        f"{key} must be a torch.nn.Module or a model preset / timm name (a str), got {type(model).__name__}"
    )


def cka_matrix(
    model: torch.nn.Module | str,
    loader: Iterable,
    other: torch.nn.Module | str | None = None,
    layers="blocks",
    other_layers=None,
    tokens: str = "flatten",
    estimator: str = "unbiased",
    device: str | torch.device | None = None,
    progress: bool | None = False,
) -> pd.DataFrame:
    """Minibatch CKA between the layers of `model` and those of `other` (or of `model` itself).

    `loader` yields image batches `x` or tuples `(x, ...)` that both models accept; every batch needs at
    least 4 images. `model` and `other` are torch modules, or preset / timm names built as the CLI builds them.
    Returns the tidy table of `cka_within` / `cka_across` (one row per layer pair).
    """
    from .analyses.cka import CKAReducer, check

    model = as_module(model, "model")
    other = None if other is None else as_module(other, "reference")

    batches = iter(loader)  # the first batch gives the input size and is then used, not loaded a second time
    first = next(batches, None)
    if first is None:
        raise VitstudyError("the loader yields no batches")
    x0 = first[0] if isinstance(first, (tuple, list)) else first
    device = torch.device(device) if device else next(model.parameters()).device
    mods = [model] if other is None else [model, other]
    specs = [layers] if other is None else [layers, layers if other_layers is None else other_layers]
    loaded, layer_lists = [], []
    for key, mod, spec in zip(("model", "reference"), mods, specs):
        mod.eval()
        name = type(mod).__name__
        loaded.append(
            LoadedModel(key=key, name=name, label=name, module=mod, transform=None, data_config={}, weights="given")
        )
        layer_lists.append(resolve(mod, spec, tuple(x0.shape[1:])))
    reducer = CKAReducer(loaded, layer_lists, tokens, estimator, "float32", device)
    seen = stream(
        loaded, layer_lists, _batches(itertools.chain([first], batches), len(mods)), reducer, device, "cka", progress
    )
    if seen < 4:
        raise VitstudyError(f"{seen} images are too few for CKA: at least 4 are needed")
    matrix = reducer.result()
    lx, ly = layer_lists[0], layer_lists[-1]
    check(matrix, [l.name for l in lx], [l.name for l in ly])
    reps = reducer.replicates()
    if reps is not None:
        from .analyses.cka import RANGE
        from .metrics import uncertainty

        ci = uncertainty.se_columns("cka", matrix, uncertainty.jackknife_se(reps), len(reps) - 1)
        ci["cka_ci_low"], ci["cka_ci_high"] = uncertainty.clip_interval(
            matrix, ci["cka_ci_low"], ci["cka_ci_high"], *RANGE
        )
    else:
        ci = {k: np.full(matrix.shape, np.nan) for k in ("cka_se", "cka_ci_low", "cka_ci_high")}
    rows = [
        {
            "model_x": loaded[0].name,
            "layer_x": a.name,
            "index_x": i,
            "model_y": loaded[-1].name,
            "layer_y": b.name,
            "index_y": j,
            "cka": float(matrix[i, j]),
            **{k: float(v[i, j]) for k, v in ci.items()},
            "estimator": estimator,
            "tokens": tokens,
            "num_images": seen,
            "uncertainty": "jackknife_batches" if reps is not None else "none",
        }
        for i, a in enumerate(lx)
        for j, b in enumerate(ly)
    ]
    return pd.DataFrame(rows)
