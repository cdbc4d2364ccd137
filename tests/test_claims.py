"""Claims as checks (vitstudy.claims): known-answer verdicts on hand-written run tables, the interval methods
against float64 numpy formulas written here, `missing` inputs said aloud, findings.csv from collect, and (slow) the
tour's claims recomputed independently from its CSVs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitstudy import claims
from vitstudy.claims.core import COLUMNS, Claim, kind_of

T975_DF4 = 2.7764451051977987  # Student's t quantile 0.975, 4 degrees of freedom (statistical tables)
Z975 = 1.959963984540054


def cka_job(job: Path, model: str, first_last: float, spread: float, seed: int = 0, units=None):
    """A cka_within run of 4 layers written by hand: rows index_x <= index_y, the (0, 3) cell `first_last`, and
    5 leave-one-batch-out replicates that scatter it by `spread`."""
    rng = np.random.default_rng(seed)
    rows = [(i, j) for i in range(4) for j in range(i, 4)]
    cka = [1.0 if i == j else (first_last if (i, j) == (0, 3) else 0.8) for i, j in rows]
    df = pd.DataFrame(
        {
            "model_x": model,
            "layer_x": [f"l{i}" for i, _ in rows],
            "index_x": [i for i, _ in rows],
            "layer_y": [f"l{j}" for _, j in rows],
            "index_y": [j for _, j in rows],
            "cka": cka,
            "uncertainty": "jackknife_batches",
        }
    )
    reps = np.array(cka)[None, :] + spread * rng.standard_normal((5, len(rows)))
    _write(
        job,
        "cka_within",
        model,
        df,
        {
            "values": reps,
            "strata": np.zeros(5, dtype=np.int64),
            "units": np.arange(5) if units is None else units,
            "column": np.array("cka"),
        },
    )
    return df, reps


def _write(job: Path, analysis: str, model: str, df: pd.DataFrame, reps: dict | None = None, table: str | None = None):
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- analysis={analysis}\n")
    (job / "run.json").write_text(
        json.dumps(
            {
                "analysis": analysis,
                "overrides": [f"analysis={analysis}"],
                "models": {"model": {"name": model}},
                "config": {"analysis": {"name": analysis}, "model": {"name": model}},
            }
        )
    )
    df.to_csv(job / f"{table or analysis}.csv", index=False)
    if reps is not None:
        np.savez(job / f"{table or analysis}.replicates.npz", **reps)


def records(root: Path) -> list[dict]:
    from vitstudy.claims.core import run_record

    return [run_record(p.parent) for p in sorted(root.glob("*/run.json"))]


def paired_interval(rep_a, rep_b, est):
    d = rep_a - rep_b
    se = np.sqrt((len(d) - 1) / len(d) * ((d - d.mean()) ** 2).sum())
    return est - T975_DF4 * se, est + T975_DF4 * se


def test_judge_sides():
    c = Claim(
        paper="P",
        figure="Fig. 0",
        text="x",
        statistic="s",
        needs={},
        compute=lambda t: 0.0,
        threshold=0.5,
        direction=">",
    )
    assert c.judge(0.6, 0.9) == "holds" and c.judge(0.1, 0.4) == "contradicted" and c.judge(0.4, 0.6) == "inconclusive"
    below = Claim(
        paper="P",
        figure="Fig. 0",
        text="x",
        statistic="s",
        needs={},
        compute=lambda t: 0.0,
        threshold=0.0,
        direction="<",
    )
    assert (
        below.judge(-2, -1) == "holds" and below.judge(1, 2) == "contradicted" and below.judge(-1, 1) == "inconclusive"
    )
    assert c.judge(np.nan, 1.0) == "inconclusive"


@pytest.mark.parametrize(
    "vit, resnet, spread, verdict",
    [(0.7, 0.3, 0.01, "holds"), (0.2, 0.6, 0.01, "contradicted"), (0.52, 0.5, 0.05, "inconclusive")],
)
def test_raghu_fig1_known_answers_paired_over_batches(tmp_path, vit, resnet, spread, verdict):
    """Fig. 1 on hand-written ViT and ResNet tables measured on the same 5 batches: the value is the (0, 3) cell's
    difference and the interval the paired jackknife of the replicates' differences (t with 4 df)."""
    _, rv = cka_job(tmp_path / "vit", "vit_tiny_patch16_224", vit, spread, seed=1)
    _, rr = cka_job(tmp_path / "res", "resnet18", resnet, spread, seed=2)
    (f,) = claims.for_target("raghu_fig1", records(tmp_path), root=tmp_path)
    cell = 3  # row (0, 3) in the upper triangle order (0,0) (0,1) (0,2) (0,3)
    low, high = paired_interval(rv[:, cell], rr[:, cell], vit - resnet)
    assert f.value == pytest.approx(vit - resnet, abs=1e-12)
    assert (f.ci_low, f.ci_high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    assert f.verdict == verdict and f.method == "paired jackknife over batches"
    assert sorted(f.models) == ["resnet18", "vit_tiny_patch16_224"] and sorted(f.runs) == ["res", "vit"]


def test_runs_on_different_images_add_their_variances(tmp_path):
    _, rv = cka_job(tmp_path / "vit", "vit_tiny_patch16_224", 0.7, 0.02, seed=1, units=np.arange(5))
    _, rr = cka_job(tmp_path / "res", "resnet18", 0.3, 0.02, seed=2, units=np.arange(5, 10))
    (f,) = claims.for_target("raghu_fig1", records(tmp_path))
    jk = lambda r: (len(r) - 1) / len(r) * ((r - r.mean()) ** 2).sum()
    se = np.sqrt(jk(rv[:, 3]) + jk(rr[:, 3]))
    assert f.ci_high - f.value == pytest.approx(T975_DF4 * se, rel=1e-9)
    assert f.method == "jackknife over batches"


def test_standard_error_tables_get_the_conservative_bound(tmp_path):
    """Raghu Fig. 7 from a skip_ratio_summary with only ratio_se: mean over a model's blocks, ViT minus ResNet;
    se <= sum |weight| se_i (any correlation), a normal interval."""
    df = pd.DataFrame(
        {
            "model": ["vit_small_patch16_224"] * 3 + ["resnet50"] * 2,
            "group": "all",
            "block": ["b0", "b1", "b2", "s0", "s1"],
            "ratio": [3.0, 5.0, 7.0, 1.0, 2.0],
            "ratio_se": [0.3, 0.1, 0.2, 0.05, 0.15],
            "uncertainty": "se_images",
        }
    )
    _write(tmp_path / "skip", "skip_ratio", "vit_small_patch16_224", df, table="skip_ratio_summary")
    (f,) = claims.for_target("raghu_fig7", records(tmp_path))
    se = (0.3 + 0.1 + 0.2) / 3 + (0.05 + 0.15) / 2
    assert f.value == pytest.approx(5.0 - 1.5)
    assert (f.ci_low, f.ci_high) == (pytest.approx(3.5 - Z975 * se, rel=1e-6), pytest.approx(3.5 + Z975 * se, rel=1e-6))
    assert f.verdict == "holds"
    df["ratio"] = [1.0, 1.0, 1.0, 1.1, 0.9]  # equal means: the interval straddles 0
    df.to_csv(tmp_path / "skip" / "skip_ratio_summary.csv", index=False)
    assert claims.for_target("raghu_fig7", records(tmp_path))[0].verdict == "inconclusive"
    df["ratio"] = [1.0, 1.0, 1.0, 4.0, 5.0]
    df.to_csv(tmp_path / "skip" / "skip_ratio_summary.csv", index=False)
    assert claims.for_target("raghu_fig7", records(tmp_path))[0].verdict == "contradicted"


def test_weights_only_tables_are_exact(tmp_path):
    """Position embeddings (no images): cosine of 4-neighbours minus farther pairs on a 2x2 grid, by hand."""
    cos = np.array([[1.0, 0.6, 0.5, 0.1], [0.6, 1.0, 0.2, 0.4], [0.5, 0.2, 1.0, 0.7], [0.1, 0.4, 0.7, 1.0]])
    a, b = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    df = pd.DataFrame(
        {
            "model": "vit_tiny",
            "index_a": a.ravel(),
            "row_a": a.ravel() // 2,
            "col_a": a.ravel() % 2,
            "index_b": b.ravel(),
            "row_b": b.ravel() // 2,
            "col_b": b.ravel() % 2,
            "cosine": cos.ravel(),
        }
    )
    _write(tmp_path / "pos", "position_embedding", "vit_tiny_patch16_224", df)
    f = next(f for f in claims.for_target("vit_fig7", records(tmp_path)) if "nearby" in f.claim.text)
    near = np.mean([0.6, 0.5, 0.6, 0.4, 0.5, 0.7, 0.4, 0.7])  # (0,1) (0,2) (1,0) (1,3) (2,0) (2,3) (3,1) (3,2)
    far = np.mean([0.1, 0.2, 0.2, 0.1])  # the diagonals (0,3) (1,2) (2,1) (3,0)
    assert f.value == pytest.approx(near - far) and f.ci_low == f.ci_high == f.value
    assert f.verdict == "holds" and f.method == "exact (no sampled images)"


def test_missing_inputs_are_said_not_omitted(tmp_path):
    cka_job(tmp_path / "vit", "vit_tiny_patch16_224", 0.7, 0.01)
    (f,) = claims.for_target("raghu_fig1", records(tmp_path))
    assert f.verdict == "missing" and "cka_within run of a CNN" in f.note
    (g,) = claims.for_target("raghu_fig99", records(tmp_path))  # a target without declared claims says so
    assert g.verdict == "missing" and "no claim declared" in g.note
    (tmp_path / "vit" / "cka_within.csv").unlink()
    cka_job(tmp_path / "res", "resnet18", 0.3, 0.01)
    (h,) = claims.for_target("raghu_fig1", records(tmp_path))
    assert h.verdict == "missing" and "cka_within.csv is absent" in h.note


def test_kind_of_names():
    assert kind_of("resnetv2_50x1_bit.goog_in21k") == "cnn" and kind_of("resnet_mini_cifar.demo_cifar10") == "cnn"
    assert kind_of("vit_base_patch16_224.augreg_in1k") == "vit" and kind_of("deit3_large_patch16_224") == "vit"


def test_collect_writes_findings_and_shows_verdicts(tmp_path):
    from vitstudy.collect import collect

    cka_job(tmp_path / "runs" / "vit", "vit_tiny_patch16_224", 0.7, 0.01, seed=1)
    cka_job(tmp_path / "runs" / "res", "resnet18", 0.3, 0.01, seed=2)
    out = collect([str(tmp_path / "runs")], str(tmp_path / "summary"))
    df = pd.read_csv(out / "findings.csv")
    assert list(df.columns[:11]) == COLUMNS[:11]
    row = df[df.figure == "Fig. 1"].iloc[0]
    assert row.verdict == "holds" and row.value == pytest.approx(0.4) and row.threshold == "> 0"
    page = (out / "index.html").read_text()
    assert "<span class='verdict holds'>holds</span>, 0.40 [" in page and "Paper finds" in page
    assert "CKA between every pair of layers" in page  # the contents' "what": the analysis' summary, not its name


def recompute(out: Path) -> dict[tuple[str, str], float]:
    """Every tour claim's value from the tour's CSVs with plain pandas (not vitstudy.claims): (figure, first words
    of the claim) -> value."""
    import math

    read = lambda run, table=None: pd.read_csv(out / run / f"{table or run}.csv")
    vals = {}

    def far(df):
        n = df.index_y.max() + 1
        k = max(1, math.ceil(n / 4))
        return df[(df.index_x < k) & (df.index_y >= n - k)].cka.mean()

    vals["Fig. 1", "ViTs keep"] = far(read("cka_within_vit", "cka_within")) - far(
        read("cka_within_resnet", "cka_within")
    )
    across = read("cka_across")
    nx, ny = across.index_x.max() + 1, across.index_y.max() + 1
    k, half = max(1, math.ceil(nx / 4)), max(1, ny // 2)
    lower = across[across.index_y < half]
    vals["Fig. 2", "The ResNet's lower"] = (
        lower[lower.index_x < k].cka.mean() - lower[lower.index_x >= nx - k].cka.mean()
    )
    k3 = max(1, math.ceil(nx / 3))
    best = across.groupby("index_x").cka.max()
    vals["Fig. 2", "The final third"] = best[best.index >= nx - k3].mean() - best[best.index < nx - k3].mean()
    att = read("attention_distance")
    first, last = att[att.block == att.block.min()].mean_distance, att[att.block == att.block.max()].mean_distance
    vals["Fig. 3", "Lower layers"] = np.std(first.to_numpy()) - np.std(last.to_numpy())
    vals["Fig. 7 (right)", "Attention distance"] = last.mean() - first.mean()
    summ = read("skip_ratio", "skip_ratio_summary")
    summ = summ[summ.group == "all"]
    is_cnn = summ.model.str.contains("resnet")
    vals["Fig. 7", "Far more"] = summ[~is_cnn].ratio.mean() - summ[is_cnn].ratio.mean()
    loc = read("spatial_localization")
    vals["Fig. 9", "Final-block"] = loc[loc.is_self].cka.mean() - loc[~loc.is_self].cka.mean()
    pv, pr = read("linear_probe_vit", "linear_probe"), read("linear_probe_resnet", "linear_probe")
    vals["Fig. 13", "ViTs learn"] = pv[pv.depth >= 0.5].accuracy.mean() - pr[pr.depth >= 0.5].accuracy.mean()
    pos = read("position_embedding")
    dist = (pos.row_a - pos.row_b).abs() + (pos.col_a - pos.col_b).abs()
    vals["Fig. 7 (centre)", "Position embeddings are"] = pos[dist == 1].cosine.mean() - pos[dist > 1].cosine.mean()
    line = (pos.row_a == pos.row_b) | (pos.col_a == pos.col_b)
    vals["Fig. 7 (centre)", "Position embeddings encode"] = (
        pos[line & (dist > 1)].cosine.mean() - pos[~line & (dist > 1)].cosine.mean()
    )
    four = read("fourier")
    top = four[four.k == four.groupby(["name", "latent"]).k.transform("max")]
    cnn = top.name.str.contains("resnet")
    vals["Fig. 2a", "Convolutions"] = (
        top[cnn & (top.depth >= 0.5)].delta_log_amplitude.mean()
        - top[~cnn & (top.depth >= 0.5)].delta_log_amplitude.mean()
    )

    def steps(df, col, kind, log=False):
        df = df.sort_values("index")
        v = np.log(df[col].to_numpy()) if log else df[col].to_numpy()
        kinds = df.kind.to_numpy()
        return np.mean([v[i] - v[i - 1] for i in range(1, len(v)) if kinds[i] == kind])

    vals["Fig. 8", "MSAs decrease"] = steps(top[~cnn], "delta_log_amplitude", "attention")
    var = read("feature_variance")
    vit = var[~var.name.str.contains("resnet")]
    vals["Fig. 9", "MSAs reduce"] = steps(vit, "variance", "attention", log=True)
    vals["Fig. 9", "MLPs increase"] = steps(vit, "variance", "mlp", log=True)
    return vals


def check_tour_findings(out: Path, findings: pd.DataFrame):
    """At least 10 claims over at least 5 paper figures, none missing, each value equal to `recompute`."""
    expected = recompute(out)
    assert len(findings) >= 10 and findings[["paper", "figure"]].drop_duplicates().shape[0] >= 5
    assert set(findings.verdict) <= {"holds", "contradicted", "inconclusive"}
    assert (findings.ci_low <= findings.value).all() and (findings.value <= findings.ci_high).all()
    for (figure, start), value in expected.items():
        row = findings[(findings.figure == figure) & findings.claim.str.startswith(start)]
        assert len(row) == 1, (figure, start)
        assert row.value.item() == pytest.approx(value, rel=1e-9, abs=1e-12), (figure, start)
    assert len(expected) == len(findings)


@pytest.mark.slow
def test_tour_claims_equal_an_independent_recomputation(tmp_path, capsys):
    """A reduced tour (200 images) on the bundled models: its findings.csv against `recompute`."""
    from helpers import cli

    out = tmp_path / "tour"
    code, _, err = cli(["tour", "--out", str(out), "dataset.num_images=200", "cache.dir="], capsys)
    assert code in (0, None), err
    check_tour_findings(out, pd.read_csv(out / "report" / "findings.csv"))


def test_bundled_tour_findings_in_docs_match_their_claims():
    """docs/tour_findings.csv (the full tour on the bundled models) holds every tour claim, in the tour's order."""
    df = pd.read_csv(Path(__file__).resolve().parent.parent / "docs" / "tour_findings.csv")
    assert [(r.figure, r.claim) for r in df.itertuples()] == [(c.figure, c.text) for _, c in claims.TOUR]
    assert set(df.verdict) <= {"holds", "contradicted", "inconclusive"}


def test_docs_claims_md_is_generated_from_the_declarations():
    from vitstudy.claims.listing import markdown

    text = (Path(__file__).resolve().parent.parent / "docs" / "claims.md").read_text()
    assert text == markdown(), "stale: python -m vitstudy.claims > docs/claims.md"
    assert all(f"`{t}`" in text for t in claims.CLAIMS) and len(claims.CLAIMS) == 24


def test_independent_rows_use_their_spread(tmp_path):
    """Dosovitskiy Fig. 6 on a rollout table of 5 images: mean normalised entropy, se = sd / sqrt(5), t with 4 df."""
    ent = np.array([0.80, 0.85, 0.90, 0.70, 0.75])
    _write(
        tmp_path / "roll",
        "attention_rollout",
        "vit_large_patch16_224",
        pd.DataFrame({"order": range(5), "entropy_normalised": ent}),
    )
    (f,) = claims.for_target("vit_fig6", records(tmp_path))
    se = ent.std(ddof=1) / np.sqrt(5)
    assert f.value == pytest.approx(0.8) and f.ci_high == pytest.approx(0.8 + T975_DF4 * se, rel=1e-6)
    assert f.verdict == "holds"  # well below 1 (uniform)


def test_roles_told_apart_by_model_name(tmp_path):
    """Raghu Fig. 10: the GAP ViT against the CLS ViT of one multirun, each found by its timm name."""

    def loc(job, model, self_cka):
        p, q = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
        cka = np.where(p == q, self_cka, 0.2).ravel()
        df = pd.DataFrame({"model": model, "p": p.ravel(), "q": q.ravel(), "cka": cka, "is_self": (p == q).ravel()})
        _write(
            job,
            "spatial_localization",
            model,
            df,
            {
                "values": cka[None, :] + 0.001 * np.arange(5)[:, None] * cka[None, :],
                "strata": np.zeros(5, dtype=np.int64),
                "units": np.arange(5),
                "column": np.array("cka"),
            },
        )

    loc(tmp_path / "0", "vit_medium_patch16_gap_256.sw_in12k_ft_in1k", 0.4)
    loc(tmp_path / "1", "vit_base_patch16_224.augreg_in21k_ft_in1k", 0.9)
    (f,) = claims.for_target("raghu_fig10", records(tmp_path))
    assert f.value == pytest.approx((0.4 - 0.2) - (0.9 - 0.2)) and f.verdict == "holds"
    assert f.models == ["vit_medium_patch16_gap_256", "vit_base_patch16_224"]
