"""Every registered measure's declared invariances hold exactly, and the ones it does not declare are shown to fail.

The transforms are applied to one side's features (x, then y); a measure that is not symmetric may declare
different invariances for its y side (`invariances_y`). Data: y is a noisy non-linear function of x, so that the
value is neither 0 nor 1 and a transform that matters moves it.
"""

from __future__ import annotations

import numpy as np
import pytest

from vitstudy import measures as M

N, P, Q = 60, 12, 9


def _data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, P)) + 0.5
    w = rng.normal(size=(P, Q))
    y = np.tanh(x @ w / 3.0) + 0.3 * rng.normal(size=(N, Q)) + 1.0
    return x, y


def _transform(kind: str, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = a.shape[1]
    if kind == "rotation":
        q, _ = np.linalg.qr(rng.normal(size=(p, p)))
        return a @ q
    if kind == "isotropic_scaling":
        return 3.7 * a
    if kind == "permutation":
        return a[:, rng.permutation(p)]
    if kind == "translation":
        return a + rng.normal(size=(1, p)) * 5.0
    if kind == "invertible_linear":
        return a @ (rng.normal(size=(p, p)) + np.diag(np.linspace(1, 4, p)))
    raise AssertionError(kind)


def _cases():
    for name, cls in sorted(M.MEASURES.items()):
        if not cls.full_set:
            continue
        for side in ("x", "y"):
            declared = cls.invariances if (side == "x" or cls.symmetric) else (cls.invariances_y or cls.invariances)
            for kind in M.INVARIANCES:
                yield pytest.param(name, side, kind, kind in declared, id=f"{name}-{side}-{kind}")


@pytest.mark.parametrize("name,side,kind,declared", list(_cases()))
def test_invariance_holds_exactly_where_declared(name, side, kind, declared):
    measure = M.get(name)
    x, y = _data()
    base = measure.value(x, y)
    rng = np.random.default_rng(11)
    moved = measure.value(_transform(kind, x, rng), y) if side == "x" else measure.value(x, _transform(kind, y, rng))
    if declared:
        assert moved == pytest.approx(base, abs=1e-9), f"{name} declares {kind} invariance on {side}, but it moved"
    else:
        assert abs(moved - base) > 1e-4, f"{name} does not declare {kind} invariance on {side}, yet it held: declare it"


def test_every_measure_declares_itself():
    for name, cls in M.MEASURES.items():
        lo, hi = cls.range
        assert lo < hi and cls.label and cls.summary and cls.citation, name
        assert cls.streams or cls.full_set, f"{name} has neither a kernel nor a full-set form"
        x, y = _data()
        if cls.full_set:
            v = M.get(name).value(x, y)
            assert lo - 1e-9 <= v <= hi + 1e-9, f"{name} = {v} outside its range {cls.range}"


def test_unknown_measure_and_parameter_are_one_line():
    from vitstudy.errors import VitstudyError

    with pytest.raises(VitstudyError, match="unknown measure 'ckaa'; closest: cka"):
        M.get("ckaa")
    with pytest.raises(VitstudyError, match="measure cka has no parameter 'k'"):
        M.get("cka", k=3)
