"""Attention math: pixel-distance matrices, mean attention distance, attention rollout, map statistics.

Mean attention distance (Raghu et al. 2021 Figs 3-4; Dosovitskiy et al. 2020 Fig. 7 right / Fig. 11): for a
query patch i, sum_j A_ij * D_ij with D_ij the Euclidean distance in pixels between the patch centres
(grid distance times the patch stride); prefix tokens (CLS, distillation, registers) are dropped from
queries and keys *without* renormalising the rows (as in the Kornblith gist the paper's figure came from),
then the mean is taken over query patches. Prefix rows and columns of the distance matrix are zero, so one
matrix-vector product per (image, head) gives the per-image mean with no temporaries.

Rollout (Abnar & Zuidema 2020; Dosovitskiy et al. Fig. 6): R = Ã_L ... Ã_1, Ã_l = r A_l + (1 - r) I with
A_l the head-averaged attention of block l and r = 0.5. Across windows and stages (`nearest_links`,
`pull_back`): each block's attention is over its own queries and keys; a key (or pooled query) is the mean of the
block's input tokens nearest to it (its footprint: the merge's or pooling's own cells), so a stage change carries
the rollout through that pooling matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def grid_coords(gh: int, gw: int) -> torch.Tensor:
    """(gh * gw, 2) float64 (row, col) of each patch in row-major token order."""
    r, c = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=1)


def pixel_distances(coords_a: torch.Tensor, coords_b: torch.Tensor, stride: tuple[float, float]) -> torch.Tensor:
    """Euclidean distance in pixels between grid positions (rows scaled by stride[0], columns by stride[1])."""
    s = torch.tensor(stride, dtype=torch.float64)
    return torch.cdist(coords_a * s, coords_b * s)


def distance_matrix(gh: int, gw: int, stride: tuple[float, float], num_prefix: int = 0) -> torch.Tensor:
    """(N, N) float64 pixel distances for N = num_prefix + gh * gw tokens; prefix rows/columns are 0."""
    xy = grid_coords(gh, gw)
    n = num_prefix + gh * gw
    d = torch.zeros(n, n, dtype=torch.float64)
    d[num_prefix:, num_prefix:] = pixel_distances(xy, xy, stride)
    return d


def window_distances(
    gh: int, gw: int, window: tuple[int, int], shift: tuple[int, int], stride: tuple[float, float]
) -> torch.Tensor:
    """(windows, n, n) pixel distances inside each Swin window, in the original (unshifted) image frame.

    Swin rolls the feature map by -shift, partitions it into windows (row-major, tokens row-major inside a
    window) and masks pairs that the roll brought together from opposite borders. A token at position
    (y, x) of the rolled map sits at ((y + shift_h) mod gh, (x + shift_w) mod gw) in the image; distances
    are taken there, so unmasked pairs get their true distance and masked (wrapped) pairs, whose weights
    are ~exp(-100), get their true long distance too.
    """
    wh, ww = window
    sh, sw = shift
    out = []
    local = grid_coords(wh, ww)
    for wr in range(gh // wh):
        for wc in range(gw // ww):
            y = (local[:, 0] + wr * wh + sh) % gh
            x = (local[:, 1] + wc * ww + sw) % gw
            xy = torch.stack([y, x], dim=1)
            out.append(pixel_distances(xy, xy, stride))
    return torch.stack(out)


def mean_distance(attn: torch.Tensor, dist: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Per (image, head) mean over query patches of sum_j A_ij D_ij: attn (B, H, N, N), dist (N, N) -> (B, H)."""
    b, h, n, _ = attn.shape
    return (attn.reshape(b, h, n * n) @ dist.reshape(n * n).to(attn.dtype)) / num_queries


def window_mean_distance(attn: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Swin: attn (B * windows, H, n, n), dist (windows, n, n) -> (B, H), the mean over every query token."""
    nw, n, _ = dist.shape
    bw, h = attn.shape[:2]
    a = attn.reshape(bw // nw, nw, h, n * n)
    per = torch.einsum("bwhk,wk->bh", a, dist.reshape(nw, n * n).to(attn.dtype))
    return per / (nw * n)


def uniform_distance(dist: torch.Tensor, num_prefix: int = 0) -> float:
    """The mean attention distance a head attending uniformly would get: the reference for "local" and "global".

    Global attention, dist (N, N): every query spreads 1/N over all N tokens, prefix keys included and dropped
    without renormalising as `mean_distance` does, so sum_j D_ij / N averaged over the patch queries. Swin windows,
    dist (windows, n, n): 1/n over the window's tokens, averaged over every query.
    """
    if dist.dim() == 3:
        return float(dist.to(torch.float64).mean())
    n = dist.shape[-1]
    return float(dist[num_prefix:, num_prefix:].to(torch.float64).sum() / ((n - num_prefix) * n))


def grouped_mean_distance(attn: torch.Tensor, dist: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Described sites: attn (B, groups, H, Q, K), dist (groups, Q, K) with uncounted query rows zero -> (B, H),
    the mean over the `num_queries` counted queries of sum_k A_qk D_qk."""
    b, g, h, q, k = attn.shape
    a = attn.transpose(1, 2).reshape(b, h, g * q * k)
    return (a @ dist.reshape(g * q * k).to(attn.dtype)) / num_queries


def spread_distance(attn: torch.Tensor, key_dist: torch.Tensor) -> torch.Tensor:
    """A query without a position (CrossViT's class token in cross-attention): attn (B, H, K), key_dist (K, K) with
    prefix rows/columns zero -> (B, H) sum_jk A_j A_k D_jk, the expected distance between two keys drawn from the
    head's attention (0 for one key, the keys' mean pairwise distance for uniform attention); prefix keys drop out
    without renormalising, as in `mean_distance`."""
    a = attn.to(torch.float64)
    return torch.einsum("bhk,kl,bhl->bh", a, key_dist.to(a), a)


@dataclass
class PrefixSplit:
    """Per (image, head): the share of attention that goes to prefix keys (class token, registers) and the mean
    distance over patch keys only, each query's row renormalised over its patch keys."""

    share: torch.Tensor  # (B, H) mean over counted queries of sum_{k prefix} A_qk
    patch_distance: torch.Tensor  # (B, H) mean over counted queries of sum_{k patch} A_qk D_qk / sum_{k patch} A_qk


def prefix_split(attn: torch.Tensor, dist: torch.Tensor, queries: torch.Tensor, prefix: torch.Tensor) -> PrefixSplit:
    """attn (B, groups, H, Q, K), dist (groups, Q, K), queries (groups, Q) bool: the counted queries, prefix
    (groups, K) bool: the prefix keys -> PrefixSplit. A query whose patch mass is 0 has no patch distance and is left
    out of that mean (NaN if every query is). One image at a time: temporaries stay the size of one image's maps."""
    dt = torch.promote_types(attn.dtype, torch.float32)  # a bf16/fp16 forward: sum in float32 at least
    pre = prefix.to(attn.device, dt)
    patch = (~prefix).to(attn.device, dt)
    d = dist.to(attn.device, dt)
    q = queries.to(attn.device)[:, None, :]  # (groups, 1, Q)
    n = q.sum().to(torch.float64)
    share, per_query = [], []
    for a in attn:  # (groups, H, Q, K)
        a = a.to(dt)
        mass = torch.einsum("ghqk,gk->ghq", a, patch).to(torch.float64)
        moment = torch.einsum("ghqk,gqk->ghq", a, d).to(torch.float64)
        ok = q & (mass > 0)
        share.append((torch.einsum("ghqk,gk->ghq", a, pre).to(torch.float64) * q).sum(dim=(0, 2)) / n)
        per = torch.where(ok, moment / torch.where(ok, mass, torch.ones_like(mass)), torch.zeros_like(mass))
        per_query.append(per.sum(dim=(0, 2)) / ok.sum(dim=(0, 2)).to(torch.float64))
    return PrefixSplit(torch.stack(share), torch.stack(per_query))


def cell_centres(n: int) -> torch.Tensor:
    """(n,) float64 centres of n grid cells in cell units: 0.5, 1.5, ..."""
    return torch.arange(n, dtype=torch.float64) + 0.5


def pooled_centres(n: int, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Centres (in input-cell units) of the footprints of a conv/pool over n cells: output j covers input cells
    j*stride - padding .. j*stride - padding + kernel - 1 (padding cells included: the footprint is the kernel's)."""
    m = (n + 2 * padding - kernel) // stride + 1
    return torch.arange(m, dtype=torch.float64) * stride - padding + (kernel - 1) / 2 + 0.5


def adaptive_centres(n: int, m: int) -> torch.Tensor:
    """Centres (in input-cell units) of adaptive average pooling's m bins over n cells (torch's bin edges)."""
    j = torch.arange(m)
    start = torch.div(j * n, m, rounding_mode="floor")
    end = torch.div((j + 1) * n + m - 1, m, rounding_mode="floor")
    return (start + end).to(torch.float64) / 2


def plane(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(len(rows) * len(cols), 2) positions, row-major, from per-axis coordinates."""
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=1)


def pair_distances(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """(groups, Q, K) Euclidean distances between pixel positions; NaN positions (prefix tokens, padded queries)
    give 0, so they drop out of sum_k A_qk D_qk without renormalising the rows."""
    d = torch.cdist(q_pos.nan_to_num(0.0), k_pos.nan_to_num(0.0), compute_mode="donot_use_mm_for_euclid_dist")
    bad = q_pos.isnan().any(-1)[:, :, None] | k_pos.isnan().any(-1)[:, None, :]
    return d.masked_fill(bad, 0.0)


def residual_attention(attn_mean: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Ã = r A + (1 - r) I for head-averaged attention (B, N, N); rows still sum to 1 when A's do."""
    eye = torch.eye(attn_mean.shape[-1], dtype=attn_mean.dtype, device=attn_mean.device)
    return residual * attn_mean + (1.0 - residual) * eye


def rollout(attns: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """R = Ã_L ... Ã_1 from per-block head-averaged attention maps (B, N, N), first block first."""
    r = None
    for a in attns:
        a = residual_attention(a, residual)
        r = a if r is None else a @ r
    return r


@dataclass
class Links:
    """A sparse (targets x inputs) pooling matrix: target `src[i]` spreads weight `weight[i]` onto input `dst[i]`."""

    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor


def nearest_links(targets: torch.Tensor, inputs: torch.Tensor, prefix: int) -> Links:
    """Tokens to the tokens they are computed from, by position: each input token (T, 2) belongs to its nearest
    target, prefix i (the first `prefix` rows of both) to prefix i; a target that no input chose takes its nearest
    input (e.g. a zero-padded key beyond the border); each target averages its members evenly. NaN targets after
    the prefix (padded queries) get none. This is the pooling matrix of a patch merging or strided pooling, and the
    identity when both sets have the same positions."""
    nt, ni = len(targets), len(inputs)
    tv = torch.arange(prefix, nt)[~targets[prefix:].isnan().any(-1)]
    iv = torch.arange(prefix, ni)
    d = torch.cdist(inputs[iv], targets[tv], compute_mode="donot_use_mm_for_euclid_dist")
    owner = tv[d.argmin(dim=1)]  # each input's target
    src, dst = [owner], [iv]
    lonely = tv[torch.bincount(owner, minlength=nt)[tv] == 0]
    if len(lonely):
        src.append(lonely)
        dst.append(
            iv[torch.cdist(targets[lonely], inputs[iv], compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)]
        )
    src.append(torch.arange(prefix))
    dst.append(torch.arange(prefix))
    src, dst = torch.cat(src), torch.cat(dst)
    count = torch.bincount(src, minlength=nt).to(torch.float64)
    return Links(src, dst, 1.0 / count[src])


def pull_back(v: torch.Tensor, links: Links, num_inputs: int) -> torch.Tensor:
    """v (B, targets) -> (B, inputs): v @ M for the pooling matrix M of `links`."""
    out = v.new_zeros(v.shape[0], num_inputs)
    return out.index_add_(1, links.dst.to(v.device), v[:, links.src.to(v.device)] * links.weight.to(v.device, v.dtype))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of distributions over the trailing dims (normalised to sum 1 first)."""
    flat = p.reshape(p.shape[0], -1).to(torch.float64)
    flat = flat / flat.sum(dim=1, keepdim=True)
    logs = torch.where(flat > 0, flat.log(), torch.zeros_like(flat))
    return -(flat * logs).sum(dim=1)


def centre_mask(gh: int, gw: int, fraction: float = 0.5) -> torch.Tensor:
    """Patches whose centre lies in the central box covering `fraction` of the height and the width."""
    lo, hi = (1 - fraction) / 2, (1 + fraction) / 2
    rows = (torch.arange(gh, dtype=torch.float64) + 0.5) / gh
    cols = (torch.arange(gw, dtype=torch.float64) + 0.5) / gw
    return ((rows >= lo) & (rows <= hi))[:, None] & ((cols >= lo) & (cols <= hi))[None, :]


def centre_share(maps: torch.Tensor, fraction: float = 0.5) -> torch.Tensor:
    """Share of each (B, gh, gw) map's mass inside the central box."""
    mask = centre_mask(maps.shape[1], maps.shape[2], fraction).to(maps.device)
    maps = maps.to(torch.float64)
    return (maps * mask).sum(dim=(1, 2)) / maps.sum(dim=(1, 2))


def max_entropy(num: int) -> float:
    return math.log(num)
