"""What `vitstudy list` says about the similarity measures, without importing them (they import torch).

Each measure's class attributes and dataclass fields are literals in vitstudy/measures/*.py: they are read from
the source, as compose.analysis_summaries reads the analyses' summaries; once vitstudy.measures is loaded, from
the registry itself. tests/test_similarity.py checks that both readings agree.
"""
from __future__ import annotations

import ast
import math
import sys
from dataclasses import dataclass, field
from importlib import resources

# Measure's defaults for what a subclass may leave out (vitstudy/measures/__init__.py)
DEFAULTS = {"invariances": (), "invariances_y": None, "symmetric": True, "streams": False, "full_set": True}


@dataclass
class MeasureInfo:
    """One measure as `vitstudy list` shows it."""

    name: str
    summary: str
    range: tuple[float, float]
    invariances: tuple[str, ...]
    invariances_y: tuple[str, ...] | None
    symmetric: bool
    streams: bool
    full_set: bool
    parameters: dict = field(default_factory=dict)


def _literal(node):
    """A literal, with ±inf spelt math.inf, np.inf or float("inf")."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, ast.Attribute) and node.attr == "inf":
        return math.inf
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "float" and node.args:
        return float(_literal(node.args[0]))
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e) for e in node.elts)
    return ast.literal_eval(node)


def _classes() -> dict[str, tuple[ast.ClassDef, bool]]:
    """Every class of vitstudy/measures/*.py by name, and whether it is decorated with `register`."""
    out = {}
    for entry in sorted((resources.files("vitstudy") / "measures").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".py") and not entry.name.startswith("_"):
            for node in ast.walk(ast.parse(entry.read_text())):
                if isinstance(node, ast.ClassDef):
                    registered = any(getattr(d, "id", None) == "register" for d in node.decorator_list)
                    out[node.name] = (node, registered)
    return out


def _attributes(cls: ast.ClassDef, classes) -> tuple[dict, dict]:
    """(class attributes, dataclass fields with defaults), bases first, then the class's own."""
    attrs, params = dict(DEFAULTS), {}
    for base in cls.bases:
        if getattr(base, "id", None) in classes:
            a, p = _attributes(classes[base.id][0], classes)
            attrs.update(a)
            params.update(p)
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            targets = stmt.targets[0].elts if isinstance(stmt.targets[0], ast.Tuple) else [stmt.targets[0]]
            values = stmt.value.elts if isinstance(stmt.value, ast.Tuple) and len(targets) > 1 else [stmt.value]
            for t, v in zip(targets, values):
                if isinstance(t, ast.Name):
                    try:
                        attrs[t.id] = _literal(v)
                    except ValueError:
                        pass
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            try:
                params[stmt.target.id] = _literal(stmt.value)
            except ValueError:
                params[stmt.target.id] = ast.unparse(stmt.value)
    return attrs, params


def from_source() -> list[MeasureInfo]:
    classes = _classes()
    out = []
    for node, registered in classes.values():
        if not registered:
            continue
        a, params = _attributes(node, classes)
        if "name" not in a:  # not a literal: the registry-based test (tests/test_similarity.py) reports the gap
            continue
        out.append(MeasureInfo(a["name"], a.get("summary", ""), tuple(a.get("range", (math.nan, math.nan))),
                               tuple(a["invariances"]), None if a["invariances_y"] is None else tuple(a["invariances_y"]),
                               a["symmetric"], a["streams"], a["full_set"], params))
    return sorted(out, key=lambda m: m.name)


def from_registry() -> list[MeasureInfo]:
    from . import measures

    return [MeasureInfo(name, c.summary, tuple(c.range), tuple(c.invariances),
                        None if c.invariances_y is None else tuple(c.invariances_y), c.symmetric, c.streams, c.full_set,
                        c.parameters()) for name, c in sorted(measures.MEASURES.items())]


def lines(infos: list[MeasureInfo] | None = None) -> list[str]:
    """The `measures` section of `vitstudy list`: name and summary, then range, forms, symmetry, invariances, parameters."""
    if infos is None:
        infos = from_registry() if "vitstudy.measures" in sys.modules else from_source()
    out = ["measures (analysis=similarity_within|similarity_across|similarity_grid analysis.measure=NAME; docs/measures.md):"]
    for m in infos:
        forms = " and ".join(f for f, has in (("streams (minibatch)", m.streams), ("full set", m.full_set)) if has)
        params = ", ".join(f"analysis.{k}={v}" for k, v in m.parameters.items()) or "none"
        inv = ", ".join(m.invariances) or "none of the listed"
        if m.invariances_y is not None:
            inv = f"{inv} (x side); {', '.join(m.invariances_y) or 'none'} (y side)"
        out.append(f"  {m.name:<22} {m.summary}")
        out.append(f"  {'':<22}   range [{m.range[0]:g}, {m.range[1]:g}]; {forms}; "
                   f"{'symmetric' if m.symmetric else 'asymmetric (x predicts y)'}; invariant to {inv}; parameters: {params}")
    return out
