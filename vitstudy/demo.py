"""`vitstudy demo` and `vitstudy tour`: the papers' findings on the bundled trained CIFAR-10 models, offline.

The demo runs CKA within the bundled ViT and ResNet and across them on the bundled 1,000 CIFAR-10 test images
(Raghu et al. 2021 Figs 1-2) and prints three findings computed from the CSVs it wrote. The tour adds the
other analyses that make sense on these models and collects everything into one HTML report.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd

VIT, RESNET, DATA = "vit_cifar10_demo", "resnet_cifar10_demo", "cifar10_sample"

DEMO_RUNS = {  # run directory -> overrides
    "cka_within_vit": ["analysis=cka_within", f"model={VIT}"],
    "cka_within_resnet": ["analysis=cka_within", f"model={RESNET}"],
    "cka_across": ["analysis=cka_across", f"model={VIT}", f"reference={RESNET}"],
}
PROBE = ["analysis.num_train=600", "analysis.num_val=150", "analysis.num_test=250"]
TOUR_RUNS = {
    "attention_distance": ["analysis=attention_distance", f"model={VIT}"],
    "position_embedding": ["analysis=position_embedding", f"model={VIT}"],
    "skip_ratio": ["analysis=skip_ratio", f"model={VIT}", f"reference={RESNET}", "analysis.reference=true"],
    "spatial_localization": ["analysis=spatial_localization", f"model={VIT}"],
    "fourier": ["analysis=fourier", f"model={VIT}", f"reference={RESNET}"],
    "feature_variance": ["analysis=feature_variance", f"model={VIT}", f"reference={RESNET}"],
    # the 1,000 bundled images split 600 / 150 / 250 into probe train / ridge validation / test
    "linear_probe_vit": ["analysis=linear_probe", f"model={VIT}", *PROBE],
    "linear_probe_resnet": ["analysis=linear_probe", f"model={RESNET}", *PROBE],
}


def _run(name: str, overrides: list[str], out: Path, extra: list[str], run) -> None:
    """One run through `run(args)` (the CLI's `vitstudy run`: a Hydra run directory that `vitstudy collect` finds)."""
    t = time.perf_counter()
    run([*overrides, f"dataset={DATA}", "progress=false", *extra, f"hydra.run.dir={out / name}"])
    print(f"vitstudy: {name} took {time.perf_counter() - t:.1f} s", flush=True)


def _stage(layer: str) -> str:
    """'stages.2.blocks.1' -> 'stage 3 of 4' style label for a ResNet block."""
    m = re.match(r"stages\.(\d+)\.blocks\.(\d+)", layer)
    return f"stage {int(m.group(1)) + 1}, block {int(m.group(2)) + 1}" if m else layer


def _interval(row) -> str:
    """' [low, high]' from a row's 95% interval columns (jackknife over batches), '' when the table has none."""
    if "cka_ci_low" in row and pd.notna(row.get("cka_ci_low")):
        return f" [95% CI {row.cka_ci_low:.2f}, {row.cka_ci_high:.2f}]"
    return ""


def verdicts(out: Path, pairs=None) -> list:
    """The papers' claims checked on the runs under `out` (claims.Finding), the demo's three by default."""
    from . import claims
    from .claims.core import run_record

    runs = [run_record(p.parent) for p in sorted(Path(out).glob("*/run.json"))]
    return claims.for_runs(runs, claims.DEMO if pairs is None else pairs, root=Path(out))


def _verdict(f) -> str:
    return f'{f.claim.paper} {f.claim.figure}, "{f.claim.text}": {f.summary()}'


def findings(out: Path) -> list[str]:
    """Three findings with their verdicts and numbers, read back from the CSVs the demo wrote (never from memory)."""
    out = Path(out)
    checked = verdicts(out)
    lines = []
    ends = {}
    for key, label in (("vit", "ViT"), ("resnet", "ResNet")):
        df = pd.read_csv(out / f"cka_within_{key}" / "cka_within.csv")
        first, last = df.index_x.min(), df.index_x.max()
        cell = df[(df.index_x == first) & (df.index_y == last)].iloc[0]
        ends[label] = (cell.cka, _interval(cell), cell.layer_x, cell.layer_y)
    v, r = ends["ViT"], ends["ResNet"]
    lines.append(
        f"{_verdict(checked[0])}. CKA between first and last block: ViT {v[0]:.2f}{v[1]} ({v[2]} vs {v[3]}), ResNet {r[0]:.2f}{r[1]} ({r[2]} vs {r[3]}); "
        f"{'the ViT keeps more of its first representation across depth (Raghu et al. Fig. 1)' if v[0] > r[0] else 'here the ResNet is the more uniform one, unlike Raghu et al. Fig. 1'}."
    )
    across = pd.read_csv(out / "cka_across" / "cka_across.csv")
    last_vit = across[across.index_x == across.index_x.max()]
    best = last_vit.loc[last_vit.cka.idxmax()]
    lines.append(
        f"{_verdict(checked[2])}. The ViT's last block ({best.layer_x}) is closest to the ResNet's {best.layer_y} "
        f"({_stage(best.layer_y)}), CKA {best.cka:.2f}{_interval(best)}, of {across.index_y.max() + 1} ResNet blocks."
    )
    mid = across.index_y.max() // 2
    mid_rows = across[across.index_y == mid]
    match = mid_rows.loc[mid_rows.cka.idxmax()]
    lines.append(
        f"{_verdict(checked[1])}. The ResNet's middle block ({match.layer_y}) is closest to ViT {match.layer_x} of {across.index_x.max() + 1} "
        f"(CKA {match.cka:.2f}{_interval(match)}): the ViT reaches mid-ResNet representations "
        f"{'earlier' if match.index_x / across.index_x.max() < mid / across.index_y.max() else 'no earlier'} "
        f"in relative depth (Raghu et al. Fig. 2)."
    )
    return lines


def demo(run, out: str | Path = "outputs/demo", extra: list[str] | None = None) -> list[str]:
    """Run the three CKA runs on the bundled models and images through `run` (the CLI passes `vitstudy run`);
    print and return the findings."""
    out = Path(out)
    t = time.perf_counter()
    for name, overrides in DEMO_RUNS.items():
        _run(name, overrides, out, list(extra or []), run)
    lines = findings(out)
    from . import claims
    from .pipeline.results import write_csv

    write_csv(out / "findings.csv", claims.frame(verdicts(out)))
    print(
        f"\nvitstudy demo ({time.perf_counter() - t:.0f} s; bundled ViT-mini and ResNet-mini trained on CIFAR-10, "
        f"1,000 bundled CIFAR-10 test images; CSVs and figures under {out}/):"
    )
    for line in lines:
        print(f"  - {line}")
    return lines


def tour(run, out: str | Path = "outputs/tour", extra: list[str] | None = None) -> Path:
    """The demo plus the other analyses that make sense on these models, collected into one HTML report."""
    from .collect import collect

    out = Path(out)
    t = time.perf_counter()
    demo(run, out, extra)
    for name, overrides in TOUR_RUNS.items():
        _run(name, overrides, out, list(extra or []), run)
    report = collect([str(out)], str(out / "report"))
    checked = pd.read_csv(Path(report) / "findings.csv")
    counts = ", ".join(f"{n} {v}" for v, n in checked.verdict.value_counts().items())
    print(
        f"vitstudy tour: {len(DEMO_RUNS) + len(TOUR_RUNS)} runs in {time.perf_counter() - t:.0f} s; "
        f"{len(checked)} paper claims checked ({counts}): {Path(report) / 'findings.csv'}; "
        f"report: {Path(report) / 'index.html'}"
    )
    return Path(report)
