"""`vitstudy collect` / `make report`: a section per paper figure (named from conf/experiment headers), the run's
settings, failed and missing jobs in place, figures as files beside a light page, readable grids only."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT
from vitstudy.cli import main
from vitstudy.report import page
from vitstudy.report.experiments import experiment_of, experiments, parse_header, target_name
from vitstudy.report.grid import grid_axes
from vitstudy.report.sections import job_labels, shorten_values
from vitstudy.report.settings import intervals

REPO = Path(__file__).resolve().parent.parent
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
PAPERS = ("Raghu et al. 2021", "Park & Kim 2022", "Dosovitskiy et al. 2020", "Darcet et al. 2024", "Sun et al. 2024")


def vitstudy(args) -> int:
    try:
        main(list(args))
        return 0
    except SystemExit as exit:
        return exit.code


def test_every_experiment_names_its_paper_figure_and_finding():
    """Each conf/experiment header parses, and each Makefile figure target runs the experiment its name says."""
    found = experiments()
    assert len(found) == len(list((REPO / "conf" / "experiment").glob("*.yaml")))
    for exp in found.values():
        assert exp.paper in PAPERS, exp
        assert re.match(r"(Figs?\.? \w+|lesion figure)", exp.figure), exp
        one_sentence = not re.search(r"\. [A-Z]", re.sub(r"Figs?\. ", "", exp.finds))
        assert 40 < len(exp.finds) < 300 and exp.finds.endswith(".") and one_sentence, exp.finds
        assert len(exp.measures) > 30 and "vitstudy run" not in exp.measures and "Paper finds" not in exp.measures
    makefile = (REPO / "Makefile").read_text()
    targets = dict(re.findall(r"^(fig-[\w-]+):.*\n\t\$\(RUN_FIG\) experiment=(\w+)", makefile, re.M))
    assert len(targets) >= 22
    for target, name in targets.items():
        assert target_name(name) == target and name in found


def test_header_parsing_reads_paper_figure_paragraph_and_finding():
    text = (
        "# @package _global_\n# Someone et al. 2019, Fig. 3b (and C.1): a quantity per layer of a model,\n"
        "# with a caveat.\n# Paper finds: The quantity grows\n# with depth.\n#   vitstudy run experiment=x\n"
        "# Needs: weights.\ndefaults:\n  - override /analysis: cka_within\n"
    )
    exp = parse_header("someone_fig3b", text)
    assert (exp.paper, exp.figure) == ("Someone et al. 2019", "Fig. 3b (and C.1)")
    assert exp.measures == "a quantity per layer of a model, with a caveat."
    assert exp.finds == "The quantity grows with depth."
    assert exp.title == "Someone et al. 2019, Fig. 3b (and C.1)" and exp.target == "fig-someone-3b"
    assert parse_header("x", "# just a preset\nname: x\n") is None
    assert experiment_of(["model=a", "experiment=raghu_fig8", "x=1"]) == "raghu_fig8" and experiment_of([]) is None


def test_labels_keep_only_what_varies():
    assert shorten_values(["vit_base_patch16_224.augreg_in1k", "resnet50.a1_in1k"]) == [
        "vit_base_patch16_224",
        "resnet50",
    ]
    # same architecture: the tags tell them apart, the shared prefix goes
    assert shorten_values(["vit_base_patch16_224.augreg_in1k", "vit_base_patch16_224.augreg_in21k_ft_in1k"]) == [
        "…in1k",
        "…in21k_ft_in1k",
    ]
    assert shorten_values(["[1]", "[7]"]) == ["[1]", "[7]"]
    runs = [
        {"dir": Path(f"/s/{i}"), "config": {"model": {"name": m}, "analysis": {"name": "a", "blocks": b}}}
        for i, (m, b) in enumerate([("vit_b.t1", [1]), ("resnet50.t2", [7])])
    ]
    # keys that vary with the model (a preset's kwargs, its input size) say nothing more: the model alone
    assert job_labels(runs, ["analysis.blocks", "model.name"]) == {
        "/s/0": "model=vit_b.t1",
        "/s/1": "model=resnet50.t2",
    }
    grid = [
        {
            "dir": Path(f"/g/{m}{b}"),
            "config": {"model": {"name": m, "kwargs": {"depth": len(m)}}, "analysis": {"blocks": [b]}},
        }
        for m in ("vit", "resnet")
        for b in (1, 7)
    ]
    assert job_labels(grid, ["analysis.blocks", "model.kwargs.depth", "model.name"]) == {
        "/g/vit1": "blocks=[1], model=vit",
        "/g/vit7": "blocks=[7], model=vit",
        "/g/resnet1": "blocks=[1], model=resnet",
        "/g/resnet7": "blocks=[7], model=resnet",
    }
    runs[1]["config"]["analysis"]["name"] = "b"
    assert job_labels(runs, ["analysis.blocks", "analysis.name", "model.name"]) == {"/s/0": "a", "/s/1": "b"}


def test_intervals_are_summarised_per_quantity():
    lo = np.array([0.1, 0.2, 0.5, np.nan])
    hi = np.array([0.3, 0.3, 0.9, np.nan])
    df = pd.DataFrame(
        {
            "cka": [0.2, 0.25, 0.7, 0.1],
            "cka_se": [0.05, 0.02, 0.1, 0.3],
            "cka_ci_low": lo,
            "cka_ci_high": hi,
            "distance_se": [1.0, 3.0, 2.0, 4.0],
            "other": 1,
        }
    )
    rows = {r["quantity"]: r for r in intervals({"t.csv": df})}
    assert set(rows) == {"cka", "distance"}
    assert rows["cka"]["values"] == 4 and rows["cka"]["median_ci_width"] == pytest.approx(0.2)  # widths .2 .1 .4
    assert rows["cka"]["max_ci_width"] == pytest.approx(0.4) and rows["cka"]["median_se"] == pytest.approx(0.075)
    assert rows["distance"]["median_se"] == pytest.approx(2.5) and "median_ci_width" not in rows["distance"]
    assert intervals({"t.csv": pd.DataFrame({"cka": [1.0]})}) == []


def test_grid_only_when_readable(tmp_path):
    def run(i, **cfg):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "cka_across.png").write_bytes(b"")
        return {"dir": d, "analysis": "cka_across", "config": cfg}

    two_keys = [run(i, model={"name": m}, seed=s) for i, (m, s) in enumerate([(m, s) for m in "ab" for s in (0, 1)])]
    assert grid_axes(two_keys, "cka_across") == ("model.name", "seed")
    three_keys = [
        run(10 + i, model={"name": m}, seed=s, tokens=t)
        for i, (m, s, t) in enumerate([("a", 0, "cls"), ("a", 1, "mean"), ("b", 0, "mean")])
    ]
    assert grid_axes(three_keys, "cka_across") is None
    wide = [run(20 + i, seed=i, model={"name": "a"}) for i in range(2)] + [
        run(30 + i, seed=i, model={"name": "b"}) for i in range(3)
    ]
    assert grid_axes(wide, "cka_across") == ("model.name", "seed")
    assert grid_axes(wide + [run(40, seed=3, model={"name": "a"})], "cka_across") is None  # 4 columns
    assert grid_axes([run(50 + i, seed=i) for i in range(3)], "cka_across") == (None, "seed")  # one row


def synthetic_job(job: Path, analysis: str, overrides: list[str], run: dict | None = None, size=(900, 600), table=None):
    """A job directory as `vitstudy run -m` leaves it, written by hand: .hydra/, and when `run` is given, run.json,
    <analysis>.csv and <analysis>.png (a flat-colour image of `size`)."""
    from PIL import Image

    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text(f"analysis:\n  name: {analysis}\n")
    if run is None:
        return
    record = {
        "analysis": analysis,
        "status": "complete",
        "overrides": overrides,
        "wall_time_s": 75.0,
        "timings_s": {"load_models": 5.0, "analysis": 70.0},
        "device": "cpu",
        "threads": 2,
        "finished": "2026-12-01T12:00:00+00:00",
        "git_revision": "0123456789abcdef",
        "versions": {"vitstudy": "0.1.0"},
        "outputs": [f"{analysis}.csv", f"{analysis}.png"],
        **run,
    }
    (job / "run.json").write_text(json.dumps(record))
    (table if table is not None else pd.DataFrame({"layer": [0, 1], "value": [0.5, 0.25]})).to_csv(
        job / f"{analysis}.csv", index=False
    )
    Image.new("RGB", size, (40, 90, 160)).save(job / f"{analysis}.png")


def test_figure_report_from_synthetic_run_dirs(tmp_path):
    """Hand-written run directories (no model runs): a figure target with a finished and a failed job, a target
    folder that never started a job, and a generic sweep varying three keys (no grid: one figure per run)."""
    from vitstudy.collect import collect

    root = tmp_path / "figures"
    target = root / "fig-raghu-7"
    target.mkdir(parents=True)
    (target / "multirun.yaml").write_text("hydra: {}\n")
    common = ["experiment=raghu_fig7", "dataset.root=/data/val"]
    cfg = {
        "analysis": {"name": "skip_ratio"},
        "model": {"name": "vit_base_patch16_224.augreg_in21k_ft_in1k"},
        "dataset": {"name": "imagefolder", "root": "/data/val", "batch_size": 32},
        "tokens": "flatten",
    }
    ci = pd.DataFrame(
        {
            "layer": [0, 1, 2],
            "ratio": [1.0, 2.0, 3.0],
            "ratio_ci_low": [0.9, 1.8, 2.7],
            "ratio_ci_high": [1.2, 2.1, 3.4],
        }
    )  # widths 0.3 0.3 0.7: median 0.3, largest 0.7
    synthetic_job(
        target / "0",
        "skip_ratio",
        [*common, "model=vit_b16"],
        table=ci,
        run={
            "config": cfg,
            "dataset": "ImageFiles with 50000 images in 1000 classes",
            "models": {
                "model": {
                    "name": cfg["model"]["name"],
                    "weights": "timm:augreg_in21k_ft_in1k",
                    "data_config": {"input_size": [3, 224, 224]},
                }
            },
            "images": [{"images": 512, "batches": 16}],
            "layers": {"model": ["blocks.0", "blocks.1", "blocks.2"]},
        },
    )
    synthetic_job(target / "1", "skip_ratio", [*common, "model=resnet50"])
    (target / "1" / "failed.json").write_text(
        json.dumps({"error": "model.name: unknown model 'resnet5O'\nmore", "overrides": [*common, "model=resnet50"]})
    )
    (target / "1" / "skip_ratio.log").write_text("vitstudy: error: model.name: unknown model 'resnet5O'\n")
    (root / "fig-raghu-5").mkdir()
    sweep = tmp_path / "sweep"
    for i, (depth, seed, tokens) in enumerate([(2, 0, "cls"), (3, 1, "mean"), (2, 1, "flatten")]):
        conf = {
            "analysis": {"name": "cka_across"},
            "model": {"name": "vit", "kwargs": {"depth": depth}},
            "seed": seed,
            "tokens": tokens,
        }
        synthetic_job(sweep / str(i), "cka_across", [f"seed={seed}"], size=(700, 700), run={"config": conf})

    out = collect([str(root), str(sweep)], str(tmp_path / "report"))
    text = (out / "index.html").read_text()
    assert "base64" not in text and len(text) < 60_000
    fig7 = section(text, "fig-raghu-7")
    assert fig7.startswith("<section id='fig-raghu-7'><h2>Raghu et al. 2021, Fig. 7 / E.1")
    assert experiments()["raghu_fig7"].finds in fig7 and "The paper finds:" in fig7
    # the settings that matter, from run.json
    assert "vit_base_patch16_224.augreg_in21k_ft_in1k (timm:augreg_in21k_ft_in1k, 3x224x224)" in fig7
    assert "512 images, 16 batches of 32" in fig7 and "ImageFiles with 50000 images" in fig7
    assert "blocks.0" not in fig7 and "(model 3)" in fig7 and "cpu (2 threads)" in fig7 and "75.0 s" in fig7
    # the intervals of the uncertainty columns: widths 0.3, 0.3, 0.7
    assert re.search(r"<td>ratio</td>\s*<td>3</td>\s*<td>0\.3</td>\s*<td>0\.7</td>", fig7), fig7
    # the failed job in place: what sets it apart, its error on one line, its log
    assert "<span class=bad>failed</span>" in fig7 and ">model=resnet50</code>" in fig7
    assert "error: model.name: unknown model &#x27;resnet5O&#x27; more" in fig7
    assert "href='../figures/fig-raghu-7/1/skip_ratio.log'" in fig7
    assert "1 finished</span>, <span class=bad>1 failed or missing" in text  # the contents table
    assert "fig-raghu-5</span> (Raghu et al. 2021, Fig. 5): " in text and "has no job directory" in text
    # every figure is a file beside the page, byte for byte its run's figure
    srcs = re.findall(r"<img src='([^']+)'", text)
    assert len(srcs) == 4 and all(s.startswith("index_files/") for s in srcs)
    originals = [target / "0" / "skip_ratio.png"] + [sweep / str(i) / "cka_across.png" for i in range(3)]
    assert sorted((out / s).read_bytes() for s in srcs) == sorted(p.read_bytes() for p in originals)
    # the generic sweep varies three keys: no grid, each run's figure in the open, labelled by what varies
    generic = section(text, "analysis-cka_across")
    assert not (out / "cka_across_grid.png").exists() and "<details><summary>Runs" not in generic
    assert "<h3>depth=2, seed=0, tokens=cls</h3>" in generic
    failed = pd.read_csv(out / "failed.csv")
    assert list(failed.status) == ["failed"] and failed.dir[0].endswith("fig-raghu-7/1")


def test_figure_report_large_figures_are_downscaled(tmp_path, monkeypatch):
    """Over MAX_BYTES, a figure beside the page is downscaled to MAX_WIDTH (a strip to twice its shown height)."""
    from PIL import Image

    rng = np.random.default_rng(0)  # noise: a PNG that does not compress
    big = tmp_path / "big.png"
    Image.fromarray((rng.random((200, 1200, 3)) * 255).astype("uint8")).save(big)
    monkeypatch.setattr(page, "MAX_BYTES", 50_000)
    monkeypatch.setattr(page, "MAX_WIDTH", 400)
    shown = page._copy_figure(big, tmp_path / "out")
    assert shown.stat().st_size < big.stat().st_size and page._size(shown) == (400, 67)
    strip = tmp_path / "strip.png"
    Image.fromarray((rng.random((300, 1800, 3)) * 255).astype("uint8")).save(strip)
    shown = page._copy_figure(strip, tmp_path / "out2", strip_height=50)
    assert page._size(shown) == (600, 100)  # twice the shown height
    small = tmp_path / "small.png"
    Image.new("RGB", (300, 200)).save(small)
    assert page._copy_figure(small, tmp_path / "out3").read_bytes() == small.read_bytes()  # small ones: copied


@pytest.fixture(scope="module")
def figure_dirs(tmp_path_factory):
    """Two paper-figure targets as `make fig-raghu-7 fig-raghu-8` lays them out, on tiny random-init models:
    fig-raghu-7 (one job), fig-raghu-8 (block 0 finished, block 7 failed, one job killed before it finished)."""
    root = tmp_path_factory.mktemp("figures")
    common = [*TINY_VIT, *SMALL_DATA, "cache.dir="]
    assert (
        vitstudy(
            ["run", "-m", "experiment=raghu_fig7", *common, *TINY_RESNET, f"hydra.sweep.dir={root / 'fig-raghu-7'}"]
        )
        == 0
    )
    assert (
        vitstudy(
            [
                "run",
                "-m",
                "experiment=raghu_fig8",
                "analysis.blocks=[0],[7]",
                "layers=blocks",
                *common,
                f"hydra.sweep.dir={root / 'fig-raghu-8'}",
            ]
        )
        == 1
    )  # block 7 does not exist
    killed = root / "fig-raghu-8" / "2"
    shutil.copytree(root / "fig-raghu-8" / "0" / ".hydra", killed / ".hydra")  # as a job killed before run.json
    (root / "fig-raghu-5").mkdir()  # a target that stopped before its first job
    assert vitstudy(["collect", str(root), "--out", str(root / "summary")]) == 0
    return root


def section(html: str, key: str) -> str:
    start = html.index(f"<section id='{key}'")
    return html[start : html.index("</section>", start)]


def test_figure_report_has_a_section_per_target(figure_dirs):
    out = figure_dirs / "summary"
    html = (out / "index.html").read_text()
    assert len(html) < 100_000 and "base64" not in html
    fig7, fig8 = section(html, "fig-raghu-7"), section(html, "fig-raghu-8")
    assert "<h2>Raghu et al. 2021, Fig. 7 / E.1" in fig7 and "The paper finds:</b> Far more flows through" in fig7
    assert "<h2>Raghu et al. 2021, Fig. 8, approximated" in fig8
    # settings from run.json
    assert "vit_tiny_patch16_224 (random-init, 3x32x32)" in fig7 and "reference resnet18 (random-init" in fig7
    assert "24 images, 3 batches of 8" in fig7 and "SyntheticImages" in fig7
    # failed and missing jobs in place, with the error and the log
    assert "block 7 does not exist" in fig8 and "fig-raghu-8/1/skip_ablation.log" in fig8
    assert "missing (killed, crashed or still running)" in fig8 and "block 7" not in fig7
    failed = pd.read_csv(out / "failed.csv")
    assert sorted(failed.status.str[:6]) == ["failed", "missin"]
    # a target directory without jobs, and the figures not run here
    assert "fig-raghu-5</span> (Raghu et al. 2021, Fig. 5): " in html and "has no job directory" in html
    assert f"Not in these directories ({len(experiments()) - 3})" in html  # every experiment but fig-raghu-5, 7, 8
    # figures beside the page, byte for byte; links relative
    srcs = re.findall(r"<img src='([^']+)'", html)
    assert len(srcs) == 2 and all(s.startswith("index_files/") for s in srcs)
    for src in srcs:
        name = Path(src).name
        originals = list(figure_dirs.glob(f"fig-raghu-*/*/{name}"))
        assert any((out / src).read_bytes() == o.read_bytes() for o in originals)
    assert "href='../fig-raghu-7/0/skip_ratio.csv'" in fig7
    # the paper's claims checked on each target's jobs: findings.csv, a verdict per section and in the contents
    found = pd.read_csv(out / "findings.csv")
    row = found[found.target == "raghu_fig7"].iloc[0]
    summ = pd.read_csv(figure_dirs / "fig-raghu-7" / "0" / "skip_ratio_summary.csv")
    summ = summ[summ.group == "all"]
    cnn = summ.model.str.startswith("resnet")
    expected = summ[~cnn].ratio.mean() - summ[cnn].ratio.mean()  # random-init ResNet blocks can give infinite ratios
    assert row.value == pytest.approx(expected, rel=1e-9) or row.value == expected
    if np.isfinite(expected):
        assert row.verdict in ("holds", "contradicted", "inconclusive") and row.ci_low <= row.value <= row.ci_high
    else:
        assert row.verdict == "inconclusive" and "not finite" in row.note
    assert (
        f"<span class='verdict {row.verdict}'>{row.verdict}</span>" in fig7
        and "Paper finds</b> (Raghu et al. 2021, Fig. 7)" in fig7
    )
    assert set(found[found.target == "raghu_fig8"].verdict) <= {"holds", "contradicted", "inconclusive", "missing"}
    fig5 = found[found.target == "raghu_fig5"]  # its directory has no job: its claim is listed as missing, with why
    assert fig5.verdict.tolist() == ["missing"] and "no job" in fig5.note.item()
    assert "this run (claims)" in html
    # collecting again rewrites the page's folder (no stale figures)
    (out / "index_files" / "stale.png").write_bytes(b"x")
    assert vitstudy(["collect", str(figure_dirs), "--out", str(out)]) == 0
    assert not (out / "index_files" / "stale.png").exists()


def probe(page_path: Path, tmp: Path, js: str, height: int = 900) -> dict:
    """Open the page in headless Chromium at 1400 px and return what `js` (an expression) evaluates to."""
    probe_page = page_path.parent / "probe.html"
    script = (
        "<script>for (const i of document.images) { i.loading = 'eager'; }"  # loaded before the load event
        "window.addEventListener('load', () => {"
        f"const r = document.createElement('pre'); r.id = 'probe'; r.textContent = JSON.stringify({js});"
        "document.body.appendChild(r); });</script>"
    )
    probe_page.write_text(page_path.read_text().replace("</body>", script + "</body>"))
    out = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp / 'u'}",
            f"--window-size=1400,{height}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe_page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    probe_page.unlink()
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", out.stdout, re.S)
    assert found, out.stderr[-2000:]
    return json.loads(
        found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    )


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (apt-get install chromium)")
def test_figure_report_in_chromium(figure_dirs, tmp_path):
    """Copied alone to another folder, the page shows every figure, each at least 600 px wide at a 1400 px window,
    and each target's section names its paper figure."""
    copy = tmp_path / "copied"
    shutil.copytree(figure_dirs / "summary", copy)
    js = (
        "{images: [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0, "
        "Math.round(i.getBoundingClientRect().width)]),"
        " sections: [...document.querySelectorAll('section[id^=fig-]')].map(s => [s.id, s.querySelector('h2').textContent])}"
    )
    result = probe(copy / "index.html", tmp_path, js)
    assert len(result["images"]) == 2
    for src, loaded, width in result["images"]:
        assert loaded and width >= 600, (src, loaded, width)
    titles = dict(result["sections"])
    assert set(titles) == {"fig-raghu-7", "fig-raghu-8"}
    for key, h2 in titles.items():
        assert h2.startswith(experiments()[key.replace("fig-raghu-", "raghu_fig")].title + key)


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium (apt-get install chromium)")
def test_sweep_report_in_chromium(tmp_path):
    """A homogeneous sweep (one analysis, one varied key): its grid at full width, every run's figure loads
    (moved here from test_sweeps, which now keeps the page's images as files)."""
    sweep = tmp_path / "sweep"
    for depth in (2, 3):
        synthetic_job(
            sweep / str(depth),
            "cka_across",
            [f"model.kwargs.depth={depth}"],
            size=(800, 700),
            run={"config": {"analysis": {"name": "cka_across"}, "model": {"name": "vit", "kwargs": {"depth": depth}}}},
        )
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert vitstudy(["collect", str(sweep)]) == 0
    js = (
        "[...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0, "
        "Math.round(i.getBoundingClientRect().width), !!i.closest('details')])"
    )
    images = probe(sweep / "summary" / "index.html", tmp_path, js)
    assert len(images) == 3 and all(loaded for _, loaded, _, _ in images)
    shown = [(src, width) for src, _, width, hidden in images if not hidden]
    assert len(shown) == 1 and shown[0][0].endswith("cka_across_grid.png") and shown[0][1] >= 600
