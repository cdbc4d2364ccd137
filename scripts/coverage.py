#!/usr/bin/env python
"""Which timm models the structure-dependent analyses support, measured: one small random-init architecture per
family, through the Python API (`vitstudy.run([...], out_dir=...)` with `model.pretrained=false`), a few synthetic
images. By default the six analyses that each need a different piece of a model's anatomy:
  cka_within (layers=blocks)    every block's output is one tensor (tuple-returning blocks: MViT-v2, CrossViT, TNT)
  attention_distance            where the softmax probabilities are and how tokens map to pixels
  attention_rollout             the same, composed through windows and stages (merges' pooling matrices)
  local_global_cka              one block's per-head outputs (the input of its attention's proj)
  skip_ratio                    where each residual branch z + f(z) is
  fourier (analysis.layers=latents)  the residual stream after every sublayer, laid out on a spatial grid

The outcome of each (family, analysis) is one of
  runs     the run finished and wrote its run directory;
  refused  a one-line `VitstudyError` saying what the model lacks (the line is kept);
  crashed  any other exception (its traceback goes to OUT/crashes/).
The tidy table (family, model, analysis, outcome, message, seconds) goes to OUT/coverage.csv, the families x
analyses table to OUT/coverage.md and, with --doc, to that page (docs/coverage.md). Exit status 1 when anything
crashed.

    python scripts/coverage.py                                   # 41 families x 6 analyses (~10 CPU-minutes; 20-60 min wall on 2 busy cores)
    python scripts/coverage.py --default-size --out outputs/coverage_224   # the same architectures at their default input size
    python scripts/coverage.py --doc docs/coverage.md --before outputs/coverage_main/coverage.csv
    python scripts/coverage.py --families cait beit --analyses skip_ratio attention_distance
    python scripts/coverage.py --analyses all                    # every registered analysis (about an hour)

The architectures are timm's own, shrunk with their constructor's kwargs (depth, width, image size) or taken at
their smallest variant and a small input: the same module classes as the full-size models, so the anatomy an
analysis needs is the same. Cost knobs (images, iterations) are lowered per analysis; structural defaults are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Family:
    key: str  # row label
    arch: str  # timm name
    kwargs: dict = field(default_factory=dict)  # timm.create_model kwargs that shrink it
    size: tuple = (64, 64)  # input (H, W)
    kind: str = "transformer"  # transformer, hybrid or cnn (grouping only)


# One small architecture per family: the ViT variants first, then hierarchical / hybrid transformers, then CNNs.
FAMILIES: list[Family] = [
    Family("vit", "vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), (32, 32)),
    Family(
        "vit_gap",
        "vit_base_patch16_gap_224",
        dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4),
        (32, 32),
    ),
    Family(
        "vit_registers_dinov2",
        "vit_small_patch14_reg4_dinov2",
        dict(img_size=56, depth=2, embed_dim=64, num_heads=4),
        (56, 56),
    ),
    Family("vit_nonsquare", "vit_tiny_patch16_224", dict(img_size=(32, 48), patch_size=8, depth=2), (32, 48)),
    Family("deit_distilled", "deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, depth=2), (32, 32)),
    Family(
        "deit3",
        "deit3_small_patch16_224",
        dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4),
        (32, 32),
    ),
    Family(
        "beit", "beit_base_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4), (32, 32)
    ),
    Family("eva", "eva_giant_patch14_224", dict(img_size=56, depth=2, embed_dim=64, num_heads=4), (56, 56)),
    Family("eva02", "eva02_tiny_patch14_224", dict(img_size=56, depth=2), (56, 56)),
    Family("cait", "cait_xxs24_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4), (32, 32)),
    Family(
        "convit",
        "convit_tiny",
        dict(img_size=32, patch_size=8, depth=3, local_up_to_layer=2, embed_dim=64, num_heads=4),
        (32, 32),
    ),
    Family("xcit", "xcit_nano_12_p16_224", dict(img_size=32, depth=2), (32, 32)),
    Family("pit", "pit_ti_224", dict(img_size=64), (64, 64)),
    Family(
        "swin",
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, window_size=4, depths=(2, 2), num_heads=(2, 4), embed_dim=32),
        (32, 32),
    ),
    Family(
        "swinv2",
        "swinv2_tiny_window8_256",
        dict(img_size=32, window_size=4, depths=(2, 2), num_heads=(2, 4), embed_dim=32),
        (32, 32),
    ),
    Family(
        "twins_svt",
        "twins_svt_small",
        dict(img_size=64, depths=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2), wss=(4, 4, 2, 1)),
    ),
    Family(
        "twins_pcpvt",
        "twins_pcpvt_small",
        dict(img_size=64, depths=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2)),
    ),
    Family("pvt_v2", "pvt_v2_b0", dict(depths=(1, 1, 1, 1))),
    Family("mvitv2", "mvitv2_tiny", dict(img_size=64)),
    Family("levit", "levit_128s", dict(img_size=64)),
    Family(
        "efficientformer",
        "efficientformer_l1",
        dict(depths=(1, 1, 1, 2), embed_dims=(16, 16, 32, 32), num_vit=1),
        (224, 224),
    ),
    Family("maxvit", "maxvit_nano_rw_256", dict(img_size=64)),
    Family("coatnet", "coatnet_nano_rw_224", dict(img_size=64)),
    Family("crossvit", "crossvit_tiny_240", dict(img_size=120), (120, 120)),
    Family(
        "tnt",
        "tnt_s_patch16_224",
        dict(img_size=32, patch_size=8, depth=2, embed_dim=64, inner_dim=16, num_heads_outer=4, num_heads_inner=2),
        (32, 32),
    ),
    Family("nest", "nest_tiny", dict(img_size=32, patch_size=2), (32, 32)),
    Family("coat", "coat_lite_tiny", dict(img_size=64)),
    Family("hiera", "hiera_tiny_224", dict(img_size=64)),
    Family("vit_hybrid_r26", "vit_small_r26_s32_224", dict(img_size=64, depth=2), kind="hybrid"),
    Family("resnet", "resnet18", {}, kind="cnn"),
    Family("resnetv2_bit", "resnetv2_50x1_bit", {}, kind="cnn"),
    Family("convnext", "convnext_atto", {}, kind="cnn"),
    Family("regnet", "regnetx_002", {}, kind="cnn"),
    Family("efficientnet", "efficientnet_b0", {}, kind="cnn"),
    Family("mobilenetv3", "mobilenetv3_small_050", {}, kind="cnn"),
    Family("densenet", "densenet121", {}, kind="cnn"),
    Family("vgg", "vgg11", dict(mlp_ratio=0.0625), kind="cnn"),
    Family("byobnet_gernet", "gernet_s", {}, kind="cnn"),
    Family("convmixer", "convmixer_768_32", {}, kind="cnn"),
    Family("halonet", "halonet26t", dict(img_size=256), (256, 256), kind="hybrid"),
    Family("poolformer", "poolformer_s12", {}, kind="cnn"),
]

TIMM_KWARGS = (
    "img_size",
    "patch_size",
    "depth",
    "embed_dim",
    "num_heads",
    "num_classes",
    "global_pool",
    "class_token",
    "drop_path_rate",
    "window_size",
)  # keys the model schema has (no `+` needed)
DEFAULT_ANALYSES = [
    "cka_within",
    "attention_distance",
    "attention_rollout",
    "local_global_cka",
    "skip_ratio",
    "fourier",
]
# The structure each default analysis is asked for, said explicitly (they are also the defaults today).
STRUCTURE = {"cka_within": ["layers=blocks"], "fourier": ["analysis.layers=latents"]}
COMMON = [
    "model.pretrained=false",
    "model.kwargs.num_classes=10",
    "reference.name=resnet18",
    "reference.pretrained=false",
    "reference.data.input_size=[3,32,32]",
    "reference.kwargs.num_classes=10",
    "dataset=synthetic",
    "dataset.image_size=64",
    "dataset.num_images=8",
    "dataset.batch_size=4",
    "dataset.num_workers=0",
    "cache.dir=",
    "progress=false",
    "device=cpu",
]
# Cost knobs only (images, iterations, bands); every structural default is kept.
CHEAPER = {
    "attention_distance": ["analysis.blocks=[0,-1]"],  # the figure's blocks; the CSV has every block either way
    "attention_rollout": ["analysis.num_show=2"],
    "hessian": ["analysis.batch_size=4", "analysis.num_batches=1", "analysis.top_k=1", "analysis.max_iter=2"],
    "loss_landscape": ["analysis.steps=2", "analysis.num_images=4"],
    "linear_probe": ["analysis.num_train=16", "analysis.num_val=8", "analysis.num_test=8", "analysis.max_tokens=2"],
    "receptive_field": ["analysis.num_images=4"],
    "frequency_noise": ["analysis.bands=[0.5]"],
}


def at_default_size(f: Family) -> Family:
    """The same shrunk architecture at its timm default input size (img_size set to it, patch size left at the
    architecture's own): the structure at the resolution users run, e.g. NesT's 14x14 blocks at 224 px."""
    import timm

    size = tuple(int(v) for v in timm.models.get_pretrained_cfg(f.arch).input_size[-2:])
    kwargs = {k: v for k, v in f.kwargs.items() if k != "patch_size"}
    if "img_size" in kwargs:
        kwargs["img_size"] = size if size[0] != size[1] else size[0]
    return Family(f.key, f.arch, kwargs, size, f.kind)


def value(v) -> str:
    """A Python value as a Hydra override value (tuples as lists)."""
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def model_node(f: Family) -> str:
    """The family's model as a Hydra dict literal (cka_grid's analysis.models entries)."""
    kw = ",".join(f"{k}:{value(v)}" for k, v in {**f.kwargs, "num_classes": 10}.items())
    return f"{{name:{f.arch},kwargs:{{{kw}}},data:{{input_size:[3,{f.size[0]},{f.size[1]}]}}}}"


def overrides(f: Family, analysis: str) -> list[str]:
    out = [
        f"analysis={analysis}",
        f"model.name={f.arch}",
        f"model.data.input_size=[3,{f.size[0]},{f.size[1]}]",
        *COMMON,
    ]
    out += [f"{'' if k in TIMM_KWARGS else '+'}model.kwargs.{k}={value(v)}" for k, v in f.kwargs.items()]
    out += STRUCTURE.get(analysis, []) + CHEAPER.get(analysis, [])
    if analysis == "cka_grid":
        out += [
            f"analysis.models=[{model_node(f)},{{name:resnet18,kwargs:{{num_classes:10}},data:{{input_size:[3,32,32]}}}}]",
            "analysis.pretrained=false",
        ]
    return out


@dataclass
class Outcome:
    family: str
    model: str  # timm architecture name
    analysis: str
    outcome: str  # runs, refused, crashed
    message: str
    seconds: float


def run_one(f: Family, analysis: str, out: Path, keep: bool) -> Outcome:
    import vitstudy
    from vitstudy.errors import VitstudyError

    run_dir = out / "runs" / f.key / analysis if keep else Path(tempfile.mkdtemp(prefix="cov-"))
    t = time.perf_counter()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vitstudy.run(overrides(f, analysis), out_dir=run_dir, progress=False)
        result = ("runs", "")
    except VitstudyError as err:
        result = ("refused", str(err))
    except Exception as err:  # a crash is what this script is looking for
        first = (str(err).strip().splitlines() or [""])[0]
        result = ("crashed", f"{type(err).__name__}: {first}"[:300])
        (out / "crashes").mkdir(parents=True, exist_ok=True)
        (out / "crashes" / f"{f.key}__{analysis}.txt").write_text(traceback.format_exc())
    finally:
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return Outcome(f.key, f.arch, analysis, *result, round(time.perf_counter() - t, 2))


SYMBOL = {"runs": "✓", "refused": "–", "crashed": "**CRASH**"}


def read_before(path: str | None) -> dict[tuple[str, str], str]:
    """(family, analysis) -> outcome of an earlier coverage.csv (e.g. measured on main before a change)."""
    if not path:
        return {}
    with open(path, newline="") as fh:
        return {(r["family"], r["analysis"]): r["outcome"] for r in csv.DictReader(fh)}


def markdown(
    outcomes: list[Outcome],
    analyses: list[str],
    families: list[Family],
    title: str = "",
    before: dict[tuple[str, str], str] | None = None,
) -> str:
    """The families x analyses table, its legend and the refusal lines; with `before`, the counts then and now and
    the cells that changed (✓ˆ: runs now, refused before)."""
    before = before or {}
    cell = {(o.family, o.analysis): o for o in outcomes}
    counts = {k: sum(o.outcome == k for o in outcomes) for k in SYMBOL}
    lines = [title] if title else []
    lines += [
        f"{len(families)} families x {len(analyses)} analyses: {counts['runs']} run, {counts['refused']} refused "
        f"in one line, {counts['crashed']} crashed. ✓ runs, – refused (the line is listed below the table)"
        + (", ✓ˆ runs now and was refused before." if before else "."),
        "",
    ]
    if before:
        lines += ["| analysis | runs before | runs now |", "| --- | --- | --- |"]
        for a in analyses:
            then = sum(before.get((f.key, a)) == "runs" for f in families)
            now = sum(cell[(f.key, a)].outcome == "runs" for f in families if (f.key, a) in cell)
            lines.append(f"| `{a}` | {then} / {len(families)} | {now} / {len(families)} |")
        lines.append("")
    lines += [
        "| family | timm model | " + " | ".join(f"`{a}`" for a in analyses) + " |",
        "| --- | --- | " + " | ".join("---" for _ in analyses) + " |",
    ]
    for f in families:
        row = []
        for a in analyses:
            o = cell.get((f.key, a))
            mark = SYMBOL[o.outcome] if o else ""
            if o and o.outcome == "runs" and before.get((f.key, a)) not in (None, "runs"):
                mark += "ˆ"
            row.append(mark)
        lines.append(f"| {f.key} | `{f.arch}` | " + " | ".join(row) + " |")
    refusals = [o for o in outcomes if o.outcome != "runs"]
    if refusals:
        lines += ["", "<details><summary>Why each refusal (and crash) happened</summary>", ""]
        for o in refusals:
            tag = "CRASH " if o.outcome == "crashed" else ""
            lines.append(f"- {tag}{o.family} / `{o.analysis}`: {o.message}")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def write_doc(path: Path, table: str) -> None:
    """The coverage page: what was measured, how to regenerate it, the table (atomic write)."""
    head = (
        "# Coverage: which timm families each analysis runs on\n\n"
        "Measured by `scripts/coverage.py`: one small random-init architecture per family (timm's own module classes, "
        "shrunk with constructor kwargs), a few synthetic images, through the Python API. A cell is ✓ when the run "
        "finished and wrote its run directory, – when vitstudy refused in one line (the lines are listed below the "
        "table). Random init: the numbers themselves are not shown here, only whether each analysis finds the "
        "structure it needs.\n\nRegenerate (about 10 CPU-minutes, 20-40 min wall on 2 busy cores; `--before` adds the then/now "
        "counts; the second table, at each family's default input size, comes from `--default-size`):\n\n"
        "    PYTHONPATH=$PWD python scripts/coverage.py --doc docs/coverage.md [--before OLD/coverage.csv]\n"
        "    PYTHONPATH=$PWD python scripts/coverage.py --default-size --analyses attention_distance attention_rollout "
        "local_global_cka fourier --out outputs/coverage_default\n\n"
        "Where the anatomy lives: `vitstudy/anatomy/families.py` (residual branches per block family), "
        "`attention.py` (attention sites; per family in docs/attention_families/README.md), `tokens.py` (token grids), `latents.py`. Residual branches that no module "
        "outputs alone (BEiT/EVA's gamma inside the addition, CaiT/ConViT/CoaT's shared drop-path, MViT-v2's pooled "
        "shortcut) are derived in float64 as post - z. At random init some branches are exactly zero (Swin-V2 and "
        "timm ResNets zero-init their last norm): `skip_ratio` then runs and reports an infinite, flagged ratio.\n\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + table)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--families", nargs="*", help="family keys (default: all); see FAMILIES in this script")
    ap.add_argument("--analyses", nargs="*", help=f"analysis names, or 'all' (default: {' '.join(DEFAULT_ANALYSES)})")
    ap.add_argument("--out", default="outputs/coverage", help="coverage.csv, coverage.md and crash tracebacks go here")
    ap.add_argument("--doc", help="write the coverage page here (docs/coverage.md)")
    ap.add_argument("--before", help="an earlier coverage.csv: the page shows runs then and now, and marks new cells")
    ap.add_argument(
        "--from-csv",
        nargs="*",
        help="run nothing: render the table from these coverage.csv files "
        "(later rows win, e.g. a rerun of some families)",
    )
    ap.add_argument("--keep-runs", action="store_true", help="keep every run directory under OUT/runs/")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--default-size",
        action="store_true",
        help="run each family at its timm default input size (e.g. 224 px) instead of the small one",
    )
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from vitstudy.analyses import REGISTRY

    families = [f for f in FAMILIES if not args.families or f.key in args.families]
    if args.default_size:
        families = [at_default_size(f) for f in families]
    unknown = set(args.families or []) - {f.key for f in FAMILIES}
    wanted = DEFAULT_ANALYSES if not args.analyses else list(REGISTRY) if args.analyses == ["all"] else args.analyses
    analyses = [a for a in wanted if a in REGISTRY]
    unknown |= set(wanted) - set(REGISTRY)
    if unknown:
        ap.error(f"unknown families or analyses: {sorted(unknown)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        cells = {}
        for path in args.from_csv:
            with open(path, newline="") as fh:
                for r in csv.DictReader(fh):
                    r["model"] = r.get("model") or r.get("arch")
                    cells[(r["family"], r["analysis"])] = Outcome(
                        r["family"], r["model"], r["analysis"], r["outcome"], r["message"], float(r["seconds"])
                    )
        outcomes = [cells[(f.key, a)] for f in families for a in analyses if (f.key, a) in cells]
        return _finish(outcomes, analyses, families, out, args, time.perf_counter())
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    with open(out / "coverage.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(Outcome.__dataclass_fields__))
        writer.writeheader()
        for f in families:
            for a in analyses:
                o = run_one(f, a, out, args.keep_runs)
                outcomes.append(o)
                writer.writerow(o.__dict__)
                fh.flush()
                print(
                    f"{time.perf_counter() - t0:7.0f}s {f.key:22s} {a:22s} {o.outcome:8s} {o.seconds:6.1f}s {o.message[:110]}",
                    file=sys.stderr,
                    flush=True,
                )
    return _finish(outcomes, analyses, families, out, args, t0)


def _finish(outcomes: list[Outcome], analyses: list[str], families: list[Family], out: Path, args, t0: float) -> int:
    """Write the tidy CSV, the markdown table and (--doc) the page; 1 when anything crashed."""
    with open(out / "coverage.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(Outcome.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(o.__dict__ for o in outcomes)
    table = markdown(outcomes, analyses, families, before=read_before(args.before))
    (out / "coverage.md").write_text(table)
    if args.doc:
        write_doc(Path(args.doc), table)
    crashed = [o for o in outcomes if o.outcome == "crashed"]
    print(
        f"{len(outcomes)} runs in {time.perf_counter() - t0:.0f} s: "
        f"{sum(o.outcome == 'runs' for o in outcomes)} ran, {sum(o.outcome == 'refused' for o in outcomes)} refused, "
        f"{len(crashed)} crashed; table in {out / 'coverage.md'}",
        flush=True,
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
