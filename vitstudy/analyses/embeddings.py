"""Learned embeddings of a ViT, read from its weights (no images): Dosovitskiy et al. 2020 Fig. 7 left and centre.

position_embedding: cosine similarity between the learned position embeddings of every pair of patches
(prefix-token entries dropped), resampled to the grid the model sees at its input size as timm does
(`resample_abs_pos_embed`, bicubic) when the stored grid differs. patch_embedding_pca: PCA of the patch
embedding filters, the rows of `patch_embed.proj.weight` (D, 3, P, P) as D samples of size 3 P P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import VitstudyError
from ..plots import attention as plots_attention
from ._registry import Params, Result, at_least, register


def _grid(pe) -> tuple[int, int]:
    g = pe.grid_size
    return (int(g[0]), int(g[1])) if isinstance(g, (tuple, list)) else (int(g), int(g))


def patch_position_embedding(model, input_size) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """(gh * gw, D) float64 patch position embeddings at the input grid, the input grid and the stored grid."""
    pos = getattr(model, "pos_embed", None)
    pe = getattr(model, "patch_embed", None)
    if not isinstance(pos, torch.Tensor) or pe is None or not hasattr(pe, "grid_size"):
        raise VitstudyError(
            f"{type(model).__name__} has no learned absolute position embedding (pos_embed); "
            f"position_embedding needs a ViT-family model such as model=vit_b16 or model=vit_l32"
        )
    stored = _grid(pe)
    n_patch = stored[0] * stored[1]
    skip = pos.shape[1] - n_patch  # prefix entries (0 with no_embed_class)
    if skip < 0:
        raise VitstudyError(
            f"pos_embed of {type(model).__name__} has {pos.shape[1]} entries for a {stored[0]}x{stored[1]} patch grid"
        )
    patches = pos[0, skip:].detach().to(torch.float64).cpu()
    img = pe.img_size if isinstance(pe.img_size, (tuple, list)) else (pe.img_size, pe.img_size)
    stride = (img[0] / stored[0], img[1] / stored[1])
    grid = (int(round(input_size[-2] / stride[0])), int(round(input_size[-1] / stride[1])))
    if grid != stored:
        from timm.layers import resample_abs_pos_embed

        patches = resample_abs_pos_embed(
            patches[None].float(), new_size=list(grid), old_size=list(stored), num_prefix_tokens=0
        )[0].to(torch.float64)
    return patches, grid, stored


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    x = x / x.norm(dim=1, keepdim=True)
    return x @ x.T


@register(
    "position_embedding",
    "cosine similarity of learned position embeddings between patches (Dosovitskiy et al. Fig. 7 centre)",
)
def position_embedding(ctx) -> Result:
    m = ctx.models["model"]
    emb, grid, stored = patch_position_embedding(m.module, m.data_config["input_size"])
    sim = cosine_matrix(emb).numpy()
    gh, gw = grid
    idx = np.arange(gh * gw)
    a, b = np.meshgrid(idx, idx, indexing="ij")
    a, b = a.ravel(), b.ravel()
    df = pd.DataFrame(
        {
            "model": m.name,
            "weights": m.weights,
            "index_a": a,
            "row_a": a // gw,
            "col_a": a % gw,
            "index_b": b,
            "row_b": b // gw,
            "col_b": b % gw,
            "cosine": sim.ravel(),
            "grid": f"{gh}x{gw}",
            "stored_grid": f"{stored[0]}x{stored[1]}",
            "resampled": grid != stored,
        }
    )
    note = f", resampled from {stored[0]}x{stored[1]}" if grid != stored else ""
    fig = plots_attention.position_similarity(
        sim, gh, gw, f"Position embedding similarity, {m.label} ({gh}x{gw}{note})"
    )
    return Result(
        tables={"position_embedding": df},
        figures={"position_embedding": fig},
        info={"grid": list(grid), "stored_grid": list(stored)},
    )


def filter_pca(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of D filters (D, ...) as samples: (components (k, ...) with unit norm, variance per component), float64.

    Filters are centred over the D samples; each component's sign is fixed so its largest-magnitude entry is positive.
    """
    x = weight.detach().reshape(weight.shape[0], -1).to(torch.float64).cpu()
    x = x - x.mean(dim=0, keepdim=True)
    _, s, vt = torch.linalg.svd(x, full_matrices=False)
    sign = torch.sign(vt.gather(1, vt.abs().argmax(dim=1, keepdim=True)))
    vt = vt * torch.where(sign == 0, torch.ones_like(sign), sign)
    var = s**2 / max(x.shape[0] - 1, 1)
    return vt.reshape(-1, *weight.shape[1:]), var


@dataclass
class PatchEmbeddingPCA(Params):
    components: int = 28  # components drawn (the paper: 28, a 4 x 7 grid); the CSV has every component
    columns: int = 7  # columns of the drawn grid

    def check(self) -> None:
        at_least("components", self.components, 1)
        at_least("columns", self.columns, 1)


@register(
    "patch_embedding_pca",
    "principal components of the patch-embedding filters as RGB patches (Dosovitskiy et al. Fig. 7 left)",
    PatchEmbeddingPCA,
)
def patch_embedding_pca(ctx) -> Result:
    k, columns = ctx.params.components, ctx.params.columns
    m = ctx.models["model"]
    proj = getattr(getattr(m.module, "patch_embed", None), "proj", None)
    w = getattr(proj, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        raise VitstudyError(
            f"{type(m.module).__name__} has no convolutional patch embedding (patch_embed.proj); "
            f"patch_embedding_pca needs a ViT-family model such as model=vit_l32"
        )
    if w.shape[1] != 3:
        raise VitstudyError(
            f"patch_embed.proj of {m.label} sees {w.shape[1]} input channels, not RGB pixels "
            f"(a hybrid model embeds CNN features); use a plain ViT such as model=vit_l32"
        )
    comps, var = filter_pca(w)
    ratio = var / var.sum()
    df = pd.DataFrame(
        {
            "model": m.name,
            "weights": m.weights,
            "component": np.arange(len(var)),
            "explained_variance": var.numpy(),
            "explained_variance_ratio": ratio.numpy(),
            "cumulative_ratio": ratio.cumsum(0).numpy(),
            "embed_dim": w.shape[0],
            "patch": f"{w.shape[2]}x{w.shape[3]}",
        }
    )
    shown = min(k, len(comps))
    fig = plots_attention.pca_filters(
        comps[:shown].numpy(),
        columns,
        f"{m.label}: RGB embedding filters (first {shown} principal components, "
        f"{float(ratio[:shown].sum()):.0%} of variance)",
    )
    return Result(
        tables={"patch_embedding_pca": df}, figures={"patch_embedding_pca": fig}, info={"components_shown": shown}
    )
