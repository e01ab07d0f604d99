"""Verdicts whose unit is the training run: cell intervals, seed-paired comparisons, Holm verdicts.

Input is a correctness matrix correct[seed, pair] (S seeds x N verification pairs, the same pairs for
every seed). Model: acc_s = mu + P + R_s, where P is the pair-sample effect shared by all seeds and R_s
the run effect (initial weights, batch order, flips). Seeds, not pairs, are the replicates of a recipe,
so run-to-run variance enters every interval and test; the pair term accounts for the pair set being one
sample of faces. McNemar on pooled pairs (pipeline.evaluate.significance) treats the pairs as the only
source of noise and so overstates certainty.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from pipeline.evaluate.significance import holm_bonferroni


@dataclass(frozen=True)
class CellEstimate:
    """One table cell: mean accuracy over seeds with a (1 - alpha) t interval."""

    mean: float
    low: float
    high: float
    alpha: float
    se: float  # standard error of `mean`: se**2 = run_variance / n_seeds + pair_variance
    df: float  # Welch-Satterthwaite degrees of freedom of se
    seed_values: tuple[float, ...]  # accuracy of each seed
    seed_std: float  # sample std of seed_values (ddof=1); NaN for one seed
    run_variance: float  # seed_std**2: variance of ONE run's accuracy on these pairs; NaN for one seed
    pair_variance: float  # variance of `mean` due to sampling the pairs (already divided by N)
    n_seeds: int
    n_pairs: int
    run_variance_known: bool  # False with one seed: the interval then covers pair sampling only


@dataclass(frozen=True)
class RunComparison:
    """Recipe A against recipe B, paired by seed and by pair; delta = acc(A) - acc(B)."""

    delta: float
    low: float
    high: float
    alpha: float
    se: float  # se**2 = run_variance / n_seeds + pair_variance
    df: float  # Welch-Satterthwaite degrees of freedom
    t_statistic: float
    p_value: float  # two-sided; with one seed from the pair term only (see run_variance_known)
    mean_a: float
    mean_b: float
    seed_differences: tuple[float, ...]  # d_s = acc_A,s - acc_B,s
    prob_a_beats_b: float  # Mann-Whitney estimate of P(a run of A beats a run of B)
    power: float
    mde: float  # smallest true |delta| this design detects with `power` at `alpha`
    seeds_needed: int | None  # seeds for mde <= |delta| (normal approximation); None: see compare_runs
    run_variance: float  # var of d_s over seeds (ddof=1); NaN for one seed
    run_variance_a: float  # var of acc_A,s over seeds; with run_variance_b, the pairing gain's inputs
    run_variance_b: float
    pair_variance: float  # variance of `delta` due to sampling the pairs (already divided by N)
    n_seeds: int
    n_pairs: int
    run_variance_known: bool


@dataclass(frozen=True)
class _Spread:
    mean: float
    seed_values: NDArray[np.float64]
    run_variance: float
    pair_variance: float
    se: float
    df: float


def _as_correctness(name: str, values: ArrayLike) -> NDArray[np.bool_]:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (seeds x pairs), got shape {array.shape}")
    if array.shape[0] < 1:
        raise ValueError(f"{name} has no seeds, got shape {array.shape}")
    if array.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 pairs to measure pair sampling, got shape {array.shape}")
    if array.dtype != np.bool_:
        if array.dtype.kind not in "iuf" or not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must be booleans (or 0/1), got values {np.unique(array)[:5].tolist()}")
        array = array.astype(bool)
    return array


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _decompose(x: NDArray[np.float64]) -> _Spread:
    """Variance of the grand mean of a seeds x pairs table: two-way crossed random effects, one
    observation per cell; expected mean squares as in Searle, Casella & McCulloch (1992).

    E[s2_seeds] = var_run + var_noise/N and E[var_j(cbar_j)] = var_pair + var_noise/S, where var_noise is
    the run x pair interaction plus Bernoulli noise (a pair flipping between seeds). Adding both would
    count var_noise/(SN) twice, so the pair term subtracts the ANOVA residual mean square MS_res:
    pair_variance = max(0, var_j(cbar_j) - MS_res/S) / N, and se**2 = s2_seeds/S + pair_variance is then
    unbiased for Var(mean) = var_pair/N + var_run/S + var_noise/(SN). Degrees of freedom by
    Welch-Satterthwaite (Satterthwaite 1946) over the mean squares, each with its own df, kept within
    [S - 1, SN - 1]. With S - 1 = 2 the plug-in df runs high when the run term carries most of se**2:
    at 60-90% of it a 95% interval covers about 92-94% (simulation in tests/test_run_statistics.py).
    With one seed MS_res is not estimable: the pair term is var_j(c_j)/N (binomial-type), df = N - 1.
    """
    s, n = x.shape
    seed_values = x.mean(axis=1)
    pair_means = x.mean(axis=0)
    mean = float(seed_values.mean())
    pair_ms = float(np.var(pair_means, ddof=1))
    if s == 1:
        return _Spread(mean, seed_values, math.nan, pair_ms / n, math.sqrt(pair_ms / n), float(n - 1))
    run_variance = float(np.var(seed_values, ddof=1))
    residual = x - seed_values[:, None] - pair_means[None, :] + mean
    noise_ms = float(np.sum(residual**2)) / ((s - 1) * (n - 1))
    terms = [(run_variance / s, s - 1)]  # (contribution to se**2, its df)
    if pair_ms > noise_ms / s:  # otherwise the pair term is estimated as 0 and drops out
        terms += [(pair_ms / n, n - 1), (-noise_ms / (s * n), (s - 1) * (n - 1))]
    variance = sum(part for part, _ in terms)
    spread = sum(part * part / dof for part, dof in terms)
    # A positive combination's Satterthwaite df lies in [min df_i, sum df_i]; the subtracted residual can
    # push it toward 0 when the pair term nets out near zero (a 3-seed t test reading p ~ 0.8 at t ~ 40).
    df = min(max(variance * variance / spread, s - 1.0), s * n - 1.0) if spread > 0 else float(s - 1)
    pair_variance = max(0.0, pair_ms - noise_ms / s) / n
    return _Spread(mean, seed_values, run_variance, pair_variance, math.sqrt(variance), df)


def cell_estimate(correct: ArrayLike, alpha: float = 0.05) -> CellEstimate:
    """Mean accuracy over seeds with a (1 - alpha) t interval, Welch-Satterthwaite df (see _decompose).

    The target is the population accuracy: a fresh run on a fresh pair sample. Why not a two-level
    bootstrap (seeds, then pairs within seeds; Davison & Hinkley 1997 on hierarchical data): with 3
    seeds the seed level has only C(2S-1, S) = 10 distinct resamples, its plug-in variance of the mean
    is low by (S-1)/S (a third with 3 seeds) and its percentile interval cannot widen to the t quantiles
    of 2 df; resampling pairs within seeds also counts the pair x run noise twice. The analytic variance
    components are unbiased and the t quantile carries the uncertainty of a 3-seed variance estimate.
    With one seed the run variance is unknown: the interval covers pair sampling only.
    """
    _check_alpha(alpha)
    x = _as_correctness("correct", correct).astype(np.float64)
    spread = _decompose(x)
    half = float(stats.t.ppf(1 - alpha / 2, spread.df)) * spread.se
    s, n = x.shape
    return CellEstimate(
        mean=spread.mean,
        low=spread.mean - half,
        high=spread.mean + half,
        alpha=alpha,
        se=spread.se,
        df=spread.df,
        seed_values=tuple(float(v) for v in spread.seed_values),
        seed_std=math.sqrt(spread.run_variance) if s > 1 else math.nan,
        run_variance=spread.run_variance,
        pair_variance=spread.pair_variance,
        n_seeds=s,
        n_pairs=n,
        run_variance_known=s > 1,
    )


def _t_test(delta: float, se: float, df: float) -> tuple[float, float]:
    """Two-sided t test of delta = 0. With se = 0 nothing varies: p = 1 for delta = 0, else p = 0."""
    if se == 0.0:
        return (0.0, 1.0) if delta == 0.0 else (math.copysign(math.inf, delta), 0.0)
    t = delta / se
    return t, float(2.0 * stats.t.sf(abs(t), df))


def _prob_beats(counts_a: NDArray[np.int64], counts_b: NDArray[np.int64]) -> float:
    """P(A > B) of Bouthillier et al. (MLSys 2021, "Accounting for Variance in Machine Learning
    Benchmarks"), estimated by the Mann-Whitney U statistic over all S_A x S_B run pairs divided by
    S_A * S_B (Mann & Whitney 1947); ties count half. Integer correct counts make ties exact."""
    wins = counts_a[:, None] > counts_b[None, :]
    ties = counts_a[:, None] == counts_b[None, :]
    return float(np.mean(wins + 0.5 * ties))


def _seeds_needed(delta: float, run_variance: float, pair_variance: float, alpha: float, power: float) -> int | None:
    """Smallest S with (z_{1-alpha/2} + z_power) * sqrt(run_variance/S + pair_variance) <= |delta|.

    Normal approximation (solved in closed form, no search). The pair term does not shrink with seeds:
    when it alone reaches |delta| no number of seeds resolves delta on this pair set (None); None too
    for delta = 0 or an unknown run variance (one seed). At least 2, the fewest that measure run
    variance. With few seeds the t test needs somewhat more than this.
    """
    if delta == 0.0 or not math.isfinite(run_variance):
        return None
    z = float(np.sum(stats.norm.ppf([1 - alpha / 2, power])))
    room = (delta / z) ** 2 - pair_variance
    if room <= 0.0:
        return None
    return max(2, math.ceil(run_variance / room))


def compare_runs(
    correct_a: ArrayLike, correct_b: ArrayLike, alpha: float = 0.05, power: float = 0.8, family_size: int = 1
) -> RunComparison:
    """Seed- and pair-paired comparison of two recipes: Welch-Satterthwaite t test on d = A - B.

    Row s of A and of B share a seed (common random numbers) and column j the same verification pair,
    so the table d[s, j] = a[s, j] - b[s, j] goes through the same variance components as a cell
    (see _decompose): se**2 = s2_d/S + pair_variance, with the pair term made unbiased by removing the
    residual mean square. Pairing by seed removes the shared run effect: run_variance versus
    run_variance_a + run_variance_b measures that gain (pairing_gain). With one seed run variance is not
    estimable: se, df and p come from the pair term only (run_variance_known is False).

    mde = (t_{1-alpha/2,df} + t_{power,df}) * se, the shifted central t approximation; with df = 2 the
    noncentral t gives about 77% rather than 80% power at that difference.
    prob_a_beats_b ignores the seed pairing and pair sampling: it is the chance that an independently
    seeded run of A scores above one of B on these pairs (with 3 seeds, a multiple of 1/18).
    seeds_needed: see _seeds_needed; None means "not resolvable on this pair set at any number of
    seeds" (or delta = 0, or one seed).
    mde and seeds_needed are at alpha / family_size (Bonferroni, the strictest step of Holm over a family of
    that many comparisons), so a comparison that the family's verdict leaves unresolved always has |delta|
    below its mde; the interval and p stay at the comparison's own alpha.
    """
    _check_alpha(alpha)
    if family_size < 1:
        raise ValueError(f"family_size must be >= 1, got {family_size}")
    if not 0.5 <= power < 1.0:
        raise ValueError(f"power must lie in [0.5, 1), got {power}")
    a = _as_correctness("correct_a", correct_a)
    b = _as_correctness("correct_b", correct_b)
    if a.shape != b.shape:
        raise ValueError(f"correct_b must have correct_a's shape (same seeds, same pairs): {b.shape} != {a.shape}")
    s, n = a.shape
    spread = _decompose(a.astype(np.float64) - b.astype(np.float64))
    t_statistic, p_value = _t_test(spread.mean, spread.se, spread.df)
    crit, crit_family, t_power = (
        float(q) for q in stats.t.ppf([1 - alpha / 2, 1 - alpha / (2 * family_size), power], spread.df)
    )
    counts_a = a.sum(axis=1)
    counts_b = b.sum(axis=1)
    return RunComparison(
        delta=spread.mean,
        low=spread.mean - crit * spread.se,
        high=spread.mean + crit * spread.se,
        alpha=alpha,
        se=spread.se,
        df=spread.df,
        t_statistic=t_statistic,
        p_value=p_value,
        mean_a=float(counts_a.mean() / n),
        mean_b=float(counts_b.mean() / n),
        seed_differences=tuple(float(v) for v in spread.seed_values),
        prob_a_beats_b=_prob_beats(counts_a, counts_b),
        power=power,
        mde=(crit_family + t_power) * spread.se,
        seeds_needed=_seeds_needed(spread.mean, spread.run_variance, spread.pair_variance, alpha / family_size, power),
        run_variance=spread.run_variance,
        run_variance_a=float(np.var(counts_a / n, ddof=1)) if s > 1 else math.nan,
        run_variance_b=float(np.var(counts_b / n, ddof=1)) if s > 1 else math.nan,
        pair_variance=spread.pair_variance,
        n_seeds=s,
        n_pairs=n,
        run_variance_known=s > 1,
    )


def verdict(comparison: RunComparison, p_holm: float, alpha: float = 0.05) -> str:
    """"A better", "B better", or "not resolved with S seeds: the smallest difference this design
    resolves is X points" (X = comparison.mde in accuracy points, at the family's Bonferroni level)."""
    _check_alpha(alpha)
    if not 0.0 <= p_holm <= 1.0:
        raise ValueError(f"p_holm must lie in [0, 1], got {p_holm}")
    if p_holm <= alpha and comparison.delta != 0.0:
        return "A better" if comparison.delta > 0 else "B better"
    seeds = f"{comparison.n_seeds} seed{'' if comparison.n_seeds == 1 else 's'}"
    return f"not resolved with {seeds}: the smallest difference this design resolves is {100 * comparison.mde:.2f} points"


def holm_verdicts(comparisons: Sequence[RunComparison], alpha: float = 0.05) -> list[str]:
    """Verdicts for a table's comparisons, p-values adjusted together by Holm (1979)."""
    p_holm = holm_bonferroni([c.p_value for c in comparisons])
    return [verdict(c, float(p), alpha) for c, p in zip(comparisons, p_holm, strict=True)]


def pairing_gain(comparisons: Sequence[RunComparison]) -> float:
    """How much seed pairing (common random numbers) cut the run variance of a difference, pooled over
    a table: sum(var_a + var_b) / sum(var_d) over comparisons with a known run variance.

    var_d = var_a + var_b - 2 cov(a, b), so the ratio exceeds 1 exactly when paired runs covary; it is the
    factor more seeds an unpaired design needs for the same run term. Pooling the sums weights every
    comparison alike (same N); single 3-seed variances are too noisy to read alone. NaN with nothing to
    pool or 0/0; inf when pairing removed all of a nonzero variance.
    """
    known = [c for c in comparisons if c.run_variance_known]
    var_sum = sum(c.run_variance_a + c.run_variance_b for c in known)
    var_diff = sum(c.run_variance for c in known)
    if var_diff > 0:
        return var_sum / var_diff
    return math.inf if var_sum > 0 else math.nan
