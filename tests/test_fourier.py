"""Fourier amplitudes and feature-map variance: analytic inputs, the official formulas written out in numpy,
streaming over batches against the whole-set formula, and end-to-end runs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import SMALL_DATA, TINY_RESNET, TINY_VIT, assert_one_line_error, cli
from vitstudy.analyses.fourier import LatentReducer
from vitstudy.anatomy import latents
from vitstudy.metrics import fourier as F
from vitstudy.pipeline.engine import stream
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel


def official_relative_log_amplitude(maps: np.ndarray) -> np.ndarray:
    """Park & Kim's fourier_analysis.ipynb, in float64 numpy: log(|fft2|+1e-6), roll, mean, half diagonal, minus DC."""
    b, c, h, w = maps.shape
    f = np.log(np.abs(np.fft.fft2(maps)) + 1e-6)
    f = np.roll(f, shift=(int(h / 2), int(w / 2)), axis=(2, 3)).mean(axis=(0, 1))
    d = np.diag(f)[int(h / 2) :]
    return d - d[0]


def ours(maps: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(maps)
    return F.relative(F.log_amplitude_sum(x) / (x.shape[0] * x.shape[1])).numpy()


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 2, 7, 7), (2, 4, 14, 14), (2, 2, 6, 8), (1, 1, 1, 1)])
def test_matches_the_official_formula(shape):
    maps = np.random.default_rng(0).normal(size=shape)
    np.testing.assert_allclose(ours(maps), official_relative_log_amplitude(maps), rtol=1e-12, atol=1e-12)


def test_constant_map_has_no_amplitude_beyond_dc():
    maps = np.full((2, 3, 8, 8), 2.5)
    d = ours(maps)
    # DC amplitude 2.5 * 64; every other frequency is exactly 0 -> log(1e-6)
    np.testing.assert_allclose(d[1:], math.log(1e-6) - math.log(2.5 * 64 + 1e-6), rtol=1e-9)
    assert d[0] == 0


def test_checkerboard_sits_at_nyquist_outside_the_half_diagonal():
    """(-1)^(m+n) has all its amplitude at (pi, pi): the shifted map's corner, which diag()[h//2:] never reaches."""
    h = 8
    m, n = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    board = np.broadcast_to((-1.0) ** (m + n), (1, 1, h, h)).copy()
    spectrum = np.abs(np.fft.fft2(board))[0, 0]
    assert spectrum[h // 2, h // 2] == pytest.approx(h * h) and np.isclose(spectrum.sum(), h * h)
    rows, cols = F.half_diagonal(h, h)
    assert (h // 2, h // 2) not in set(zip(rows.tolist(), cols.tolist()))
    np.testing.assert_allclose(ours(board), 0.0, atol=1e-6)  # all entries log(1e-6) alike: flat
    # a diagonal cosine at the highest frequency on the half diagonal, k = h/2 - 1 (the paper's "1.0 pi")
    k = h // 2 - 1
    wave = np.cos(2 * np.pi * k * (m + n) / h)[None, None]
    d = ours(wave)
    np.testing.assert_allclose(d[:-1], 0.0, atol=1e-6)  # DC and lower frequencies: nothing
    assert d[-1] == pytest.approx(math.log(h * h / 2 + 1e-6) - math.log(1e-6), rel=1e-6)


def test_frequency_axes():
    assert F.paper_frequency(7).tolist() == pytest.approx(np.linspace(0, 1, 7).tolist())
    assert F.true_frequency(7, 14)[-1] == pytest.approx(6 / 7)


def test_variance_formula():
    x = np.random.default_rng(1).normal(size=(3, 4, 5, 6))
    expected = x.reshape(3, 4, -1).var(axis=-1, ddof=1).mean()
    assert float(F.spatial_variance_sum(torch.from_numpy(x)) / 12) == pytest.approx(expected, rel=1e-12)
    assert float(F.spatial_variance_sum(torch.full((2, 3, 4, 4), 7.0))) == 0.0


def test_streamed_sums_equal_the_whole_set_formula(tiny_vit, tiny_resnet, images):
    """Batches of 8 reduced in the hooks == the notebook's formulas on all 24 images at once (float64)."""
    models, layer_lists = [], []
    for key, module in (("model", tiny_vit), ("reference", tiny_resnet)):
        models.append(
            LoadedModel(
                key=key, name=key, label=key, module=module, transform=None, data_config={}, weights="random-init"
            )
        )
        layer_lists.append(resolve(module, "latents", (3, 32, 32)))
    described = [latents.describe(m.module, ls) for m, ls in zip(models, layer_lists)]
    batches = [((images[i : i + 8], images[i : i + 8]), torch.zeros(8)) for i in range(0, 24, 8)]
    results, reducers = {}, {}
    for stat in ("fourier", "variance"):
        reducer = reducers[stat] = LatentReducer(described, stat)
        stream(models, layer_lists, batches, reducer, torch.device("cpu"), progress=False)
        results[stat] = [reducer.means(0), reducer.means(1)]
    for i, (m, lats) in enumerate(zip(models, described)):
        captured = {}
        with torch.no_grad():
            hooks = []
            mods = dict(m.module.named_modules())
            for lat in lats:
                mod = mods[lat.layer.module]
                if lat.layer.is_input:
                    hooks.append(mod.register_forward_pre_hook(lambda _m, a, n=lat.name: captured.__setitem__(n, a[0])))
                else:
                    hooks.append(mod.register_forward_hook(lambda _m, a, o, n=lat.name: captured.__setitem__(n, o)))
            m.module(images)
            for h in hooks:
                h.remove()
        for lat in lats:
            t = captured[lat.name].double().numpy()
            if t.ndim == 3:  # tokens: drop CLS, 'b (h w) c -> b c h w'
                hh = int(math.isqrt(t.shape[1] - 1))
                t = t[:, 1:].reshape(t.shape[0], hh, hh, t.shape[2]).transpose(0, 3, 1, 2)
            got = F.relative(results["fourier"][i][lat.name]).numpy()
            np.testing.assert_allclose(got, official_relative_log_amplitude(t), rtol=1e-4, atol=1e-4)
            # standard errors over the 24 images: sd over images of each image's channel mean / sqrt(24)
            h = t.shape[2]
            amp = np.roll(np.log(np.abs(np.fft.fft2(t)) + 1e-6), shift=(h // 2, t.shape[3] // 2), axis=(2, 3)).mean(1)
            per_image = np.stack([np.diag(a)[h // 2 :] for a in amp])  # (24, K)
            se, delta_se, n = reducers["fourier"].standard_errors(i, lat.name)
            assert n == 24
            np.testing.assert_allclose(se, per_image.std(0, ddof=1) / math.sqrt(24), rtol=1e-3, atol=1e-6)
            rel = per_image - per_image[:, :1]
            np.testing.assert_allclose(delta_se, rel.std(0, ddof=1) / math.sqrt(24), rtol=1e-3, atol=1e-6)
            var = float(results["variance"][i][lat.name])
            if t.shape[2] * t.shape[3] > 1:
                assert var == pytest.approx(t.reshape(*t.shape[:2], -1).var(axis=-1, ddof=1).mean(), rel=1e-5)
                vse, _, _ = reducers["variance"].standard_errors(i, lat.name)
                per = t.reshape(*t.shape[:2], -1).var(axis=-1, ddof=1).mean(1)
                assert float(vse) == pytest.approx(per.std(ddof=1) / math.sqrt(24), rel=1e-4)
            else:
                assert math.isnan(var)


def test_fourier_and_variance_end_to_end(tmp_path, capsys):
    ref = [o.replace("[3,32,32]", "[3,64,64]") for o in TINY_RESNET]
    for analysis in ("fourier", "feature_variance"):
        out = tmp_path / analysis
        code, stdout, err = cli(
            [
                "run",
                f"analysis={analysis}",
                *TINY_VIT,
                *ref,
                *SMALL_DATA,
                "dataset.num_images=12",
                f"hydra.run.dir={out}",
            ],
            capsys,
        )
        assert code == 0, err
        df = pd.read_csv(out / f"{analysis}.csv")
        assert set(df.model) == {"model", "reference"} and (df.num_images == 12).all()
        vit = df[df.model == "model"]
        assert vit.drop_duplicates("latent").kind.tolist() == ["embedding"] + ["attention", "mlp"] * 3
        res = df[df.model == "reference"].drop_duplicates("latent")
        assert res.kind.tolist().count("downsampling") == 3
        for f in (analysis, "images"):
            assert (out / f"{f}.csv").stat().st_size > 0
        assert (out / f"{analysis}.png").stat().st_size > 0
    df = pd.read_csv(tmp_path / "fourier" / "fourier.csv")
    assert (df[df.k == 0].delta_log_amplitude == 0).all()
    assert {"latent", "kind", "frequency", "delta_log_amplitude", "frequency_axis"} <= set(df.columns)
    assert (tmp_path / "fourier" / "fourier_high_frequency.pdf").stat().st_size > 0
    var = pd.read_csv(tmp_path / "feature_variance" / "feature_variance.csv")
    assert (var.variance.dropna() >= 0).all() and (var.ddof == 1).all()


BAD = {
    "vector layer": (["analysis=fourier", "analysis.layers=null", "model.layers=[head]"], "without spatial positions"),
    "bad ddof": (["analysis=feature_variance", "analysis.ddof=2"], "analysis.ddof"),
    "unknown parameter": (["analysis=fourier", "+analysis.window=3"], "unknown parameter analysis.window"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, tmp_path, capsys):
    extra, expected = BAD[case]
    assert_one_line_error(["run", *extra, *TINY_VIT, *TINY_RESNET, *SMALL_DATA], expected, tmp_path / "run", capsys)
