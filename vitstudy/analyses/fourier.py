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

import numpy as np
import pandas as pd
import torch

from ..anatomy import latents
from ..errors import VitstudyError
from ..metrics import fourier as F
from ..metrics import uncertainty
from ..pipeline.engine import Reducer, stream
from ..plots import fourier as plots_fourier
from ._registry import Params, Result, choice, register

MODELS = ("model", "reference")


class LatentReducer(Reducer):
    """Float64 sums of a per-(image, channel) statistic for each latent of each model, and their counts; for the
    standard errors over images also Σ over images of the squared per-image mean (over channels) and, for the
    Fourier curves, of the squared per-image Δ (each frequency minus the image's zero frequency)."""

    def __init__(self, described: list[list[latents.Latent]], statistic: str, ddof: int = 1):
        self.latents = [{lat.name: lat for lat in ls} for ls in described]
        self.statistic, self.ddof = statistic, ddof
        self.sums: list[dict[str, torch.Tensor]] = [{} for _ in described]
        self.counts: list[dict[str, int]] = [{lat.name: 0 for lat in ls} for ls in described]
        self.squares: list[dict[str, torch.Tensor]] = [{} for _ in described]
        self.delta_squares: list[dict[str, torch.Tensor]] = [{} for _ in described]
        self.images: list[dict[str, int]] = [{lat.name: 0 for lat in ls} for ls in described]

    def on_tensor(self, model_index: int, layer, tensor: torch.Tensor) -> None:
        lat = self.latents[model_index][layer.name]
        maps = latents.to_maps(tensor, lat)
        delta2 = None
        if self.statistic == "fourier":
            per = F.log_amplitude(maps)
            value = per.sum(dim=(0, 1))
            image = per.mean(dim=1)  # (B, K)
            delta2 = ((image - image[:, :1]) ** 2).sum(0)
        elif maps.shape[-1] * maps.shape[-2] > self.ddof:
            per = F.spatial_variance(maps, self.ddof)
            value = per.sum()
            image = per.mean(dim=1)  # (B,)
        else:  # a 1x1 map has no spatial variance (unbiased): NaN, as torch.var
            value = torch.tensor(float("nan"), dtype=torch.float64, device=maps.device)
            image = torch.full((maps.shape[0],), float("nan"), dtype=torch.float64, device=maps.device)
        square = (image * image).sum(0)
        name = lat.name
        sums, squares, deltas = self.sums[model_index], self.squares[model_index], self.delta_squares[model_index]
        sums[name] = value if name not in sums else sums[name] + value
        squares[name] = square if name not in squares else squares[name] + square
        if delta2 is not None:
            deltas[name] = delta2 if name not in deltas else deltas[name] + delta2
        self.counts[model_index][name] += maps.shape[0] * maps.shape[1]
        self.images[model_index][name] += maps.shape[0]

    def means(self, model_index: int) -> dict[str, torch.Tensor]:
        return {n: (s / self.counts[model_index][n]).cpu() for n, s in self.sums[model_index].items()}

    def standard_errors(self, model_index: int, name: str) -> tuple[np.ndarray, np.ndarray | None, int]:
        """SE over images of the latent's mean (and of its Δ log amplitude), and the number of images."""
        n = self.images[model_index][name]
        mean = self.means(model_index)[name].numpy()
        _, se = uncertainty.mean_se(mean * n, self.squares[model_index][name].cpu().numpy(), n)
        delta_se = None
        if name in self.delta_squares[model_index]:
            delta = mean - mean[0]
            _, delta_se = uncertainty.mean_se(delta * n, self.delta_squares[model_index][name].cpu().numpy(), n)
        return se, delta_se, n


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
            raise VitstudyError(
                f"analysis.layers must be a layer spec (latents, blocks, all, a regex or a list) or null, got {self.layers!r}"
            )


@dataclass
class FeatureVariance(Fourier):
    ddof: int = 1  # 1 = unbiased variance over positions (torch.var, as the official notebook); 0 = population variance

    def check(self) -> None:
        super().check()
        choice("ddof", self.ddof, (0, 1))


def _title(m) -> str:
    return f"{m.label} ({m.weights})"


@register(
    "fourier",
    "Relative log amplitude of Fourier-transformed latents (Park & Kim 2022, Figs 2a, 8)",
    Fourier,
    models=MODELS,
)
def fourier(ctx) -> Result:
    models, described, reducer, images, record = measure(ctx, "fourier")
    rows, curves, profiles = [], [], []
    for i, (m, lats) in enumerate(zip(models, described)):
        means = reducer.means(i)
        panel_curves, high = [], []
        lows, highs = [], []
        for lat in lats:
            mean = means[lat.name]
            delta = F.relative(mean)
            k = len(delta)
            freq, true = F.paper_frequency(k), F.true_frequency(k, lat.grid[0])
            se, delta_se, n = reducer.standard_errors(i, lat.name)
            ci = {
                **uncertainty.se_columns("log_amplitude", mean.numpy(), se, n - 1),
                **uncertainty.se_columns("delta_log_amplitude", delta.numpy(), delta_se, n - 1),
            }
            for j in range(k):
                rows.append(
                    {
                        "model": m.key,
                        "name": m.name,
                        "weights": m.weights,
                        "latent": lat.name,
                        "kind": lat.kind,
                        "index": lat.index,
                        "depth": lat.depth,
                        "k": j,
                        "frequency": float(freq[j]),
                        "frequency_axis": float(true[j]),
                        "log_amplitude": float(mean[j]),
                        "delta_log_amplitude": float(delta[j]),
                        **{c: float(v[j]) for c, v in ci.items()},
                        "grid_h": lat.grid[0],
                        "grid_w": lat.grid[1],
                        "channels": lat.channels,
                        "num_images": images,
                        "dataset": ctx.cfg.dataset.name,
                        "uncertainty": "se_images",
                    }
                )
            panel_curves.append(
                (
                    lat.depth,
                    freq.numpy(),
                    delta.numpy(),
                    ci["delta_log_amplitude_ci_low"],
                    ci["delta_log_amplitude_ci_high"],
                )
            )
            high.append(float(delta[-1]))
            lows.append(float(ci["delta_log_amplitude_ci_low"][-1]))
            highs.append(float(ci["delta_log_amplitude_ci_high"][-1]))
        curves.append({"title": _title(m), "curves": panel_curves})
        profiles.append(
            {
                "title": _title(m),
                "depths": [l.depth for l in lats],
                "values": high,
                "kinds": [l.kind for l in lats],
                "family": latents.family(m.module),
                "low": lows,
                "high": highs,
            }
        )
    fig2a = plots_fourier.frequency_curves(
        curves, f"Relative log amplitude of Fourier-transformed latents, {images} images"
    )
    fig8 = plots_fourier.depth_profile(
        profiles,
        r"$\Delta$ Log amplitude (high frequency)",
        f"Highest-frequency Δ log amplitude (the last half-diagonal entry), {images} images",
    )
    return Result(
        tables={"fourier": pd.DataFrame(rows)},
        figures={"fourier": fig2a, "fourier_high_frequency": fig8},
        info={
            "layers": {m.key: [l.name for l in ls] for m, ls in zip(models, described)},
            "fourier": "mean over images and channels of log(|fft2|+1e-6), fftshifted, half diagonal from DC, "
            "minus DC; frequency = linspace(0, 1, K) pi as the paper's axis, frequency_axis = 2k/h pi "
            "per axis",
            "uncertainty": {"fourier": uncertainty.METHODS["se_images"] + " (per-image mean over channels)"},
        },
        images=[record],
    )


@register(
    "feature_variance",
    "Feature-map variance over spatial positions per latent (Park & Kim 2022, Fig. 9)",
    FeatureVariance,
    models=MODELS,
)
def feature_variance(ctx) -> Result:
    models, described, reducer, images, record = measure(ctx, "variance", ctx.params.ddof)
    rows, profiles = [], []
    for i, (m, lats) in enumerate(zip(models, described)):
        means = reducer.means(i)
        values = [float(means[lat.name]) for lat in lats]
        cis = []
        for lat, v in zip(lats, values):
            se, _, n = reducer.standard_errors(i, lat.name)
            ci = {c: float(x) for c, x in uncertainty.se_columns("variance", v, se, n - 1).items()}
            cis.append(ci)
            rows.append(
                {
                    "model": m.key,
                    "name": m.name,
                    "weights": m.weights,
                    "latent": lat.name,
                    "kind": lat.kind,
                    "index": lat.index,
                    "depth": lat.depth,
                    "variance": v,
                    **ci,
                    "ddof": ctx.params.ddof,
                    "grid_h": lat.grid[0],
                    "grid_w": lat.grid[1],
                    "channels": lat.channels,
                    "num_images": images,
                    "dataset": ctx.cfg.dataset.name,
                    "uncertainty": "se_images",
                }
            )
        profiles.append(
            {
                "title": _title(m),
                "depths": [l.depth for l in lats],
                "values": values,
                "kinds": [l.kind for l in lats],
                "family": latents.family(m.module),
                "low": [c["variance_ci_low"] for c in cis],
                "high": [c["variance_ci_high"] for c in cis],
            }
        )
    fig = plots_fourier.depth_profile(
        profiles,
        "Feature map variance",
        f"Variance over spatial positions, mean over images and channels, {images} images",
        ylim_bottom=0.0,
    )
    return Result(
        tables={"feature_variance": pd.DataFrame(rows)},
        figures={"feature_variance": fig},
        info={
            "layers": {m.key: [l.name for l in ls] for m, ls in zip(models, described)},
            "uncertainty": {"feature_variance": uncertainty.METHODS["se_images"] + " (per-image mean over channels)"},
        },
        images=[record],
    )
