"""Is run A better than run B? Paired tests on per-pair correctness, multiplicity, spread over seeds."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import binomtest


class McNemarResult(NamedTuple):
    b: int  # pairs A got right and B got wrong
    c: int  # pairs A got wrong and B got right
    statistic: int  # the exact test's statistic: min(b, c)
    p_value: float


class BootstrapResult(NamedTuple):
    delta: float  # accuracy(A) - accuracy(B) on the pairs as given
    ci_low: float
    ci_high: float
    p_value: float


class SeedSummary(NamedTuple):
    mean: float
    std: float  # sample std (ddof=1); NaN for a single seed
    n: int


def _paired(correct_a: ArrayLike, correct_b: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    arrays = []
    for name, values in (("correct_a", correct_a), ("correct_b", correct_b)):
        array = np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one entry per pair), got shape {array.shape}")
        if array.dtype != np.bool_:
            if not np.isin(array, (0, 1)).all():
                raise ValueError(f"{name} must be booleans (or 0/1), got values {np.unique(array)[:5].tolist()}")
            array = array.astype(bool)
        arrays.append(array)
    a, b = arrays
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must cover the same pairs, got {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError("correct_a and correct_b are empty")
    return a, b


def mcnemar_test(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemarResult:
    """Exact McNemar test (McNemar 1947): b ~ Binomial(b + c, 1/2) under H0, two-sided.

    Only discordant pairs carry information; with none, the runs are indistinguishable and p = 1.
    """
    a, b_right = _paired(correct_a, correct_b)
    b = int(np.sum(a & ~b_right))
    c = int(np.sum(~a & b_right))
    if b + c == 0:
        return McNemarResult(b, c, 0, 1.0)
    p_value = binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    return McNemarResult(b, c, min(b, c), float(p_value))


def paired_bootstrap(
    correct_a: ArrayLike, correct_b: ArrayLike, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05
) -> BootstrapResult:
    """Paired bootstrap of delta = acc(A) - acc(B); percentile CI (Efron & Tibshirani 1993, ch. 13).

    Pairs are resampled with replacement, A and B together. A resample's delta depends only on how many
    drawn pairs have d = a - b equal to +1, -1 or 0, and those counts are exactly
    Multinomial(n, observed shares); drawing them directly is the same bootstrap at O(n_boot) cost.
    Two-sided p: twice the share of bootstrap deltas at or beyond zero on the side opposite the
    observed delta (zero counts against the difference), capped at 1; p = 1 when delta is 0.
    """
    a, b = _paired(correct_a, correct_b)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    n = a.size
    d = a.astype(np.int64) - b.astype(np.int64)
    shares = np.array([np.mean(d == 1), np.mean(d == -1), np.mean(d == 0)])
    counts = np.random.default_rng(seed).multinomial(n, shares, size=n_boot)
    deltas = (counts[:, 0] - counts[:, 1]) / n
    delta = float(d.mean())
    ci_low, ci_high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    if delta > 0:
        p_value = min(1.0, 2.0 * float(np.mean(deltas <= 0)))
    elif delta < 0:
        p_value = min(1.0, 2.0 * float(np.mean(deltas >= 0)))
    else:
        p_value = 1.0
    return BootstrapResult(delta, float(ci_low), float(ci_high), p_value)


def holm_bonferroni(p_values: ArrayLike) -> NDArray[np.float64]:
    """Holm (1979) step-down adjusted p: p~_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)), original order."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    bad = np.flatnonzero(~((p >= 0) & (p <= 1)))  # also catches NaN
    if bad.size:
        raise ValueError(f"p_values {bad[:5].tolist()} are outside [0, 1]: {p[bad[:5]].tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def mean_std_over_seeds(values: ArrayLike) -> SeedSummary:
    """Mean and sample std (ddof=1, the unbiased variance's root) of one metric over seeds.

    One seed gives std NaN (no spread can be estimated); NaN values propagate (e.g. an unreachable FAR).
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence (one per seed), got shape {array.shape}")
    std = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    return SeedSummary(float(np.mean(array)), std, int(array.size))
