"""Spatial localization of tokens (Raghu et al. 2021, Figs 9, 10, D.1-D.3).

For a layer's token at grid position p (ViT patch token; CNN: all channels at one spatial location),
the minibatch CKA (unbiased HSIC, Nguyen et al. 2021) between that token over the images (m x D) and
the model's input patch at every grid position q (m x P·P·3). Patches are cut from the tensor the
model receives (after its eval transform); for a CNN map of h x w positions the image is cut into an
h x w grid of equal cells (rounded boundaries). Prefix tokens (CLS, registers) are left out.
A well-localized token has its CKA maximum at q = p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import pandas as pd
import torch

from ..anatomy.tokens import token_grid
from ..errors import VitstudyError
from ..metrics import uncertainty
from ..metrics.cka import MinibatchCKA
from ..pipeline.engine import Reducer, stream
from ..pipeline.layers import Layer
from ..pipeline.results import Replicates
from ..plots import localization as plots_localization
from ._registry import Params, Result, register
from .common import INPUT


def u_center_batched(k: torch.Tensor) -> torch.Tensor:
    """Ũ(K) for a stack of Gram matrices (P, n, n), as metrics.cka.u_center for each."""
    n = k.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    k = k.masked_fill(eye, 0)
    r = k.sum(-1)
    u = k - r[:, :, None] / (n - 2) - r[:, None, :] / (n - 2) + r.sum(-1)[:, None, None] / ((n - 1) * (n - 2))
    return u.masked_fill(eye, 0)


def grams(x: torch.Tensor) -> torch.Tensor:
    """(n, P, D) -> (P, n, n) float64 Grams of the batch-centred features of each position."""
    x = x.to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    xp = x.transpose(0, 1)
    return xp @ xp.transpose(1, 2)


def patches(x: torch.Tensor, rows: int, cols: int) -> list[torch.Tensor]:
    """The input image (n, C, H, W) cut into rows x cols cells, each flattened: a list of (n, cells) tensors."""
    h, w = x.shape[-2:]
    rb = [round(i * h / rows) for i in range(rows + 1)]
    cb = [round(j * w / cols) for j in range(cols + 1)]
    return [x[:, :, rb[i] : rb[i + 1], cb[j] : cb[j + 1]].flatten(1) for i in range(rows) for j in range(cols)]


class LocalizationReducer(Reducer):
    def __init__(self, layer: Layer, grid: tuple[int, int, int], device):
        self.layer, (self.rows, self.cols, self.prefix) = layer, grid
        p = self.rows * self.cols
        self.acc = MinibatchCKA(p, p, device=device)
        self.tok = self.inp = None

    def on_tensor(self, model_index, layer, tensor):
        if layer is INPUT:
            self.inp = tensor
            return
        t = tensor
        if self.layer.layout == "NCHW":
            t = t.flatten(2).transpose(1, 2)
        elif self.layer.layout == "NHWC":
            t = t.flatten(1, 2)
        else:
            t = t[:, self.prefix :]
        self.tok = u_center_batched(grams(t)).flatten(1)

    def end_batch(self, labels, outputs):
        cells = patches(self.inp, self.rows, self.cols)
        pk = torch.stack([grams(c[:, None])[0] for c in cells])
        self.acc.update(self.tok, u_center_batched(pk).flatten(1))
        self.tok = self.inp = None

    def result(self) -> np.ndarray:
        return self.acc.result().numpy()

    def replicates(self) -> np.ndarray:
        """Leave-one-batch-out CKA matrices (B, P, P) for the jackknife."""
        return uncertainty.cka_replicates(*[t.numpy() for t in self.acc.batch_terms()])


def localization_matrix(model, layer: Layer, loader, device, progress=None, replicates: bool = False):
    """CKA[p, q] between the token at position p of `layer` and the input patch at q (row-major positions), the
    grid, and with `replicates=True` also the leave-one-batch-out matrices (B, P, P)."""
    grid = token_grid(model.module, layer)
    reducer = LocalizationReducer(layer, grid, device)
    stream([model], [[INPUT, layer]], loader, reducer, device, "spatial_localization", progress)
    if replicates:
        return reducer.result(), grid, reducer.replicates()
    return reducer.result(), grid


def default_tokens(rows: int, cols: int) -> list[tuple[int, int]]:
    """The paper's ViT-B/32 positions (0,0), (2,1), (4,2), (4,4) on a 7 x 7 grid, scaled to this grid."""
    out = [
        (min(rows - 1, round(r * rows / 7)), min(cols - 1, round(c * cols / 7)))
        for r, c in ((0, 0), (2, 1), (4, 2), (4, 4))
    ]
    return list(dict.fromkeys(out))


@dataclass
class SpatialLocalization(Params):
    layer: Optional[str] = None  # module path (e.g. blocks.11, layer4.2); null = the last residual block
    tokens: Optional[List[List[int]]] = (
        None  # [[row, col], ...] tokens drawn; null = the paper's (0,0) (2,1) (4,2) (4,4) scaled to the grid
    )


@register(
    "spatial_localization",
    "CKA between each token of a layer and the input patch at every grid position (Raghu et al. 2021, Figs 9-10)",
    SpatialLocalization,
)
def spatial_localization(ctx) -> Result:
    p = ctx.params
    m = ctx.models["model"]
    layer = ctx.layers(m, "blocks")[-1] if p.layer is None else ctx.layers(m, [str(p.layer)])[0]
    grid = token_grid(m.module, layer)
    rows, cols, prefix = grid
    chosen = default_tokens(rows, cols) if p.tokens is None else [tuple(int(v) for v in t) for t in p.tokens]
    for r, c in chosen:
        if not (0 <= r < rows and 0 <= c < cols):
            raise VitstudyError(
                f"analysis.tokens: ({r}, {c}) is outside the {rows} x {cols} grid of layer '{layer.name}'"
            )
    batching, used = ctx.sample(tail=ctx.cfg.cka.tail)
    matrix, _, reps = localization_matrix(
        m, layer, ctx.loader([m], batching), ctx.device, ctx.progress, replicates=True
    )
    se = uncertainty.jackknife_se(reps)
    df_jk = len(reps) - 1
    ci = uncertainty.se_columns("cka", matrix, se, df_jk)
    if not np.isfinite(matrix).all():
        raise VitstudyError(
            f"localization CKA of layer '{layer.name}' is not finite: a token or input patch is the same for every image"
        )
    P = rows * cols
    pi, qi = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    pi, qi = pi.ravel(), qi.ravel()
    base = {"model": m.name, "label": m.label, "weights": m.weights, "layer": layer.name}
    settings = {
        "num_images": used["images"],
        "batch_size": ctx.cfg.dataset.batch_size,
        "dataset": ctx.cfg.dataset.name,
        "estimator": "minibatch unbiased",
        "prefix_tokens_dropped": prefix,
    }
    df = pd.DataFrame(
        {
            **base,
            "p": pi,
            "p_row": pi // cols,
            "p_col": pi % cols,
            "q": qi,
            "q_row": qi // cols,
            "q_col": qi % cols,
            "cka": matrix.ravel(),
            **{k: v.ravel() for k, v in ci.items()},
            "is_self": pi == qi,
            **settings,
            "uncertainty": "jackknife_batches",
        }
    )
    best = matrix.argmax(1)
    dist = np.maximum(np.abs(best // cols - np.arange(P) // cols), np.abs(best % cols - np.arange(P) % cols))
    summary = pd.DataFrame(
        {
            **base,
            "p": np.arange(P),
            "p_row": np.arange(P) // cols,
            "p_col": np.arange(P) % cols,
            "argmax_q": best,
            "argmax_row": best // cols,
            "argmax_col": best % cols,
            "cka_self": np.diag(matrix),
            **{k.replace("cka", "cka_self"): np.diag(v) for k, v in ci.items()},
            "cka_max": matrix.max(1),
            "argmax_distance": dist,
            "argmax_is_self": dist == 0,
            "argmax_is_neighbour": dist == 1,
            # share of the leave-one-batch-out replicates whose best patch is the same: how stable the argmax is
            "argmax_stability": (reps.argmax(2) == best[None]).mean(0),
            **settings,
            "uncertainty": "jackknife_batches",
        }
    )
    fig = plots_localization.localization_figure(
        df, chosen, (rows, cols), f"{m.label} {layer.name}: CKA(token, input patch), {used['images']} images"
    )
    info = {
        "layer": layer.name,
        "grid": [rows, cols],
        "tokens_plotted": [list(t) for t in chosen],
        "fraction_argmax_self": float((dist == 0).mean()),
        "fraction_argmax_within_1": float((dist <= 1).mean()),
        "uncertainty": {
            "spatial_localization": {
                "method": "jackknife_batches",
                "df": df_jk,
                "description": uncertainty.METHODS["jackknife_batches"],
            }
        },
    }
    record = Replicates(
        values=reps.reshape(len(reps), -1),
        strata=np.zeros(len(reps), dtype=np.int64),
        units=uncertainty.unit_ids(batching.batches),
        estimate=matrix.ravel(),
        column="cka",
    )
    return Result(
        tables={"spatial_localization": df, "spatial_localization_summary": summary},
        figures={"spatial_localization": fig},
        info=info,
        images=[used],
        replicates={"spatial_localization": record},
    )
