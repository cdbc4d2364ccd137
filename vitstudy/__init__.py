"""vitstudy: how Vision Transformers work and how they differ from CNNs, measured on any timm model.

Notebook use, without Hydra's command line:

    import vitstudy
    cfg = vitstudy.compose(["analysis=cka_across", "model=vit_b16", "reference=resnet50"])
    result = vitstudy.run(cfg, out_dir="outputs/nb")        # result.tables (DataFrames), result.figures
    df = vitstudy.cka_matrix(model, loader, other=resnet)   # any torch models and any DataLoader
"""
from __future__ import annotations

from .errors import VitstudyError

__version__ = "0.1.0"
__all__ = ["cka_matrix", "compose", "run", "VitstudyError", "__version__"]


def __getattr__(name: str):  # the API imports torch; keep `import vitstudy` (and `vitstudy list`) light
    if name in ("cka_matrix", "compose", "run"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
