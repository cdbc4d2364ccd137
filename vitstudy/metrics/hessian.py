"""Loss-landscape math (Park & Kim 2022, Figs 1a, 1c, 4): Hessian-vector products by double backprop, top-k
Hessian eigenvalues by power iteration with deflation (as PyHessian), and filter-normalised random
directions (Li et al. 2018, as Park & Kim's `ops/loss_landscapes.py`). Pure tensor math: no files, no data sets.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Vec = list  # list[torch.Tensor], one per parameter


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def _normalise(v: Sequence[torch.Tensor]) -> Vec:
    n = _dot(v, v).sqrt()
    return [x / (n.to(x.dtype) + 1e-12) for x in v]


def hvp_fn(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> Callable[[Sequence[torch.Tensor]], Vec]:
    """v -> H v for the Hessian of `loss` w.r.t. `params`; the gradient graph is built once and reused."""
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v):
        return list(torch.autograd.grad(grads, params, grad_outputs=list(v), retain_graph=True))

    return hvp


def top_eigenvalues(
    hvp: Callable,
    like: Sequence[torch.Tensor],
    k: int = 5,
    max_iter: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> tuple[list[float], list[int]]:
    """The k eigenvalues of largest magnitude by power iteration, each started from a Gaussian vector and
    kept orthogonal to the eigenvectors already found (PyHessian's `eigenvalues`). Stops when the relative
    change of the Rayleigh quotient is below `tol`. Returns (eigenvalues, iterations used per eigenvalue)."""
    values, vectors, iters = [], [], []
    for _ in range(k):
        v = _normalise([torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in like])
        eig, used = None, 0
        for used in range(1, max_iter + 1):
            for u in vectors:  # Gram-Schmidt against found eigenvectors
                c = _dot(v, u)
                v = [x - c.to(x.dtype) * y for x, y in zip(v, u)]
            v = _normalise(v)
            hv = hvp(v)
            cur = float(_dot(hv, v))
            v = _normalise([h.detach() for h in hv])
            if eig is not None and abs(eig - cur) / (abs(eig) + 1e-6) < tol:
                eig = cur
                break
            eig = cur
        values.append(eig)
        vectors.append(v)
        iters.append(used)
    return values, iters


SKIP_KEYS = ("pos_embed", "relative_position")


def filter_normalise(direction: torch.Tensor, weight: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """d * ‖w‖ / (‖d‖ + eps) with norms over dim 0 (keepdim), as the official `normalize_filter`: every slice
    d[:, j, ...] gets the norm of w[:, j, ...]."""
    w, d = weight.double(), direction.double()
    out = (
        torch.linalg.vector_norm(w, dim=0, keepdim=True) / (torch.linalg.vector_norm(d, dim=0, keepdim=True) + eps) * d
    )
    return out.to(direction.dtype)


def random_direction(
    named: Sequence[tuple[str, torch.Tensor]], generator: torch.Generator | None = None, skip: Sequence[str] = SKIP_KEYS
) -> Vec:
    """A Gaussian direction over all parameters, filter-normalised; zero for tensors with fewer than 2
    dimensions (biases, norm affine) and for names containing any of `skip` (position embeddings)."""
    out = []
    for name, p in named:
        if p.dim() < 2 or any(s in name for s in skip):
            out.append(torch.zeros_like(p))
        else:
            d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            out.append(filter_normalise(d, p.detach()))
    return out


def l2_sum_of_norms(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_params ‖θ‖₂ (a sum of norms, Park & Kim's `ops/norm.py`), in float64."""
    return sum(torch.linalg.vector_norm(p.double()) for p in params)
