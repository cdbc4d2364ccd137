"""The analysis registry: each analysis registers its run function, its parameter schema and the models it needs.

An analysis' parameters are one dataclass (`Params` subclass) stored in Hydra's ConfigStore as the option
`analysis=<name>`: Hydra rejects unknown keys and wrong types when the config is composed, before any model
loads, and `Params.check` adds the value checks types cannot express. The runner loads every model an analysis
declares (`models(cfg)`), hands it a Context, and writes the Result it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable

import pandas as pd
from omegaconf import OmegaConf

from ..errors import VitstudyError, closest
from ..pipeline.results import Replicates


@dataclass(kw_only=True)
class Result:
    """What an analysis returns; the runner writes it (`pipeline.results.write_result`)."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure
    info: dict[str, Any] = field(default_factory=dict)  # recorded in run.json (choices made, layers used)
    images: list[dict] = field(default_factory=list)  # the image samples used (Context.sample records) -> images.csv
    replicates: dict[str, Replicates] = field(
        default_factory=dict
    )  # table -> <table>.replicates.npz (vitstudy compare)


@dataclass
class Params:
    """An analysis' parameters (`analysis.*`); subclasses add fields (with a comment each) and `check`."""

    name: str = ""

    def check(self) -> None:
        """Value checks the field types cannot express; raise VitstudyError with one line."""


def choice(key: str, value, valid: Iterable) -> None:
    """`analysis.<key>` must be one of `valid`."""
    valid = list(valid)
    if value not in valid:
        raise VitstudyError(f"analysis.{key} must be one of {', '.join(map(str, valid))}; got {value!r}")


def at_least(key: str, value, low, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < low:
        raise VitstudyError(f"analysis.{key} must be at least {low}, got {value!r}")


@dataclass
class Analysis:
    name: str
    summary: str  # one line for `vitstudy list`
    run: Callable  # run(ctx) -> Result
    params: type  # the Params subclass
    models: Callable  # models(cfg) -> {key: model config node}: every model the runner loads for it
    lazy_models: bool = False  # True: each model is built when the analysis first uses it (one at a time)


REGISTRY: dict[str, Analysis] = {}


def _fixed(keys: tuple[str, ...]) -> Callable:
    return lambda cfg: {k: cfg[k] for k in keys}


def register(
    name: str,
    summary: str,
    params: type | None = None,
    models: tuple[str, ...] | Callable = ("model",),
    lazy_models: bool = False,
):
    """Register `fn(ctx) -> Result` as analysis `name`, with its Params schema and the models it needs
    (config keys such as ("model", "reference"), or a function of the config giving {key: model node})."""
    from hydra.core.config_store import ConfigStore

    schema = params or Params
    if not any(f.name == "name" for f in fields(schema)):
        raise TypeError(f"{schema.__name__} needs a `name` field")

    def wrap(fn):
        REGISTRY[name] = Analysis(
            name, summary, fn, schema, models if callable(models) else _fixed(tuple(models)), lazy_models
        )
        ConfigStore.instance().store(group="analysis", name=name, node=schema(name=name))
        return fn

    return wrap


def get(name: str) -> Analysis:
    if name not in REGISTRY:
        raise VitstudyError(f"unknown analysis '{name}'; {closest(name, REGISTRY)}")
    return REGISTRY[name]


def params_of(cfg) -> Params:
    """The analysis' parameters of a config as its Params instance, value-checked (before any model is built)."""
    analysis = get(cfg.analysis.name)
    given = OmegaConf.to_container(cfg.analysis, resolve=True)
    valid = [f.name for f in fields(analysis.params)]
    for key in given:
        if key not in valid:
            raise VitstudyError(f"unknown parameter analysis.{key} for {analysis.name}; {closest(key, valid)}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(analysis.params(name=analysis.name)), given)
    except Exception as err:
        raise VitstudyError(f"bad analysis parameter for {analysis.name}: {str(err).splitlines()[0]}") from None
    params = OmegaConf.to_object(node)
    params.check()
    return params
