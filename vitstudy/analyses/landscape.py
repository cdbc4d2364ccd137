"""Loss-landscape analyses of Park & Kim 2022 (*How Do Vision Transformers Work?*).

`hessian` (Figs 1c, 4): per mini-batch, the top-k eigenvalues (largest magnitude, PyHessian's power iteration
with deflation) of the Hessian of NLL + weight_decay/2·‖θ‖² w.r.t. all parameters, over `num_batches` batches of
`batch_size` images (Park & Kim: top-5, batch 16). Reported: every eigenvalue, its density, and NEP (share of
negative eigenvalues among those collected) and APE (mean of the positive ones).
`loss_landscape` (Fig. 1a): loss = NLL + weight_decay·Σ‖θ‖₂ and top-1 accuracy at θ + a·d₁ (+ b·d₂) on a grid,
with filter-normalised Gaussian directions (norms over dim 0, <2-D tensors and position embeddings zeroed).
Both need labels that are the model's classes; models stay in eval mode (BatchNorm statistics fixed) and the
images get each model's eval transform (the paper uses augmented training images: not done here).
Gradients are needed for `hessian`, so it runs its own loop outside inference mode. Parameters are restored exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import VitstudyError
from ..metrics import hessian as H
from ..pipeline.models import requires_grad
from ..pipeline.progress import track
from ..plots import landscape as plots_landscape
from ._registry import Params, Result, at_least, choice, register


def check_labels(dataset, model) -> None:
    """The loss needs labels that are the model's classes."""
    classes = list(getattr(dataset, "classes", []) or [])
    outputs = getattr(model.module, "num_classes", None)
    if not classes or len(classes) != outputs:
        raise VitstudyError(
            f"this analysis needs labels matching {model.name}'s head: the data set has {len(classes)} classes and the "
            f"model {outputs} outputs; use a data set with the model's classes (synthetic: dataset.num_classes={outputs})"
        )


def _loader(ctx, model, num_images: int, batch_size: int):
    batching, record = ctx.sample(num_images, batch_size)
    return ctx.loader([model], batching), batching, record


@contextmanager
def restored(module: torch.nn.Module):
    """Parameters are copied back bit for bit on exit, whatever happened inside."""
    saved = [p.detach().clone() for p in module.parameters()]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for p, s in zip(module.parameters(), saved):
                p.copy_(s)


def batch_eigenvalues(module, x, y, k=5, max_iter=100, tol=1e-3, weight_decay=0.0, generator=None):
    """Top-k Hessian eigenvalues of CE(module(x), y) + weight_decay/2·Σ‖θ‖² on one batch."""
    # fused attention kernels have no double backward: the math kernel does
    with torch.inference_mode(False), torch.enable_grad(), requires_grad(module, True), sdpa_kernel([SDPBackend.MATH]):
        ps = [p for p in module.parameters()]
        loss = F.cross_entropy(module(x), y)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum((p * p).sum() for p in ps)
        return H.top_eigenvalues(H.hvp_fn(loss, ps), ps, k, max_iter, tol, generator)


@dataclass
class Hessian(Params):
    batch_size: int = 16  # images per mini-batch (Park & Kim: 16, unverified)
    num_batches: int = (
        8  # mini-batches, each with its own top-k eigenvalues (the paper: many; this is the expensive part)
    )
    top_k: int = (
        5  # eigenvalues of largest magnitude per batch, power iteration with deflation (PyHessian; the paper: 5)
    )
    max_iter: int = 100  # power-iteration steps per eigenvalue at most
    tol: float = 1e-3  # stop when the Rayleigh quotient changes by less than this, relatively (PyHessian's default)
    weight_decay: float = (
        0.05  # loss = NLL + weight_decay/2 * sum ||theta||^2 (adds weight_decay to every eigenvalue); 0 = NLL only
    )

    def check(self) -> None:
        for key in ("batch_size", "num_batches", "top_k", "max_iter"):
            at_least(key, getattr(self, key), 1)


@register(
    "hessian",
    "top-k Hessian eigenvalues of the loss per mini-batch, their density, NEP and APE "
    "(Park & Kim 2022, Figs 1c, 4); needs labels matching the model's head",
    Hessian,
)
def hessian(ctx) -> Result:
    p = ctx.params
    if ctx.cfg.precision in ("bf16", "fp16"):
        raise VitstudyError(
            f"hessian differentiates the loss twice, which {ctx.cfg.precision} autocast does not do "
            f"reliably; run it with precision=fp32 (or tf32)"
        )
    m = ctx.models["model"]
    check_labels(ctx.dataset, m)
    loader, batching, record = _loader(ctx, m, p.batch_size * p.num_batches, p.batch_size)
    gen = torch.Generator().manual_seed(int(ctx.cfg.seed))
    m.module.eval()
    # resumable: after every batch the eigenvalues so far and the generator state go to the cache checkpoint
    state = ctx.cache.load_checkpoint() if ctx.cache is not None else None
    rows, done = (list(state["rows"]), state["batches_done"]) if state else ([], 0)
    if state:
        gen.set_state(state["generator"])
    with restored(m.module):
        for b, (inputs, labels) in enumerate(track(loader, "hessian", ctx.progress)):
            if b < done:
                continue
            x, y = inputs[0].to(ctx.device), labels.to(ctx.device)
            vals, iters = batch_eigenvalues(m.module, x, y, p.top_k, p.max_iter, p.tol, p.weight_decay, gen)
            rows += [
                {
                    "model": m.name,
                    "label": m.label,
                    "weights": m.weights,
                    "batch": b,
                    "eigen_index": i,
                    "eigenvalue": v,
                    "iterations": it,
                    "batch_size": len(y),
                    "num_batches": p.num_batches,
                    "num_images": batching.num_images,
                    "top_k": p.top_k,
                    "weight_decay": p.weight_decay,
                    "tol": p.tol,
                    "dataset": ctx.cfg.dataset.name,
                }
                for i, (v, it) in enumerate(zip(vals, iters))
            ]
            if ctx.cache is not None:
                ctx.cache.save_checkpoint({"rows": rows, "batches_done": b + 1, "generator": gen.get_state()})
    df = pd.DataFrame(rows)
    ev = df.eigenvalue.to_numpy()
    summary = {
        "NEP": float((ev < 0).mean()),
        "APE": float(ev[ev > 0].mean()) if (ev > 0).any() else float("nan"),
        "max": float(ev.max()),
        "eigenvalues": int(len(ev)),
    }
    sdf = pd.DataFrame(
        [{"model": m.name, "weights": m.weights, "statistic": k, "value": v} for k, v in summary.items()]
    )
    return Result(
        tables={"hessian": df, "hessian_summary": sdf},
        figures={"hessian": plots_landscape.hessian_density(df, m.label, summary)},
        info={
            "hessian": summary,
            "loss": "cross_entropy + weight_decay/2 * sum ||theta||^2",
            "augmentation": "none (eval transform)",
        },
        images=[record],
    )


def grid_losses(module, batches, directions, points, weight_decay=0.0, device="cpu"):
    """Per grid point (tuple of coefficients): (Σ CE, Σ correct, images, l2) at θ + Σ c_i d_i, θ restored after."""
    ps = list(module.parameters())
    out = []
    with restored(module) as theta, torch.inference_mode():
        for point in points:
            for p, w, *ds in zip(ps, theta, *directions):
                p.copy_(w + sum(float(c) * d for c, d in zip(point, ds)))
            nll, correct, n = 0.0, 0, 0
            for x, y in batches():
                x, y = x.to(device), y.to(device)
                logits = module(x)
                nll += float(F.cross_entropy(logits.double(), y, reduction="sum"))
                correct += int((logits.argmax(-1) == y).sum())
                n += len(y)
            out.append((nll, correct, n, float(H.l2_sum_of_norms(ps))))
    return out


@dataclass
class LossLandscape(Params):
    dims: int = 1  # 1: a slice along one direction; 2: a grid over two (the paper's Fig. 1a)
    steps: int = 21  # grid points per direction (the paper: 21)
    range: float = 1.0  # the grid spans [-range, range] (the paper: 1)
    num_images: int = 64  # images the loss is averaged over at each point (the paper: the whole augmented training set)
    weight_decay: float = (
        0.05  # loss = NLL + weight_decay * sum_params ||theta||_2 (a sum of norms, as ops/norm.py; the paper: 0.05)
    )
    seed: Optional[int] = None  # seed of the random directions; null = the run's seed

    def check(self) -> None:
        at_least("steps", self.steps, 1)
        at_least("num_images", self.num_images, 1)
        choice("dims", self.dims, (1, 2))
        if not self.range > 0:
            raise VitstudyError(f"analysis.range must be positive (the grid spans [-range, range]), got {self.range!r}")


@register(
    "loss_landscape",
    "loss (NLL + weight decay x sum of norms) and accuracy along filter-normalised random "
    "directions, 1D slice or 2D grid (Park & Kim 2022, Fig. 1a); needs labels matching the model's head",
    LossLandscape,
)
def loss_landscape(ctx) -> Result:
    p = ctx.params
    m = ctx.models["model"]
    check_labels(ctx.dataset, m)
    loader, batching, record = _loader(ctx, m, p.num_images, ctx.cfg.dataset.batch_size)
    seed = int(ctx.cfg.seed if p.seed is None else p.seed)
    gen = torch.Generator().manual_seed(seed)
    m.module.eval()
    named = list(m.module.named_parameters())
    dirs = [H.random_direction(named, gen) for _ in range(p.dims)]
    alphas = np.linspace(-float(p.range), float(p.range), p.steps)
    points = [(a,) for a in alphas] if p.dims == 1 else [(a, b) for b in alphas for a in alphas]
    results = grid_losses(m.module, lambda: ((i[0], l) for i, l in loader), dirs, points, p.weight_decay, ctx.device)
    rows = []
    for pt, (nll, correct, n, l2) in zip(points, results):
        rows.append(
            {
                "model": m.name,
                "label": m.label,
                "weights": m.weights,
                "x": float(pt[0]),
                "y": float(pt[1]) if len(pt) > 1 else 0.0,
                "nll": nll / n,
                "l2": l2,
                "loss": nll / n + p.weight_decay * l2,
                "accuracy": correct / n,
                "num_images": n,
                "dims": p.dims,
                "weight_decay": p.weight_decay,
                "direction_seed": seed,
                "dataset": ctx.cfg.dataset.name,
            }
        )
    df = pd.DataFrame(rows)
    return Result(
        tables={"loss_landscape": df},
        figures={"loss_landscape": plots_landscape.loss_surface(df, m.label, p.dims)},
        info={
            "direction_seed": seed,
            "normalisation": "filter (norm over dim 0), <2-D and position embeddings zeroed",
            "augmentation": "none (eval transform)",
        },
        images=[record],
    )
