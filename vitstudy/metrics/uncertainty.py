"""How sure a number is, from the one pass that measured it: jackknife over batches, standard errors over images,
binomial intervals, permutation p-values. Pure float64 math on numpy arrays; no models, no files.

Conventions (every table of vitstudy): a value column `v` comes with `v_se` (standard error), `v_ci_low` and
`v_ci_high` (a two-sided interval at LEVEL, 95%) and the table's `uncertainty` column names the method:

- `jackknife_batches`: delete-one-batch jackknife (Quenouille-Tukey) of a statistic that is a smooth function of
  sums over minibatches (minibatch CKA: a ratio of HSIC sums). Replicate b recomputes the statistic without batch
  b; se² = (B - 1)/B Σ_b (θ_(b) - θ̄)²; the interval is θ ± t_{B-1} se. With several independent image samples
  (`cka.repeats`), each is a stratum: se² of their mean is the sum of the strata's jackknife variances over R²,
  and the degrees of freedom add up (B - 1 per stratum).
- `se_images`: the standard error of a mean over images, sd / sqrt(n), interval ± t_{n-1} se.
- `wilson`: a proportion k/n (accuracy, agreement) with the Wilson score interval; se = sqrt(p (1 - p) / n).
- `paired_se_images`: the difference of two values measured on the same images, from the per-image differences.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np

LEVEL = 0.95
FEW_UNITS = 10  # a jackknife from fewer batches gives an se with few degrees of freedom: flagged (docs/uncertainty.md)

METHODS = {
    "jackknife_batches": "delete-one-batch jackknife of the statistic (a smooth function of sums over minibatches); "
    "interval: estimate +- t(units - strata) * se, cut to the measure's range; repeats are strata",
    "se_images": "standard error of the mean over images (sd / sqrt(n)); interval: mean +- t(n - 1) * se",
    "wilson": "binomial proportion over images: se = sqrt(p(1 - p)/n), Wilson score interval",
    "paired_se_images": "difference of two proportions on the same images: se of the per-image differences; "
    "interval: difference +- t(n - 1) * se",
}


# ------------------------------------------------------------------ quantiles


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function."""
    if math.isinf(df):
        return NormalDist().cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with `df` degrees of freedom (bisection on t_cdf; df > 1e7: the normal's)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df is None or not df > 0:
        return float("nan")
    if df > 1e7:
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, max(1.0, NormalDist().inv_cdf(p))
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def critical(df, level: float = LEVEL) -> float:
    """Two-sided critical value t_{df, (1 + level)/2}."""
    return t_quantile(0.5 + level / 2.0, float(df))


def interval(estimate, se, df, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """estimate -+ t_{df} se (NaN where se is NaN)."""
    estimate, se = np.asarray(estimate, dtype=np.float64), np.asarray(se, dtype=np.float64)
    q = critical(df, level) if df and df > 0 else float("nan")
    return estimate - q * se, estimate + q * se


def clip_interval(estimate, low, high, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
    """An interval cut to the range [lower, upper] of the quantity it covers, never past the estimate itself.

    The cut-off part holds no possible value, so coverage is unchanged; an estimate outside the range (the
    unbiased CKA can come out slightly below 0) stays inside its own interval.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = np.maximum(np.asarray(low, dtype=np.float64), np.minimum(estimate, lower))
        high = np.minimum(np.asarray(high, dtype=np.float64), np.maximum(estimate, upper))
    return low, high


# ------------------------------------------------------------------ jackknife


def jackknife_se(replicates: np.ndarray, strata: Sequence[int] | None = None) -> np.ndarray:
    """Delete-one jackknife standard error from leave-one-unit-out replicates (units first).

    `strata[u]` groups the units into independent samples (repeats); each stratum contributes
    (B_s - 1)/B_s Σ_b (θ_(b) - θ̄_s)². A stratum of one unit has no jackknife: the result is NaN.
    """
    reps = np.asarray(replicates, dtype=np.float64)
    strata = np.zeros(len(reps), dtype=np.int64) if strata is None else np.asarray(strata)
    var = np.zeros(reps.shape[1:], dtype=np.float64)
    for s in np.unique(strata):
        r = reps[strata == s]
        b = len(r)
        if b < 2:
            return np.full(reps.shape[1:], np.nan)
        var += (b - 1) / b * ((r - r.mean(axis=0)) ** 2).sum(axis=0)
    return np.sqrt(var)


def jackknife_df(strata: Sequence[int]) -> int:
    """Degrees of freedom of the stratified jackknife: units minus strata."""
    strata = np.asarray(strata)
    return int(len(strata) - len(np.unique(strata)))


def cka_replicates(cross: np.ndarray, self_x: np.ndarray, self_y: np.ndarray | None = None) -> np.ndarray:
    """Leave-one-batch-out minibatch CKA from the per-batch HSIC terms (Nguyen et al. 2021, Eq. 2).

    cross: (B, L, M) per-batch HSIC₁ of every layer pair; self_x: (B, L), self_y: (B, M) the layers' own HSIC₁
    (None: one model, self_y = self_x). Replicate b is Σ_{c≠b} cross / sqrt(Σ_{c≠b} self_x Σ_{c≠b} self_y).
    """
    cross = np.asarray(cross, dtype=np.float64)
    self_x = np.asarray(self_x, dtype=np.float64)
    self_y = self_x if self_y is None else np.asarray(self_y, dtype=np.float64)
    c, a, d = cross.sum(0), self_x.sum(0), self_y.sum(0)
    out = np.empty_like(cross)
    with np.errstate(invalid="ignore", divide="ignore"):
        for b in range(len(cross)):
            out[b] = (c - cross[b]) / np.sqrt((a - self_x[b])[:, None] * (d - self_y[b])[None, :])
    return out


def combine_repeats(estimates: Sequence[np.ndarray], replicates: Sequence[np.ndarray]):
    """The mean of R independent estimates and the jackknife replicates of that mean, stratified by repeat.

    Deleting batch b of repeat r changes the mean by (θ_r(b) - θ_r) / R, so replicate (r, b) is
    mean + (θ_r(b) - θ_r) / R; `jackknife_se(replicates, strata)` then gives sqrt(Σ_r se_r²) / R.
    Returns (mean, replicates (Σ B_r, ...), strata (Σ B_r,)).
    """
    est = np.stack([np.asarray(e, dtype=np.float64) for e in estimates])
    mean = est.mean(axis=0)
    r = len(est)
    reps = np.concatenate([mean + (np.asarray(rep, dtype=np.float64) - e) / r for e, rep in zip(est, replicates)])
    strata = np.concatenate([np.full(len(rep), i, dtype=np.int64) for i, rep in enumerate(replicates)])
    return mean, reps, strata


# ------------------------------------------------------------------ means and proportions over images


def mean_se(s1, s2, n):
    """(mean, se) over n images from Σx and Σx² (float64); se NaN for n < 2."""
    s1, s2 = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    mean = s1 / n
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    var = np.clip((s2 - s1 * mean) / (n - 1), 0.0, None)
    return mean, np.sqrt(var / n)


def ratio_se(sz, sf, szz, sff, szf, n):
    """SE of a ratio of means R = Σz / Σf over n images (delta method): sqrt(Σ(z - R f)² / (n (n - 1))) / f̄."""
    sz, sf, szz, sff, szf = (np.asarray(v, dtype=np.float64) for v in (sz, sf, szz, sff, szf))
    if n < 2:
        return np.full_like(sz, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sz / sf
        resid = np.clip(szz - 2 * r * szf + r * r * sff, 0.0, None)
        return np.sqrt(resid / (n * (n - 1))) / (sf / n)


def se_columns(name: str, estimate, se, df, level: float = LEVEL) -> dict[str, np.ndarray]:
    """{name_se, name_ci_low, name_ci_high} for a table (t interval with df degrees of freedom)."""
    low, high = interval(estimate, se, df, level)
    return {f"{name}_se": np.asarray(se, dtype=np.float64), f"{name}_ci_low": low, f"{name}_ci_high": high}


def wilson(successes, n, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k/n (Wilson 1927)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def proportion_columns(name: str, successes, n, scale: float = 1.0, level: float = LEVEL) -> dict[str, np.ndarray]:
    """{name_se, name_ci_low, name_ci_high} of a proportion k/n reported times `scale` (100: percent)."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        se = np.sqrt(p * (1 - p) / n)
    low, high = wilson(k, n, level)
    return {f"{name}_se": scale * se, f"{name}_ci_low": scale * low, f"{name}_ci_high": scale * high}


def paired_difference(n_gain, n_loss, n):
    """(difference, se) of two proportions on the same n images: gain = images right only in the second condition,
    loss = right only in the first; the per-image differences are +1, -1 or 0."""
    g, l = np.asarray(n_gain, dtype=np.float64), np.asarray(n_loss, dtype=np.float64)
    diff = (g - l) / n
    if n < 2:
        return diff, np.full_like(diff, np.nan)
    var = np.clip((g + l - n * diff**2) / (n - 1), 0.0, None)
    return diff, np.sqrt(var / n)


def unit_ids(batches: Sequence[Sequence[int]]) -> np.ndarray:
    """A stable 63-bit id per batch from its image indices, so that two runs can be checked to share their units."""
    import hashlib

    out = [
        int.from_bytes(hashlib.sha256(np.asarray(b, dtype=np.int64).tobytes()).digest()[:8], "little") >> 1
        for b in batches
    ]
    return np.asarray(out, dtype=np.int64)


def null_seed(*keys: int) -> int:
    """A 63-bit seed for the permutations of one batch, from (seed, repeat, batch): the same after a resume."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ------------------------------------------------------------------ permutation null


def permutation_pvalue(observed, null) -> np.ndarray:
    """One-sided permutation p-value (1 + #{null_k >= observed}) / (K + 1) (Phipson & Smyth 2010); null: (K, ...)."""
    null = np.asarray(null, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    return (1.0 + (null >= observed[None]).sum(axis=0)) / (len(null) + 1.0)


def paired_jackknife(rep_a: np.ndarray, rep_b: np.ndarray, est_a, est_b, strata=None):
    """The difference a - b of two statistics measured on the same units (batches), with its jackknife se and df.

    The units must be the same (same images in the same batches): the replicate of the difference deleting unit u
    is rep_a[u] - rep_b[u], so what the two share (the images) cancels.
    """
    rep_a, rep_b = np.asarray(rep_a, dtype=np.float64), np.asarray(rep_b, dtype=np.float64)
    if rep_a.shape != rep_b.shape:
        raise ValueError(f"replicates differ in shape: {rep_a.shape} vs {rep_b.shape}")
    strata = np.zeros(len(rep_a), dtype=np.int64) if strata is None else np.asarray(strata)
    diff = np.asarray(est_a, dtype=np.float64) - np.asarray(est_b, dtype=np.float64)
    return diff, jackknife_se(rep_a - rep_b, strata), jackknife_df(strata)
