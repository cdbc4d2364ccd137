"""Run one analysis from a resolved config: load models and images, run, write the run directory."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from .. import analyses, runtime
from ..errors import VitstudyError
from . import data, models, results
from .cache import Cache, run_key
from .features import FeatureCache
from .layers import Layer, resolve
from .progress import mode as progress_mode


class Models(dict):
    """The models an analysis declared, each built on first use through `models.load` (printed, on the device).

    `release(key)` frees a model's weights and keeps its record for run.json (a comparison of many large models
    holds one at a time).
    """

    def __init__(self, nodes: dict, device: torch.device, given: dict[str, bool], stage):
        super().__init__()
        self.nodes, self.device, self.given, self.stage = nodes, device, given, stage
        self.records: dict[str, dict] = {}

    def __missing__(self, key: str) -> models.LoadedModel:
        if key not in self.nodes:
            raise KeyError(f"the analysis did not declare a model '{key}' (declared: {', '.join(self.nodes)})")
        with self.stage("load_models"):
            m = models.load(self.nodes[key], key, self.given.get(key, True))
            m.module.to(self.device)
        warn = "WARNING" in m.transform_line  # preprocessing guessed for a checkpoint: a warning, on stderr
        print(f"vitstudy: {m.transform_line}", file=sys.stderr if warn else sys.stdout, flush=True)
        self[key] = m
        self.records[key] = {
            "name": m.name,
            "weights": m.weights,
            "data_config": m.data_config,
            "data_sources": m.data_sources,
            "transform": m.transform_line,
        }
        return m

    def release(self, key: str) -> None:
        if key in self:
            self.note_forward(key)
        self.pop(key, None)

    def note_forward(self, key: str) -> None:
        """Record in run.json where the model's forward passes ended (the engine stops after the last tapped layer)."""
        after = self[key].stopped_after
        if after != "":
            self.records[key]["forward"] = f"stopped after {after}" if after else "full (to the output)"


@dataclass(kw_only=True)
class Context:
    """What an analysis gets: the config, its parameters, its models (built on first use), the data set, the device."""

    cfg: Any
    params: Any  # the analysis' Params instance (value-checked)
    models: Models
    dataset: Any
    device: torch.device
    progress: bool | str | None = None  # the `progress` mode (pipeline.progress): auto, bar, log or off
    timings: dict[str, float] = field(default_factory=dict)
    cache: Cache | None = None  # resumable checkpoints (None: not checkpointed)
    features: FeatureCache | None = None  # captured activations shared between runs (cache.features=true)
    _layers: dict[str, list[Layer]] = field(default_factory=dict)

    def layers(self, m: models.LoadedModel, spec=None) -> list[Layer]:
        """The checked layer list of a model, from its config node (`<key>.layers`) unless `spec` is given."""
        spec = self.models.nodes[m.key].layers if spec is None else spec
        key = f"{m.key}:{spec}"
        if key not in self._layers:
            self._layers[key] = resolve(m.module, spec, m.data_config["input_size"])
        return self._layers[key]

    def sample(
        self, num_images: int | None = None, batch_size: int | None = None, tail: str = "fold", repeat: int = 0
    ) -> tuple[data.Batching, dict]:
        """Images drawn afresh for `repeat` (seed + repeat), in batches of at least 4, and their record for
        images.csv (return the records in `Result.images`)."""
        cfg = self.cfg
        n = cfg.dataset.num_images if num_images is None else num_images
        indices = data.sample_indices(len(self.dataset), n, cfg.seed + repeat)
        batching = data.make_batches(indices, batch_size or cfg.dataset.batch_size, tail)
        return batching, {
            "repeat": repeat,
            "seed": cfg.seed + repeat,
            "images": batching.num_images,
            "batches": len(batching.batches),
            "tail": batching.tail,
            "dropped": batching.dropped,
            "indices": indices,
        }

    def loader(self, models, batching: data.Batching):
        """A loader over `batching` that gives every model its own eval transform of the same images."""
        return data.loader(self.dataset, batching, [m.transform for m in models], self.cfg.dataset.num_workers)

    @contextmanager
    def stage(self, name: str):
        t = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t, 3)


def names_given(overrides) -> dict[str, bool]:
    """Whether the user chose each model's architecture (`model=`, `model.name=`, `experiment=` ...).

    Unknown overrides (a config built in Python): `model` and `reference` count as not given, so the name is
    compared with the default preset's; every other declared model (grid, compare) always counts as given.
    """
    if overrides is None:
        return {"model": None, "reference": None}
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    return {
        "model": bool(keys & {"model", "model@model", "model.name", "experiment"}),
        "reference": bool(keys & {"reference", "model@reference", "reference.name", "experiment"}),
    }


def prepare(cfg, progress=None, cache: Cache | None = None, overrides=None) -> Context:
    """The Context of the config's analysis: its checked parameters, its models (the ones the analysis declares
    eagerly, in declared order, unless it loads them itself on first use) and the data set."""
    analysis = analyses.get(cfg.analysis.name)
    device = runtime.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # random-init weights are drawn in declared order
    timings: dict[str, float] = {}
    ctx = Context(
        cfg=cfg,
        params=analyses.params_of(cfg),
        models=None,
        dataset=None,
        device=device,
        progress=progress,
        timings=timings,
        cache=cache,
    )
    ctx.models = Models(analysis.models(cfg), device, names_given(overrides), ctx.stage)
    if cfg.cache.features and cfg.cache.dir:
        ctx.features = FeatureCache(Path(cfg.cache.dir) / "features", cfg.cache.features_max_gb, cfg.precision, device)
    if not analysis.lazy_models:
        for key in ctx.models.nodes:
            ctx.models[key]
    with ctx.stage("load_dataset"):
        ctx.dataset = data.build_dataset(cfg.dataset)
    return ctx


def images_table(images: list[dict]) -> pd.DataFrame:
    rows = []
    for rep in images:
        for order, index in enumerate(rep["indices"]):
            rows.append({"repeat": rep["repeat"], "order": order, "dataset_index": index})
    return pd.DataFrame(rows)


def execute(cfg, out_dir: str | Path, progress=None, overrides=None) -> tuple[analyses.Result | None, list[Path]]:
    """Run `cfg.analysis.name` and write its CSVs, figures, images.csv and run.json into `out_dir`.

    With `cache.dir` set, a result that exists for the same config and weights is copied instead of
    recomputed (result None), unless `force=true`; a killed run resumes from its last checkpoint.
    """
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    analysis = analyses.get(cfg.analysis.name)
    out_dir = Path(out_dir)
    cache = (
        Cache(cfg.cache.dir, run_key(cfg, analysis.models(cfg)), cfg.cache.checkpoint_every) if cfg.cache.dir else None
    )
    if cache is not None:
        if cfg.force:
            cache.clear_checkpoint()
        elif cfg.cache.results:
            device = runtime.resolve_device(cfg.device)
            here = cache.finished_in(out_dir)  # a finished job rerun in place (a sweep rerun into the same dir)
            if here is not None:
                _say_other_device(out_dir, device)
                return None, here
            source = cache.lookup()
            if source is not None and source.resolve() != out_dir.resolve():
                written = cache.copy_result(source, out_dir, device)
                _say_other_device(out_dir, device)
                return None, written
    results.clear_finished(out_dir, [f"{analysis.name}.csv", "failed.json"])
    progress = (
        cfg.get("progress", "auto") if progress is None else progress
    )  # the CLI's progress=...; the API's argument
    ctx = prepare(cfg, progress, cache, overrides)
    with ctx.stage("analysis"), runtime.forward_precision(cfg.precision, ctx.device):
        result = analysis.run(ctx)
    for key in list(ctx.models):
        ctx.models.note_forward(key)
    if result.images:
        result.tables["images"] = images_table(result.images)
    record = {
        "analysis": analysis.name,
        **runtime.record(
            started,
            time.perf_counter() - t0,
            ctx.device,
            overrides,
            OmegaConf.to_container(cfg, resolve=True),
            timings_s=ctx.timings,
            models=ctx.models.records,
            images=[{k: v for k, v in rep.items() if k != "indices"} for rep in result.images],
            dataset=data.describe(ctx.dataset),
            seed=cfg.seed,
            cache_key=cache.key if cache is not None else None,
            **({"feature_cache": ctx.features.describe()} if ctx.features is not None else {}),
            **result.info,
        ),
    }
    written = results.write_result(out_dir, result, record)
    if ctx.features is not None:
        ctx.features.prune()
    if cache is not None:
        cache.store(out_dir)
    return result, written


def _say_other_device(run_dir: Path, device: torch.device) -> None:
    """Print a line when the result served from `run_dir` was computed on another device than this run's."""
    import json

    from .cache import other_device

    note = other_device(json.loads((Path(run_dir) / results.RECORD).read_text()), device)
    if note:
        print(f"vitstudy: note: {note}", flush=True)


def check_config(cfg) -> None:
    """Value checks the schema's types cannot express (the analysis' own ones too), before anything loads."""
    analyses.params_of(cfg)
    runtime.resolve_device(cfg.device)  # one line naming the valid devices, before any model loads
    if cfg.precision not in runtime.PRECISIONS:
        raise VitstudyError(f"precision must be one of {', '.join(runtime.PRECISIONS)}; got {cfg.precision!r}")
    if cfg.cka.estimator not in ("unbiased", "biased"):
        raise VitstudyError(f"cka.estimator must be 'unbiased' or 'biased', got {cfg.cka.estimator!r}")
    if cfg.cka.repeats < 1:
        raise VitstudyError(f"cka.repeats must be at least 1, got {cfg.cka.repeats}")
    if cfg.cka.null < 0:
        raise VitstudyError(f"cka.null must be 0 (off) or a number of permutations, got {cfg.cka.null}")
    if cfg.cka.gram_dtype not in ("float32", "float64"):
        raise VitstudyError(f"cka.gram_dtype must be 'float32' or 'float64', got {cfg.cka.gram_dtype!r}")
    progress_mode(cfg.get("progress", "auto"))
    if cfg.tokens not in ("flatten", "cls", "mean"):
        raise VitstudyError(f"tokens must be one of flatten, cls, mean; got {cfg.tokens!r}")
