"""CKA numbers against independent float64 derivations (numpy), not against the code's own output."""

import numpy as np
import pytest
import torch

from helpers import minibatch_reference, song_cka, song_hsic
from vitstudy.analyses.cka import check
from vitstudy.errors import VitstudyError
from vitstudy.metrics.cka import FullSetCKA, MinibatchCKA, cka, gram, hsic_unbiased, u_center


def ours(x, y):
    return cka(gram(torch.as_tensor(x), torch.float64), gram(torch.as_tensor(y), torch.float64))


rng = np.random.default_rng(0)
X = rng.normal(size=(32, 50))
Y = X @ rng.normal(size=(50, 20)) + 0.5 * rng.normal(size=(32, 20))


def test_self_similarity_is_one():
    assert ours(X, X) == pytest.approx(1.0, abs=1e-12)


def test_symmetry():
    assert ours(X, Y) == pytest.approx(ours(Y, X), abs=1e-12)


def test_invariant_to_rotation_and_isotropic_scaling():
    q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    assert ours(X @ q * 7.5, Y) == pytest.approx(ours(X, Y), abs=1e-10)


@pytest.mark.parametrize("n", [4, 5, 8, 32])
def test_u_centred_form_equals_song_expression(n):
    x, y = rng.normal(size=(n, 7)), rng.normal(size=(n, 3))
    k, l = x @ x.T, y @ y.T
    got = float(hsic_unbiased(torch.as_tensor(k), torch.as_tensor(l)))
    assert got == pytest.approx(song_hsic(k, l), rel=1e-10, abs=1e-12)


def test_matches_plain_float64_song_formula():
    assert ours(X, Y) == pytest.approx(song_cka(X, Y), abs=1e-9)


def test_minibatch_accumulator_matches_reference_across_layers():
    batches = [(rng.normal(size=(16, 30)), rng.normal(size=(16, 12))) for _ in range(5)]
    acc = MinibatchCKA(2, 1)
    for x, y in batches:
        x2 = np.tanh(x) + 0.3 * x  # a second "layer" related to the first
        ux = torch.stack([u_center(gram(torch.as_tensor(a), torch.float32)).flatten() for a in (x, x2)])
        uy = u_center(gram(torch.as_tensor(y), torch.float32)).flatten()[None]
        acc.update(ux, uy)
    got = acc.result().numpy()
    want0 = minibatch_reference([x for x, _ in batches], [y for _, y in batches])
    want1 = minibatch_reference([np.tanh(x) + 0.3 * x for x, _ in batches], [y for _, y in batches])
    assert got[0, 0] == pytest.approx(want0, abs=1e-6)
    assert got[1, 0] == pytest.approx(want1, abs=1e-6)


def test_within_accumulator_diagonal_is_one_and_symmetric():
    acc = MinibatchCKA(3)
    for _ in range(3):
        feats = [rng.normal(size=(8, 5)) for _ in range(3)]
        acc.update(torch.stack([u_center(gram(torch.as_tensor(f), torch.float64)).flatten() for f in feats]))
    m = acc.result().numpy()
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    np.testing.assert_allclose(m, m.T, atol=1e-12)


def test_one_batch_equals_full_set_unbiased_value():
    acc = MinibatchCKA(1, 1)
    acc.update(
        u_center(gram(torch.as_tensor(X), torch.float64)).flatten()[None],
        u_center(gram(torch.as_tensor(Y), torch.float64)).flatten()[None],
    )
    assert float(acc.result()[0, 0]) == pytest.approx(song_cka(X, Y), abs=1e-12)


def test_large_common_offset_in_float32_features():
    """Post-ReLU CNN layers sit on a large positive offset; float32 input must still be accurate."""
    x = np.abs(rng.normal(size=(32, 400))) + 1e4
    y = x[:, :100] * 2 + rng.normal(size=(32, 100))
    want = song_cka(x - x.mean(0), y - y.mean(0))  # float64, offset removed analytically
    got = cka(gram(torch.as_tensor(x, dtype=torch.float32)), gram(torch.as_tensor(y, dtype=torch.float32)))
    assert got == pytest.approx(want, abs=1e-5)


def test_full_set_biased_matches_kornblith_formula():
    xc, yc = X - X.mean(0), Y - Y.mean(0)
    want = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    acc = FullSetCKA(1, 1)
    for s in (slice(0, 10), slice(10, 32)):  # streamed in two parts
        acc.add("x", 0, torch.as_tensor(X[s]))
        acc.add("y", 0, torch.as_tensor(Y[s]))
    assert float(acc.result()[0, 0]) == pytest.approx(want, abs=1e-6)


def test_unbiased_needs_four_examples():
    with pytest.raises(ValueError):
        u_center(torch.ones(3, 3, dtype=torch.float64))


def test_out_of_range_and_nan_values_are_errors_naming_the_layer():
    with pytest.raises(VitstudyError, match="'b'"):
        check(np.array([[0.5, 1.2]]), ["a"], ["c", "b"])
    with pytest.raises(VitstudyError, match="same features for every image"):
        check(np.array([[np.nan]]), ["a"], ["b"])
    check(np.array([[-0.01, 1.0 + 1e-9]]), ["a"], ["b", "c"])  # small negatives are legitimate
