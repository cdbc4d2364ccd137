"""linear_probe: the closed-form ridge against numpy, separable features -> 100%, shuffled labels -> chance,
end-to-end runs and clear messages."""

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import SMALL_DATA, TINY_VIT, assert_one_line_error, cli
from vitstudy.metrics.ridge import RidgeAccumulator

ALPHAS = [1e-3, 1e-1, 10.0]


def fit(x, y, k, alphas=ALPHAS, batch=50):
    acc = RidgeAccumulator(x.shape[1], x.shape[2], k)
    for i in range(0, len(x), batch):
        acc.update(x[i : i + batch], y[i : i + batch])
    return acc.solve(alphas)


def test_ridge_matches_numpy_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7)) * 3 + 5
    y = rng.integers(0, 4, 120)
    sol = fit(torch.as_tensor(x)[:, None], torch.as_tensor(y), 4, batch=17)
    t = -np.ones((120, 4))
    t[np.arange(120), y] = 1
    xc, tc = x - x.mean(0), t - t.mean(0)
    c = xc.T @ xc
    for a, alpha in enumerate(ALPHAS):
        lam = alpha * np.trace(c) / 7
        w = np.linalg.solve(c + lam * np.eye(7), xc.T @ tc)
        b = t.mean(0) - x.mean(0) @ w
        got_w, got_b = sol.weights(a)
        np.testing.assert_allclose(got_w[0].numpy(), w, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_b[0].numpy(), b, rtol=1e-9, atol=1e-12)
        pred = sol.predict(torch.as_tensor(x)[:, None])[a, :, 0].numpy()
        np.testing.assert_array_equal(pred, (x @ w + b).argmax(1))


def test_separable_features_reach_100_percent_and_shuffled_labels_stay_at_chance():
    rng = np.random.default_rng(1)
    k, d = 5, 32
    means = rng.normal(size=(k, d)) * 4

    def sample(n):
        y = rng.integers(0, k, n)
        return torch.as_tensor(means[y] + rng.normal(size=(n, d)))[:, None], torch.as_tensor(y)

    xtr, ytr = sample(300)
    xte, yte = sample(1000)
    sol = fit(xtr, ytr, k)
    acc = (sol.predict(xte)[:, :, 0] == yte).double().mean(1)
    assert acc.max().item() == 1.0
    # labels shuffled (independent of the features) in train and test: nothing to learn
    sol = fit(xtr, ytr[torch.as_tensor(rng.permutation(300))], k)
    acc = (sol.predict(xte)[:, :, 0] == yte[torch.as_tensor(rng.permutation(1000))]).double().mean(1)
    assert (acc - 1 / k).abs().max().item() < 0.07


def test_per_token_probes_are_independent():
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.normal(size=(60, 3, 6)))
    y = torch.as_tensor(rng.integers(0, 3, 60))
    both = fit(x, y, 3)
    for p in range(3):
        alone = fit(x[:, p : p + 1], y, 3)
        torch.testing.assert_close(both.weights(1)[0][p], alone.weights(1)[0][0], rtol=1e-9, atol=1e-12)


PROBE = ["analysis=linear_probe", "analysis.num_val=16", "analysis.num_test=16"]


@pytest.mark.parametrize("case", ["cls_vit", "resnet"])
def test_end_to_end(case, tmp_path, capsys):
    extra = (
        ["analysis.shots=3"]
        if case == "cls_vit"
        else [
            "model.name=resnet18",
            "model.kwargs.img_size=null",
            "model.kwargs.patch_size=null",
            "model.kwargs.depth=null",
            "model.data.input_size=[3,32,32]",
            "analysis.num_train=40",
        ]
    )
    out = tmp_path / "run"
    code, _, err = cli(["run", *PROBE, *TINY_VIT, *SMALL_DATA, *extra, f"hydra.run.dir={out}"], capsys)
    assert code == 0, err
    df = pd.read_csv(out / "linear_probe.csv")
    agg = df[df.token.isna()]
    want = {"cls", "gap", "gap_all", "tokens"} if case == "cls_vit" else {"gap", "tokens"}
    assert set(agg.representation) == want and agg.accuracy.between(0, 1).all()
    assert agg.groupby("representation").size().unique().tolist() == [3 if case == "cls_vit" else 8]
    assert df.depth.min() == 0 and df.depth.max() == 1
    assert (df.num_train == (30 if case == "cls_vit" else 40)).all() and (df.num_test == 16).all()
    images = pd.read_csv(out / "images.csv")
    assert len(images) == (30 if case == "cls_vit" else 40) + 32 and images.dataset_index.is_unique


BAD = {
    "cls on a GAP model": (
        ["model.name=vit_medium_patch16_gap_256", "analysis.representations=[cls]"],
        "needs a CLS token",
    ),
    "paper split on synthetic": (["analysis.splits=paper"], "analysis.splits=paper is the CIFAR split"),
    "bad alphas": (["analysis.alphas=[0]"], "positive ridge strengths"),
    "too many shots": (["analysis.shots=5000"], "fewer images in the train pool"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line(case, tmp_path, capsys):
    extra, expected = BAD[case]
    args = ["run", *PROBE, *TINY_VIT, *SMALL_DATA, "dataset.size=200", *extra]
    assert assert_one_line_error(args, expected, tmp_path / "run", capsys) == 2
