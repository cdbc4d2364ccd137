"""spatial_localization: a token that copies its own input patch peaks there; values against the numpy
minibatch CKA; end-to-end on CLS ViT, GAP ViT and ResNet; clear messages."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from helpers import SMALL_DATA, TINY_VIT, cli, finished_files, minibatch_reference
from vitstudy.analyses.localization import localization_matrix, u_center_batched
from vitstudy.metrics.cka import u_center
from vitstudy.pipeline.layers import resolve
from vitstudy.pipeline.models import LoadedModel


class CopyPatches(nn.Module):
    """Token p = the flattened 8 x 8 input patch at grid position p (a 4 x 4 grid of a 32 px image)."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Identity()

    def forward(self, x):
        b = x.shape[0]
        t = x.reshape(b, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(b, 16, 192)
        return self.tokens(t * 2.0 + 1.0)  # an affine copy: CKA 1 with its own patch


def batches(x, size=8):
    return [((x[i : i + size],), torch.zeros(len(x[i : i + size]), dtype=torch.long)) for i in range(0, len(x), size)]


def test_copied_patch_token_peaks_at_its_own_position():
    torch.manual_seed(0)
    x = torch.randn(48, 3, 32, 32, dtype=torch.float64)
    net = CopyPatches()
    layer = resolve(net, ["tokens"], (3, 32, 32))[0]
    m = LoadedModel(key="model", name="copy", label="copy", module=net, transform=None, data_config={}, weights="none")
    matrix, grid = localization_matrix(m, layer, batches(x), "cpu")
    assert grid == (4, 4, 0)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-12)
    assert (matrix.argmax(1) == np.arange(16)).all()
    assert np.abs(matrix - np.diag(np.diag(matrix))).max() < 0.5
    # independent check: numpy minibatch CKA (Song et al. HSIC averaged over batches) for two pairs
    xs = x.numpy()
    for p, q in ((5, 5), (5, 10)):
        tok = [
            (2 * xb[:, :, (p // 4) * 8 : (p // 4 + 1) * 8, (p % 4) * 8 : (p % 4 + 1) * 8] + 1).reshape(len(xb), -1)
            for xb in np.split(xs, 6)
        ]
        pat = [
            xb[:, :, (q // 4) * 8 : (q // 4 + 1) * 8, (q % 4) * 8 : (q % 4 + 1) * 8].reshape(len(xb), -1)
            for xb in np.split(xs, 6)
        ]
        tok = [t - t.mean(0) for t in tok]
        pat = [t - t.mean(0) for t in pat]
        assert matrix[p, q] == pytest.approx(minibatch_reference(tok, pat), abs=1e-9)


def test_batched_u_centring_matches_single():
    k = torch.randn(3, 7, 7, dtype=torch.float64)
    k = k @ k.transpose(1, 2)
    got = u_center_batched(k)
    for i in range(3):
        torch.testing.assert_close(got[i], u_center(k[i]), rtol=0, atol=1e-12)


CASES = {
    "cls_vit": [],
    "gap_vit": ["model.name=vit_medium_patch16_gap_256", "model.kwargs.depth=2"],
    "resnet": [
        "model.name=resnet18",
        "model.kwargs.img_size=null",
        "model.kwargs.patch_size=null",
        "model.kwargs.depth=null",
        "model.data.input_size=[3,64,64]",
        "analysis.layer=layer3.1",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_end_to_end(case, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        ["run", "analysis=spatial_localization", *TINY_VIT, *SMALL_DATA, *CASES[case], f"hydra.run.dir={out}"], capsys
    )
    assert code == 0, err
    df, s = pd.read_csv(out / "spatial_localization.csv"), pd.read_csv(out / "spatial_localization_summary.csv")
    assert len(df) == 16 * 16 and len(s) == 16 and df.cka.between(-1, 1).all()
    assert (df.prefix_tokens_dropped == (1 if case == "cls_vit" else 0)).all()
    assert {"p_row", "p_col", "q_row", "q_col", "cka", "is_self"} <= set(df.columns)
    assert {"argmax_is_self", "argmax_is_neighbour", "cka_self"} <= set(s.columns)
    assert (out / "spatial_localization.png").stat().st_size > 0


def test_token_outside_grid_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        [
            "run",
            "analysis=spatial_localization",
            *TINY_VIT,
            *SMALL_DATA,
            "analysis.tokens=[[9,9]]",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 2 and "outside the 4 x 4 grid" in err and len(err.strip().splitlines()) == 1
    assert finished_files(out) == []


def test_layer_without_positions_is_one_line(tmp_path, capsys):
    code, _, err = cli(
        [
            "run",
            "analysis=spatial_localization",
            *TINY_VIT,
            *SMALL_DATA,
            "analysis.layer=head",
            f"hydra.run.dir={tmp_path}",
        ],
        capsys,
    )
    assert code == 2 and "without spatial positions" in err
