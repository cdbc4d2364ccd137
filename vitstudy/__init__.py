"""vitstudy: how Vision Transformers work and how they differ from CNNs, measured on any timm model.

Notebook use, without Hydra's command line:

    import vitstudy
    cfg = vitstudy.compose(["analysis=cka_across", "model=vit_b16", "reference=resnet50"])
    result = vitstudy.run(cfg, out_dir="outputs/nb")        # result.tables (DataFrames), result.figures
    df = vitstudy.cka_matrix(model, loader, other=resnet)   # any torch models and any DataLoader

Importing the package registers vitstudy's own architectures with timm (`timm.create_model("alternet50_cifar")`,
`vit_mini_cifar`, ...).
"""
from __future__ import annotations

from .zoo import alternet, cifar as cifar_models  # noqa: F401,E402  (register vitstudy's own models with timm on import)
from .errors import VitstudyError

from ._version import __version__
__all__ = ["cka_matrix", "compose", "run", "VitstudyError", "__version__"]


def __getattr__(name: str):  # the API (Hydra, the analyses) loads on first use
    if name in ("cka_matrix", "compose", "run"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
