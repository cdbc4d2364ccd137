"""Hessian spectra and loss landscapes (Park & Kim 2022): known answers from closed forms, exact parameter
restoration, end-to-end CLI runs on a tiny random-init ViT, and the clear-message bad inputs."""

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import TINY_VIT, assert_one_line_error, cli
from vitstudy.analyses.landscape import grid_losses, restored
from vitstudy.metrics import hessian as H

LABELLED = [
    "dataset=synthetic",
    "dataset.num_classes=10",
    "model.kwargs.num_classes=10",
    "dataset.image_size=40",
    "dataset.batch_size=8",
]
NARROW = ["model.kwargs.embed_dim=48", "model.kwargs.num_heads=2"]  # double backprop is slow on shared CPUs


def _spread_design(n, d, singular, seed):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return u @ np.diag(singular) @ v.T


def test_top_eigenvalues_of_least_squares_linear_model():
    """MSE of one nn.Linear (with bias): H = 2/n · X̃ᵀX̃ ⊗ I_out with X̃ = [X, 1], checked against numpy."""
    n, d, out = 40, 4, 2
    X = _spread_design(n, d, [9.0, 6.0, 4.0, 2.5], 0)
    Y = np.random.default_rng(1).normal(size=(n, out))
    lin = torch.nn.Linear(d, out).double()
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    ps = list(lin.parameters())
    loss = ((lin(x) - y) ** 2).sum(1).mean()  # Σ over outputs, mean over samples
    vals, _ = H.top_eigenvalues(
        H.hvp_fn(loss, ps), ps, k=4, max_iter=1000, tol=1e-12, generator=torch.Generator().manual_seed(0)
    )
    Xt = np.hstack([X, np.ones((n, 1))])
    ref = np.linalg.eigvalsh(np.kron(2.0 / n * Xt.T @ Xt, np.eye(out)))
    ref = ref[np.argsort(-np.abs(ref))][:4]
    np.testing.assert_allclose(vals, ref, rtol=1e-4, atol=1e-6)


def test_top_eigenvalues_of_indefinite_quadratic_largest_magnitude_first():
    """loss = ½ θᵀAθ: the Hessian is A; eigenvalues come by magnitude, a negative one included."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lam = np.array([-7.0, 5.0, 3.0, -1.5, 0.5, 0.1])
    A = q @ np.diag(lam) @ q.T
    theta = torch.nn.Parameter(torch.from_numpy(rng.normal(size=(2, 3))))
    At = torch.from_numpy(A)
    loss = 0.5 * theta.flatten() @ At @ theta.flatten()
    vals, _ = H.top_eigenvalues(
        H.hvp_fn(loss, [theta]), [theta], k=3, max_iter=2000, tol=1e-12, generator=torch.Generator().manual_seed(1)
    )
    np.testing.assert_allclose(vals, [-7.0, 5.0, 3.0], rtol=1e-4)


def test_filter_normalisation_gives_each_slice_its_parameter_norm():
    g = torch.Generator().manual_seed(0)
    named = [
        ("blocks.0.mlp.fc1.weight", torch.randn(5, 3, 2, generator=g).double()),
        ("pos_embed", torch.randn(1, 4, 3, generator=g).double()),
        ("blocks.0.mlp.fc1.bias", torch.randn(5, generator=g).double()),
    ]
    dw, dpos, db = H.random_direction(named, torch.Generator().manual_seed(3))
    w = named[0][1]
    for j in range(3):
        for k in range(2):
            assert torch.linalg.vector_norm(dw[:, j, k]).item() == pytest.approx(
                torch.linalg.vector_norm(w[:, j, k]).item(), rel=1e-6
            )
    assert not dpos.any() and not db.any() and dw.shape == w.shape


def test_landscape_of_quadratic_model_matches_closed_form_and_restores_parameters():
    """A linear softmax-free 'model' whose CE we replace by hand: use logits = W x with two classes and check
    the 1D curve against an explicit float64 formula of the same loss along θ + a·d."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2).double()
    x = torch.randn(12, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (12,))
    before = [p.detach().clone() for p in lin.parameters()]
    d = H.random_direction(list(lin.named_parameters()), torch.Generator().manual_seed(4))
    alphas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    res = grid_losses(lin, lambda: [(x, y)], [d], [(a,) for a in alphas])
    W, b = before[0].numpy(), before[1].numpy()
    D = d[0].numpy()
    assert not d[1].any()  # the bias direction is zeroed
    X, Yn = x.numpy(), y.numpy()
    for a, (nll, correct, n, l2) in zip(alphas, res):
        z = X @ (W + a * D).T + b
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        assert n == 12
        assert nll / n == pytest.approx(-logp[np.arange(12), Yn].mean(), rel=1e-10)
        assert correct == int((z.argmax(1) == Yn).sum())
        assert l2 == pytest.approx(np.linalg.norm(W + a * D) + np.linalg.norm(b), rel=1e-10)
    for p, q in zip(lin.parameters(), before):
        assert torch.equal(p, q)


def test_landscape_quadratic_loss_curve():
    """A model whose output is its parameters' explicit quadratic: the MSE curve along d is c0 + c1 a + c2 a²."""

    class Quad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64))

        def forward(self, x):
            return x @ self.w.T

    m = Quad()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, 0.3]], dtype=torch.float64)
    d = H.random_direction(list(m.named_parameters()), torch.Generator().manual_seed(5))
    W0, D = m.w.detach().clone(), d[0]
    with restored(m):
        for a in np.linspace(-1, 1, 7):
            with torch.no_grad():
                m.w.copy_(W0 + float(a) * D)
            got = float((m(x) ** 2).sum().detach())
            Xn, Wn, Dn = x.numpy(), W0.numpy(), D.numpy()
            c0 = ((Xn @ Wn.T) ** 2).sum()
            c1 = 2 * ((Xn @ Wn.T) * (Xn @ Dn.T)).sum()
            c2 = ((Xn @ Dn.T) ** 2).sum()
            assert got == pytest.approx(c0 + c1 * a + c2 * a * a, rel=1e-10)
    assert torch.equal(m.w, W0)


def test_hessian_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(
        [
            "run",
            "analysis=hessian",
            *TINY_VIT,
            *LABELLED,
            *NARROW,
            "analysis.batch_size=4",
            "analysis.num_batches=2",
            "analysis.top_k=2",
            "analysis.max_iter=3",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "hessian.csv")
    assert len(df) == 4 and sorted(df.eigen_index.unique()) == [0, 1] and sorted(df.batch.unique()) == [0, 1]
    assert (df.num_images == 8).all() and (df.batch_size == 4).all() and np.isfinite(df.eigenvalue).all()
    s = pd.read_csv(out / "hessian_summary.csv")
    assert set(s.statistic) >= {"NEP", "APE"}
    for f in ("hessian.png", "hessian.pdf", "images.csv", "run.json"):
        assert (out / f).stat().st_size > 0


def test_loss_landscape_end_to_end_2d(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(
        [
            "run",
            "analysis=loss_landscape",
            *TINY_VIT,
            *LABELLED,
            *NARROW,
            "analysis.dims=2",
            "analysis.steps=3",
            "analysis.num_images=8",
            f"hydra.run.dir={out}",
        ],
        capsys,
    )
    assert code == 0, err
    df = pd.read_csv(out / "loss_landscape.csv")
    assert len(df) == 9 and set(df.x) == {-1.0, 0.0, 1.0} and set(df.y) == {-1.0, 0.0, 1.0}
    assert np.allclose(df.loss, df.nll + 0.05 * df.l2) and df.accuracy.between(0, 1).all()
    for f in ("loss_landscape.png", "images.csv", "run.json"):
        assert (out / f).stat().st_size > 0


@pytest.mark.parametrize("analysis", ["hessian", "loss_landscape"])
def test_labels_must_match_head(analysis, tmp_path, capsys):
    assert_one_line_error(
        [
            "run",
            f"analysis={analysis}",
            *TINY_VIT,
            "dataset=synthetic",
            "dataset.num_classes=5",
            "model.kwargs.num_classes=10",
            "dataset.image_size=40",
        ],
        "needs labels matching",
        tmp_path / "run",
        capsys,
    )


def test_bad_dims(tmp_path, capsys):
    assert_one_line_error(
        ["run", "analysis=loss_landscape", *TINY_VIT, *LABELLED, "analysis.dims=3"],
        "analysis.dims",
        tmp_path / "run",
        capsys,
    )


def test_hessian_leaves_parameters_and_flags_untouched():
    from vitstudy.analyses.landscape import batch_eigenvalues

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    net[0].weight.requires_grad_(False)
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    vals, _ = batch_eigenvalues(net, x, y, k=2, max_iter=200, tol=1e-10, weight_decay=0.0)
    # independent: the full Hessian of the same loss by torch.autograd.functional.hessian over the flat vector
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])

    def loss_of(v):
        parts, i = [], 0
        for s in shapes:
            k = int(np.prod(s))
            parts.append(v[i : i + k].reshape(s))
            i += k
        h = torch.tanh(x @ parts[0].T + parts[1]) @ parts[2].T + parts[3]
        return torch.nn.functional.cross_entropy(h, y)

    ev = np.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat).numpy())
    ref = ev[np.argsort(-np.abs(ev))][:2]
    np.testing.assert_allclose(vals, ref, rtol=1e-4, atol=1e-8)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    assert not net[0].weight.requires_grad and net[0].bias.requires_grad


def test_hessian_resumes_after_an_interruption(tmp_path, capsys, monkeypatch):
    """Interrupted after its first batch, a rerun continues from the checkpoint and equals an uninterrupted run."""
    from vitstudy.analyses import landscape

    args = [
        "run",
        "analysis=hessian",
        *TINY_VIT,
        *LABELLED,
        *NARROW,
        "analysis.batch_size=4",
        "analysis.num_batches=3",
        "analysis.top_k=2",
        "analysis.max_iter=3",
    ]
    assert cli([*args, f"cache.dir={tmp_path / 'c1'}", f"hydra.run.dir={tmp_path / 'whole'}"], capsys)[0] == 0
    real, calls = landscape.batch_eigenvalues, []

    def interrupt_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(landscape, "batch_eigenvalues", interrupt_second)
    code, _, _ = cli([*args, f"cache.dir={tmp_path / 'c2'}", f"hydra.run.dir={tmp_path / 'cut'}"], capsys)
    assert code == 130 and not (tmp_path / "cut" / "run.json").exists()
    monkeypatch.setattr(landscape, "batch_eigenvalues", real)
    assert cli([*args, f"cache.dir={tmp_path / 'c2'}", f"hydra.run.dir={tmp_path / 'resumed'}"], capsys)[0] == 0
    whole = pd.read_csv(tmp_path / "whole" / "hessian.csv").eigenvalue.to_numpy()
    resumed = pd.read_csv(tmp_path / "resumed" / "hessian.csv").eigenvalue.to_numpy()
    np.testing.assert_allclose(resumed, whole, rtol=0, atol=1e-12)
