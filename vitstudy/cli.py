"""`vitstudy run | list | layers | collect | compare | train | demo | tour`: a small dispatcher in front of Hydra.

Hydra owns the command line of `run` (overrides, -m/--multirun, --cfg, --info, hydra.run.dir=...,
launchers, shell completion), so `run` is stripped from argv and the @hydra.main app is called. Bad input
is turned into one line on stderr and a non-zero exit before or inside the app, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import measure_list
from .compose import load_analyses, normalise, precheck, presets
from .errors import VitstudyError, closest, fail
from .launch import FAILED, job_failed, submitit_launch

USAGE = """usage: vitstudy COMMAND [overrides...]

commands:
  run [OVERRIDES] [-m]   run an analysis: vitstudy run analysis=cka_across model=vit_b16 reference=resnet50
  list [ANALYSIS]        the analyses, model presets and dataset presets, one line each; an analysis' parameters
  layers [OVERRIDES]     the layers a model's layer spec selects: vitstudy layers model=vit_b16 layers=all
  collect DIR... [--out OUT]   summary tables, figure grids, failed jobs and index.html for sweep directories
  compare RUN [RUN_B] --a Q --b Q [--by COLS]   does a value differ between two selections beyond its uncertainty
  train [OVERRIDES]      train a model: vitstudy train model=vit_mini_cifar dataset=imagefolder dataset.root=DIR recipe=quick
  demo [--out DIR] [OVERRIDES]   CKA within and across the bundled trained CIFAR-10 ViT and ResNet; prints 3 findings
  tour [--out DIR] [OVERRIDES]   the demo plus 7 more paper analyses on them, collected into one HTML report

Hydra's own flags work after `run`: --cfg job, --info, -m/--multirun, hydra.run.dir=DIR, --help.
"""


@hydra.main(version_base="1.3", config_path="pkg://vitstudy.conf", config_name="config")
def hydra_app(cfg: DictConfig) -> dict | None:
    from .pipeline.runner import check_config, execute

    hc = HydraConfig.get()
    out_dir = hc.runtime.output_dir
    multirun = hc.mode.name == "MULTIRUN"
    try:
        check_config(cfg)
        result, written = execute(cfg, out_dir, overrides=list(hc.overrides.task))
    except VitstudyError as err:
        settle_log(out_dir, str(err), keep=multirun)
        if not multirun:
            fail(str(err))
        return job_failed(out_dir, err, list(hc.overrides.task))
    csvs = ", ".join(p.name for p in written if p.suffix == ".csv")
    state = "cached (same config and weights; force=true recomputes)" if result is None else "done"
    info = result.info if result is not None else _recorded(out_dir)  # a cached result: what its run.json says
    notes = sorted(
        {u["note"] for u in (info.get("uncertainty") or {}).values() if isinstance(u, dict) and u.get("note")}
    )  # e.g. intervals from too few batches
    print(
        f"vitstudy: {cfg.analysis.name} {state}; outputs in {out_dir} ({csvs}, figures, run.json)"
        + "".join(f"; WARNING: {n}" for n in notes)
    )


def _recorded(out_dir: str) -> dict:
    """The run.json of a finished run directory ({} when it has none)."""
    import json

    from .pipeline.results import RECORD

    path = Path(out_dir) / RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def settle_log(out_dir: str, message: str, keep: bool = False) -> None:
    """A failed job's log ends with the error line (progress lines above it show how far the job got). A single
    run's log that is still empty is removed instead (the error is on the terminal, no empty `.log` is left behind);
    a sweep job's is kept (`keep`): failed.json and the report link it as the job's log."""
    import logging
    from pathlib import Path

    root = logging.getLogger()
    for handler in list(root.handlers):
        path = Path(getattr(handler, "baseFilename", "") or "")
        if not isinstance(handler, logging.FileHandler) or path.parent.resolve() != Path(out_dir).resolve():
            continue
        handler.flush()
        if not keep and path.is_file() and path.stat().st_size == 0:
            root.removeHandler(handler)
            handler.close()
            path.unlink()
        else:
            handler.emit(logging.LogRecord("vitstudy", logging.ERROR, "", 0, f"vitstudy: error: {message}", None, None))


def cmd_list(args: list[str]) -> None:
    """Every analysis and preset; `vitstudy list NAME` (or `analysis=NAME`): one analysis' parameters."""
    if args:
        print_params(args[0].split("=", 1)[-1])
        return
    for group, title in (
        ("analysis", "analyses (analysis=NAME)"),
        ("model", "model presets (model=NAME, reference=NAME; any timm name via model.name=...)"),
        ("dataset", "dataset presets (dataset=NAME)"),
        ("experiment", "experiments (experiment=NAME)"),
    ):
        items = presets(group)
        if items:
            print(f"{title}:")
            for name, desc in items.items():
                print(f"  {name:<22} {desc}")
        if group == "analysis":
            print("\n".join(measure_list.lines()))


# The shared `cka.*` settings each analysis reads (vitstudy.config.CKAConfig); `vitstudy list NAME` shows them.
CKA_SETTINGS = {
    "cka_within": ("estimator", "repeats", "tail", "gram_dtype"),
    "cka_across": ("estimator", "repeats", "tail", "gram_dtype", "null"),
    "cka_grid": ("estimator", "repeats", "tail", "gram_dtype"),
    "similarity_within": ("repeats", "tail", "gram_dtype"),
    "similarity_across": ("repeats", "tail", "gram_dtype"),
    "similarity_grid": ("repeats", "tail", "gram_dtype"),
    "skip_ablation": ("estimator", "repeats", "tail", "gram_dtype"),
    "local_global_cka": ("tail",),
    "spatial_localization": ("tail",),
}


def _field_lines(prefix: str, schema: type, keys=None) -> list[str]:
    """`prefix.key=default   comment` for the fields of a dataclass schema (the comment beside each field)."""
    import inspect
    import json
    import re
    from dataclasses import MISSING, fields

    comments = {}
    for cls in reversed(schema.__mro__):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        comments.update(re.findall(r"^\s+(\w+): [^#\n]*#\s*(.*)$", source, flags=re.M))
    out = []
    for f in fields(schema):
        if f.name == "name" or (keys is not None and f.name not in keys):
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        value = default if isinstance(default, str) else json.dumps(default)  # as written on the command line
        out.append(f"  {prefix}.{f.name}={value}".ljust(44) + f" {comments.get(f.name, '')}".rstrip())
    return out


def print_params(name: str) -> None:
    """An analysis' parameters with their defaults and the comment beside each field of its schema, then the
    shared `cka.*` settings it reads."""
    from .config import CKAConfig

    analysis = load_analyses().get(name)
    print(f"{name}: {analysis.summary}")
    own = _field_lines("analysis", analysis.params)
    print("\n".join(own) if own else "  (no parameters of its own)")
    if name in CKA_SETTINGS:
        print("shared CKA settings it reads:")
        print("\n".join(_field_lines("cka", CKAConfig, CKA_SETTINGS[name])))
    if name.startswith("similarity_"):
        print("\n".join(measure_list.lines()))
    print("also: layers, tokens, dataset.*, seed, precision (all values: vitstudy run analysis=NAME --cfg job)")


def cmd_layers(args: list[str]) -> None:
    from .compose import compose
    from .pipeline import models
    from .pipeline.layers import resolve

    cfg = compose(args)
    key = (
        "reference"
        if any(a.startswith("reference") for a in args) and not any(a.startswith("model") for a in args)
        else "model"
    )
    node = cfg[key]
    if not node.checkpoint:  # module names and shapes do not depend on the weights: none are downloaded or read
        node.pretrained = False
    m = models.load(node, key)
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


def cmd_demo(cmd: str, args: list[str]) -> None:
    """`vitstudy demo|tour [--out DIR] [OVERRIDES]`: the bundled models; extra overrides apply to every run."""
    from . import demo

    out = f"outputs/{cmd}"
    if "--out" in args:
        i = args.index("--out")
        if i + 1 >= len(args):
            raise VitstudyError(f"--out needs a directory: vitstudy {cmd} --out DIR")
        out, args = args[i + 1], args[:i] + args[i + 2 :]
    getattr(demo, cmd)(lambda overrides: main(["run", *overrides]), out, args)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if "-sc" in args or "--shell-completion" in args:  # Hydra's completion: route to the app, drop `run`
        if os.environ.get("COMP_LINE"):
            os.environ["COMP_LINE"] = os.environ["COMP_LINE"].replace(" run ", " ", 1)
        sys.argv = [sys.argv[0]] + [a for a in args if a != "run"]
        load_analyses()
        hydra_app()
        return
    if not args:  # no command: the usage, on stderr, and the exit status of a usage error
        print(USAGE, end="", file=sys.stderr)
        raise SystemExit(2)
    if args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    cmd, rest = args[0], args[1:]
    try:
        if cmd in ("run", "train"):
            FAILED.clear()
            with (
                submitit_launch()
            ):  # sweeps through submitit: finished jobs skipped, one-line sbatch errors (launch.py)
                if cmd == "run":
                    rest = normalise(rest)
                    precheck(rest)
                    load_analyses()  # their parameter schemas, for Hydra (precheck stops early for --help)
                    sys.argv = [sys.argv[0]] + rest
                    hydra_app()
                else:
                    from .train.app import main as train_main

                    train_main(rest)
            if FAILED:
                fail(f"{len(FAILED)} job(s) failed; see failed.json in: {', '.join(FAILED)}", code=1)
        elif cmd == "list":
            cmd_list(rest)
        elif cmd == "layers":
            cmd_layers(rest)
        elif cmd == "collect":
            cmd_collect(rest)
        elif cmd in ("demo", "tour"):
            cmd_demo(cmd, rest)
        elif cmd == "compare":
            from .compare import main as compare_main

            compare_main(rest)
        else:
            fail(
                f"unknown command '{cmd}'; {closest(cmd, ['run', 'list', 'layers', 'collect', 'compare', 'train', 'demo', 'tour'])}"
            )
    except VitstudyError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except BrokenPipeError:  # output piped into `head` and closed
        sys.stderr.close()


if __name__ == "__main__":
    main()
