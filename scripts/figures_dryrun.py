#!/usr/bin/env python
"""Dry run of every paper-figure target (`make figures`, `make figures-cifar`, `make report`) on stand-ins.

    !!!  RANDOM "pretrained" weights and generated images: the run checks that every target's configs, weights,
    !!!  data loaders, analyses, figures and the report work end to end, offline; its numbers mean nothing.

Steps (each idempotent, all under --out, default outputs/dryrun):
1. stand-in weights for the selected targets' pretrained models (scripts/standin_weights.py) in a scratch Hugging
   Face cache (--cache, default OUT/hf-cache; reusable between dry runs);
2. generated images in the ImageNet val/train and CIFAR-10/100 layouts (scripts/standin_data.py) in OUT/data;
3. for the CIFAR targets, three tiny CIFAR-100 trainings (1 epoch; the presets with smaller widths/depths, which
   the checkpoints carry) in OUT/train/<preset>, read back through the Makefile's CIFAR_CKPT;
4. `make <target>` for each target with FIG_OUT=OUT/figures and FIG_ARGS that shrink the work (8 images in
   batches of 4, one CKA repeat, and the per-analysis knobs below), HF_HUB_CACHE=<cache>, HF_HUB_OFFLINE=1 and a
   result cache of its own (VITSTUDY_CACHE=OUT/cache: results keyed by a timm tag must never meet real runs);
5. `make report`, then a check: every job of every target has run.json with status complete, its <analysis>.csv
   and a .png, index.html has a section for every target and failed.csv no job; a table of wall times (OUT/dryrun.csv).

    python scripts/figures_dryrun.py                          # all 25 targets (about 17 GB of fp32 stand-ins)
    python scripts/figures_dryrun.py --targets fig-parkkim-2a fig-parkkim-9 --dtype float16
    make figures-dryrun DRYRUN_DIR=/scratch/dry DRYRUN_ARGS="--dtype float16"
Exit status 1 when a target fails or its outputs are incomplete (the table says which and why).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import standin_weights  # noqa: E402

# Overrides added to every target (FIG_ARGS) and to some (their analysis' own image counts and iterations).
# force=true: always recompute (parkkim_fig2a and _fig8 shrink to the same config, and a rerun of the dry run
# should run the code again, not copy its cached results).
COMMON_ARGS = ["dataset.num_images=8", "dataset.batch_size=4", "dataset.num_workers=0", "cka.repeats=1", "force=true"]
TARGET_ARGS = {
    "fig-raghu-6": ["analysis.num_images=4"],
    "fig-raghu-11": ["analysis.shots=1", "analysis.num_val=8", "analysis.num_test=8", "analysis.max_tokens=2"],
    "fig-raghu-13": ["analysis.num_train=16", "analysis.num_val=8", "analysis.num_test=8"],
    "fig-parkkim-1a": ["analysis.steps=3", "analysis.num_images=8"],
    "fig-parkkim-1c": ["analysis.batch_size=4", "analysis.num_batches=1", "analysis.top_k=2", "analysis.max_iter=3"],
}
# Tiny CIFAR-100 models for the CIFAR targets: the same presets, narrower/shallower (the kwargs go into the
# checkpoint, so the figure targets rebuild these shapes). Not model.kwargs the preset sets itself (AlterNet's
# layers/heads): at analysis time a preset's kwargs win over the checkpoint's.
TRAIN_ARGS = {
    "vit_ti_cifar": ["model.kwargs.depth=2", "model.kwargs.embed_dim=48"],
    "resnet50_cifar": ["+model.kwargs.channels=[32,64,128,256]", "+model.kwargs.stem_chs=16"],
    "alternet50_cifar": ["+model.kwargs.channels=[32,64,128,256]", "+model.kwargs.stem_chs=16"],
}
TRAIN_COMMON = [
    "dataset=cifar100",
    "recipe=quick",
    "recipe.epochs=1",
    "recipe.warmup_epochs=0",
    "recipe.batch_size=20",
    "dataset.fraction=0.2",
    "dataset.val_images=20",
    "dataset.num_workers=0",
    "progress=false",
]


def make_list(name: str, makefile: Path = REPO / "Makefile") -> list[str]:
    """The words of a `NAME = ...` list in the Makefile (continuation lines joined)."""
    text = makefile.read_text().replace("\\\n", " ")
    m = re.search(rf"^{name}\s*[:?]?=\s*(.*)$", text, re.M)
    return m.group(1).split() if m else []


def expected_jobs(target: str) -> int:
    """Jobs of the target's multirun: the product of its comma sweeps (Makefile line and experiment sweeper)."""
    from omegaconf import OmegaConf

    overrides = standin_weights.makefile_runs(REPO / "Makefile")[target]
    sweeps = [o.split("=", 1)[1] for o in overrides if "=" in o]
    exp = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")), None)
    if exp:
        node = OmegaConf.load(REPO / "conf" / "experiment" / f"{exp}.yaml")
        params = OmegaConf.select(node, "hydra.sweeper.params") or {}
        sweeps += [str(v) for v in params.values()]
    return math.prod(len(re.split(r",(?![^\[]*\])", v)) for v in sweeps)


# The stand-in data each Makefile variable stands for (scripts/standin_data.py --parts).
DATA_PARTS = {
    "$(VAL)": "imagenet-val",
    "$(IMAGENET_VAL)": "imagenet-val",
    "$(IMAGENET_TRAIN)": "imagenet-train",
    "$(CIFAR_ROOT)": "cifar10",
    "$(CIFAR100_ROOT)": "cifar100",
}


def data_parts(target: str) -> set[str]:
    line = standin_weights.makefile_lines(REPO / "Makefile")[target]
    return {part for var, part in DATA_PARTS.items() if var in line}


def uses_cifar(target: str) -> bool:
    """Whether the target reads CIFAR through torchvision (then the stand-ins need scripts/standin_vitstudy.py)."""
    return bool(data_parts(target) & {"cifar10", "cifar100"})


def checkpoints(targets: list[str], train_dir: Path) -> set[str]:
    """The presets whose checkpoints (CIFAR_CKPT=train_dir) the targets read."""
    runs = standin_weights.makefile_runs(REPO / "Makefile", {"CIFAR_CKPT": str(train_dir)})
    presets = set()
    for target in targets:
        for overrides in standin_weights._expand(runs[target]):
            cfg = standin_weights.compose(tuple(overrides))
            for key in ("model", "reference"):
                ckpt = cfg[key].checkpoint
                if ckpt and Path(ckpt).is_relative_to(train_dir):
                    presets.add(Path(ckpt).relative_to(train_dir).parts[0])
    return presets


def run_logged(cmd: list[str], log: Path, env: dict, cwd: Path = REPO) -> tuple[int, float]:
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t


def last_error(log: Path) -> str:
    lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    errs = [l for l in lines if "error" in l.lower() or l.startswith(("Traceback", "make:"))]
    return (errs or lines or [""])[-1][:300]


def check_target(fig_out: Path, target: str, expected: int) -> tuple[list[dict], str]:
    """(one record per job, problem or '') for a finished target directory."""
    root = fig_out / target
    jobs = sorted({h.parent for h in root.rglob(".hydra")}) if root.is_dir() else []
    records, problems = [], []
    for job in jobs:
        rec_path = job / "run.json"
        if (job / "failed.json").is_file():
            problems.append(
                f"{job.name}: failed: {json.loads((job / 'failed.json').read_text()).get('error', '')[:200]}"
            )
            continue
        if not rec_path.is_file():
            problems.append(f"{job.name}: no run.json")
            continue
        rec = json.loads(rec_path.read_text())
        analysis = rec.get("analysis", "?")
        if rec.get("status") != "complete":
            problems.append(f"{job.name}: status {rec.get('status')}")
        if not (job / f"{analysis}.csv").is_file():
            problems.append(f"{job.name}: no {analysis}.csv")
        if not list(job.glob("*.png")):
            problems.append(f"{job.name}: no .png figure")
        records.append(
            {
                "job": job.name,
                "analysis": analysis,
                "wall_time_s": rec.get("wall_time_s"),
                "weights": {k: v.get("weights") for k, v in (rec.get("models") or {}).items()},
            }
        )
    if len(jobs) != expected:
        problems.append(f"{len(jobs)} job directories, expected {expected}")
    return records, "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "dryrun")
    ap.add_argument("--cache", type=Path, default=None, help="stand-in Hugging Face cache (default OUT/hf-cache)")
    ap.add_argument("--targets", nargs="*", default=None, help="figure targets (default: FIGURES and CIFAR_FIGURES)")
    ap.add_argument("--dtype", choices=standin_weights.DTYPES, default="float32", help="of the stand-in weights")
    ap.add_argument(
        "--make",
        default="make -o .venv/.installed",
        help="make command (default: treat the venv stamp as up to date; `make figures-dryrun` checks it)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for every step (1 is much faster on a CPU shared with other jobs)",
    )
    ap.add_argument("--data-args", default="", help="more options for scripts/standin_data.py, e.g. '--val-classes 10'")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args(argv)

    figures, cifar = make_list("FIGURES"), make_list("CIFAR_FIGURES")
    targets = args.targets if args.targets is not None else figures + cifar
    unknown = [t for t in targets if t not in figures + cifar]
    if unknown:
        ap.error(f"unknown targets {unknown}; valid: {' '.join(figures + cifar)}")
    out = args.out.resolve()
    cache = (args.cache or out / "hf-cache").resolve()
    fig_out, data, train_dir, logs = out / "figures", out / "data", out / "train", out / "logs"
    py = sys.executable
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", VITSTUDY_CACHE=str(out / "cache"))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(standin_weights.WARNING, flush=True)

    # 1. stand-in weights for what these targets need
    needed = sorted(standin_weights.figure_names(targets=targets))
    t0 = time.perf_counter()
    if needed:
        cmd = [py, str(SCRIPTS / "standin_weights.py"), *needed, "--cache", str(cache), "--dtype", args.dtype]
        rc, _ = run_logged(cmd, logs / "standin_weights.log", env)
        print((logs / "standin_weights.log").read_text().splitlines()[-2], flush=True)
        if rc:
            print(f"stand-in weights failed: {last_error(logs / 'standin_weights.log')}")
            return 1
    weights_s = time.perf_counter() - t0

    # 2. generated images
    parts = sorted(set().union(*(data_parts(t) for t in targets)))
    cmd = [py, str(SCRIPTS / "standin_data.py"), str(data), "--parts", *parts, *shlex.split(args.data_args)]
    rc, data_s = run_logged(cmd, logs / "standin_data.log", env)
    if rc:
        print(f"stand-in data failed: {last_error(logs / 'standin_data.log')}")
        return 1
    wrapper = f"{shlex.quote(py)} {shlex.quote(str(SCRIPTS / 'standin_vitstudy.py'))}"

    # 3. tiny CIFAR-100 checkpoints
    train_s = 0.0
    for preset in sorted(checkpoints(targets, train_dir)):
        extra = TRAIN_ARGS.get(preset, [])
        if not (train_dir / preset / "checkpoints" / "best.pt").is_file():
            cmd = [
                py,
                str(SCRIPTS / "standin_vitstudy.py"),
                "train",
                f"model={preset}",
                *TRAIN_COMMON,
                *extra,
                f"dataset.root={data / 'cifar'}",
                f"hydra.run.dir={train_dir / preset}",
            ]
            rc, s = run_logged(cmd, logs / f"train-{preset}.log", env)
            train_s += s
            print(
                f"train {preset}: {'ok' if rc == 0 else 'FAILED: ' + last_error(logs / f'train-{preset}.log')} ({s:.0f} s)",
                flush=True,
            )

    # 4. the targets
    base = shlex.split(args.make) + [
        f"FIG_OUT={fig_out}",
        f"IMAGENET_VAL={data / 'imagenet' / 'val'}",
        f"IMAGENET_TRAIN={data / 'imagenet' / 'train'}",
        f"CIFAR_ROOT={data / 'cifar'}",
        f"CIFAR100_ROOT={data / 'cifar'}",
        f"CIFAR_CKPT={train_dir}",
    ]
    rows = []
    for target in targets:
        fig_args = COMMON_ARGS + TARGET_ARGS.get(target, [])
        cmd = (
            base + [target, f"FIG_ARGS={' '.join(fig_args)}"] + ([f"VITSTUDY={wrapper}"] if uses_cifar(target) else [])
        )
        shutil.rmtree(fig_out / target, ignore_errors=True)  # a fresh sweep directory: no jobs left from earlier runs
        rc, seconds = run_logged(cmd, logs / f"{target}.log", env)
        records, problem = check_target(fig_out, target, expected_jobs(target))
        if rc and not problem:
            problem = f"exit {rc}: {last_error(logs / f'{target}.log')}"
        elif rc:
            problem = f"exit {rc}: {problem}; {last_error(logs / f'{target}.log')}"
        analyses = sorted({r["analysis"] for r in records})
        rows.append(
            {
                "target": target,
                "status": "ok" if not problem else "FAILED",
                "seconds": round(seconds, 1),
                "jobs": len(records),
                "analyses": " ".join(analyses),
                "problem": problem,
            }
        )
        print(
            f"{target:<20} {rows[-1]['status']:<7} {seconds:7.1f} s  {len(records)} job(s) {' '.join(analyses)}"
            + (f"\n    {problem}" if problem else ""),
            flush=True,
        )

    # 5. the report
    report_problem = ""
    if not args.no_report:
        rc, report_s = run_logged(shlex.split(args.make) + ["report", f"FIG_OUT={fig_out}"], logs / "report.log", env)
        index = fig_out / "summary" / "index.html"
        if rc or not index.is_file():
            report_problem = f"make report failed: {last_error(logs / 'report.log')}"
        else:
            text = index.read_text()
            missing = sorted(r["target"] for r in rows if f"<section id='{r['target']}'" not in text)
            failed_jobs = (fig_out / "summary" / "failed.csv").read_text().strip().splitlines()[1:]
            if missing:
                report_problem = f"index.html has no section for {missing}"
            elif failed_jobs:
                report_problem = f"the report lists {len(failed_jobs)} failed or missing jobs (see {fig_out / 'summary' / 'failed.csv'})"
        print(
            f"{'report':<20} {'ok' if not report_problem else 'FAILED':<7} {report_s:7.1f} s  {index}"
            + (f"\n    {report_problem}" if report_problem else ""),
            flush=True,
        )

    with open(out / "dryrun.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["target"])
        w.writeheader()
        w.writerows(rows)
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    failed = [r["target"] for r in rows if r["status"] != "ok"]
    print(
        f"stand-ins {weights_s:.0f} s, data {data_s:.0f} s, training {train_s:.0f} s, targets "
        f"{sum(r['seconds'] for r in rows):.0f} s; stand-in cache {cache}: {size / 2**30:.2f} GiB"
    )
    print(
        f"{len(rows) - len(failed)}/{len(rows)} targets ok"
        + (f"; failed: {' '.join(failed)}" if failed else "")
        + f"; table {out / 'dryrun.csv'}, logs {logs}, report {fig_out / 'summary' / 'index.html'}"
    )
    print(standin_weights.WARNING)
    return 1 if failed or report_problem else 0


if __name__ == "__main__":
    raise SystemExit(main())
