"""vitstudy: how Vision Transformers work and how they differ from CNNs, measured on any timm model.

Notebook use, without Hydra's command line:

    import vitstudy
    cfg = vitstudy.compose(["analysis=cka_across", "model=vit_b16", "reference=resnet50"])
    result = vitstudy.run(cfg, out_dir="outputs/nb")        # result.tables (DataFrames), result.figures
    df = vitstudy.cka_matrix(model, loader, other=resnet)   # any torch models and any DataLoader

Importing the package registers vitstudy's own architectures with timm (`timm.create_model("alternet50_cifar")`,
`vit_mini_cifar`, ...) as soon as timm is imported (`_timm_hook`): the package itself imports no torch, timm or
matplotlib, so `vitstudy --help` and `vitstudy list` answer at once.
"""

from __future__ import annotations

from ._timm_hook import install as _install_timm_hook
from .errors import VitstudyError

_install_timm_hook()  # vitstudy's own models are registered with timm when timm loads

from ._version import __version__

__all__ = ["cka_matrix", "compose", "run", "VitstudyError", "__version__"]


def __getattr__(name: str):  # the API (Hydra, the analyses) loads on first use
    if name in ("cka_matrix", "compose", "run"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitstudy' has no attribute '{name}'")


def __dir__() -> list[str]:  # the lazily loaded API too (tab completion, dir(vitstudy))
    return sorted(set(globals()) | set(__all__))
