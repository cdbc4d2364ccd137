"""Analyses by name. Each is a short recipe over the shared pieces (data, models, layers, engine, metrics)
that returns tables and figures; it owns no file I/O, plotting style or model loading of its own."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd


@dataclass
class Result:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure
    info: dict[str, Any] = field(default_factory=dict)  # recorded in run.json (images used, choices made)


@dataclass
class Analysis:
    name: str
    summary: str  # one line for `vitstudy list`
    run: Callable  # run(cfg, ctx) -> Result
    models: tuple[str, ...] = ("model",)  # config keys of the models it needs


REGISTRY: dict[str, Analysis] = {}


def register(name: str, summary: str, models: tuple[str, ...] = ("model",)):
    def wrap(fn):
        REGISTRY[name] = Analysis(name, summary, fn, models)
        return fn

    return wrap


def get(name: str) -> Analysis:
    from ..errors import VitstudyError, closest

    if name not in REGISTRY:
        raise VitstudyError(f"unknown analysis '{name}'; {closest(name, REGISTRY)}")
    return REGISTRY[name]


def params(cfg, defaults: dict[str, Any]) -> dict[str, Any]:
    """An analysis' own parameters (`analysis.*` minus `name`) over its defaults; unknown keys are an error."""
    from omegaconf import OmegaConf

    from ..errors import VitstudyError, closest

    given = OmegaConf.to_container(cfg.analysis, resolve=True)
    given.pop("name", None)
    for key in given:
        if key not in defaults:
            raise VitstudyError(f"unknown parameter analysis.{key} for {cfg.analysis.name}; {closest(key, defaults)}")
    return {**defaults, **given}


def _load_all() -> None:
    """Import every module of this package: each registers its analyses with @register."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


_load_all()
