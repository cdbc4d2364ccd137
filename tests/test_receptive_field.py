"""receptive_field: a single 3x3 convolution has exactly a 3x3 receptive field with the kernel's values;
mass radii on a hand-made map; an end-to-end run; clear messages."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from helpers import SMALL_DATA, TINY_VIT, cli
from vitstudy.analyses.receptive_field import erf_maps, mass_radii
from vitstudy.pipeline.layers import resolve


@pytest.mark.parametrize("channels", ["sum", "abs_mean"])
def test_single_3x3_conv_has_exactly_3x3_receptive_field(channels):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1)).eval()
    layers = resolve(net, ["0"], (3, 9, 9))
    x = torch.randn(4, 3, 9, 9)
    maps, grids = erf_maps(net, layers, [x[:2], x[2:]], channels=channels, chunk=2)
    erf = maps["0"]
    assert grids["0"] == (9, 9, 0)
    nz = np.argwhere(erf > 0)
    assert nz.min(0).tolist() == [3, 3] and nz.max(0).tolist() == [5, 5] and len(nz) == 9
    w = net[0].weight.detach().double().numpy()  # (out, in, 3, 3): d y[c, 4, 4] / d x[k, 3 + a, 3 + b] = w[c, k, a, b]
    want = np.abs(w.sum(0)).sum(0) if channels == "sum" else np.abs(w).sum(1).mean(0)
    np.testing.assert_allclose(erf[3:6, 3:6], want, rtol=1e-6)


class _Tokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C), as a ViT's patch embedding flattens its map."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("channels", ["sum", "abs_mean"])
def test_single_image_batches_through_batchnorm_and_tokens(channels):
    """conv -> eval BatchNorm -> tokens, one image per batch: the map is the analytic |sum_c s_c w_c| (s_c the
    BatchNorm's scale). PyTorch's CPU BatchNorm backward misreads a one-image channels-last gradient (XCiT, LeViT,
    EfficientFormer stems; issue 23), which gave maps ~100x off before single-image batches were run doubled."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), _Tokens(), nn.Identity()).eval()
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.normal_()
        net[1].bias.normal_()
    layers = resolve(net, ["3"], (3, 9, 9))
    x = torch.randn(3, 3, 9, 9)
    maps, grids = erf_maps(net, layers, [x[:1], x[1:2], x[2:]], channels=channels, chunk=2)
    erf = maps["3"]
    assert grids["3"] == (9, 9, 0)
    bn = net[1]
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    w = net[0].weight.detach().double().numpy() * s[:, None, None, None]  # d y[c, 4, 4] / d x[k, 3 + a, 3 + b]
    want = np.zeros((9, 9))
    want[3:6, 3:6] = np.abs(w.sum(0)).sum(0) if channels == "sum" else np.abs(w).sum(1).mean(0)
    np.testing.assert_allclose(erf, want, rtol=1e-5, atol=1e-7 * want.max())


def test_mass_radii_on_a_hand_made_map():
    erf = np.zeros((11, 11))
    erf[5, 5] = 1.0
    erf[5, 8] = 1.0  # 3 px away
    assert mass_radii(erf, (5, 5), (0.5, 0.9)) == [0.0, 3.0]


def test_end_to_end_vit(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=receptive_field",
            *TINY_VIT,
            *SMALL_DATA,
            "analysis.num_images=8",
            "analysis.blocks=[0,2]",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "receptive_field.csv")
    assert len(df) == 2 * 2 * 2 and set(df.residual) == {"post", "pre"}
    assert set(df.layer) >= {"blocks.0.norm2:in", "blocks.0.ls1", "blocks.2", "blocks.2.ls2"}
    assert (df.radius50_px <= df.radius90_px).all() and df.centre_cell_mass.between(0, 1).all()
    assert (out / "receptive_field.png").stat().st_size > 0


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["analysis.residual=middle"], "analysis.residual must be one of both, post, pre"),
        (["analysis.blocks=[5]"], "out of range"),
    ],
)
def test_bad_input_one_line(extra, expected, tmp_path, capsys):
    code, _, err = cli(
        ["run", "analysis=receptive_field", *TINY_VIT, *SMALL_DATA, *extra, f"hydra.run.dir={tmp_path}"], capsys
    )
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
