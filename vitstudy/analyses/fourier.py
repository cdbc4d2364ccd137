"""Fourier analysis and feature-map variance of latents (Park & Kim 2022, Figs 2a, 8, 9, D.1, D.2).

`fourier`: per latent, the relative log amplitude Δ log|F| along the half diagonal of the shifted 2-D
spectrum (log(|FFT2| + 1e-6) per image and channel, averaged over images and channels, minus its
zero-frequency value). `feature_variance`: the variance over spatial positions per image and channel,
averaged. Both are streamed: each latent is reduced inside its forward hook to a float64 sum, so memory
does not grow with the number of images. Latents come from the `latents` layer preset (vitstudy.anatomy.latents).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from ..anatomy import latents
from ..plots import fourier as plots_fourier
from ..pipeline.engine import Reducer, stream
from ..errors import VitstudyError
from ..metrics import fourier as F
from ._registry import Params, Result, choice, register

MODELS = ("model", "reference")


class LatentReducer(Reducer):
    """Float64 sums of a per-(image, channel) statistic for each latent of each model, and their counts."""

    def __init__(self, described: list[list[latents.Latent]], statistic: str, ddof: int = 1):
        self.latents = [{lat.name: lat for lat in ls} for ls in described]
        self.statistic, self.ddof = statistic, ddof
        self.sums: list[dict[str, torch.Tensor]] = [{} for _ in described]
        self.counts: list[dict[str, int]] = [{lat.name: 0 for lat in ls} for ls in described]

    def on_tensor(self, model_index: int, layer, tensor: torch.Tensor) -> None:
        lat = self.latents[model_index][layer.name]
        maps = latents.to_maps(tensor, lat)
        if self.statistic == "fourier":
            value = F.log_amplitude_sum(maps)
        elif maps.shape[-1] * maps.shape[-2] > self.ddof:
            value = F.spatial_variance_sum(maps, self.ddof)
        else:  # a 1x1 map has no spatial variance (unbiased): NaN, as torch.var
            value = torch.tensor(float("nan"), dtype=torch.float64, device=maps.device)
        sums = self.sums[model_index]
        sums[lat.name] = value if lat.name not in sums else sums[lat.name] + value
        self.counts[model_index][lat.name] += maps.shape[0] * maps.shape[1]

    def means(self, model_index: int) -> dict[str, torch.Tensor]:
        return {n: (s / self.counts[model_index][n]).cpu() for n, s in self.sums[model_index].items()}


def measure(ctx, statistic: str, ddof: int = 1):
    """Stream the images through both models; returns (models, described latents, reducer, images used, record)."""
    models = [ctx.models[k] for k in MODELS]
    spec = ctx.params.layers
    layer_lists = [ctx.layers(m) if spec is None else ctx.layers(m, spec) for m in models]
    described = [latents.describe(m.module, ls) for m, ls in zip(models, layer_lists)]
    batching, record = ctx.sample()
    loader = ctx.loader(models, batching)
    reducer = LatentReducer(described, statistic, ddof)
    stream(models, layer_lists, loader, reducer, ctx.device, statistic, ctx.progress)
    return models, described, reducer, batching.num_images, record


@dataclass
class Fourier(Params):
    layers: Any = "latents"  # layer spec for both models (latents = Park & Kim's residual stream after every sublayer); null = the global `layers` / `model.layers`

    def check(self) -> None:
        if self.layers is not None and not isinstance(self.layers, (str, list)):
            raise VitstudyError(f"analysis.layers must be a layer spec (latents, blocks, all, a regex or a list) or null, got {self.layers!r}")


@dataclass
class FeatureVariance(Fourier):
    ddof: int = 1  # 1 = unbiased variance over positions (torch.var, as the official notebook); 0 = population variance

    def check(self) -> None:
        super().check()
        choice("ddof", self.ddof, (0, 1))


def _title(m) -> str:
    return f"{m.label} ({m.weights})"


@register("fourier", "Relative log amplitude of Fourier-transformed latents (Park & Kim 2022, Figs 2a, 8)", Fourier, models=MODELS)
def fourier(ctx) -> Result:
    models, described, reducer, images, record = measure(ctx, "fourier")
    rows, curves, profiles = [], [], []
    for i, (m, lats) in enumerate(zip(models, described)):
        means = reducer.means(i)
        panel_curves, high = [], []
        for lat in lats:
            mean = means[lat.name]
            delta = F.relative(mean)
            k = len(delta)
            freq, true = F.paper_frequency(k), F.true_frequency(k, lat.grid[0])
            for j in range(k):
                rows.append({"model": m.key, "name": m.name, "weights": m.weights, "latent": lat.name, "kind": lat.kind,
                             "index": lat.index, "depth": lat.depth, "k": j, "frequency": float(freq[j]),
                             "frequency_axis": float(true[j]), "log_amplitude": float(mean[j]),
                             "delta_log_amplitude": float(delta[j]), "grid_h": lat.grid[0], "grid_w": lat.grid[1],
                             "channels": lat.channels, "num_images": images, "dataset": ctx.cfg.dataset.name})
            panel_curves.append((lat.depth, freq.numpy(), delta.numpy()))
            high.append(float(delta[-1]))
        curves.append({"title": _title(m), "curves": panel_curves})
        profiles.append({"title": _title(m), "depths": [l.depth for l in lats], "values": high,
                         "kinds": [l.kind for l in lats], "family": latents.family(m.module)})
    fig2a = plots_fourier.frequency_curves(curves, f"Relative log amplitude of Fourier-transformed latents, {images} images")
    fig8 = plots_fourier.depth_profile(profiles, r"$\Delta$ Log amplitude (high frequency)",
                                       f"Highest-frequency Δ log amplitude (the last half-diagonal entry), {images} images")
    return Result({"fourier": pd.DataFrame(rows)}, {"fourier": fig2a, "fourier_high_frequency": fig8},
                  {"layers": {m.key: [l.name for l in ls] for m, ls in zip(models, described)},
                   "fourier": "mean over images and channels of log(|fft2|+1e-6), fftshifted, half diagonal from DC, minus DC; "
                              "frequency = linspace(0, 1, K) pi as the paper's axis, frequency_axis = 2k/h pi per axis"}, [record])


@register("feature_variance", "Feature-map variance over spatial positions per latent (Park & Kim 2022, Fig. 9)", FeatureVariance,
          models=MODELS)
def feature_variance(ctx) -> Result:
    models, described, reducer, images, record = measure(ctx, "variance", ctx.params.ddof)
    rows, profiles = [], []
    for i, (m, lats) in enumerate(zip(models, described)):
        means = reducer.means(i)
        values = [float(means[lat.name]) for lat in lats]
        for lat, v in zip(lats, values):
            rows.append({"model": m.key, "name": m.name, "weights": m.weights, "latent": lat.name, "kind": lat.kind,
                         "index": lat.index, "depth": lat.depth, "variance": v, "ddof": ctx.params.ddof,
                         "grid_h": lat.grid[0], "grid_w": lat.grid[1], "channels": lat.channels,
                         "num_images": images, "dataset": ctx.cfg.dataset.name})
        profiles.append({"title": _title(m), "depths": [l.depth for l in lats], "values": values,
                         "kinds": [l.kind for l in lats], "family": latents.family(m.module)})
    fig = plots_fourier.depth_profile(profiles, "Feature map variance",
                                      f"Variance over spatial positions, mean over images and channels, {images} images",
                                      ylim_bottom=0.0)
    return Result({"feature_variance": pd.DataFrame(rows)}, {"feature_variance": fig},
                  {"layers": {m.key: [l.name for l in ls] for m, ls in zip(models, described)}}, [record])
