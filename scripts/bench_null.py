"""What `cka.null=K` costs: the time of one permutation of one batch's image pairing, against the batch's plain
update (the cross product of the stacked U-centred Grams), at given layer counts and batch size.

    python scripts/bench_null.py                     # ViT-Ti blocks (13) vs ResNet-18 blocks (9), batch 32
    python scripts/bench_null.py --lx 74 --ly 102 --batch 256   # paper scale: ViT-B/16 vs ResNet-50 layers=all

Each permutation is one gather of the smaller side's n x n matrices and one (L x n^2) @ (n^2 x M) product, the
same product as the batch's own cross terms; no forward pass is repeated. Prints milliseconds per batch.
"""

from __future__ import annotations

import argparse
import time

import torch

from vitstudy.metrics.cka import MinibatchCKA


def timed(acc, ux, uy, perms, reps):
    acc.update(ux, uy, perms)  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        acc.update(ux, uy, perms)
    return (time.perf_counter() - t) / reps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lx", type=int, default=13)
    ap.add_argument("--ly", type=int, default=9)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--permutations", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, k = args.batch, args.permutations
    ux, uy = torch.randn(args.lx, n * n), torch.randn(args.ly, n * n)
    perms = torch.stack([torch.randperm(n) for _ in range(k)])
    plain = timed(MinibatchCKA(args.lx, args.ly), ux, uy, None, args.reps)
    null = timed(MinibatchCKA(args.lx, args.ly, permutations=k), ux, uy, perms, args.reps)
    per = (null - plain) / k
    print(
        f"layers {args.lx} x {args.ly}, batch {n}, {args.threads} thread(s): plain update {plain:.2f} ms/batch; "
        f"with {k} permutations {null:.2f} ms/batch; {per:.3f} ms per permutation per batch "
        f"({per / plain:.2f}x the plain update)"
    )


if __name__ == "__main__":
    main()
