"""Effective receptive fields (Raghu et al. 2021, Fig. 6, C.1-C.4).

For a layer's feature map, the absolute gradient of its centre location (centre token of a ViT, centre
spatial position of a CNN map) with respect to the input image, averaged over channels and images
(32 in the paper), after the residual addition (`post`) and of the long branch alone (`pre`).
The channel average is either |∂(Σ_c f_c)/∂x| (`channels: sum`, one backward pass per layer, the usual
ERF of Luo et al. 2016) or mean_c |∂f_c/∂x| (`channels: abs_mean`, one backward per channel); the paper
does not say which. Gradients are needed, so this analysis runs its own loop outside inference mode.
Reported per layer: the radius (pixels, from the centre location) that holds 50% / 90% of the gradient mass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import pandas as pd
import torch

from ..anatomy.residual import branches
from ..anatomy.residual import terms as residual_terms
from ..anatomy.tokens import token_grid
from ..errors import VitstudyError
from ..pipeline.layers import Layer
from ..pipeline.models import requires_grad
from ..plots import receptive_field as plots_erf
from ._registry import Params, Result, at_least, choice, register
from .common import sample_loader


@dataclass
class ReceptiveField(Params):
    blocks: Optional[List[int]] = None  # residual block indices (e.g. [0, 2, 5, 8, 11]); null = all
    residual: str = "both"  # post (after the residual addition), pre (the long branch alone) or both
    num_images: int = 32  # images averaged over (the paper: 32)
    channels: str = (
        "sum"  # sum: |d(sum_c f_c)/dx| (one backward per layer); abs_mean: mean_c |d f_c/dx| (one backward per channel)
    )
    chunk: int = 64  # channels per batched backward pass when channels=abs_mean

    def check(self) -> None:
        choice("residual", self.residual, ("both", "post", "pre"))
        choice("channels", self.channels, ("sum", "abs_mean"))
        at_least("num_images", self.num_images, 4)
        at_least("chunk", self.chunk, 1)


def centre_values(t: torch.Tensor, layer: Layer, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, C): the feature vector at the centre position of the layer's grid."""
    rows, cols, prefix = grid
    r, c = rows // 2, cols // 2
    if layer.layout == "NCHW":
        return t[:, :, r, c]
    if layer.layout == "NHWC":
        return t[:, r, c, :]
    return t[:, prefix + r * cols + c, :]


def _at_least_two(x: torch.Tensor) -> torch.Tensor:
    """A one-image batch as two copies of the image (the caller keeps the first's gradient). PyTorch's CPU BatchNorm
    backward (2.x, eval mode) misreads a gradient that is channels-last with a one-image batch's arbitrary batch
    stride while its input is NCHW, and a token view of a BN'd map (flatten(2).transpose(1, 2): XCiT's, LeViT's and
    EfficientFormer's stems) hands it exactly that: input gradients ~100x off. Two images give canonical strides."""
    return torch.cat([x, x]) if x.shape[0] == 1 else x


def erf_maps(
    module: torch.nn.Module,
    layers: list[Layer],
    batches,
    channels: str = "sum",
    chunk: int = 64,
    device="cpu",
    targets: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int, int]]]:
    """Per target: the (H, W) mean absolute input gradient of its centre location, and its grid. A target is a layer,
    or (`targets`: name -> ((layer name, coef), ...)) a signed sum of layers' centre vectors, e.g. a residual branch
    that no module outputs alone (`anatomy.residual.terms`: post - z)."""
    mods = dict(module.named_modules())
    grids = {l.name: token_grid(module, l) for l in layers}
    targets = targets or {l.name: ((l.name, 1.0),) for l in layers}
    grids.update({name: grids[parts[0][0]] for name, parts in targets.items()})
    sums: dict[str, torch.Tensor] = {}
    count = 0
    with requires_grad(module, False), torch.enable_grad():
        for x in batches:
            images = x.shape[0]
            x = _at_least_two(x.to(device)).requires_grad_(True)
            captured: dict[str, torch.Tensor] = {}
            handles = []
            for l in layers:
                mod = mods[l.module]
                # the centre is copied inside the hook: ResNet v1 adds the shortcut to the branch output in place
                keep = lambda t, _l: captured.__setitem__(_l.name, centre_values(t, _l, grids[_l.name]).clone())  # noqa: E731
                if l.is_input:
                    handles.append(mod.register_forward_pre_hook(lambda m, a, _l=l: keep(_l.of_input(a), _l)))
                else:
                    handles.append(mod.register_forward_hook(lambda m, a, o, _l=l: keep(_l.of_output(o), _l)))
            try:
                module(x)
            finally:
                for h in handles:
                    h.remove()
            for name, parts in targets.items():
                v = sum(coef * captured[n] for n, coef in parts) if len(parts) > 1 else captured[parts[0][0]]  # (B, C)
                if channels == "sum":
                    (g,) = torch.autograd.grad(v.sum(), x, retain_graph=True)
                    total = g[:images].abs().sum((0, 1))
                else:
                    total = torch.zeros(x.shape[-2:], dtype=torch.float64, device=x.device)
                    C = v.shape[1]
                    for s in range(0, C, chunk):
                        k = min(chunk, C - s)
                        eye = torch.zeros(k, *v.shape, dtype=v.dtype, device=v.device)
                        eye[torch.arange(k), :, s + torch.arange(k)] = 1.0
                        (g,) = torch.autograd.grad(v, x, grad_outputs=eye, retain_graph=True, is_grads_batched=True)
                        total += g[:, :images].abs().sum((0, 1, 2)).double()
                    total = total / C
                sums[name] = sums.get(name, 0) + total.double().detach()
            count += images
            captured.clear()  # free the batch's centres before the next forward
    return {k: (v / count).cpu().numpy() for k, v in sums.items()}, grids


def mass_radii(erf: np.ndarray, centre: tuple[float, float], fractions=(0.5, 0.9)) -> list[float]:
    """Smallest Euclidean radius (pixels) around `centre` holding each fraction of the map's total."""
    h, w = erf.shape
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - centre[0], xx - centre[1]).ravel()
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(erf.ravel()[order])
    total = cum[-1]
    if total <= 0:
        return [float("nan")] * len(fractions)
    return [float(d[order][np.searchsorted(cum, f * total)]) for f in fractions]


@register(
    "receptive_field",
    "effective receptive field: input gradient of the centre location per block, "
    "after and before the residual addition (Raghu et al. 2021, Fig. 6)",
    ReceptiveField,
)
def receptive_field(ctx) -> Result:
    p = ctx.params
    m = ctx.models["model"]
    brs = branches(m.module)
    if p.blocks is not None:
        wanted = {int(b) for b in p.blocks}
        top = max(b.index for b in brs)
        if not wanted <= set(range(top + 1)):
            raise VitstudyError(
                f"analysis.blocks: {sorted(wanted - set(range(top + 1)))} out of range; the model has blocks 0..{top}"
            )
        brs = [b for b in brs if b.index in wanted]
    kinds = ["post", "pre"] if p.residual == "both" else [p.residual]
    specs = [(b, k, b.post if k == "post" else b.branch_point) for b in brs for k in kinds]
    targets = {s: ((b.post, 1.0),) if k == "post" else residual_terms(b)[1] for b, k, s in specs}
    layers = {l.name: l for l in ctx.layers(m, list(dict.fromkeys(n for parts in targets.values() for n, _ in parts)))}
    loader, used = sample_loader(ctx, [m], num_images=p.num_images)
    batches = (inputs[0] for inputs, _ in loader)
    maps, grids = erf_maps(m.module, list(layers.values()), batches, p.channels, p.chunk, ctx.device, targets)
    h, w = next(iter(maps.values())).shape
    rows, panels = [], []
    for b, k, s in specs:
        r, c, _ = grids[s]
        centre = ((r // 2 + 0.5) * h / r - 0.5, (c // 2 + 0.5) * w / c - 0.5)
        r50, r90 = mass_radii(maps[s], centre)
        erf = maps[s]
        y0, y1 = round((r // 2) * h / r), round((r // 2 + 1) * h / r)
        x0, x1 = round((c // 2) * w / c), round((c // 2 + 1) * w / c)
        total = erf.sum()
        rows.append(
            {
                "model": m.name,
                "label": m.label,
                "weights": m.weights,
                "block": b.block,
                "index": b.index,
                "sublayer": b.sublayer,
                "residual": k,
                "layer": s,
                "grid_rows": r,
                "grid_cols": c,
                "centre_row_px": centre[0],
                "centre_col_px": centre[1],
                "radius50_px": r50,
                "radius90_px": r90,
                "centre_cell_mass": float(erf[y0:y1, x0:x1].sum() / total) if total > 0 else np.nan,
                "channels": p.channels,
                "num_images": used["images"],
                "dataset": ctx.cfg.dataset.name,
            }
        )
        panels.append(
            (
                f"{b.block} {b.sublayer}" if b.sublayer != "res" else b.block,
                "after residual" if k == "post" else "before residual (branch)",
                erf,
            )
        )
    fig = plots_erf.erf_figure(
        panels, f"{m.label}: |d centre / d input|, {used['images']} images, channels={p.channels}"
    )
    return Result(
        tables={"receptive_field": pd.DataFrame(rows)},
        figures={"receptive_field": fig},
        info={"channels": p.channels, "input_size": [h, w]},
        images=[used],
    )
