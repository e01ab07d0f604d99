"""Verdicts whose unit is the training run: cell intervals, seed-paired comparisons, Holm verdicts.

Input is a correctness matrix correct[seed, pair] (S seeds x N verification pairs or identification probes, the
same for every seed). Model: acc_s = mu + P + R_s, where P is the pair-sample effect shared by all seeds and R_s
the run effect (initial weights, batch order, flips). Seeds, not pairs, are the replicates of a recipe, so
run-to-run variance enters every interval and test; the pair term accounts for the pair set being one sample of
faces. McNemar on pooled pairs (pipeline.evaluate.significance) treats the pairs as the only source of noise and
so overstates certainty.

A table's comparisons are judged together (judge_family): each seed-level run variance is moderated toward the
family's (empirical Bayes, Smyth 2004) and Holm adjusts the family's p. The choice of this test over the plug-in
Welch-Satterthwaite df, df = S - 1 and a benchmark-pooled mixed model was made by simulation at Holm's alpha/m
tail: `python -m bench.verdict_calibration` -> reports/verdict_calibration.md.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from pipeline.evaluate.significance import holm_bonferroni

MAX_SEEDS = 10_000  # seeds_needed searches up to here; beyond it a difference counts as out of reach


@dataclass(frozen=True)
class CellEstimate:
    """One table cell: mean accuracy over seeds with a (1 - alpha) interval, built on the logit scale."""

    mean: float
    low: float
    high: float
    alpha: float
    se: float  # standard error of `mean`: se**2 = run_variance / n_seeds + pair_variance
    df: float  # Welch-Satterthwaite df of se (see cell_estimate); with one seed the pairs' N - 1
    seed_values: tuple[float, ...]  # accuracy of each seed
    seed_std: float  # sample std of seed_values (ddof=1); NaN for one seed
    run_variance: float  # seed_std**2: variance of ONE run's accuracy on these pairs; NaN for one seed
    pair_variance: float  # variance of `mean` due to sampling the pairs (already divided by N)
    n_seeds: int
    n_pairs: int
    run_variance_known: bool  # False with one seed: the interval then covers pair sampling only


@dataclass(frozen=True)
class DifferenceSummary:
    """What a run-level test needs of A - B on one benchmark (the sufficient statistics of the seeds x pairs
    table of differences), and what the tables show beside it."""

    delta: float  # mean over seeds of d_s = acc_A,s - acc_B,s
    seed_differences: tuple[float, ...]
    run_variance: float  # var of d_s over seeds (ddof=1); NaN for one seed
    pair_variance: float  # variance of `delta` due to sampling the pairs (already divided by N)
    n_seeds: int
    n_pairs: int
    mean_a: float
    mean_b: float
    run_variance_a: float  # var of acc_A,s over seeds; with run_variance_b, the pairing gain's inputs
    run_variance_b: float
    prob_a_beats_b: float  # Mann-Whitney estimate of P(a run of A beats a run of B)

    @property
    def run_variance_known(self) -> bool:
        return self.n_seeds > 1


@dataclass(frozen=True)
class RunComparison:
    """Recipe A against recipe B, paired by seed and by pair; delta = acc(A) - acc(B)."""

    delta: float
    low: float  # (1 - alpha) interval of delta, within [-1, 1]
    high: float
    alpha: float
    se: float  # se**2 = moderated run variance / n_seeds + pair_variance
    df: float  # S - 1 + d0: the seeds' df plus the family prior's (family_tests)
    t_statistic: float
    p_value: float  # two-sided, before Holm; with one seed from the pair term only (no verdict then)
    mean_a: float
    mean_b: float
    seed_differences: tuple[float, ...]  # d_s = acc_A,s - acc_B,s
    prob_a_beats_b: float  # Mann-Whitney estimate of P(a run of A beats a run of B)
    power: float
    mde: float  # smallest true |delta| resolved with `power` at the family's level; inf: none within 100 points
    seeds_needed: int | None  # seeds for mde <= |delta| at the family's level; None: see seeds_needed
    run_variance: float  # var of d_s over seeds (ddof=1); NaN for one seed
    moderated_run_variance: float  # the run variance the test uses (family_tests); NaN for one seed
    prior_df: float  # d0: how many df the family's prior lends this test (0: none)
    run_variance_a: float
    run_variance_b: float
    pair_variance: float
    n_seeds: int
    n_pairs: int
    family_size: int
    run_variance_known: bool


@dataclass(frozen=True)
class _Spread:
    mean: float
    seed_values: NDArray[np.float64]
    run_variance: float
    pair_variance: float
    se: float
    df: float  # Welch-Satterthwaite df of se (cells only: see cell_estimate)


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


def _check_levels(alpha: float, power: float = 0.8) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if not 0.5 <= power < 1.0:
        raise ValueError(f"power must lie in [0.5, 1), got {power}")


def _decompose(x: NDArray[np.float64]) -> _Spread:
    """Variance of the grand mean of a seeds x pairs table: two-way crossed random effects, one
    observation per cell; expected mean squares as in Searle, Casella & McCulloch (1992).

    E[s2_seeds] = var_run + var_noise/N and E[var_j(cbar_j)] = var_pair + var_noise/S, where var_noise is
    the run x pair interaction plus Bernoulli noise (a pair flipping between seeds). Adding both would
    count var_noise/(SN) twice, so the pair term subtracts the ANOVA residual mean square MS_res:
    pair_variance = max(0, var_j(cbar_j) - MS_res/S) / N, and se**2 = s2_seeds/S + pair_variance is then
    unbiased for Var(mean) = var_pair/N + var_run/S + var_noise/(SN). Degrees of freedom by Welch-Satterthwaite
    (Satterthwaite 1946) over the mean squares, each with its own df, kept within [S - 1, SN - 1].
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
    # a positive combination's Satterthwaite df lies in [min df_i, sum df_i]; the subtracted residual can push it
    # toward 0 when the pair term nets out near zero
    df = min(max(variance * variance / spread, s - 1.0), s * n - 1.0) if spread > 0 else float(s - 1)
    pair_variance = max(0.0, pair_ms - noise_ms / s) / n
    return _Spread(mean, seed_values, run_variance, pair_variance, math.sqrt(run_variance / s + pair_variance), df)


def rate_interval(mean: float, half_width: float, judgements: int) -> tuple[float, float]:
    """A rate's interval of half width t x se, built on the logit scale and mapped back: the same width as the
    symmetric interval where the rate is mid-range, inside [0, 1] however near an edge.

    Centre: Cox's empirical logit log((k + 1/2) / (M - k + 1/2)), k = mean x M of M judgements (Cox & Snell 1989,
    Analysis of Binary Data, Sec. 2.1.6), finite at 0 and M; half width by the delta method: (t se) / (p (1 - p))."""
    k = mean * judgements
    centre = math.log((k + 0.5) / (judgements - k + 0.5))
    p = float(special.expit(centre))
    half = half_width / (p * (1.0 - p))
    # at 0 or M the empirical logit sits half a judgement inside: the interval still holds the observed rate
    return min(float(special.expit(centre - half)), mean), max(float(special.expit(centre + half)), mean)


def binomial_floor(mean: float, judgements: int, alpha: float) -> float:
    """The smallest half width a rate of M judgements may have: z_{1-alpha/2} x the binomial SD at the
    empirical-logit rate. A rate is never known better than its judgements allow, and a cell of all-right (or
    all-wrong) answers, whose run and pair terms are 0, must not read as certainty."""
    p = (mean * judgements + 0.5) / (judgements + 1.0)
    return float(stats.norm.ppf(1 - alpha / 2)) * math.sqrt(p * (1.0 - p) / judgements)


def cell_estimate(correct: ArrayLike, alpha: float = 0.05) -> CellEstimate:
    """Mean accuracy over seeds with a (1 - alpha) interval: se**2 = s2_seeds/S + pair_variance, Welch-Satterthwaite
    df (see _decompose), on the logit scale (rate_interval) so that it stays within [0, 1].

    A cell is one interval, not a verdict: at 95% the plug-in df covers 92-94% where the run term carries most of
    se**2 (tests/test_run_statistics.py), while df = S - 1, valid at every level, covered 99.9-100% where the pair
    term dominates (its 2 df price a term known from thousands of pairs). Verdicts use judge_family's test.
    Why not a two-level bootstrap: with 3 seeds the seed level has C(2S-1, S) = 10 distinct resamples and a plug-in
    variance low by (S-1)/S. With one seed the run variance is unknown: the interval covers pair sampling only.
    """
    _check_levels(alpha)
    x = _as_correctness("correct", correct).astype(np.float64)
    spread = _decompose(x)
    s, n = x.shape
    half_width = max(float(stats.t.ppf(1 - alpha / 2, spread.df)) * spread.se, binomial_floor(spread.mean, s * n, alpha))
    low, high = rate_interval(spread.mean, half_width, s * n)
    return CellEstimate(
        mean=spread.mean,
        low=low,
        high=high,
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


@dataclass(frozen=True)
class RunVariancePrior:
    """A family's scaled inverse-chi-square prior on its run variances (Smyth 2004): `df` (d0) and `scale`
    (s0^2). df 0: no prior (each test on its own S - 1 df); inf: the family's run variances are one."""

    df: float
    scale: float


NO_PRIOR = RunVariancePrior(0.0, 0.0)
PRIOR_WEIGHT_CAP = 1.0  # d0 <= S - 1: see family_tests
MIN_FAMILY = 24  # comparisons a family needs to lend a prior: see family_tests


def trigamma_inverse(y: ArrayLike) -> NDArray[np.float64]:
    """x with trigamma(x) = y for y > 0, by Newton's method on 1/trigamma (Smyth 2004, Sec. 6)."""
    target = np.asarray(y, dtype=np.float64)
    if np.any(target <= 0):
        raise ValueError(f"trigamma_inverse needs y > 0, got {target[target <= 0][:3].tolist()}")
    x = np.where(target > 1e7, 1.0 / np.sqrt(target), np.where(target < 1e-6, 1.0 / target, 0.5 + 1.0 / target))
    for _ in range(50):  # converges monotonely from this start (Smyth 2004); 50 is far more than it takes
        tri = special.polygamma(1, x)
        step = tri * (1.0 - tri / target) / special.polygamma(2, x)
        x = x + step
        if np.all(np.abs(step) <= 1e-10 * x):
            break
    return x


def family_priors(run_variances: NDArray[np.float64], df: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each family's prior from its sample run variances (each on `df` df), (families x comparisons) -> (d0, s0^2):
    Smyth (2004, Sec. 6),
    E log s^2 = log s0^2 + digamma(d/2) - log(d/2) - digamma(d0/2) + log(d0/2), Var log s^2 = trigamma(d/2) +
    trigamma(d0/2), solved by moments.

    Zero variances are raised to 1e-5 x the family's median (log 0 is -inf), as limma's fitFDist does. Fewer than
    three comparisons, df < 1 (one seed) or a family of zeros give no prior (d0 = 0)."""
    families, size = run_variances.shape
    prior_df, scale = np.zeros(families), np.zeros(families)
    if df < 1 or size < 3:
        return prior_df, scale
    positive = np.where(run_variances > 0, run_variances, np.nan)
    usable = np.isfinite(positive).any(axis=1)
    if not usable.any():
        return prior_df, scale
    floor = 1e-5 * np.nanmedian(positive[usable], axis=1, keepdims=True)
    centred = np.log(np.maximum(run_variances[usable], floor)) - special.digamma(df / 2) + math.log(df / 2)
    excess = np.var(centred, axis=1, ddof=1) - float(special.polygamma(1, df / 2))
    mean = centred.mean(axis=1)
    spread = excess > 0  # else the spread is no more than sampling alone gives: one variance for the family
    d0 = np.full(mean.shape, math.inf)
    d0[spread] = 2.0 * trigamma_inverse(excess[spread])
    s0 = np.exp(mean)
    s0[spread] = np.exp(mean[spread] + special.digamma(d0[spread] / 2) - np.log(d0[spread] / 2))
    prior_df[usable], scale[usable] = d0, s0
    return prior_df, scale


@dataclass(frozen=True)
class FamilyTests:
    """family_tests' answer, arrays of families x comparisons (prior: one per family)."""

    se: NDArray[np.float64]
    df: NDArray[np.float64]
    t: NDArray[np.float64]
    p: NDArray[np.float64]
    run_variance: NDArray[np.float64]  # the moderated run variance s~^2 that se uses
    prior: list[RunVariancePrior]


def family_tests(
    delta: NDArray[np.float64], run_variance: NDArray[np.float64], pair_variance: NDArray[np.float64], n_seeds: int,
    prior_weight_cap: float = PRIOR_WEIGHT_CAP, min_family: int = MIN_FAMILY,
) -> FamilyTests:
    """Moderated run-level t tests of every comparison of many families (arrays families x comparisons):
    t = delta / sqrt(s~^2/S + pair_variance) on S - 1 + d0 df, s~^2 = (d0 s0^2 + d s^2) / (d0 + d), d = S - 1
    (Smyth 2004, Sec. 3-4: posterior variance and moderated t), with d0 at most prior_weight_cap x d, and no prior
    (d0 = 0: t on S - 1 df) in a family of fewer than MIN_FAMILY comparisons.

    Why the cap and the minimum: d0 is estimated from one table's comparisons, which share rows, seeds and
    correlated benchmarks; the estimate runs high (often infinite) where the true run variances differ, and at
    Holm's alpha/m tail plain moderation then claimed a difference in 10-12% of null tables (nominal 5%), a family
    of 3 to 12 comparisons (one to four row pairs) 6-9% even when capped. A prior worth at most the seeds' own df,
    lent only by a family of 24 or more, kept the family-wise error within Monte Carlo error of its level in every
    structure simulated, with most of the power (reports/verdict_calibration.md).

    The pair term comes from thousands of pairs and enters se^2 as known; the df are the run term's alone. With
    one seed there is no run variance: se is the pair term's (df inf)."""
    families, size = delta.shape
    d = n_seeds - 1.0
    if n_seeds < 2:
        se = np.sqrt(pair_variance)
        df = np.full(delta.shape, math.inf)
        moderated = np.full(delta.shape, math.nan)
        priors = [NO_PRIOR] * families
    else:
        prior_df, scale = family_priors(run_variance, d)
        # limma caps d + d0 at the family's pooled df; ours is tighter (see above)
        prior_df = np.minimum(prior_df, min(prior_weight_cap, size - 1.0) * d) if size >= min_family else np.zeros_like(prior_df)
        weight = prior_df[:, None]
        moderated = (weight * scale[:, None] + d * run_variance) / (weight + d)
        se = np.sqrt(moderated / n_seeds + pair_variance)
        df = np.broadcast_to(d + weight, delta.shape).astype(np.float64)
        priors = [RunVariancePrior(float(a), float(b)) for a, b in zip(prior_df, scale)]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, delta / se, np.where(delta == 0, 0.0, np.sign(delta) * np.inf))
    p = np.where(np.isinf(t), 0.0, 2.0 * stats.t.sf(np.abs(t), df))
    return FamilyTests(se=se, df=df, t=t, p=p, run_variance=moderated, prior=priors)


def _prob_beats(counts_a: NDArray[np.int64], counts_b: NDArray[np.int64]) -> float:
    """P(A > B) of Bouthillier et al. (MLSys 2021, "Accounting for Variance in Machine Learning
    Benchmarks"), estimated by the Mann-Whitney U statistic over all S_A x S_B run pairs divided by
    S_A * S_B (Mann & Whitney 1947); ties count half. Integer correct counts make ties exact."""
    wins = counts_a[:, None] > counts_b[None, :]
    ties = counts_a[:, None] == counts_b[None, :]
    return float(np.mean(wins + 0.5 * ties))


def summarize(correct_a: ArrayLike, correct_b: ArrayLike) -> DifferenceSummary:
    """A - B seed by seed and pair by pair (row s of both shares a seed, column j a pair): the difference table's
    variance components (_decompose) and the descriptive figures beside them."""
    a = _as_correctness("correct_a", correct_a)
    b = _as_correctness("correct_b", correct_b)
    if a.shape != b.shape:
        raise ValueError(f"correct_b must have correct_a's shape (same seeds, same pairs): {b.shape} != {a.shape}")
    s, n = a.shape
    spread = _decompose(a.astype(np.float64) - b.astype(np.float64))
    counts_a, counts_b = a.sum(axis=1), b.sum(axis=1)
    return DifferenceSummary(
        delta=spread.mean,
        seed_differences=tuple(float(v) for v in spread.seed_values),
        run_variance=spread.run_variance,
        pair_variance=spread.pair_variance,
        n_seeds=s,
        n_pairs=n,
        mean_a=float(counts_a.mean() / n),
        mean_b=float(counts_b.mean() / n),
        run_variance_a=float(np.var(counts_a / n, ddof=1)) if s > 1 else math.nan,
        run_variance_b=float(np.var(counts_b / n, ddof=1)) if s > 1 else math.nan,
        prob_a_beats_b=_prob_beats(counts_a, counts_b),
    )


def _resolvable(run_variance: float, pair_variance: float, seeds: int, df: float, level: float, power: float) -> float:
    """(t_{1-level/2, df} + t_{power, df}) sqrt(run/S + pair): the shifted central t approximation of the smallest
    difference a two-sided level-`level` t test detects with `power` (with df 2 the noncentral t gives ~77%)."""
    crit, t_power = stats.t.ppf([1 - level / 2, power], df)
    return float((crit + t_power) * math.sqrt(run_variance / seeds + pair_variance))


def seeds_needed(
    delta: float, run_variance: float, pair_variance: float, prior_df: float, level: float, power: float
) -> int | None:
    """Fewest seeds S' whose design resolves |delta| at `level` with `power`, under the test the tables use:
    df(S') = S' - 1 + min(prior_df, PRIOR_WEIGHT_CAP x (S' - 1)), run variance and pair term as estimated now.

    None when no number of seeds resolves it on this pair set: the pair term does not shrink with seeds, so when
    (z_{1-level/2} + z_power) sqrt(pair_variance) >= |delta| (the limit S' -> inf) no S' suffices; None too for
    delta = 0, an unknown run variance (one seed), or more than MAX_SEEDS. At least 2."""
    if delta == 0.0 or not math.isfinite(run_variance):
        return None
    z = float(np.sum(stats.norm.ppf([1 - level / 2, power])))
    if z * math.sqrt(pair_variance) >= abs(delta):
        return None

    def resolves(seeds: int) -> bool:
        df = seeds - 1 + min(prior_df, PRIOR_WEIGHT_CAP * (seeds - 1))
        return _resolvable(run_variance, pair_variance, seeds, df, level, power) <= abs(delta)

    if not resolves(MAX_SEEDS):
        return None
    low, high = 1, MAX_SEEDS  # resolves(high); not resolves(low), since one seed measures no run variance
    while high - low > 1:  # the design's mde falls as seeds are added: bisect
        middle = (low + high) // 2
        low, high = (low, middle) if resolves(middle) else (middle, high)
    return max(2, high)


def _comparison(
    summary: DifferenceSummary, se: float, df: float, moderated: float, prior_df: float, p: float,
    alpha: float, power: float, family_size: int,
) -> RunComparison:
    level = alpha / family_size  # Bonferroni: the strictest step of Holm over the family
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    t_statistic = summary.delta / se if se > 0 else (0.0 if summary.delta == 0 else math.copysign(math.inf, summary.delta))
    if summary.run_variance_known:
        mde = _resolvable(moderated, summary.pair_variance, summary.n_seeds, df, level, power)
        needed = seeds_needed(summary.delta, moderated, summary.pair_variance, prior_df, level, power)
    else:
        mde, needed = _resolvable(0.0, summary.pair_variance, 1, df, level, power), None
    return RunComparison(
        **{field.name: getattr(summary, field.name) for field in fields(summary)},  # the summary's figures as they are
        low=max(-1.0, summary.delta - crit * se),
        high=min(1.0, summary.delta + crit * se),
        alpha=alpha,
        se=se,
        df=df,
        t_statistic=t_statistic,
        p_value=p,
        power=power,
        mde=mde if mde <= 1.0 else math.inf,  # an accuracy difference is at most 100 points
        seeds_needed=needed,
        moderated_run_variance=moderated,
        prior_df=prior_df,
        family_size=family_size,
        run_variance_known=summary.run_variance_known,
    )


def judge_family(summaries: Sequence[DifferenceSummary], alpha: float = 0.05, power: float = 0.8) -> list[RunComparison]:
    """A table's comparisons tested together: family_tests over the comparisons with the same seed count (a
    diverged seed can leave some with fewer), mde and seeds_needed at the family's Bonferroni level alpha/m,
    m = len(summaries). Holm's adjustment is holm_verdicts'."""
    _check_levels(alpha, power)
    results: list[RunComparison | None] = [None] * len(summaries)
    for seeds in sorted({s.n_seeds for s in summaries}):
        index = [i for i, s in enumerate(summaries) if s.n_seeds == seeds]
        group = [summaries[i] for i in index]
        tests = family_tests(
            np.array([[s.delta for s in group]]), np.array([[s.run_variance for s in group]]),
            np.array([[s.pair_variance for s in group]]), seeds,
        )
        prior_df = tests.prior[0].df
        for column, i in enumerate(index):
            results[i] = _comparison(
                summaries[i], float(tests.se[0, column]), float(tests.df[0, column]),
                float(tests.run_variance[0, column]), prior_df, float(tests.p[0, column]), alpha, power, len(summaries),
            )
    return [r for r in results if r is not None]


def compare_runs(
    correct_a: ArrayLike, correct_b: ArrayLike, alpha: float = 0.05, power: float = 0.8, family_size: int = 1
) -> RunComparison:
    """One comparison on its own (no family to lend a prior): t on the seeds' S - 1 df, se**2 = s2_d/S +
    pair_variance; mde and seeds_needed at alpha / family_size. A table uses judge_family."""
    _check_levels(alpha, power)
    if family_size < 1:
        raise ValueError(f"family_size must be >= 1, got {family_size}")
    summary = summarize(correct_a, correct_b)
    tests = family_tests(np.array([[summary.delta]]), np.array([[summary.run_variance]]),
                         np.array([[summary.pair_variance]]), summary.n_seeds)
    return _comparison(summary, float(tests.se[0, 0]), float(tests.df[0, 0]), float(tests.run_variance[0, 0]), 0.0,
                       float(tests.p[0, 0]), alpha, power, family_size)


def verdict(comparison: RunComparison, p_holm: float, alpha: float = 0.05) -> str:
    """"A better", "B better", or why not: one seed measures no run-to-run variance, so it is never judged; else
    "not resolved with S seeds: the smallest difference this design resolves is X points" (X = mde at the
    family's level, or "none within 100 points")."""
    _check_levels(alpha)
    if not 0.0 <= p_holm <= 1.0:
        raise ValueError(f"p_holm must lie in [0, 1], got {p_holm}")
    if not comparison.run_variance_known:
        return "not judged: 1 seed measures no run-to-run variance"
    if p_holm <= alpha and comparison.delta != 0.0:
        return "A better" if comparison.delta > 0 else "B better"
    smallest = "none within 100 points" if math.isinf(comparison.mde) else f"{100 * comparison.mde:.2f} points"
    seeds = f"{comparison.n_seeds} seed{'' if comparison.n_seeds == 1 else 's'}"
    return f"not resolved with {seeds}: the smallest difference this design resolves is {smallest}"


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
