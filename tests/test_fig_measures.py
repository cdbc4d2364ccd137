"""`make fig-measures` (Raghu et al. Figs 1-2 under every similarity measure): the per-measure claims on hand-written
similarity tables with known answers (a uniform ViT and a block-structured ResNet: Fig. 1 holds; swapped: it is
contradicted), their values and intervals against numpy computations written here, the figure's panels and colour
ranges, and the assembly from a directory of runs laid out as the Hydra multirun of the target."""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from vitstudy import claims
from vitstudy.claims import measures as mclaims
from vitstudy.claims.core import resolve, run_record
from vitstudy.measures import MEASURES, Measure
from vitstudy.plots.layout import layout_problems
from vitstudy.plots.measures import Heatmap, MeasureRow, Verdict, colour_range, measures_figure, verdicts_figure
from vitstudy.report import measures as assembly

REPO = Path(__file__).resolve().parent.parent
T975 = {4: 2.7764451051977987, 5: 2.5705818366147395}  # Student's t quantile 0.975 (statistical tables)
VIT, CNN = "vit_mini_cifar.demo_cifar10", "resnet_mini_cifar.demo_cifar10"
UNITS = 6  # leave-one-batch-out replicates of every synthetic table


def uniform(n: int, off: float = 0.8) -> np.ndarray:
    """A ViT-like matrix: every pair of distinct layers `off` similar."""
    m = np.full((n, n), off)
    np.fill_diagonal(m, 1.0)
    return m


def staged(n: int, stages: int = 2, inside: float = 0.8, between: float = 0.2) -> np.ndarray:
    """A ResNet-like matrix: `inside` within a stage, `between` across stages."""
    stage = np.arange(n) * stages // n
    m = np.where(stage[:, None] == stage[None, :], inside, between)
    np.fill_diagonal(m, 1.0)
    return m


def long_table(m: np.ndarray, model_x: str, model_y: str, measure: str) -> pd.DataFrame:
    """A similarity table in the BRIEF_I21 schema (one row per (layer_x, layer_y), x-major)."""
    nx, ny = m.shape
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    i, j = i.ravel(), j.ravel()
    return pd.DataFrame(
        {
            "model_x": model_x,
            "weights_x": f"timm:{model_x}",
            "layer_x": [f"l{a}" for a in i],
            "index_x": i,
            "model_y": model_y,
            "weights_y": f"timm:{model_y}",
            "layer_y": [f"l{b}" for b in j],
            "index_y": j,
            "measure": measure,
            "value": m.ravel(),
            "value_std": np.nan,
            "value_se": 0.01,
            "value_ci_low": m.ravel() - 0.02,
            "value_ci_high": m.ravel() + 0.02,
            "repeats": 1,
            "estimator": "minibatch",
            "parameters": "",
            "tokens": "flatten",
            "num_images": 600,
            "batch_size": 100,
            "dataset": "cifar10_sample",
            "uncertainty": "jackknife_batches",
        }
    )


def job(
    path: Path,
    analysis: str,
    model: str,
    measure: str,
    df: pd.DataFrame,
    spread: float = 0.005,
    seed: int = 0,
    reference: str | None = None,
    experiment: str = "measures_fig1",
    replicates: bool = True,
) -> np.ndarray:
    """A finished job of a Hydra multirun: .hydra/overrides.yaml, run.json, the table and its replicates (UNITS
    leave-one-batch-out values scattering each cell by `spread`; the same batch ids in every job: paired)."""
    (path / ".hydra").mkdir(parents=True, exist_ok=True)
    overrides = [f"experiment={experiment}", f"model={model}", f"analysis.measure={measure}"]
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    config = {
        "analysis": {"name": analysis, "measure": measure},
        "model": {"name": model, "label": model.split("_")[0]},
    }
    models = {"model": {"name": model, "weights": f"timm:{model}"}}
    if reference:
        config["reference"] = {"name": reference, "label": reference.split("_")[0]}
        models["reference"] = {"name": reference, "weights": f"timm:{reference}"}
    (path / "run.json").write_text(
        json.dumps({"analysis": analysis, "overrides": overrides, "models": models, "config": config})
    )
    df.to_csv(path / f"{analysis}.csv", index=False)
    if not replicates:
        return None
    column = "value" if "value" in df else "cka"
    reps = df[column].to_numpy()[None, :] + spread * np.random.default_rng(seed).standard_normal((UNITS, len(df)))
    np.savez(
        path / f"{analysis}.replicates.npz",
        values=reps,
        strata=np.zeros(UNITS, dtype=np.int64),
        units=np.arange(UNITS),
        estimate=df[column].to_numpy(),
        column=np.array(column),
        method=np.array("jackknife_batches"),
    )
    return reps


def within_jobs(root: Path, measure: str, vit: np.ndarray, cnn: np.ndarray, tag: str = "", **kw):
    a = job(
        root / f"w_{measure}{tag}_vit",
        "similarity_within",
        VIT,
        measure,
        long_table(vit, VIT, VIT, measure),
        seed=1,
        **kw,
    )
    b = job(
        root / f"w_{measure}{tag}_cnn",
        "similarity_within",
        CNN,
        measure,
        long_table(cnn, CNN, CNN, measure),
        seed=2,
        **kw,
    )
    return a, b


def across_matrix(nx: int = 8, ny: int = 6) -> np.ndarray:
    """ViT (x, 8 layers) vs ResNet (y, 6 layers) as Raghu Fig. 2: the ResNet's lower half (y < 3) matches the ViT's
    lowest layers, its upper half the ViT's middle, and the ViT's final third matches nothing."""
    m = np.full((nx, ny), 0.3)
    m[:2, :3] = 0.9  # ResNet lower half ~ ViT lowest quarter
    m[2:5, 3:] = 0.7  # ResNet upper half ~ ViT middle
    m[5:, :] = 0.1  # ViT final third (5, 6, 7) ~ nothing
    m[6:, :3] = 0.05
    return m


def paired_t(stat_reps: np.ndarray, value: float, df: int) -> tuple[float, float]:
    """The paired delete-one jackknife 95% interval of a statistic from its UNITS replicate values."""
    se = np.sqrt((len(stat_reps) - 1) / len(stat_reps) * ((stat_reps - stat_reps.mean()) ** 2).sum())
    return value - T975[df] * se, value + T975[df] * se


def records(root: Path) -> list[dict]:
    return [run_record(p.parent) for p in sorted(root.glob("*/run.json"))]


def findings(root: Path, measure: str) -> dict[str, claims.Finding]:
    found = claims.for_target("measures_fig1", records(root), root) + claims.for_target(
        "measures_fig2", records(root), root
    )
    return {mclaims.key_of(f.claim): f for f in found if mclaims.measure_of(f.claim) == measure}


# ------------------------------------------------------------------ claims per measure


@pytest.mark.parametrize("swap, verdict", [(False, "holds"), (True, "contradicted")])
def test_fig1_uniform_vit_vs_staged_resnet(tmp_path, swap, verdict):
    """8-layer tables, lowest and highest quarters = layers {0, 1} and {6, 7}: the far cells are 0.8 in the uniform
    matrix and 0.2 (another stage) in the staged one, so the statistic is +-0.6; its interval is the paired jackknife
    of the replicates' far-cell means (t, 5 df), recomputed here from the npz values."""
    vit, cnn = uniform(8), staged(8)
    rv, rc = within_jobs(tmp_path, "cka", *((cnn, vit) if swap else (vit, cnn)))
    f = findings(tmp_path, "cka")["fig1"]
    far = np.zeros((8, 8), dtype=bool)
    far[:2, 6:] = True  # x low, y high (a symmetric measure: the other direction holds the same values)
    far[6:, :2] = True
    cells = far.ravel()  # long_table is x-major, as the matrix
    stat = rv[:, cells].mean(axis=1) - rc[:, cells].mean(axis=1)
    expected = -0.6 if swap else 0.6
    low, high = paired_t(stat, expected, UNITS - 1)
    assert f.value == pytest.approx(expected, abs=1e-12)
    assert (f.ci_low, f.ci_high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    assert f.verdict == verdict and f.method == "paired jackknife over batches"
    assert "(measure: linear CKA)" in f.claim.text and "linear CKA" in f.claim.statistic


def test_tables_with_value_se_only_get_the_conservative_bound(tmp_path):
    """Without replicates (a measure whose table has only `value_se`, 0.01 per cell here), the interval is the
    delta-method bound: 8 far cells per model (both directions of 2 x 2 layers), each with weight 1/8, so
    se <= 16 x 1/8 x 0.01 = 0.02 and the interval is 0.6 -+ 1.96 x 0.02."""
    within_jobs(tmp_path, "cka", uniform(8), staged(8), replicates=False)
    f = findings(tmp_path, "cka")["fig1"]
    z975 = 1.959963984540054
    assert f.value == pytest.approx(0.6, abs=1e-12) and f.verdict == "holds"
    assert (f.ci_low, f.ci_high) == (
        pytest.approx(0.6 - z975 * 0.02, abs=1e-6),
        pytest.approx(0.6 + z975 * 0.02, abs=1e-6),
    )
    assert f.method == "se bound sum |d/dv| value_se"


def test_fig1_statistic_equals_the_cka_claims_on_the_same_numbers(tmp_path):
    """The measure claim reuses Raghu's statistic: on tables (upper triangles, as test_claims writes them) whose
    `value` and replicates equal cka_within tables' `cka`, the raghu_fig1 claim and the cka measure's claim agree
    exactly, value and interval."""
    rng = np.random.default_rng(5)
    for kind, model, m in (("vit", VIT, uniform(6)), ("cnn", CNN, staged(6, 3))):
        m = m + 0.05 * rng.random((6, 6))
        df = long_table(m, model, model, "cka").query("index_x <= index_y").reset_index(drop=True)
        job(tmp_path / f"w_{kind}", "similarity_within", model, "cka", df, seed=len(kind))
        job(tmp_path / f"c_{kind}", "cka_within", model, "cka", df.rename(columns={"value": "cka"}), seed=len(kind))
    (raghu,) = claims.for_target("raghu_fig1", records(tmp_path), tmp_path)
    mine = findings(tmp_path, "cka")["fig1"]
    assert raghu.verdict == mine.verdict == "holds"
    assert mine.value == pytest.approx(raghu.value, abs=1e-12)
    assert (mine.ci_low, mine.ci_high) == (
        pytest.approx(raghu.ci_low, abs=1e-12),
        pytest.approx(raghu.ci_high, abs=1e-12),
    )


def test_fig2_known_answers_by_hand(tmp_path):
    """Fig. 2 on the across matrix of `across_matrix`: lower = mean(ResNet y < 3 with ViT x < 2) - mean(with x >= 6)
    = 0.9 - 0.05; top = each ViT layer's best match, mean over x >= 5 (ceil(8/3) = 3 layers) minus x < 5:
    mean(0.1, 0.1, 0.1) - mean(0.9, 0.9, 0.7, 0.7, 0.7) = 0.1 - 0.78."""
    m = across_matrix()
    reps = job(
        tmp_path / "a_cka",
        "similarity_across",
        VIT,
        "cka",
        long_table(m, VIT, CNN, "cka"),
        reference=CNN,
        experiment="measures_fig2",
    )
    f = findings(tmp_path, "cka")
    assert f["fig2_lower"].value == pytest.approx(0.9 - 0.05, abs=1e-12) and f["fig2_lower"].verdict == "holds"
    assert f["fig2_top"].value == pytest.approx(0.1 - 0.78, abs=1e-12) and f["fig2_top"].verdict == "holds"
    # the lower claim's interval: the jackknife of its replicate statistic (one run: no pairing), numpy here
    r = reps.reshape(UNITS, 8, 6)
    stat = r[:, :2, :3].mean(axis=(1, 2)) - r[:, 6:, :3].mean(axis=(1, 2))
    low, high = paired_t(stat, 0.85, UNITS - 1)
    assert (f["fig2_lower"].ci_low, f["fig2_lower"].ci_high) == (
        pytest.approx(low, abs=1e-9),
        pytest.approx(high, abs=1e-9),
    )
    # a ViT whose final third matches the ResNet best: top contradicted; its lowest layers unlike the lower half: lower too
    flipped = m[::-1].copy()
    job(
        tmp_path / "a_proc",
        "similarity_across",
        VIT,
        "procrustes",
        long_table(flipped, VIT, CNN, "procrustes"),
        reference=CNN,
        experiment="measures_fig2",
    )
    g = findings(tmp_path, "procrustes")
    assert g["fig2_lower"].verdict == "contradicted" and g["fig2_top"].verdict == "contradicted"
    assert g["fig2_lower"].value == pytest.approx(0.05 - 0.9, abs=1e-12)


def test_each_measure_reads_only_its_own_runs(tmp_path):
    """Two measures in one sweep with opposite structure: each measure's claim pairs the ViT and the ResNet run of
    that measure (Need.config), never the other's, and a measure without runs is `missing` with the reason."""
    within_jobs(tmp_path, "cka", uniform(8), staged(8))
    within_jobs(tmp_path, "procrustes", staged(8), uniform(8))
    cka, proc = findings(tmp_path, "cka")["fig1"], findings(tmp_path, "procrustes")["fig1"]
    assert cka.verdict == "holds" and proc.verdict == "contradicted"
    assert sorted(cka.runs) == ["w_cka_cnn", "w_cka_vit"] and sorted(proc.runs) == [
        "w_procrustes_cnn",
        "w_procrustes_vit",
    ]
    across = findings(tmp_path, "cka")["fig2_lower"]
    assert across.verdict == "missing" and "similarity_across run of a ViT with analysis.measure=cka" in across.note


@dataclass(frozen=True, kw_only=True)
class _Asymmetric(Measure):
    """A stand-in asymmetric measure (x predicts y), added to the registry only inside the test that needs it."""

    name: ClassVar[str] = "asym_test"
    label: ClassVar[str] = "test R²"
    summary: ClassVar[str] = "test only"
    citation: ClassVar[str] = "none"
    range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    invariances: ClassVar[tuple[str, ...]] = ()
    symmetric: ClassVar[bool] = False


def test_asymmetric_measures_average_fig1_directions_and_read_vit_predicting_cnn(tmp_path, monkeypatch):
    """Fig. 1: the lowest predicting the highest quarter (0.7) and the highest predicting the lowest (0.3) average
    to 0.5 for the ViT; Fig. 2: of an across table holding both directions, the rows with the ViT as x."""
    monkeypatch.setitem(MEASURES, "asym_test", _Asymmetric)
    made = mclaims.for_measure("asym_test")
    vit = uniform(8)
    vit[:2, 6:], vit[6:, :2] = 0.7, 0.3
    cnn = staged(8)
    cnn[:2, 6:], cnn[6:, :2] = 0.2, 0.0
    within_jobs(tmp_path, "asym_test", vit, cnn, experiment="x")
    (f,) = resolve(made["fig1"], records(tmp_path), root=tmp_path)
    assert f.value == pytest.approx(0.5 - 0.1, abs=1e-12)
    assert "both directions" in made["fig1"].statistic and "predicting" in made["fig2_lower"].statistic
    m = across_matrix()
    both = pd.concat(
        [
            long_table(m, VIT, CNN, "asym_test"),  # ViT predicting the ResNet
            long_table(np.full((6, 8), 0.5), CNN, VIT, "asym_test"),
        ]
    )  # the ResNet predicting the ViT
    job(tmp_path / "a", "similarity_across", VIT, "asym_test", both, reference=CNN, experiment="x")
    (lower,) = resolve(made["fig2_lower"], records(tmp_path), root=tmp_path)
    (top,) = resolve(made["fig2_top"], records(tmp_path), root=tmp_path)
    assert lower.value == pytest.approx(0.85, abs=1e-12) and top.value == pytest.approx(0.1 - 0.78, abs=1e-12)
    assert np.array_equal(assembly.matrix(run_record(tmp_path / "a"), "similarity_across"), m)


def test_claims_exist_for_every_registered_measure():
    names = {mclaims.measure_of(c) for t in ("measures_fig1", "measures_fig2") for c in claims.CLAIMS[t]}
    assert names == set(MEASURES)
    assert all(len(mclaims.BY_MEASURE[m]) == 3 for m in MEASURES)
    assert all(c.column == "value" for t in ("measures_fig1", "measures_fig2") for c in claims.CLAIMS[t])


# ------------------------------------------------------------------ the figure


def test_figure_rows_panels_and_each_measures_colour_range():
    """Two rows (ranges [0, 1] and [-1, 1]): three heatmaps each, clim = the measure's range, one colour bar per row
    spanning it, verdicts in the row titles, a missing run drawn as a note, and nothing overlaps."""
    rows = [
        MeasureRow(
            "cka",
            "linear CKA",
            (0.0, 1.0),
            (
                Heatmap(uniform(6), "x", "y", "ViT within"),
                Heatmap(staged(8), "x", "y", "ResNet within"),
                Heatmap(across_matrix(), "x", "y", "ViT vs ResNet"),
            ),
            "linear CKA (cka): Fig. 1 holds 0.6 [0.5, 0.7]",
        ),
        MeasureRow(
            "rsa",
            "RSA (Spearman)",
            (-1.0, 1.0),
            (
                Heatmap(uniform(6) - 0.5, "x", "y", "ViT within"),
                Heatmap(None, "x", "y", "ResNet within", note="missing: no run"),
                Heatmap(across_matrix() - 0.5, "x", "y", "ViT vs ResNet"),
            ),
            "RSA (Spearman) (rsa): Fig. 1 missing",
        ),
    ]
    fig = measures_figure(rows, "title")
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 5
    assert [im.get_clim() for ax in heat for im in ax.images] == [(0.0, 1.0)] * 3 + [(-1.0, 1.0)] * 2
    bars = {ax.images[0].colorbar for ax in heat} - {None}  # the first image of a row carries its colour bar
    assert len(bars) == 2
    assert sorted(tuple(round(v, 9) for v in bar.ax.get_ylim()) for bar in bars) == [(-1.0, 1.0), (0.0, 1.0)]
    assert {bar.ax.get_ylabel() for bar in bars} == {"linear CKA", "RSA (Spearman)"}
    assert heat[0].images[0].get_array().shape == (6, 6) and heat[2].images[0].get_array().shape == (6, 8)  # y up
    titles = [sf._suptitle.get_text() for sf in fig.subfigs]
    assert titles == ["linear CKA (cka): Fig. 1 holds 0.6 [0.5, 0.7]", "RSA (Spearman) (rsa): Fig. 1 missing"]
    assert any("missing: no run" in t.get_text() for ax in fig.axes for t in ax.texts)
    assert layout_problems(fig) == []


def test_colour_range_unbounded_side_from_the_data():
    assert colour_range((0.0, 1.0), [np.array([[5.0]])]) == (0.0, 1.0)
    assert colour_range((float("-inf"), 1.0), [np.array([[-3.0, 0.5]]), None]) == (-3.0, 1.0)


def test_verdict_panel_colours_and_texts():
    cells = [
        Verdict("linear CKA", "Fig. 1", "holds", 0.6, 0.5, 0.7),
        Verdict("RSA", "Fig. 1", "contradicted", -0.2, -0.3, -0.1),
    ]
    fig = verdicts_figure(cells, ["linear CKA", "RSA"], ["Fig. 1", "Fig. 2 lower"], "t")
    (ax,) = fig.axes
    codes = ax.images[0].get_array()
    assert codes.tolist() == [[0, 3], [1, 3]]  # holds, missing / contradicted, missing (VERDICT_COLOURS order)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["holds\n0.60\n[0.50, 0.70]", "missing", "contradicted\n-0.20\n[-0.30, -0.10]", "missing"]


# ------------------------------------------------------------------ the assembly of make fig-measures


def sweep(root: Path) -> None:
    """The two multiruns of `make fig-measures` for cka and procrustes (procrustes with the ViT and ResNet swapped,
    so that its Fig. 1 claim is contradicted), laid out as Hydra writes them."""
    within_jobs(root / "fig-measures-1", "cka", uniform(6), staged(8))
    within_jobs(root / "fig-measures-1", "procrustes", staged(6), uniform(8))
    for measure in ("cka", "procrustes"):
        job(
            root / "fig-measures-2" / measure,
            "similarity_across",
            VIT,
            measure,
            long_table(across_matrix(6, 8), VIT, CNN, measure),
            reference=CNN,
            experiment="measures_fig2",
        )


def test_assembly_writes_figure_and_verdicts(tmp_path, capsys):
    sweep(tmp_path)
    out = tmp_path / "fig-measures"
    assert assembly.main([str(tmp_path / "fig-measures-1"), str(tmp_path / "fig-measures-2"), "--out", str(out)]) == 0
    assert "under 2 measures (cka, procrustes)" in capsys.readouterr().out
    for name in (
        "measures.png",
        "measures.pdf",
        "measures_verdicts.png",
        "measures_verdicts.csv",
        "measures_verdicts.md",
        "findings.csv",
    ):
        assert (out / name).is_file(), name
    v = pd.read_csv(out / "measures_verdicts.csv")
    got = {(r.measure, r.claim): r.verdict for r in v.itertuples()}
    assert got[("cka", "fig1")] == "holds" and got[("procrustes", "fig1")] == "contradicted"
    assert len(v) == 6 and set(v.claim) == {"fig1", "fig2_lower", "fig2_top"}
    cka1 = v[(v.measure == "cka") & (v.claim == "fig1")].iloc[0]
    far = uniform(6)[:2, 4:].mean() - staged(8)[:2, 6:].mean()  # quarter(6) = 2 layers, quarter(8) = 2
    assert cka1.value == pytest.approx(far, abs=1e-12)
    md = (out / "measures_verdicts.md").read_text()
    assert "| linear CKA (`cka`) | holds, 0.6 [" in md and "| Procrustes similarity (`procrustes`) | contradicted" in md
    assert len(pd.read_csv(out / "findings.csv")) == 6


def test_assembly_matrices_and_row_titles(tmp_path):
    sweep(tmp_path)
    job(
        tmp_path / "fig-measures-2" / "0_vit_vs_vit",
        "similarity_across",
        VIT,
        "cka",  # found first, not Fig. 2's pair
        long_table(uniform(6), VIT, VIT, "cka"),
        reference=VIT,
        experiment="measures_fig2",
    )
    runs, _ = assembly.find_runs([tmp_path])
    groups = assembly.group_runs(runs)
    assert list(groups) == ["cka", "procrustes"]  # registry order
    g = groups["cka"]
    assert np.array_equal(assembly.matrix(g.vit, "similarity_within"), uniform(6))
    assert np.array_equal(assembly.matrix(g.across, "similarity_across"), across_matrix(6, 8))
    # a within table written as its upper triangle only is mirrored
    upper = long_table(staged(8), CNN, CNN, "cka").query("index_x <= index_y")
    upper.to_csv(Path(g.cnn["dir"]) / "similarity_within.csv", index=False)
    assert np.array_equal(assembly.matrix(g.cnn, "similarity_within"), staged(8))
    found = {
        mclaims.key_of(f.claim): f
        for f in claims.for_target("measures_fig1", runs, tmp_path)
        if mclaims.measure_of(f.claim) == "cka"
    }
    row = assembly.row("cka", g, found)
    assert row.range == (0.0, 1.0) and row.label == "linear CKA"
    assert re.match(r"linear CKA \(cka\): Fig\. 1 holds 0\.\d+ \[", row.title)
    assert [p.title for p in row.panels] == [
        "vit: within (Fig. 1)",
        "resnet: within (Fig. 1)",
        "vit vs resnet (Fig. 2)",
    ]


def test_assembly_refuses_a_folder_without_similarity_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert assembly.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitstudy: error: no finished similarity_within") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_make_target_sweeps_every_registered_measure():
    """fig-measures runs fig-measures-1 and -2 (one job per model and measure) and assembles them; its measure list
    names every registered measure (a new measure must be added there)."""
    text = (REPO / "Makefile").read_text()
    listed = re.search(r"^MEASURES\s*\?=\s*(\S+)", text, re.M).group(1).split(",")
    assert set(MEASURES) <= set(listed)
    assert re.search(
        r"^fig-measures: fig-measures-1 fig-measures-2\n\t.*-m vitstudy\.report\.measures "
        r"\$\(FIG_OUT\)/fig-measures-1 \$\(FIG_OUT\)/fig-measures-2 --out \$\(FIG_OUT\)/fig-measures",
        text,
        re.M,
    )
    assert re.search(
        r"^fig-measures-1:.*\n\t\$\(RUN_FIG\) experiment=measures_fig1 "
        r"model=vit_cifar10_demo,resnet_cifar10_demo analysis\.measure=\$\(MEASURES\)",
        text,
        re.M,
    )
    assert re.search(
        r"^fig-measures-2:.*\n\t\$\(RUN_FIG\) experiment=measures_fig2 analysis\.measure=\$\(MEASURES\)", text, re.M
    )
