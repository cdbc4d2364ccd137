"""cProfile of what `cka_matrix` does beyond the bare forwards: the import of the API, layer resolution, data
loading, the forwards with their hooks and the CKA arithmetic, for ViT-Ti/16 vs ResNet-18 (docs/performance.md).

    python scripts/profile_cka.py --images 64 --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LINES = "_find_and_load|api.py|engine.py|probe|gram|u_center|update|__getitem__|forward_features"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    import bench_cka
    import torch

    torch.set_num_threads(args.threads)
    args.model1, args.model2, args.batch, args.layers = "vit_tiny_patch16_224", "resnet18", 32, "blocks"
    m1, m2, loader = bench_cka.build(args)
    l1, l2 = bench_cka.layer_names(m1, args.layers), bench_cka.layer_names(m2, args.layers)
    prof = cProfile.Profile()
    cpu = time.process_time()
    prof.enable()
    from vitstudy import cka_matrix  # inside, as the bench timed it before issue 20

    cka_matrix(m1, loader, other=m2, layers=l1, other_layers=l2)
    prof.disable()
    print(f"CPU {time.process_time() - cpu:.2f} s")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(LINES)


if __name__ == "__main__":
    main()
