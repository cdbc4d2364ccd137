"""Analyses by name. Each is a short recipe over the shared pieces (pipeline, anatomy, metrics, plots) that
returns tables and figures; it owns no file I/O, plotting style or model loading of its own.

`_registry` holds the registry; importing this package imports every analysis module, which registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._registry import REGISTRY, Analysis, Params, Result, get, params_of, register

__all__ = ["REGISTRY", "Analysis", "Params", "Result", "get", "params_of", "register"]

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "common":
        importlib.import_module(f"{__name__}.{_module.name}")
