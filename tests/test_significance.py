"""McNemar, paired bootstrap, Holm and the spread over seeds, against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluate.significance import holm_bonferroni, mcnemar_test, mean_std_over_seeds, paired_bootstrap


def _runs(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * both + [True] * only_a + [False] * only_b + [False] * neither)
    b = np.array([True] * both + [False] * only_a + [True] * only_b + [False] * neither)
    return a, b


def test_mcnemar_hand_binomial() -> None:
    # b = 8 (A right, B wrong), c = 2.  Under H0 b ~ Bin(10, 1/2):
    # P(X <= 2) = (1 + 10 + 45) / 1024 = 56/1024; two-sided p = 2 * 56/1024 = 0.109375.
    a, b = _runs(both=30, only_a=8, only_b=2, neither=5)
    result = mcnemar_test(a, b)
    assert (result.b, result.c, result.statistic) == (8, 2, 2)
    assert result.p_value == pytest.approx(112 / 1024)
    # Symmetric in which run is called A.
    assert mcnemar_test(b, a).p_value == pytest.approx(result.p_value)


def test_mcnemar_equal_discordant_and_none() -> None:
    # b = c = 3: the observed split is the most likely one, p = 1 (sum of all outcomes capped at 1).
    a, b = _runs(both=4, only_a=3, only_b=3, neither=0)
    assert mcnemar_test(a, b).p_value == pytest.approx(1.0)
    # No discordant pairs at all: nothing distinguishes the runs.
    same = np.array([True, False, True])
    assert mcnemar_test(same, same) == (0, 0, 0, 1.0)


def test_mcnemar_all_discordant_one_way() -> None:
    # b = 6, c = 0: p = 2 * (1/2)^6 = 1/32.
    a, b = _runs(both=0, only_a=6, only_b=0, neither=0)
    assert mcnemar_test(a, b).p_value == pytest.approx(1 / 32)


def test_bootstrap_seeded_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(500) < 0.8
    b = rng.random(500) < 0.78
    first = paired_bootstrap(a, b, n_boot=2000, seed=7)
    again = paired_bootstrap(a, b, n_boot=2000, seed=7)
    other = paired_bootstrap(a, b, n_boot=2000, seed=8)
    assert first == again
    assert first != other
    assert first.delta == pytest.approx(a.mean() - b.mean())
    assert first.ci_low <= first.delta <= first.ci_high


def test_bootstrap_matches_explicit_pair_resampling() -> None:
    # Independent: resample pair indices with replacement and recompute the accuracy difference.
    a, b = _runs(both=120, only_a=25, only_b=15, neither=40)
    rng = np.random.default_rng(11)
    index = rng.integers(0, a.size, size=(20000, a.size))
    deltas = a[index].mean(axis=1) - b[index].mean(axis=1)
    result = paired_bootstrap(a, b, n_boot=20000, seed=3)
    # Monte Carlo error of a 2.5 % quantile with 20000 draws is well under 0.005 here.
    assert result.ci_low == pytest.approx(np.quantile(deltas, 0.025), abs=0.006)
    assert result.ci_high == pytest.approx(np.quantile(deltas, 0.975), abs=0.006)
    assert result.p_value == pytest.approx(2 * np.mean(deltas <= 0), abs=0.03)


def test_bootstrap_clear_difference_and_identical() -> None:
    a, b = _runs(both=300, only_a=60, only_b=5, neither=35)
    clear = paired_bootstrap(a, b, n_boot=5000, seed=0)
    assert clear.p_value < 0.001
    assert clear.ci_low > 0
    reverse = paired_bootstrap(b, a, n_boot=5000, seed=0)
    assert reverse.p_value < 0.001 and reverse.ci_high < 0
    identical = paired_bootstrap(a, a, n_boot=5000, seed=0)
    assert identical == (0.0, 0.0, 0.0, 1.0)


def test_holm_hand_example() -> None:
    # m = 4, sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> running max 0.06.
    adjusted = holm_bonferroni([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    # Capped at 1: 0.4 x 3 = 1.2 -> 1.
    np.testing.assert_allclose(holm_bonferroni([0.4, 0.5, 0.6]), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        holm_bonferroni([0.1, float("nan")])


def test_mean_std_over_seeds() -> None:
    # Values 1, 2, 3, 6: mean 3; squared deviations 4 + 1 + 0 + 9 = 14; sample variance 14/3.
    summary = mean_std_over_seeds([1.0, 2.0, 3.0, 6.0])
    assert summary.mean == pytest.approx(3.0)
    assert summary.std == pytest.approx(math.sqrt(14 / 3))
    assert summary.n == 4
    single = mean_std_over_seeds([0.9])
    assert single.mean == 0.9 and math.isnan(single.std) and single.n == 1
    with pytest.raises(ValueError, match="non-empty"):
        mean_std_over_seeds([])


def test_paired_inputs_must_match() -> None:
    with pytest.raises(ValueError, match="same pairs"):
        mcnemar_test([True, False], [True])
    with pytest.raises(ValueError, match="correct_b must be booleans"):
        paired_bootstrap([True, False], [1, 2])
