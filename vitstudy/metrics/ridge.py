"""Closed-form ridge-regression linear probes to {-1, 1} one-hot targets (Dosovitskiy et al. 2020, App. D;
Raghu et al. 2021, App. A), streamed: only XᵀX, XᵀY and the sums are kept (float64), never the features.

Many probes are fitted at once (a leading probe axis P: one per token, or 1): features (n, P, D).
The bias is not penalised (features and targets are centred with their train means). The ridge strength
is relative: λ = alpha · tr(C) / D for the centred covariance C, so one grid suits every layer's scale.
One eigendecomposition per probe serves the whole alpha grid.
"""

from __future__ import annotations

import torch


def targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """{-1, 1} one-hot targets (n, K), float64."""
    y = torch.full((len(labels), num_classes), -1.0, dtype=torch.float64, device=labels.device)
    y[torch.arange(len(labels), device=labels.device), labels.long()] = 1.0
    return y


class RidgeAccumulator:
    """Running XᵀX, XᵀY, ΣX, ΣY, n for P probes of dimension D and K classes."""

    def __init__(self, probes: int, dim: int, num_classes: int, device="cpu"):
        f64 = dict(dtype=torch.float64, device=device)
        self.xx = torch.zeros(probes, dim, dim, **f64)
        self.xy = torch.zeros(probes, dim, num_classes, **f64)
        self.sx = torch.zeros(probes, dim, **f64)
        self.sy = torch.zeros(num_classes, **f64)
        self.n = 0
        self.num_classes = num_classes

    def update(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """x: (n, P, D) features of the same n images for each probe; labels: (n,)."""
        x = x.to(torch.float64)
        y = targets(labels.to(x.device), self.num_classes)
        xp = x.transpose(0, 1)  # (P, n, D)
        self.xx += xp.transpose(1, 2) @ xp
        self.xy += torch.einsum("pnd,nk->pdk", xp, y)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.n += x.shape[0]

    def solve(self, alphas) -> "RidgeSolution":
        n = self.n
        mx, my = self.sx / n, self.sy / n
        cov = self.xx - n * mx[:, :, None] * mx[:, None, :]  # centred XᵀX
        cxy = self.xy - n * mx[:, :, None] * my[None, None, :]  # centred XᵀY
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0)
        dim = cov.shape[-1]
        scale = (torch.diagonal(cov, dim1=1, dim2=2).sum(-1) / dim).clamp_min(torch.finfo(torch.float64).tiny)
        lams = torch.as_tensor(list(alphas), dtype=torch.float64, device=cov.device)[None, :] * scale[:, None]  # (P, A)
        return RidgeSolution(mx, my, evecs, evals, evecs.transpose(1, 2) @ cxy, lams)


class RidgeSolution:
    """W_λ = V diag(1 / (e + λ)) Vᵀ Cxy for every λ of the grid; predictions through the eigenbasis."""

    def __init__(self, mx, my, evecs, evals, vtb, lams):
        self.mx, self.my, self.evecs, self.evals, self.vtb, self.lams = mx, my, evecs, evals, vtb, lams

    def weights(self, a: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (P, D, K), b (P, K)) for grid entry a."""
        inv = 1.0 / (self.evals + self.lams[:, a : a + 1])  # (P, D)
        w = self.evecs @ (inv[:, :, None] * self.vtb)
        b = self.my[None, :] - torch.einsum("pd,pdk->pk", self.mx, w)
        return w, b

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted class (A, n, P) for features x (n, P, D), for every grid entry."""
        z = torch.einsum("npd,pde->npe", x.to(torch.float64) - self.mx[None], self.evecs)  # eigenbasis coordinates
        preds = []
        for a in range(self.lams.shape[1]):
            inv = 1.0 / (self.evals + self.lams[:, a : a + 1])  # (P, D)
            scores = torch.einsum("npe,pek->npk", z * inv[None], self.vtb) + self.my
            preds.append(scores.argmax(-1))
        return torch.stack(preds)
