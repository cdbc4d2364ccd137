"""Write the constructed ("planted") tiny ViTs of docs/token_analyses.md: random-init ViT-Ti layout at 32 px
(patch 8: a 4x4 grid), 3 blocks, a class token and 4 registers, with one known answer each.

- planted_norm.pth: the position embedding adds a dense vector of norm 1000 at patch 6 (row 1, col 2), so that
  patch is a high-norm token in every block and no other token is;
- planted_channel.pth: the position embedding adds -5000 on channel 37 of patch 8 (token 13), so that
  (token 13, channel 37) is the largest |activation| of every block.

    .venv/bin/python scripts/planted_tokens.py --out /tmp/planted
    .venv/bin/vitstudy run analysis=token_norms model.name=vit_tiny_patch16_224 model.pretrained=false \\
        model.checkpoint=/tmp/planted/planted_norm.pth model.kwargs.img_size=32 model.kwargs.patch_size=8 \\
        model.kwargs.depth=3 +model.kwargs.reg_tokens=4 dataset=cifar10_sample
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch

KWARGS = dict(img_size=32, patch_size=8, depth=3, reg_tokens=4)


def build(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **KWARGS).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = build()
    offset = model.pos_embed.shape[1] - 16  # pos_embed covers the 5 prefix tokens (no_embed_class false)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(model.embed_dim, generator=g)
    with torch.no_grad():
        model.pos_embed[0, offset + 6] += v * 1000.0 / v.norm()
    torch.save(model.state_dict(), args.out / "planted_norm.pth")
    model = build()
    with torch.no_grad():
        model.pos_embed[0, offset + 8, 37] = -5000.0
    torch.save(model.state_dict(), args.out / "planted_channel.pth")
    print(f"wrote {args.out}/planted_norm.pth and planted_channel.pth")


if __name__ == "__main__":
    main()
