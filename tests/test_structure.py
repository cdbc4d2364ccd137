"""The package's shape: no import cycles between its modules, and the config keys that never change a result
are listed once (Python) and agree with `conf/train.yaml`'s copy."""

import ast
from pathlib import Path

from omegaconf import OmegaConf

from vitstudy.config import TRAIN_RESUME_FREE

PACKAGE = Path(__file__).resolve().parent.parent / "vitstudy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every vitstudy module `path` imports, at module level or inside functions (a lazy import is still a dependency)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vitstudy")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("vitstudy"):
                continue
            for alias in node.names:  # `from . import data` names a module; `from .x import f` names x
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != here}


def test_no_import_cycles():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py") if "conf" not in p.parts}
    graph = {m: imports(p, set(paths)) for m, p in paths.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_train_yaml_lists_the_resume_free_keys_of_the_code():
    conf = OmegaConf.load(PACKAGE.parent / "conf" / "train.yaml")
    assert list(conf.hydra.job.config.override_dirname.exclude_keys) == list(TRAIN_RESUME_FREE)
