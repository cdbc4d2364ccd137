"""Robustness to band-limited noise (Park & Kim 2022, Fig. 2b) and lesions of single sublayers (the lesion
figure and Fig. D.4).

`frequency_noise`: δ = ε·sign(N(0, 1)) per pixel and channel, band-passed by a square annulus of half-width
`window` around `band` (both in units of π) in the shifted Fourier domain (`ops/adversarial.FreqAttack`),
added to the image; reported as the change of top-1 accuracy when the data set's labels match the model's
head, else of the agreement with the model's own clean predictions (the `metric` column says which).
`lesion`: one sublayer at a time has its residual branch output set to zero, so the block passes only its
residual path (ViT/Swin/PiT attention or MLP; a conv unit's branch, or its 3x3 conv); same metrics.
Each batch needs several forward passes with altered inputs or modules, so these loop themselves
(under `torch.inference_mode()`) rather than through `engine.stream`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import List

import pandas as pd
import torch

from ..anatomy import families, latents
from ..errors import VitstudyError
from ..metrics import fourier as F
from ..metrics import uncertainty
from ..pipeline.progress import track
from ..plots import fourier as plots_fourier
from ._registry import Params, Result, choice, register

METRICS = ("auto", "accuracy", "agreement")


def choose_metric(requested: str, dataset, model) -> str:
    """'top1' when the data set's classes match the model's head (same count, labelled), else 'agreement'."""
    if requested not in METRICS:
        raise VitstudyError(f"analysis.metric must be one of {', '.join(METRICS)}, got {requested!r}")
    classes = list(getattr(dataset, "classes", []) or [])
    outputs = getattr(model.module, "num_classes", None)
    match = bool(classes) and len(classes) == outputs
    if requested == "agreement" or (requested == "auto" and not match):
        return "agreement"
    if not match:
        raise VitstudyError(
            f"analysis.metric=accuracy needs labels that match {model.name}'s head: the data set has {len(classes)} "
            f"classes and the model {outputs} outputs; use analysis.metric=agreement (agreement with the model's "
            f"clean predictions) or a data set whose classes are the model's"
        )
    return "top1"


def _loader(ctx, models):
    batching, record = ctx.sample()
    return ctx.loader(models, batching), record


def _hits(pred: torch.Tensor, target: torch.Tensor) -> int:
    return int((pred == target).sum())


def _count_changes(counts: list[int], before: torch.Tensor, after: torch.Tensor) -> None:
    """counts += [images right only after, images right only before] (the paired difference's discordant pairs)."""
    counts[0] += int((after & ~before).sum())
    counts[1] += int((before & ~after).sum())


def _paired_columns(name: str, value: float, changed: list[int], seen: int) -> dict:
    """{name_se, name_ci_low, name_ci_high} in points (%) of a paired change of a proportion on the same images."""
    _, se = uncertainty.paired_difference(changed[0], changed[1], seen)
    se = 100.0 * float(se)
    low, high = uncertainty.interval(value, se, seen - 1)
    return {f"{name}_se": se, f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}


def _ylabel(metrics: set[str]) -> str:
    if metrics == {"top1"}:
        return "Δ top-1 accuracy (pts)"
    if metrics == {"agreement"}:
        return "Δ agreement with clean predictions (pts)"
    return "Δ top-1 or agreement (pts, see CSV)"


# ---------------------------------------------------------------- frequency noise


@dataclass
class FrequencyNoise(Params):
    bands: List[float] = field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    )  # band centres f, in units of pi
    window: float = 0.1  # half-width s of the square annulus [f-s, f+s], in units of pi (FreqAttack's `s`; the paper's "window 0.1pi", unverified reading)
    eps: float = (
        0.1  # noise amplitude: delta = eps * sign(N(0,1)) before band-passing (the paper's value is unverified)
    )
    space: str = "pixel"  # pixel: eps in [0,1] image units, divided by each model's std; normalized: added after normalisation (official code)
    metric: str = "auto"  # auto: top-1 accuracy if the data set's classes match the model's head, else agreement with clean predictions; or accuracy / agreement

    def check(self) -> None:
        if not self.bands or not all(0 < b <= 1 for b in self.bands):
            raise VitstudyError(
                f"analysis.bands must be a non-empty list of band centres in (0, 1] (units of π), got {list(self.bands)!r}"
            )
        if not 0 < self.window <= 1:
            raise VitstudyError(f"analysis.window must be a half-width in (0, 1] (units of π), got {self.window!r}")
        if not self.eps > 0 or not math.isfinite(self.eps):
            raise VitstudyError(f"analysis.eps must be a positive noise amplitude, got {self.eps!r}")
        if self.space not in ("pixel", "normalized"):
            raise VitstudyError(
                f"analysis.space must be 'pixel' (noise in [0, 1] image units) or 'normalized' "
                f"(after the model's mean/std, as the official code), got {self.space!r}"
            )
        choice("metric", self.metric, METRICS)


@register(
    "frequency_noise",
    "Accuracy drop under band-limited random noise, model and reference (Park & Kim 2022, Fig. 2b)",
    FrequencyNoise,
    models=("model", "reference"),
)
def frequency_noise(ctx) -> Result:
    cfg = ctx.cfg
    p = ctx.params
    models = [ctx.models["model"], ctx.models["reference"]]
    metrics = [choose_metric(p.metric, ctx.dataset, m) for m in models]
    loader, record = _loader(ctx, models)
    bands = [float(b) for b in p.bands]
    clean = [0] * len(models)
    hits = [[0] * len(bands) for _ in models]
    changed = [[[0, 0] for _ in bands] for _ in models]  # images right only with noise (gain), only without it (loss)
    rms = [[0.0] * len(bands) for _ in models]
    gens = [torch.Generator(device=ctx.device).manual_seed(cfg.seed + 7919 * i) for i in range(len(models))]
    masks: dict = {}
    seen = 0
    with torch.inference_mode():
        for inputs, labels in track(loader, "frequency_noise", ctx.progress):
            for i, m in enumerate(models):
                x = inputs[i].to(ctx.device)
                pred = m.module(x).argmax(-1)
                target = labels.to(ctx.device) if metrics[i] == "top1" else pred
                clean[i] += _hits(pred, target)
                right = pred == target
                std = torch.tensor(m.data_config["std"], device=ctx.device).view(1, -1, 1, 1)
                h, w = x.shape[-2:]
                for j, f in enumerate(bands):
                    key = (h, w, f)
                    if key not in masks:
                        masks[key] = F.band_mask(h, w, f, p.window).to(ctx.device)
                    delta = F.band_pass(F.sign_noise(x.shape, p.eps, gens[i], ctx.device), masks[key])
                    pixel = delta if p.space == "pixel" else delta * std
                    rms[i][j] += float(pixel.pow(2).mean(dim=(1, 2, 3)).sqrt().sum())
                    noisy = x + (delta / std if p.space == "pixel" else delta)
                    noisy_pred = m.module(noisy).argmax(-1)
                    hits[i][j] += _hits(noisy_pred, target)
                    _count_changes(changed[i][j], right, noisy_pred == target)
            seen += len(labels)
    rows, series = [], []
    for i, m in enumerate(models):
        base = 100.0 * clean[i] / seen
        clean_ci = uncertainty.proportion_columns("clean", clean[i], seen, 100.0)
        drops, lows, highs = [], [], []
        for j, f in enumerate(bands):
            value = 100.0 * hits[i][j] / seen
            drops.append(value - base)
            ci = {
                **clean_ci,
                **uncertainty.proportion_columns("value", hits[i][j], seen, 100.0),
                **_paired_columns("drop", value - base, changed[i][j], seen),
            }
            lows.append(float(ci["drop_ci_low"]))
            highs.append(float(ci["drop_ci_high"]))
            rows.append(
                {
                    "model": m.key,
                    "name": m.name,
                    "weights": m.weights,
                    "band": f,
                    "window": p.window,
                    "band_low": round(max(f - p.window, 0.0), 6),
                    "band_high": round(f + p.window, 6),
                    "eps": p.eps,
                    "space": p.space,
                    "metric": metrics[i],
                    "clean": base,
                    "value": value,
                    "drop": value - base,
                    **{k: float(v) for k, v in ci.items()},
                    "noise_rms": rms[i][j] / seen,
                    "num_images": seen,
                    "dataset": cfg.dataset.name,
                    "uncertainty": "wilson; drop: paired_se_images",
                }
            )
        series.append(
            {
                "label": f"{m.label} ({metrics[i]})",
                "family": latents.family(m.module),
                "bands": bands,
                "drops": drops,
                "low": lows,
                "high": highs,
            }
        )
    fig = plots_fourier.noise_drop(
        series,
        _ylabel(set(metrics)),
        f"Band-limited sign noise, ε={p.eps} ({p.space}), half-width {p.window}π, {seen} images",
    )
    return Result(
        tables={"frequency_noise": pd.DataFrame(rows)},
        figures={"frequency_noise": fig},
        info={
            "metric": {m.key: metrics[i] for i, m in enumerate(models)},
            "noise": "delta = eps*sign(randn) per pixel and channel; FFT, shifted, times the square annulus "
            "(outer side 2*int((f+s)*n/2), inner 2*int((f-s)*n/2)); inverse FFT, real part; added "
            f"in {p.space} space, no clipping",
            "uncertainty": {
                "frequency_noise": {
                    "clean, value": uncertainty.METHODS["wilson"],
                    "drop": uncertainty.METHODS["paired_se_images"],
                }
            },
        },
        images=[record],
    )


# ---------------------------------------------------------------- lesion


@dataclass
class Lesion(Params):
    conv: str = "branch"  # conv units: branch = zero the whole residual branch (the unit passes its shortcut); conv3x3 = remove only its 3x3 conv (after its own norm)
    metric: str = "auto"  # auto: top-1 accuracy if the data set's classes match the model's head, else agreement with the intact model; or accuracy / agreement

    def check(self) -> None:
        if self.conv not in ("branch", "conv3x3"):
            raise VitstudyError(
                f"analysis.conv must be 'branch' (zero a conv unit's residual branch) or 'conv3x3' "
                f"(zero its 3x3 convolution), got {self.conv!r}"
            )
        choice("metric", self.metric, METRICS)


def removed(path: str, mode: str) -> str:
    """What zeroing `path` removes, in words (the `removed` column)."""
    leaf = path.rsplit(".", 1)[-1]
    if leaf in ("bn2", "norm2") and mode == "conv3x3":
        return f"3x3 conv2 and its norm (output of {path} set to zero)"
    if leaf == "conv2" and mode == "conv3x3":
        return f"3x3 conv2 of a pre-activation unit (output of {path} set to zero; later layers run as usual)"
    return f"residual branch (output of {path} set to zero; the skip path is kept)"


def lesion_units(model, conv_mode: str = "branch") -> list[tuple[str, str]]:
    """(module to zero, latent after the removed sublayer) for every sublayer, in forward order: a transformer's
    attention and MLP, a conv unit's residual branch or, with conv_mode=conv3x3, its 3x3 conv after its own norm
    (so the norm's shift does not turn the zeroed conv into a constant); see `anatomy.families`."""
    units = []
    for block in families.blocks(model):
        for sub in block.sublayers:
            if not sub.residual:  # a unit without an additive skip (strided inverted residual, DenseNet, VGG)
                continue
            if sub.zero is None:
                raise VitstudyError(
                    f"lesion does not know the residual branch of '{block.path}' ({type(block.module).__name__}); "
                    f"supported: the block families of vitstudy.anatomy.families (timm ViT, DeiT, BEiT, EVA, "
                    f"CaiT, Swin, MViT-v2, ..., ResNet, RegNet, EfficientNet, ConvNeXt units)"
                )
            target = sub.zero_conv3x3 if conv_mode == "conv3x3" and sub.sublayer == "res" else sub.zero
            if target is None:
                raise VitstudyError(
                    f"unit '{block.path}' ({type(block.module).__name__}) has no 3x3 convolution; use analysis.conv=branch"
                )
            units.append((target, sub.post))
    if not units:
        reasons = [b.family.reason for b in families.blocks(model) if b.family.reason]
        raise VitstudyError(
            f"found no residual blocks in {type(model).__name__} to lesion" + (f": {reasons[0]}" if reasons else "")
        )
    return units


@contextmanager
def zeroed(model, path: str):
    """Within the block, the module at `path` outputs zeros (its residual branch contributes nothing)."""
    handle = dict(model.named_modules())[path].register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    try:
        yield
    finally:
        handle.remove()


@register(
    "lesion",
    "Accuracy change when one sublayer is removed, keeping its residual path (Park & Kim 2022, lesion figure)",
    Lesion,
)
def lesion(ctx) -> Result:
    cfg = ctx.cfg
    p = ctx.params
    m = ctx.models["model"]
    metric = choose_metric(p.metric, ctx.dataset, m)
    units = lesion_units(m.module, p.conv)
    described = {lat.name: lat for lat in latents.describe(m.module, ctx.layers(m, "latents"))}
    loader, record = _loader(ctx, [m])
    intact, hits, seen = 0, [0] * len(units), 0
    changed = [[0, 0] for _ in units]
    with torch.inference_mode():
        for inputs, labels in track(loader, "lesion", ctx.progress):
            x = inputs[0].to(ctx.device)
            pred = m.module(x).argmax(-1)
            target = labels.to(ctx.device) if metric == "top1" else pred
            intact += _hits(pred, target)
            right = pred == target
            for u, (path, _) in enumerate(units):
                with zeroed(m.module, path):
                    lesioned = m.module(x).argmax(-1)
                hits[u] += _hits(lesioned, target)
                _count_changes(changed[u], right, lesioned == target)
            seen += len(labels)
    base = 100.0 * intact / seen
    intact_ci = uncertainty.proportion_columns("intact", intact, seen, 100.0)
    rows = []
    for (path, latent), h, ch in zip(units, hits, changed):
        lat = described[latent]
        value = 100.0 * h / seen
        ci = {
            **intact_ci,
            **uncertainty.proportion_columns("value", h, seen, 100.0),
            **_paired_columns("delta", value - base, ch, seen),
        }
        rows.append(
            {
                "model": m.key,
                "name": m.name,
                "weights": m.weights,
                "unit": path,
                "latent": latent,
                "kind": lat.kind,
                "index": lat.index,
                "depth": lat.depth,
                "metric": metric,
                "intact": base,
                "value": value,
                "delta": value - base,
                **{k: float(v) for k, v in ci.items()},
                "conv": p.conv,
                "removed": removed(path, p.conv),
                "num_images": seen,
                "dataset": cfg.dataset.name,
                "uncertainty": "wilson; delta: paired_se_images",
            }
        )
    df = pd.DataFrame(rows)
    step = 1.0 / max(len(described) - 1, 1)
    fig = plots_fourier.depth_profile(
        [
            {
                "title": f"{m.label} ({m.weights})",
                "depths": df.depth,
                "values": df.delta,
                "kinds": df.kind,
                "family": latents.family(m.module),
                "step": step,
                "low": df.delta_ci_low,
                "high": df.delta_ci_high,
            }
        ],
        _ylabel({metric}),
        f"Lesion: one sublayer removed at a time (residual path kept), {metric}, {seen} images",
        zero_line=True,
    )
    return Result(
        tables={"lesion": df},
        figures={"lesion": fig},
        info={
            "metric": metric,
            "units": [u for u, _ in units],
            "uncertainty": {
                "lesion": {
                    "intact, value": uncertainty.METHODS["wilson"],
                    "delta": uncertainty.METHODS["paired_se_images"],
                }
            },
        },
        images=[record],
    )
