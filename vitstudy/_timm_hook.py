"""Register vitstudy's own timm architectures (vitstudy.zoo) as soon as timm is imported, not before.

`import vitstudy` promises that `timm.create_model("alternet50_cifar")` works, but importing timm (and torch) costs
seconds that `vitstudy --help`, `vitstudy list` and a config error should not pay. So `install()` imports the zoo at
once when timm is already loaded, and otherwise wraps timm's loader so the zoo is imported right after timm itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


class _AfterTimm(importlib.abc.MetaPathFinder):
    """Finds `timm` through the other finders and runs `import vitstudy.zoo` once timm's module has executed."""

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once: the search below and every later import go the ordinary way
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_module(module):
            exec_timm(module)
            importlib.import_module("vitstudy.zoo.alternet")
            importlib.import_module("vitstudy.zoo.cifar")

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if "timm" in sys.modules:
        importlib.import_module("vitstudy.zoo.alternet")
        importlib.import_module("vitstudy.zoo.cifar")
    elif not any(isinstance(f, _AfterTimm) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimm())
