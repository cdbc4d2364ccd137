"""Run one analysis from a resolved config: load models and images, run, write the run directory."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from .. import analyses
from . import data, models, results
from .cache import Cache, run_key
from .features import FeatureCache
from .engine import resolve_device
from ..errors import VitstudyError
from .layers import Layer, resolve


@dataclass
class Context:
    """What an analysis gets: the config, loaded models, the data set, the device, a place to record."""

    cfg: Any
    models: dict[str, models.LoadedModel]
    dataset: Any
    device: torch.device
    progress: bool | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cache: Cache | None = None  # resumable checkpoints (None: not checkpointed)
    features: FeatureCache | None = None  # captured activations shared between runs (cache.features=true)
    images: list[dict] = field(default_factory=list)
    _layers: dict[str, list[Layer]] = field(default_factory=dict)

    def layers(self, m: models.LoadedModel, spec=None) -> list[Layer]:
        """The checked layer list of a model, from its config (`<key>.layers`) unless `spec` is given."""
        spec = self.cfg[m.key].layers if spec is None else spec
        key = f"{m.key}:{spec}"
        if key not in self._layers:
            self._layers[key] = resolve(m.module, spec, m.data_config["input_size"])
        return self._layers[key]

    def sample(self, num_images: int | None = None, batch_size: int | None = None, tail: str = "fold",
               repeat: int = 0) -> tuple[data.Batching, dict]:
        """Images drawn afresh for `repeat` (seed + repeat), in batches of at least 4, and their record for
        images.csv (hand the records to `record_images`)."""
        cfg = self.cfg
        n = cfg.dataset.num_images if num_images is None else num_images
        indices = data.sample_indices(len(self.dataset), n, cfg.seed + repeat)
        batching = data.make_batches(indices, batch_size or cfg.dataset.batch_size, tail)
        return batching, {"repeat": repeat, "seed": cfg.seed + repeat, "images": batching.num_images,
                          "batches": len(batching.batches), "tail": batching.tail, "dropped": batching.dropped,
                          "indices": indices}

    def loader(self, models, batching: data.Batching):
        """A loader over `batching` that gives every model its own eval transform of the same images."""
        return data.loader(self.dataset, batching, [m.transform for m in models], self.cfg.dataset.num_workers)

    def record_images(self, used: list[dict]) -> None:
        self.images = used

    @contextmanager
    def stage(self, name: str):
        t = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t, 3)


def names_given(overrides) -> dict[str, bool] | None:
    """Whether the user chose each model's architecture (`model=`, `model.name=`, `experiment=` ...); None: unknown."""
    if overrides is None:
        return None
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    return {"model": bool(keys & {"model", "model@model", "model.name", "experiment"}),
            "reference": bool(keys & {"reference", "model@reference", "reference.name", "experiment"})}


def prepare(cfg, progress=None, cache: Cache | None = None, overrides=None) -> Context:
    """Load what the config's analysis needs: its models (on the device, eval mode) and the data set.

    Each model's preprocessing is printed in one line (and recorded in run.json).
    """
    analysis = analyses.get(cfg.analysis.name)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    ctx = Context(cfg, {}, None, device, progress, cache=cache)
    if cfg.cache.features and cfg.cache.dir:
        ctx.features = FeatureCache(Path(cfg.cache.dir) / "features", cfg.cache.features_max_gb)
    with ctx.stage("load_models"):
        given = names_given(overrides) or {}
        for key in analysis.models:
            ctx.models[key] = models.load(cfg[key], key, given.get(key))
            ctx.models[key].module.to(device)
            print(f"vitstudy: {ctx.models[key].transform_line}", flush=True)
    with ctx.stage("load_dataset"):
        ctx.dataset = data.build_dataset(cfg.dataset)
    return ctx


def images_table(ctx: Context) -> pd.DataFrame:
    rows = []
    for rep in ctx.images:
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
    cache = Cache(cfg.cache.dir, run_key(cfg, analysis.models), cfg.cache.checkpoint_every) if cfg.cache.dir else None
    if cache is not None:
        if cfg.force:
            cache.clear_checkpoint()
        elif cfg.cache.results:
            here = cache.finished_in(out_dir)  # a finished job rerun in place (a sweep rerun into the same dir)
            if here is not None:
                return None, here
            source = cache.lookup()
            if source is not None and source.resolve() != out_dir.resolve():
                return None, cache.copy_result(source, out_dir)
    results.clear_finished(out_dir, [f"{analysis.name}.csv", "failed.json"])
    ctx = prepare(cfg, progress, cache, overrides)
    with ctx.stage("analysis"):
        result = analysis.run(ctx)
    if ctx.images:
        result.tables["images"] = images_table(ctx)
    record = {
        "analysis": analysis.name,
        "status": "complete",
        "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "wall_time_s": None,
        "timings_s": ctx.timings,
        "overrides": list(overrides or []),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "models": {k: {"name": m.name, "weights": m.weights, "data_config": m.data_config, "data_sources": m.data_sources,
                       "transform": m.transform_line} for k, m in ctx.models.items()},
        "images": [{k: v for k, v in rep.items() if k != "indices"} for rep in ctx.images],
        "dataset": data.describe(ctx.dataset),
        "seed": cfg.seed,
        "cache_key": cache.key if cache is not None else None,
        "git_revision": results.git_revision(),
        "versions": results.versions(),
        **results.device_info(ctx.device),
        **result.info,
    }
    record["wall_time_s"] = round(time.perf_counter() - t0, 3)  # up to writing the outputs
    written = results.write_result(out_dir, result, record)
    if ctx.features is not None:
        ctx.features.prune()
    if cache is not None:
        cache.store(out_dir)
    return result, written


def check_config(cfg) -> None:
    """Value checks the schema's types cannot express."""
    if cfg.cka.estimator not in ("unbiased", "biased"):
        raise VitstudyError(f"cka.estimator must be 'unbiased' or 'biased', got {cfg.cka.estimator!r}")
    if cfg.cka.repeats < 1:
        raise VitstudyError(f"cka.repeats must be at least 1, got {cfg.cka.repeats}")
    if cfg.cka.gram_dtype not in ("float32", "float64"):
        raise VitstudyError(f"cka.gram_dtype must be 'float32' or 'float64', got {cfg.cka.gram_dtype!r}")
    if cfg.tokens not in ("flatten", "cls", "mean"):
        raise VitstudyError(f"tokens must be one of flatten, cls, mean; got {cfg.tokens!r}")
