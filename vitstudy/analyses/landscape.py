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

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from ..plots import cka as plots  # noqa: F401  (sets the Agg backend and theme)
from ..pipeline.models import requires_grad
from ..errors import VitstudyError
from ..metrics import hessian as H
from . import Result, params, register

HESSIAN_DEFAULTS = {"batch_size": 16, "num_batches": 8, "top_k": 5, "max_iter": 100, "tol": 1e-3, "weight_decay": 0.05}
LANDSCAPE_DEFAULTS = {"dims": 1, "steps": 21, "range": 1.0, "num_images": 64, "weight_decay": 0.05, "seed": None}


def check_labels(dataset, model) -> None:
    """The loss needs labels that are the model's classes."""
    classes = list(getattr(dataset, "classes", []) or [])
    outputs = getattr(model.module, "num_classes", None)
    if not classes or len(classes) != outputs:
        raise VitstudyError(
            f"this analysis needs labels matching {model.name}'s head: the data set has {len(classes)} classes and the "
            f"model {outputs} outputs; use a data set with the model's classes (synthetic: dataset.num_classes={outputs})")


def _positive_int(p: dict, *keys: str) -> None:
    for k in keys:
        if not isinstance(p[k], int) or p[k] < 1:
            raise VitstudyError(f"analysis.{k} must be a positive integer, got {p[k]!r}")


def _loader(ctx, model, num_images: int, batch_size: int):
    batching, record = ctx.sample(num_images, batch_size)
    ctx.record_images([record])
    return ctx.loader([model], batching), batching


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


@register("hessian", "top-k Hessian eigenvalues of the loss per mini-batch, their density, NEP and APE "
          "(Park & Kim 2022, Figs 1c, 4)")
def hessian(ctx) -> Result:
    p = params(ctx.cfg, HESSIAN_DEFAULTS)
    _positive_int(p, "batch_size", "num_batches", "top_k", "max_iter")
    m = ctx.models["model"]
    check_labels(ctx.dataset, m)
    loader, batching = _loader(ctx, m, p["batch_size"] * p["num_batches"], p["batch_size"])
    gen = torch.Generator().manual_seed(int(ctx.cfg.seed))
    m.module.eval()
    # resumable: after every batch the eigenvalues so far and the generator state go to the cache checkpoint
    state = ctx.cache.load_checkpoint() if ctx.cache is not None else None
    rows, done = (list(state["rows"]), state["batches_done"]) if state else ([], 0)
    if state:
        gen.set_state(state["generator"])
    with restored(m.module):
        for b, (inputs, labels) in enumerate(tqdm(loader, desc="hessian", leave=False,
                                                  disable=None if ctx.progress is None else not ctx.progress)):
            if b < done:
                continue
            x, y = inputs[0].to(ctx.device), labels.to(ctx.device)
            vals, iters = batch_eigenvalues(m.module, x, y, p["top_k"], p["max_iter"], p["tol"], p["weight_decay"], gen)
            rows += [{"model": m.name, "label": m.label, "weights": m.weights, "batch": b, "eigen_index": i,
                      "eigenvalue": v, "iterations": it, "batch_size": len(y), "num_batches": p["num_batches"],
                      "num_images": batching.num_images, "top_k": p["top_k"], "weight_decay": p["weight_decay"],
                      "tol": p["tol"], "dataset": ctx.cfg.dataset.name} for i, (v, it) in enumerate(zip(vals, iters))]
            if ctx.cache is not None:
                ctx.cache.save_checkpoint({"rows": rows, "batches_done": b + 1, "generator": gen.get_state()})
    df = pd.DataFrame(rows)
    ev = df.eigenvalue.to_numpy()
    summary = {"NEP": float((ev < 0).mean()), "APE": float(ev[ev > 0].mean()) if (ev > 0).any() else float("nan"),
               "max": float(ev.max()), "eigenvalues": int(len(ev))}
    sdf = pd.DataFrame([{"model": m.name, "weights": m.weights, "statistic": k, "value": v} for k, v in summary.items()])
    return Result({"hessian": df, "hessian_summary": sdf}, {"hessian": _density_figure(df, m.label, summary)},
                  {"hessian": summary, "loss": "cross_entropy + weight_decay/2 * sum ||theta||^2", "augmentation": "none (eval transform)"})


def _density_figure(df, label, summary):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ev = df.eigenvalue.to_numpy()
    ax.hist(ev, bins=min(40, max(5, len(ev) // 2)), density=True, alpha=0.6, color="C0", label=f"{label}")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Hessian eigenvalue (top-%d per batch)" % (df.eigen_index.max() + 1))
    ax.set_ylabel("density")
    ax.set_title(f"NEP {summary['NEP']:.2f}, APE {summary['APE']:.3g}, {df.batch.nunique()} batches", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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


@register("loss_landscape", "loss (NLL + weight decay x sum of norms) and accuracy along filter-normalised random "
          "directions, 1D slice or 2D grid (Park & Kim 2022, Fig. 1a)")
def loss_landscape(ctx) -> Result:
    p = params(ctx.cfg, LANDSCAPE_DEFAULTS)
    _positive_int(p, "steps", "num_images")
    if p["dims"] not in (1, 2):
        raise VitstudyError(f"analysis.dims must be 1 (a slice) or 2 (a grid), got {p['dims']!r}")
    if not float(p["range"]) > 0:
        raise VitstudyError(f"analysis.range must be positive (the grid spans [-range, range]), got {p['range']!r}")
    m = ctx.models["model"]
    check_labels(ctx.dataset, m)
    loader, batching = _loader(ctx, m, p["num_images"], ctx.cfg.dataset.batch_size)
    seed = int(ctx.cfg.seed if p["seed"] is None else p["seed"])
    gen = torch.Generator().manual_seed(seed)
    m.module.eval()
    named = list(m.module.named_parameters())
    dirs = [H.random_direction(named, gen) for _ in range(p["dims"])]
    alphas = np.linspace(-float(p["range"]), float(p["range"]), p["steps"])
    points = [(a,) for a in alphas] if p["dims"] == 1 else [(a, b) for b in alphas for a in alphas]
    results = grid_losses(m.module, lambda: ((i[0], l) for i, l in loader), dirs, points, p["weight_decay"], ctx.device)
    rows = []
    for pt, (nll, correct, n, l2) in zip(points, results):
        rows.append({"model": m.name, "label": m.label, "weights": m.weights, "x": float(pt[0]),
                     "y": float(pt[1]) if len(pt) > 1 else 0.0, "nll": nll / n, "l2": l2,
                     "loss": nll / n + p["weight_decay"] * l2, "accuracy": correct / n, "num_images": n,
                     "dims": p["dims"], "weight_decay": p["weight_decay"], "direction_seed": seed,
                     "dataset": ctx.cfg.dataset.name})
    df = pd.DataFrame(rows)
    return Result({"loss_landscape": df}, {"loss_landscape": _landscape_figure(df, m.label, p["dims"])},
                  {"direction_seed": seed, "normalisation": "filter (norm over dim 0), <2-D and position embeddings zeroed",
                   "augmentation": "none (eval transform)"})


def _landscape_figure(df, label, dims):
    import matplotlib.pyplot as plt

    if dims == 1:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot(df.x, df.loss, "-o", ms=3, label="NLL + wd·l2")
        ax.plot(df.x, df.nll, "--", label="NLL")
        ax.set_xlabel("step along direction")
        ax.locator_params(axis="x", nbins=5)
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    else:
        xs, ys = np.sort(df.x.unique()), np.sort(df.y.unique())
        z = df.pivot(index="y", columns="x", values="loss").loc[ys, xs].to_numpy()
        z = z - np.nanmin(z)
        fig, ax = plt.subplots(figsize=(4.2, 3.8))
        cs = ax.contour(xs, ys, z, levels=15, cmap="viridis")
        ax.clabel(cs, fontsize=6)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.set_aspect("equal")
    ax.set_title(f"{label}: loss landscape ({df.num_images.iloc[0]} images)", fontsize=9)
    fig.tight_layout()
    return fig
