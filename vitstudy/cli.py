"""`vitstudy run | list | layers`: a small dispatcher in front of Hydra.

Hydra owns the command line of `run` (overrides, -m/--multirun, --cfg, --info, hydra.run.dir=...,
launchers, shell completion), so `run` is stripped from argv and the @hydra.main app is called. Bad input
is turned into one line on stderr and a non-zero exit before or inside the app, never a traceback.
"""
from __future__ import annotations

import os
import sys
from importlib import resources

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import register
from .errors import VitstudyError, closest

USAGE = """usage: vitstudy COMMAND [overrides...]

commands:
  run [OVERRIDES] [-m]   run an analysis: vitstudy run analysis=cka_across model=vit_b16 reference=resnet50
  list                   the analyses, model presets and dataset presets, one line each
  layers [OVERRIDES]     the layers a model's layer spec selects: vitstudy layers model=vit_b16 layers=all
  collect DIR... [--out OUT]   summary tables, figure grids, failed jobs and index.html for sweep directories
  train [OVERRIDES]      train a model: vitstudy train model=vit_mini_cifar dataset=imagefolder dataset.root=DIR recipe=quick

Hydra's own flags work after `run`: --cfg job, --info, -m/--multirun, hydra.run.dir=DIR, --help.
"""
GROUPS = {"analysis": "analysis", "model": "model", "reference": "model", "dataset": "dataset", "experiment": "experiment"}
FAILED: list[str] = []

register()


def presets(group: str) -> dict[str, str]:
    """Preset names of a config group with their first comment line (or `name:`) as a description."""
    out = {}
    folder = resources.files("vitstudy.conf") / group
    if not folder.is_dir():
        return out
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            lines = entry.read_text().splitlines()
            comment = next((l.lstrip("# ").strip() for l in lines if l.startswith("#") and "@package" not in l), "")
            name = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("name:")), "")
            out[entry.name[:-5]] = f"{name}  {comment}".strip() if group == "model" else (comment or name)
    return out


def fail(message: str, code: int = 2) -> None:
    print(f"vitstudy: error: {message}", file=sys.stderr)
    raise SystemExit(code)


@hydra.main(version_base="1.3", config_path="pkg://vitstudy.conf", config_name="config")
def hydra_app(cfg: DictConfig) -> None:
    from .pipeline.runner import check_config, execute

    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    multirun = hc.mode.name == "MULTIRUN"
    try:
        check_config(cfg)
        result, written = execute(cfg, out_dir, overrides=list(hc.overrides.task))
    except VitstudyError as err:
        if not multirun:
            fail(str(err))
        from .pipeline.results import write_json

        write_json(os.path.join(out_dir, "failed.json"), {"error": str(err), "overrides": list(hc.overrides.task)})
        FAILED.append(out_dir)
        print(f"vitstudy: error in {out_dir}: {err}", file=sys.stderr)
        return
    csvs = ", ".join(p.name for p in written if p.suffix == ".csv")
    state = "cached (same config and weights; force=true recomputes)" if result is None else "done"
    print(f"vitstudy: {cfg.analysis.name} {state}; outputs in {out_dir} ({csvs}, figures, run.json)")


def normalise(args: list[str]) -> list[str]:
    """`reference=resnet50` means the model preset at package `reference`: Hydra spells it `model@reference=...`."""
    out = []
    for a in args:
        for prefix in ("", "+", "++", "~"):
            if a.startswith(prefix + "reference=") or (prefix == "~" and a == "~reference"):
                a = prefix + "model@reference" + a[len(prefix) + len("reference"):]
                break
        out.append(a)
    return out


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        fail(f"cannot parse overrides {overrides}: {str(err).splitlines()[0]}")


def precheck(args: list[str], groups: dict[str, str] = GROUPS, config_name: str = "config") -> None:
    """Fail early, in one line, on unknown group choices and on configs that do not compose."""
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    flags = [a for a in args if a.startswith("-")]
    for ov in _parse(overrides):
        if ov.key_or_group == "hydra/launcher":
            check_launcher(str(ov.value()))
            continue
        key = "reference" if ov.package == "reference" else ov.key_or_group
        group = groups.get(key)
        if group is None or ov.is_delete():
            continue
        valid = presets(group)
        values = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
        for value in values:
            if value is not None and str(value) not in valid:
                fail(f"unknown {key} '{value}'; {closest(str(value), valid)} (see `vitstudy list`)")
    if any(f in ("-m", "--multirun", "--help", "-h", "--hydra-help", "--info", "-i") for f in flags):
        return
    compose(overrides, config_name)


LAUNCHER_PLUGINS = {"slurm": "hydra_submitit_launcher", "local": "hydra_submitit_launcher",
                    "submitit_slurm": "hydra_submitit_launcher", "submitit_local": "hydra_submitit_launcher",
                    "joblib": "hydra_joblib_launcher"}


def check_launcher(name: str) -> None:
    """The cluster launchers are an optional extra: say what to install instead of a Hydra traceback."""
    import importlib.util

    plugin = LAUNCHER_PLUGINS.get(name)
    if plugin and importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        fail(f"hydra/launcher={name} needs the {plugin.replace('_', '-')} plugin: pip install 'vitstudy[cluster]'")
    if name not in LAUNCHER_PLUGINS and name != "basic":
        fail(f"unknown launcher '{name}'; valid: slurm, local, joblib, basic")


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    """The resolved config for `overrides` (Python API and pre-checks); errors become VitstudyError lines."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("vitstudy.conf", version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=normalise(overrides))
            from omegaconf import OmegaConf

            OmegaConf.resolve(cfg)
            return cfg
    except Exception as err:
        text = str(err).strip().splitlines()
        cause = err.__cause__
        detail = str(cause).strip().splitlines()[0] if cause and str(cause).strip() else ""
        msg = (text[0] if text else type(err).__name__).rstrip(".")
        if detail and detail not in msg:
            msg = f"{msg}: {detail}"
        raise VitstudyError(f"bad config: {msg}") from None
    finally:
        GlobalHydra.instance().clear()


def cmd_list() -> None:
    for group, title in (("analysis", "analyses (analysis=NAME)"), ("model", "model presets (model=NAME, reference=NAME; any timm name via model.name=...)"),
                         ("dataset", "dataset presets (dataset=NAME)"), ("experiment", "experiments (experiment=NAME)")):
        items = presets(group)
        if items:
            print(f"{title}:")
            for name, desc in items.items():
                print(f"  {name:<22} {desc}")


def cmd_layers(args: list[str]) -> None:
    from . import analyses  # noqa: F401  (analysis modules register their layer presets)
    from .pipeline import models
    from .pipeline.layers import resolve

    cfg = compose(args)
    key = "reference" if any(a.startswith("reference") for a in args) and not any(a.startswith("model") for a in args) else "model"
    m = models.load(cfg[key], key)
    for layer in resolve(m.module, cfg[key].layers, m.data_config["input_size"]):
        print(f"{layer.name:<40} {layer.layout:<5} {tuple(layer.shape)}")


def cmd_collect(args: list[str]) -> None:
    import argparse

    from .collect import collect

    parser = argparse.ArgumentParser(prog="vitstudy collect", description="summarise sweep directories")
    parser.add_argument("dirs", nargs="*")
    parser.add_argument("--out", default=None, help="summary folder (default: <first DIR>/summary)")
    ns = parser.parse_args(args)
    out = collect(ns.dirs, ns.out)
    print(f"vitstudy: summary in {out} (index.html, tables, figure grids, failed.csv)")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if "-sc" in args or "--shell-completion" in args:  # Hydra's completion: route to the app, drop `run`
        if os.environ.get("COMP_LINE"):
            os.environ["COMP_LINE"] = os.environ["COMP_LINE"].replace(" run ", " ", 1)
        sys.argv = [sys.argv[0]] + [a for a in args if a != "run"]
        hydra_app()
        return
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    cmd, rest = args[0], args[1:]
    try:
        if cmd == "run":
            FAILED.clear()
            rest = normalise(rest)
            precheck(rest)
            sys.argv = [sys.argv[0]] + rest
            hydra_app()
            if FAILED:
                fail(f"{len(FAILED)} job(s) failed; see failed.json in: {', '.join(FAILED)}", code=1)
        elif cmd == "list":
            cmd_list()
        elif cmd == "layers":
            cmd_layers(rest)
        elif cmd == "collect":
            cmd_collect(rest)
        elif cmd == "train":
            from .train.app import main as train_main

            train_main(rest)
        else:
            fail(f"unknown command '{cmd}'; {closest(cmd, ['run', 'list', 'layers', 'collect', 'train'])}")
    except VitstudyError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except BrokenPipeError:  # output piped into `head` and closed
        sys.stderr.close()


if __name__ == "__main__":
    main()
