"""Figures that read. The layout checker (vitstudy.plots.layout: text elements that overlap by matplotlib's window
extents of titles, axis labels, tick labels and legends; legends drawn over data points) is tested here on known
cases; tests/test_registry.py applies it to every figure of every registered analysis on its tiny ViT and ResNet
runs (no second run). Report grids have no empty cell when two keys vary together; attention-distance tables
carry the uniform-attention distance, checked in numpy."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from helpers import cli
from test_registry import DATA, VIT
from vitstudy.plots.layout import empty_cells, layout_problems


def test_checker_finds_overlaps_and_hidden_data():
    """Known answers for the checker itself: two titles on one spot, a legend on the data; a clean figure passes."""
    fig, axes = plt.subplots(1, 2, figsize=(3, 2))
    for ax in axes:
        ax.set_title("a long panel title that runs into the next panel")
    assert any("title" in p and "overlaps" in p for p in layout_problems(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(np.linspace(0, 1, 50), np.full(50, 0.95), label="a curve under the legend")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    assert any("legend hides" in p for p in layout_problems(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="line")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.set_title("fine")
    fig.tight_layout()
    assert layout_problems(fig) == []
    plt.close(fig)


def test_grid_of_keys_that_vary_together_has_no_empty_cell(tmp_path):
    """The tour's case: two models whose name and label vary together are one axis (2 cells, none blank), and a
    2 x 2 sweep keeps its 4 cells."""
    from PIL import Image

    from vitstudy.report.grid import figure_grid, grid_axes

    def run(i, **cfg):
        d = tmp_path / str(i)
        d.mkdir()
        Image.new("RGB", (60, 40), (40, 90, 160)).save(d / "cka_within.png")
        return {"dir": d, "analysis": "cka_within", "config": cfg}

    together = [
        run(0, model={"name": "vit_mini", "label": "ViT"}),
        run(1, model={"name": "resnet_mini", "label": "ResNet"}),
    ]
    assert grid_axes(together, "cka_within") == (None, "model.name + model.label")
    fig = figure_grid(together, "cka_within")
    assert len(fig.axes) == 2 and empty_cells(fig) == [] and all(ax.images for ax in fig.axes)
    assert "columns model (label)" in fig._suptitle.get_text()
    plt.close(fig)
    product = [
        run(10 + i, model={"name": m, "label": m.upper()}, seed=s)
        for i, (m, s) in enumerate([(m, s) for m in ("a", "b") for s in (0, 1)])
    ]
    assert grid_axes(product, "cka_within") == ("model.name + model.label", "seed")
    fig = figure_grid(product, "cka_within")
    assert len(fig.axes) == 4 and all(ax.images for ax in fig.axes)
    assert layout_problems(fig) == []
    plt.close(fig)


def test_uniform_distance_against_numpy():
    """Uniform attention over N = prefix + gh*gw tokens, prefix keys dropped without renormalising: the mean over
    patch queries of sum_k D_qk / N, computed here from the patch coordinates in numpy; Swin windows: the plain mean."""
    from vitstudy.metrics import attention as am

    gh, gw, stride, prefix = 3, 5, (4.0, 2.0), 1
    rc = np.array([(r * stride[0], c * stride[1]) for r in range(gh) for c in range(gw)])
    d = np.sqrt(((rc[:, None] - rc[None]) ** 2).sum(-1))
    n = gh * gw + prefix
    assert am.uniform_distance(am.distance_matrix(gh, gw, stride, prefix), prefix) == pytest.approx(
        d.sum() / (gh * gw * n), rel=1e-12
    )
    # 8x8 grid of 4-px patches, no prefix: mean over all pairs
    g = np.array([(4.0 * r, 4.0 * c) for r in range(8) for c in range(8)])
    full = np.sqrt(((g[:, None] - g[None]) ** 2).sum(-1)).mean()
    assert am.uniform_distance(am.distance_matrix(8, 8, (4.0, 4.0), 0)) == pytest.approx(full, rel=1e-12)
    w = am.window_distances(4, 4, (2, 2), (0, 0), (1.0, 1.0))  # four 2x2 windows: distances 0, 1, 1, sqrt 2 per row
    assert am.uniform_distance(w) == pytest.approx((2 + np.sqrt(2)) / 4, rel=1e-12)


def test_attention_table_and_figures_carry_the_uniform_distance(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(["run", "analysis=attention_distance", *VIT, *DATA, f"hydra.run.dir={out}"], capsys)
    assert code == 0, err
    df = pd.read_csv(out / "attention_distance.csv")
    # the tiny ViT: 32 px, patch 8 -> 4x4 grid of 8-px patches, CLS
    rc = np.array([(8.0 * r, 8.0 * c) for r in range(4) for c in range(4)])
    expected = np.sqrt(((rc[:, None] - rc[None]) ** 2).sum(-1)).sum() / (16 * 17)
    assert np.allclose(df.uniform_distance, expected, rtol=1e-12)
