"""Config composition: command-line style overrides -> the resolved config, with one-line errors.

Used by the CLI (pre-checks before Hydra runs), the Python API and `vitstudy train`. Hydra owns the command line
of `vitstudy run`; this module composes the same configs outside it (`compose`) and checks overrides early
(`precheck`), so a bad value is one line before any model loads.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import resources

from omegaconf import DictConfig, OmegaConf

from .config import register
from .errors import VitstudyError, closest

GROUPS = {
    "analysis": "analysis",
    "model": "model",
    "reference": "model",
    "dataset": "dataset",
    "experiment": "experiment",
}

register()


def presets(group: str) -> dict[str, str]:
    """Preset names of a config group with their first comment line (or `name:`) as a description; the analyses
    with their one-line summary."""
    if group == "analysis":
        return analysis_summaries()
    out = {}
    folder = resources.files("vitstudy.conf") / group
    if not folder.is_dir():
        return out
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            lines = entry.read_text().splitlines()
            comment = (
                _first_paragraph(lines)
                if group == "experiment"
                else next((l.lstrip("# ").strip() for l in lines if l.startswith("#") and "@package" not in l), "")
            )
            name = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("name:")), "")
            out[entry.name[:-5]] = f"{name}  {comment}".strip() if group == "model" else (comment or name)
    return out


def _first_paragraph(lines: list[str]) -> str:
    """The header comment's description, whole (its first lines up to 'Paper finds:', a command or a blank)."""
    out = []
    for line in lines:
        if "@package" in line:
            continue
        if not line.startswith("#"):
            break
        text = line[1:]
        if not text.strip() or text.startswith("   ") or text.strip().startswith(("Paper finds", "vitstudy ")):
            if out:
                break
            continue
        out.append(text.strip())
    return " ".join(out)


def analysis_summaries() -> dict[str, str]:
    """Every analysis name with its one-line summary, read from the `@register(name, summary, ...)` lines of
    vitstudy/analyses/*.py without importing them (they import torch: seconds that `vitstudy list` and an unknown
    analysis name should not cost); the registry itself once it is loaded."""
    if "vitstudy.analyses" in sys.modules:
        from . import analyses

        return {name: a.summary for name, a in sorted(analyses.REGISTRY.items())}
    out = {}
    for entry in (resources.files("vitstudy") / "analyses").iterdir():
        if not entry.name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(entry.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "register"
                and len(node.args) >= 2
                and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args[:2])
            ):
                out[node.args[0].value] = node.args[1].value
    return dict(sorted(out.items()))


def load_analyses():
    """The analysis registry; importing it stores every analysis' parameter schema in Hydra's ConfigStore."""
    from . import analyses

    return analyses


def normalise(args: list[str]) -> list[str]:
    """`reference=resnet50` means the model preset at package `reference`: Hydra spells it `model@reference=...`."""
    out = []
    for a in args:
        for prefix in ("", "+", "++", "~"):
            if a.startswith(prefix + "reference=") or (prefix == "~" and a == "~reference"):
                a = prefix + "model@reference" + a[len(prefix) + len("reference") :]
                break
        out.append(a)
    return out


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        raise VitstudyError(f"cannot parse overrides {overrides}: {str(err).splitlines()[0]}") from None


LOCAL_LAUNCHERS = ("basic", "joblib", "local", "submitit_local")  # jobs on this machine


def precheck(args: list[str], groups: dict[str, str] = GROUPS, config_name: str = "config") -> None:
    """Fail early, in one line, on unknown group choices and on configs that do not compose."""
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    flags = [a for a in args if a.startswith("-")]
    local = True  # jobs run on this machine (Hydra's basic or joblib launcher): its devices are the jobs' devices
    for ov in _parse(overrides):
        if ov.key_or_group == "hydra/launcher":
            check_launcher(str(ov.value()))
            local = local and str(ov.value()) in LOCAL_LAUNCHERS
            continue
        key = "reference" if ov.package == "reference" else ov.key_or_group
        group = groups.get(key)
        if group is None or ov.is_delete():
            continue
        valid = presets(group)
        values = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
        for value in values:
            if value is not None and str(value) not in valid:
                raise VitstudyError(f"unknown {key} '{value}'; {closest(str(value), valid)} (see `vitstudy list`)")
    if any(f in ("--help", "-h", "--hydra-help", "--info", "-i") for f in flags):
        return
    for variant in single_runs(overrides):  # a sweep: each value once, so a bad one fails before any job starts
        config = compose(variant, config_name)
        if "analysis" in config:
            load_analyses().params_of(config)
        if local and "device" in config:  # a cluster job's devices are the node's, not this machine's
            from .runtime import resolve_device

            resolve_device(str(config.device))


def single_runs(overrides: list[str]) -> list[list[str]]:
    """Override lists that together use every value of every sweep once: the first values, then each other value
    of one sweep with the first values of the rest (a plain run: just its overrides)."""
    parsed = _parse(overrides)
    choices = []
    for text, ov in zip(overrides, parsed):
        values = None
        if ov.is_sweep_override():
            try:
                values = [f"{ov.get_key_element()}={v}" for v in ov.sweep_string_iterator()]
            except Exception:  # glob(...) and other sweeps Hydra expands itself
                values = None
        choices.append(values or [text])
    runs = [[c[0] for c in choices]]
    for i, c in enumerate(choices):
        for value in c[1:]:
            runs.append([value if j == i else other[0] for j, other in enumerate(choices)])
    return runs


LAUNCHER_PLUGINS = {
    "slurm": "hydra_submitit_launcher",
    "local": "hydra_submitit_launcher",
    "submitit_slurm": "hydra_submitit_launcher",
    "submitit_local": "hydra_submitit_launcher",
    "joblib": "hydra_joblib_launcher",
}


def check_launcher(name: str) -> None:
    """The cluster launchers are an optional extra: say what to install instead of a Hydra traceback."""
    import importlib.util

    plugin = LAUNCHER_PLUGINS.get(name)
    if plugin and importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        raise VitstudyError(
            f"hydra/launcher={name} needs the {plugin.replace('_', '-')} plugin: pip install 'vitstudy[cluster]'"
        )
    if name not in LAUNCHER_PLUGINS and name != "basic":
        raise VitstudyError(f"unknown launcher '{name}'; valid: slurm, local, joblib, basic")


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    """The resolved config for `overrides` (Python API and pre-checks); errors become VitstudyError lines."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    load_analyses()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("vitstudy.conf", version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=normalise(overrides))
            OmegaConf.resolve(cfg)
            return cfg
    except Exception as err:
        text = str(err).strip().splitlines()
        cause = err.__cause__
        detail = str(cause).strip().splitlines()[0] if cause and str(cause).strip() else ""
        msg = (text[0] if text else type(err).__name__).rstrip(".")
        unknown = re.match(r"Could not override '([\w.]+)'", msg)
        if unknown and "not in" in detail:
            raise VitstudyError(_unknown_key(unknown.group(1), overrides, config_name)) from None
        if detail and detail not in msg:
            msg = f"{msg}: {detail}"
        raise VitstudyError(f"bad config: {msg}") from None
    finally:
        GlobalHydra.instance().clear()


def _unknown_key(key: str, overrides: list[str], config_name: str) -> str:
    """'unknown parameter analysis.agregate for skip_ratio; closest: aggregate' for an override of a missing key
    (the closest keys of the deepest part of the path that exists)."""
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        cfg = compose(rest, config_name)
    except VitstudyError:
        return f"unknown key {key}"
    parts = key.split(".")
    node, depth = cfg, 0
    while depth < len(parts) - 1 and isinstance(node, DictConfig) and parts[depth] in node:
        node, depth = node[parts[depth]], depth + 1
    valid = list(node.keys()) if isinstance(node, DictConfig) else []
    if depth == 1 and parts[0] == "analysis" and len(parts) == 2:
        return f"unknown parameter {key} for {node.name}; {closest(parts[1], valid)}"
    return f"unknown key {key}: no '{parts[depth]}' in {'.'.join(parts[:depth]) or 'the config'}; {closest(parts[depth], valid)}"
