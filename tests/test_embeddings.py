"""position_embedding and patch_embedding_pca: known grids and known components, the CLI, bad input."""

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from helpers import SMALL_DATA, TINY_VIT, cli
from vitstudy.analyses.embeddings import cosine_matrix, filter_pca, patch_position_embedding


def rbf_grid_embedding(gh, gw, sigma=1.0):
    """Patch (r, c) -> Gaussian bumps at every grid position: similarity falls with grid distance."""
    r, c = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    p = np.stack([r.ravel(), c.ravel()], 1).astype(float)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma**2))


def test_position_embedding_from_known_grid_gives_grid_neighbours():
    model = timm.create_model("vit_tiny_patch16_224", img_size=40, patch_size=8, depth=1)  # 5x5 grid + CLS
    emb = rbf_grid_embedding(5, 5)
    d = model.pos_embed.shape[-1]
    with torch.no_grad():
        model.pos_embed.zero_()
        model.pos_embed[0, 0] = 7.0  # the CLS entry must be skipped
        model.pos_embed[0, 1:, :25] = torch.from_numpy(emb).float()
    got, grid, stored = patch_position_embedding(model, (3, 40, 40))
    assert grid == stored == (5, 5) and got.shape == (25, d)
    sim = cosine_matrix(got).numpy()
    np.testing.assert_allclose(np.diag(sim), 1.0, rtol=1e-9)
    for i in range(25):
        r, c = divmod(i, 5)
        expected = {
            (r + dr) * 5 + c + dc
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= r + dr < 5 and 0 <= c + dc < 5
        }
        order = np.argsort(-sim[i])
        assert set(order[1 : 1 + len(expected)]) == expected


def test_position_embedding_no_embed_class_and_resampling():
    model = timm.create_model("deit3_small_patch16_224", img_size=32, patch_size=8, depth=1, dynamic_img_size=True)
    assert model.pos_embed.shape[1] == 16  # no CLS entry (no_embed_class)
    got, grid, stored = patch_position_embedding(model, (3, 48, 48))
    assert stored == (4, 4) and grid == (6, 6) and got.shape == (36, model.embed_dim)
    from timm.layers import resample_abs_pos_embed

    expected = resample_abs_pos_embed(model.pos_embed.detach(), new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=0)[
        0
    ]
    torch.testing.assert_close(got.float(), expected)


def test_pca_recovers_known_components():
    rng = np.random.default_rng(0)
    dim, n, k = 3 * 4 * 4, 64, 3
    v = np.linalg.qr(rng.normal(size=(dim, k)))[0].T  # k orthonormal components
    basis = np.linalg.qr(np.column_stack([np.ones(n), rng.normal(size=(n, k))]))[0][:, 1:]  # centred, orthonormal
    scales = np.array([5.0, 3.0, 1.0])
    x = (basis * scales) @ v + rng.normal(size=dim)  # plus a common mean filter
    comps, var = filter_pca(torch.from_numpy(x.reshape(n, 3, 4, 4)))
    got = comps.reshape(-1, dim).numpy()
    for i in range(k):
        assert abs(got[i] @ v[i]) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(var.numpy()[:k], scales**2 / (n - 1), rtol=1e-9)
    assert var.numpy()[k:].max() < 1e-20


def test_position_embedding_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(["run", "analysis=position_embedding", *TINY_VIT, *SMALL_DATA, f"hydra.run.dir={out}"], capsys)
    assert code == 0, err
    df = pd.read_csv(out / "position_embedding.csv")
    assert len(df) == 16 * 16 and {"row_a", "col_a", "row_b", "col_b", "cosine"} <= set(df.columns)
    np.testing.assert_allclose(df[df.index_a == df.index_b].cosine, 1.0, rtol=1e-9)
    assert (out / "position_embedding.png").stat().st_size > 0


def test_patch_embedding_pca_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(["run", "analysis=patch_embedding_pca", *TINY_VIT, *SMALL_DATA, f"hydra.run.dir={out}"], capsys)
    assert code == 0, err
    df = pd.read_csv(out / "patch_embedding_pca.csv")
    assert len(df) == 192 and df.explained_variance_ratio.sum() == pytest.approx(1.0)
    assert df.explained_variance.is_monotonic_decreasing
    assert (out / "patch_embedding_pca.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["analysis=position_embedding", "model.name=resnet18", "model.pretrained=false"],
            "has no learned absolute position embedding",
        ),
        (
            [
                "analysis=position_embedding",
                "model.name=swin_tiny_patch4_window7_224",
                "model.pretrained=false",
                "model.kwargs.img_size=32",
                "model.kwargs.window_size=4",
            ],
            "has no learned absolute position embedding",
        ),
        (
            ["analysis=patch_embedding_pca", "model.name=resnet18", "model.pretrained=false"],
            "has no convolutional patch embedding",
        ),
        (
            [
                "analysis=patch_embedding_pca",
                "model.name=vit_base_r50_s16_224",
                "model.pretrained=false",
                "model.kwargs.img_size=64",
                "model.kwargs.depth=1",
            ],
            "not RGB pixels",
        ),
        (["analysis=patch_embedding_pca", *TINY_VIT, "analysis.components=0"], "must be at least 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    code, _, err = cli(["run", *args, *SMALL_DATA, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1, err
