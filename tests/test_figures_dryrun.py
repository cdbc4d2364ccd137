"""End to end: the paper-figure make targets on stand-ins (scripts/figures_dryrun.py), offline.

Random-init "pretrained" weights in a scratch Hugging Face cache, generated images in the ImageNet and CIFAR
layouts, tiny CIFAR-100 checkpoints; each target runs through `make` with tiny image counts into a temporary
FIG_OUT, then `make report`. Checked here, independently of the script's own check: every job directory of every
target has run.json with status complete, its <analysis>.csv and a .png, the pretrained models really came
through timm's pretrained path (run.json weights `timm:<tag>`, not random-init) and the CIFAR ones from the
trained checkpoints, and index.html has a section for every target, named by its paper figure, and no failed job.

The fast test runs the targets whose models are small (ViT-Ti, ResNet-50, the tiny CIFAR models); the slow one
(make test-all) every target: about 9 GB of stand-ins (float16 here: half) and ~20 min on 2 CPU cores.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "figures_dryrun.py"
CHEAP = ["fig-parkkim-2a", "fig-parkkim-lesion"]  # ViT-Ti + ResNet-50 stand-ins; one tiny CIFAR checkpoint
ALL_ANALYSES = {
    "fig-raghu-1": {"cka_within"},
    "fig-raghu-2": {"cka_across"},
    "fig-raghu-3": {"attention_distance"},
    "fig-raghu-4": {"attention_distance"},
    "fig-raghu-5": {"local_global_cka"},
    "fig-raghu-6": {"receptive_field"},
    "fig-raghu-7": {"skip_ratio"},
    "fig-raghu-8": {"skip_ablation"},
    "fig-raghu-9": {"spatial_localization"},
    "fig-raghu-10": {"spatial_localization"},
    "fig-raghu-11": {"linear_probe"},
    "fig-raghu-12": {"cka_across"},
    "fig-raghu-13": {"linear_probe"},
    "fig-vit-6": {"attention_rollout"},
    "fig-vit-7": {"patch_embedding_pca", "position_embedding", "attention_distance"},
    "fig-parkkim-2a": {"fourier"},
    "fig-parkkim-2b": {"frequency_noise"},
    "fig-parkkim-8": {"fourier"},
    "fig-parkkim-1a": {"loss_landscape"},
    "fig-parkkim-1c": {"hessian"},
    "fig-parkkim-9": {"feature_variance"},
    "fig-parkkim-lesion": {"lesion"},
    "fig-darcet-7": {"token_norms"},
    "fig-sun-10": {"massive_activations"},
    "fig-sun-11": {"massive_activations"},
}
JOBS = {
    "fig-raghu-2": 2,
    "fig-raghu-6": 2,
    "fig-raghu-8": 3,
    "fig-raghu-9": 3,
    "fig-raghu-11": 3,
    "fig-raghu-13": 5,
    "fig-vit-7": 3,
    "fig-parkkim-1a": 2,
    "fig-parkkim-1c": 3,
    "fig-darcet-7": 4,
}


def dryrun(out: Path, targets: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("HF_HUB_CACHE", None)  # the script points its subprocesses at its own scratch cache
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--out",
        str(out),
        "--dtype",
        "float16",
        "--threads",
        "1",
        "--targets",
        *targets,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)


def check(out: Path, targets: list[str], proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = out / "figures"
    seen = set()
    for target in targets:
        jobs = sorted(h.parent for h in (figures / target).rglob(".hydra"))
        assert len(jobs) == JOBS.get(target, 1), (target, jobs)
        analyses = set()
        for job in jobs:
            rec = json.loads((job / "run.json").read_text())
            assert rec["status"] == "complete", (job, rec["status"])
            analysis = rec["analysis"]
            analyses.add(analysis)
            assert (job / f"{analysis}.csv").stat().st_size > 0, job
            assert list(job.glob("*.png")), job
            assert not (job / "failed.json").exists()
            for key, m in rec["models"].items():  # model, reference, compare0... (analysis.compare)
                cfg = rec["config"].get(key, {})
                if cfg.get("checkpoint"):
                    assert m["weights"] == f"file:{cfg['checkpoint']}" and str(out / "train") in cfg["checkpoint"]
                else:
                    assert m["weights"].startswith("timm:") and "." in m["weights"], (
                        job,
                        m,
                    )  # timm:arch.tag: pretrained=True loaded
            assert rec["config"]["dataset"]["num_images"] == 8
        assert analyses == ALL_ANALYSES[target], (target, analyses)
        seen |= analyses
    html = (figures / "summary" / "index.html").read_text()
    assert "no failed or missing jobs" in html, html[:600]
    for target in targets:  # a section per target, named by its paper figure
        assert re.search(
            rf"<section id='{target}'><h2>(Raghu et al\. 2021|Park &amp; Kim 2022|Dosovitskiy et al\. 2020|Darcet et al\. 2024|Sun et al\. 2024), ",
            html,
        ), target
    for analysis in seen:
        assert f"<td>{analysis}" in html  # each job's settings name its analysis
    table = (out / "dryrun.csv").read_text()
    for target in targets:
        assert re.search(rf"^{target},ok,", table, re.M), table
    assert "RANDOM" in proc.stdout


@pytest.mark.slow  # ~80 s; `make test` stays near 10 minutes; run by `make test-all` and `make figures-dryrun`
def test_dryrun_cheap_targets(tmp_path):
    out = tmp_path / "dry"
    proc = dryrun(out, CHEAP)
    check(out, CHEAP, proc)
    # only what these targets need: two stand-ins, one training
    assert sorted(p.name for p in (out / "hf-cache").iterdir()) == [
        "models--timm--resnet50.a1_in1k",
        "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    ]
    assert [p.name for p in (out / "train").iterdir()] == ["resnet50_cifar"]


@pytest.mark.slow
def test_dryrun_every_target(tmp_path):
    targets = list(ALL_ANALYSES)
    out = tmp_path / "dry"
    proc = dryrun(out, targets)
    check(out, targets, proc)
    print(proc.stdout)
