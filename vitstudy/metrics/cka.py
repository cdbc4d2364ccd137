"""Linear CKA: the unbiased minibatch estimator (Nguyen et al. 2021) and full-set biased CKA (Kornblith et al. 2019).

Notation as in docs/methods.md#cka-estimator: K = X Xᵀ for the n x p features X of one minibatch. The unbiased HSIC is
computed in the U-centred form HSIC₁(K, L) = <Ũ(K), Ũ(L)> / (n (n - 3)), which equals the Song et al.
(2012) expression exactly but avoids its float32 cancellation. Features are shifted per batch before the
Gram product (Ũ is unchanged by the shift in exact arithmetic, and a large common offset no longer
swamps the signal); U-centring and every accumulator are float64.
"""

from __future__ import annotations

import torch


def gram(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float64 Gram matrix of the (n, p) features after subtracting one of them from all.

    Any common shift of the rows leaves Ũ(K) and H K H unchanged in exact arithmetic; removing it before
    the product keeps a large common offset (post-ReLU maps) from swamping float32. Subtracting the first
    row does that as well as the batch mean and saves a full reduction pass over the features.
    """
    x = x.reshape(x.shape[0], -1)
    if x.dtype != torch.float64:  # float64 features stay float64
        x = x.to(dtype)
    x = x - x[:1]
    return (x @ x.T).to(torch.float64)


def u_center(k: torch.Tensor) -> torch.Tensor:
    """Ũ(K): the U-centred Gram matrix (Székely & Rizzo 2014), zero diagonal; needs n >= 4."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples per batch, got {n}")
    k = k.clone()
    k.fill_diagonal_(0)
    r = k.sum(dim=1)
    u = k - r[:, None] / (n - 2) - r[None, :] / (n - 2) + r.sum() / ((n - 1) * (n - 2))
    u.fill_diagonal_(0)
    return u


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    return (u_center(k) * u_center(l)).sum() / (n * (n - 3))


def hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """tr(K H L H) / (n - 1)² (Gretton et al. 2005)."""
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
    return torch.trace(k @ h @ l @ h) / (n - 1) ** 2


def cka(k: torch.Tensor, l: torch.Tensor, estimator: str = "unbiased") -> float:
    """CKA of two Gram matrices over the same examples."""
    hsic = hsic_unbiased if estimator == "unbiased" else hsic_biased
    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


class MinibatchCKA:
    """Running sums of HSIC₁ over minibatches for every pair of layers; normalised once at the end.

    `update` takes the stacked, flattened Ũ matrices of one batch (layers x n²): all layer pairs come
    from one matrix product. A batch of n images adds <Ũ(K), Ũ(L)> / (n₁(n₁ - 3)), n₁ the first batch's size:
    its HSIC₁ (Nguyen et al. Eq. 2) weighted by n(n - 3)/(n₁(n₁ - 3)), its number of image pairs relative to a full
    batch. Equal batches thus have weight 1 each, exactly as in Nguyen et al., and a short last batch counts by the
    pairs it holds instead of as much as a full one (docs/uncertainty.md). With `ys=None` (one model) the single
    L x L product serves both the cross terms and the self terms.

    Each batch's terms are also kept (float64, on the CPU: L x M per batch), so that the delete-one-batch
    jackknife (`replicates`) can say how sure the ratio is without another pass. With `permutations=K`
    (two models only), `update(ux, uy, perms)` also accumulates K cross sums with the images of the smaller side
    permuted within the batch: Ũ(P K Pᵀ) = P Ũ(K) Pᵀ, so each is one gather and one product, no forward pass.
    """

    def __init__(self, n_x: int, n_y: int | None = None, device="cpu", permutations: int = 0):
        self.within = n_y is None
        self.cross = torch.zeros(n_x, n_x if self.within else n_y, dtype=torch.float64, device=device)
        self.self_x = torch.zeros(n_x, dtype=torch.float64, device=device)
        self.self_y = None if self.within else torch.zeros(n_y, dtype=torch.float64, device=device)
        self.batches = 0
        self.unit: int | None = None  # n₁(n₁ - 3) of the first batch: the weight of a full batch
        self.terms: dict[str, list[torch.Tensor]] = {"cross": [], "self_x": [], "self_y": []}
        if permutations and self.within:
            raise ValueError("permutation nulls need two models (cross terms only)")
        self.null = (
            torch.zeros(permutations, *self.cross.shape, dtype=torch.float64, device=device) if permutations else None
        )

    def update(self, ux: torch.Tensor, uy: torch.Tensor | None = None, perms: torch.Tensor | None = None) -> None:
        n2 = ux.shape[1]
        n = int(round(n2**0.5))
        if self.unit is None:
            self.unit = n * (n - 3)
        scale = 1.0 / self.unit  # HSIC₁ of this batch times its weight n(n - 3) / unit
        if self.within:
            prod = ux @ ux.T
            term = prod * scale
            self.cross += term
            self.self_x += torch.diagonal(prod) * scale
            self.terms["cross"].append(term.to("cpu", torch.float64))  # the self terms are its diagonal
        else:
            term = (ux @ uy.T) * scale
            sx, sy = (ux * ux).sum(dim=1) * scale, (uy * uy).sum(dim=1) * scale
            self.cross += term
            self.self_x += sx
            self.self_y += sy
            self.terms["cross"].append(term.to("cpu", torch.float64))
            self.terms["self_x"].append(sx.to("cpu", torch.float64))
            self.terms["self_y"].append(sy.to("cpu", torch.float64))
            if self.null is not None:
                self._permuted(ux, uy, perms, scale)
        self.batches += 1

    def _permuted(self, ux: torch.Tensor, uy: torch.Tensor, perms: torch.Tensor, scale: float) -> None:
        """K more cross sums, each with the images of one side permuted (rows and columns of its Ũ)."""
        n = int(round(ux.shape[1] ** 0.5))
        if perms is None or perms.shape != (len(self.null), n):
            raise ValueError(f"need {len(self.null)} permutations of the batch's {n} images")
        perms = perms.to(ux.device)
        for k, p in enumerate(perms):
            idx = (p[:, None] * n + p[None, :]).flatten()
            if ux.shape[0] <= uy.shape[0]:
                self.null[k] += (ux.index_select(1, idx) @ uy.T) * scale
            else:
                self.null[k] += (ux @ uy.index_select(1, idx).T) * scale

    def state_dict(self) -> dict:
        def stacked(key):
            return torch.stack(self.terms[key]) if self.terms[key] else None

        return {
            "cross": self.cross.cpu(),
            "self_x": self.self_x.cpu(),
            "self_y": None if self.self_y is None else self.self_y.cpu(),
            "batches": self.batches,
            "unit": self.unit,
            "cross_terms": stacked("cross"),
            "self_x_terms": stacked("self_x"),
            "self_y_terms": stacked("self_y"),
            "null": None if self.null is None else self.null.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        device = self.cross.device
        self.cross, self.self_x = state["cross"].to(device), state["self_x"].to(device)
        self.self_y = None if state["self_y"] is None else state["self_y"].to(device)
        self.batches = state["batches"]
        if self.batches and not state.get("unit"):
            raise ValueError("the checkpoint predates the batch weights")
        self.unit = state.get("unit")
        self.terms = {
            k: [] if state.get(f"{k}_terms") is None else list(state[f"{k}_terms"].unbind(0))
            for k in ("cross", "self_x", "self_y")
        }
        if len(self.terms["cross"]) != self.batches:
            raise ValueError("the checkpoint does not hold every batch's HSIC terms")
        if self.null is not None:
            if state.get("null") is None or state["null"].shape != self.null.shape:
                raise ValueError("the checkpoint's permutation null does not match cka.null")
            self.null = state["null"].to(device)

    def result(self) -> torch.Tensor:
        """CKA matrix (float64, CPU). Entries whose self-HSIC is not positive come out non-finite."""
        sy = self.self_x if self.within else self.self_y
        return (self.cross / torch.sqrt(self.self_x[:, None] * sy[None, :])).cpu()

    def batch_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-batch (cross (B, L, M), self_x (B, L), self_y (B, M) or None for one model), float64 CPU."""
        cross = torch.stack(self.terms["cross"])
        if self.within:
            return cross, torch.diagonal(cross, dim1=1, dim2=2), None
        return cross, torch.stack(self.terms["self_x"]), torch.stack(self.terms["self_y"])

    def null_result(self) -> torch.Tensor | None:
        """(K, L, M) CKA of each permutation of the image pairing (the same self terms), float64 CPU."""
        if self.null is None:
            return None
        return (self.null / torch.sqrt(self.self_x[:, None] * self.self_y[None, :])).cpu()


class FullSetCKA:
    """Biased CKA over the whole image set at once (Kornblith et al. 2019), for comparison.

    The full n x n Gram needs every image's features together, so memory grows with the number of
    images (n x features per layer, float32 on CPU): use it on small sets. `kernel(x, dtype)` gives the Gram
    matrix (default: the linear `gram`; a kernel measure's `kernel` gives kernel CKA).
    """

    def __init__(self, n_x: int, n_y: int | None = None, kernel=gram):
        self.within = n_y is None
        self.kernel = kernel
        self.xs: list[list[torch.Tensor]] = [[] for _ in range(n_x)]
        self.ys: list[list[torch.Tensor]] = [] if self.within else [[] for _ in range(n_y)]

    def add(self, side: str, index: int, feats: torch.Tensor) -> None:
        # a copy: kept past the hook, the live tensor may still change in place (ReLU(inplace), `x += shortcut`)
        (self.xs if side == "x" else self.ys)[index].append(
            feats.reshape(feats.shape[0], -1).to("cpu", torch.float32, copy=True)
        )

    def result(self) -> torch.Tensor:
        def centred(parts):
            k = self.kernel(torch.cat(parts), torch.float64)
            h = k - k.mean(0, keepdim=True)
            return h - h.mean(1, keepdim=True)  # H K H

        kx = [centred(p).flatten() for p in self.xs]
        ky = kx if self.within else [centred(p).flatten() for p in self.ys]
        a, b = torch.stack(kx), torch.stack(ky)
        return ((a @ b.T) / torch.sqrt((a * a).sum(1)[:, None] * (b * b).sum(1)[None, :])).cpu()
