"""Which run-level test keeps a table's family-wise error: candidates by simulation, error and power side by side.

A simulated table has the committed tables' shape: rows (recipes) x benchmarks x seeds, planned comparisons of
rows (every row against the baseline plus listed pairs), one verdict per comparison and benchmark, Holm over the
family. A row's seed value on a benchmark is its mean plus a run effect; run effects are correlated across the
benchmarks of one run (rho_bench) and across the rows that share a seed (rho_rows: common random numbers), their
variances spread log-normally over rows and benchmarks (hetero). A comparison's pair-sample effect is drawn once
per table (it does not shrink with seeds) and estimated from N pairs (chi-square, N - 1 df). `share` is the run
term's share of Var(delta-hat) at the simulated seed count.

Candidates (each turns delta-hat, the seeds' run variance s^2 and the pair variance into p):
- satterthwaite: se^2 = s^2/S + pair, Welch-Satterthwaite df (the project's test before this study);
- seed_df: the same se, df = S - 1 (the run term's own df);
- moderated: s^2 moderated toward the family's prior (Smyth 2004), df = S - 1 + d0, d0 as estimated (limma's
  rules: a prior from 3 comparisons up, d + d0 at most the pooled df);
- capped_twice: the same with d0 <= 2 (S - 1);
- capped: d0 <= S - 1, and no prior in a family under 24 comparisons: the project's test
  (pipeline.reporting.run_statistics.family_tests);
- pooled: per comparison, the seed x benchmark table of differences as a two-way layout (benchmark fixed, seed
  random: Var(d) = MS_seed/B + (B-1)/B MS_res), Satterthwaite df over the two mean squares.

Run: `python -m bench.verdict_calibration` (about two minutes on 2 cores) -> reports/verdict_calibration.md
and .json.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats

from pipeline.core.atomic_io import write_text_atomic
from pipeline.core.config import load
from pipeline.evaluate.significance import holm_bonferroni
from pipeline.reporting.tables import planned_comparisons
from pipeline.reporting.run_statistics import family_tests
from pipeline.core.config import PROJECT_ROOT

ALPHA = 0.05
PAIRS = 2000
BENCHMARKS = ("synth-lfw", "synth-cfp-fp", "synth-agedb")


@dataclass(frozen=True)
class Layout:
    """A table's rows and planned comparisons (row indices), as in params.yaml `tables`."""

    names: tuple[str, ...]
    comparisons: tuple[tuple[int, int], ...]
    benchmarks: int

    @property
    def rows(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return len(self.comparisons) * self.benchmarks


def table3_layout() -> Layout:
    """AirFace Table 3 as params.yaml plans it: every row against N-Softmax and the listed pairs, 3 benchmarks."""
    spec = load(PROJECT_ROOT / "params.yaml").tables["table3"]
    names = list(spec.rows)
    pairs = tuple((names.index(a), names.index(b)) for a, b in planned_comparisons(spec))
    return Layout(tuple(names), pairs, len(BENCHMARKS))


@dataclass(frozen=True)
class Structure:
    """The variance structure of a simulated table (see the module docstring)."""

    seeds: int
    share: float  # run term's share of Var(delta-hat)
    rho_rows: float = 0.1
    rho_bench: float = 0.5
    hetero: float = 0.0  # SD of log run variance over rows and benchmarks


@dataclass(frozen=True)
class Draws:
    """Per table (axis 0) and comparison x benchmark (axis 1): what a test sees."""

    delta: NDArray[np.float64]
    run_variance: NDArray[np.float64]  # s^2 of the seed differences, S - 1 df
    pair_variance: NDArray[np.float64]  # estimated pair term of delta-hat
    seed_differences: NDArray[np.float64]  # tables x comparisons x benchmarks x seeds (for the pooled model)


def simulate(
    layout: Layout, structure: Structure, tables: int, rng: np.random.Generator,
    row_sd: NDArray[np.float64] | None = None, true_delta: NDArray[np.float64] | None = None,
    pair_sd: NDArray[np.float64] | None = None,
) -> Draws:
    """Draw `tables` tables. row_sd (rows x benchmarks) fixes the run SDs (else 1, spread by `hetero`),
    true_delta and pair_sd (comparisons x benchmarks) the truth and pair term (else 0 and from `share`)."""
    s, r, b = structure.seeds, layout.rows, layout.benchmarks
    if row_sd is None:
        log_var = structure.hetero * rng.standard_normal((tables, r, b)) - structure.hetero**2 / 2
        sd = np.exp(log_var / 2)
    else:
        sd = np.broadcast_to(row_sd, (tables, r, b))
    rr, rb = structure.rho_rows, structure.rho_bench
    weights = [math.sqrt(rr * rb), math.sqrt(rr - rr * rb), math.sqrt(rb - rr * rb), math.sqrt(1 - rr - rb + rr * rb)]
    z = (
        weights[0] * rng.standard_normal((tables, 1, s, 1))  # the seed, everywhere
        + weights[1] * rng.standard_normal((tables, 1, s, b))  # the seed on one benchmark, every row
        + weights[2] * rng.standard_normal((tables, r, s, 1))  # one row's run, every benchmark
        + weights[3] * rng.standard_normal((tables, r, s, b))
    )
    runs = sd[:, :, None, :] * z  # tables x rows x seeds x benchmarks
    a_index = np.array([a for a, _ in layout.comparisons])
    b_index = np.array([b for _, b in layout.comparisons])
    differences = (runs[:, a_index] - runs[:, b_index]).transpose(0, 1, 3, 2)  # tables x comps x benchmarks x seeds
    run_variance = differences.var(axis=-1, ddof=1)
    if pair_sd is None:
        expected = sd[:, a_index] ** 2 + sd[:, b_index] ** 2 - 2 * rr * sd[:, a_index] * sd[:, b_index]
        pair_var = expected / s * (1 - structure.share) / structure.share
    else:
        pair_var = np.broadcast_to(pair_sd**2, run_variance.shape)
    truth = 0.0 if true_delta is None else true_delta
    delta = truth + differences.mean(axis=-1) + np.sqrt(pair_var) * rng.standard_normal(run_variance.shape)
    pair_hat = pair_var * rng.chisquare(PAIRS - 1, run_variance.shape) / (PAIRS - 1)
    flat = (tables, layout.size)
    return Draws(delta.reshape(flat), run_variance.reshape(flat), pair_hat.reshape(flat), differences)


def _p(delta: NDArray[np.float64], se: NDArray[np.float64], df: NDArray[np.float64] | float) -> NDArray[np.float64]:
    return 2.0 * stats.t.sf(np.abs(delta / se), df)


def satterthwaite(draws: Draws, seeds: int) -> tuple[NDArray, NDArray]:
    """The project's test before this study: Welch-Satterthwaite df of s^2/S + pair, within [S-1, SN-1]."""
    run, pair = draws.run_variance / seeds, draws.pair_variance
    df = np.clip((run + pair) ** 2 / (run**2 / (seeds - 1) + pair**2 / (PAIRS - 1)), seeds - 1, seeds * PAIRS - 1)
    return _p(draws.delta, np.sqrt(run + pair), df), df


def seed_df(draws: Draws, seeds: int) -> tuple[NDArray, NDArray]:
    df = np.full(draws.delta.shape, seeds - 1.0)
    return _p(draws.delta, np.sqrt(draws.run_variance / seeds + draws.pair_variance), df), df


def moderated(draws: Draws, seeds: int) -> tuple[NDArray, NDArray]:
    """Plain empirical-Bayes moderation: d0 as estimated (limma's cap only: d + d0 <= the pooled df)."""
    tests = family_tests(draws.delta, draws.run_variance, draws.pair_variance, seeds, prior_weight_cap=math.inf,
                         min_family=3)
    return tests.p, tests.df


def capped_twice(draws: Draws, seeds: int) -> tuple[NDArray, NDArray]:
    """Moderation with d0 <= 2 (S - 1): a looser cap than the project's."""
    tests = family_tests(draws.delta, draws.run_variance, draws.pair_variance, seeds, prior_weight_cap=2.0, min_family=3)
    return tests.p, tests.df


def capped(draws: Draws, seeds: int) -> tuple[NDArray, NDArray]:
    """The project's test (pipeline.reporting.run_statistics.family_tests): moderation with d0 <= S - 1, from 24 comparisons."""
    tests = family_tests(draws.delta, draws.run_variance, draws.pair_variance, seeds)
    return tests.p, tests.df


def pooled(draws: Draws, seeds: int) -> tuple[NDArray, NDArray]:
    """Benchmark fixed, seed random, per comparison: Var(d) = MS_seed/B + (B-1)/B MS_res, Satterthwaite df."""
    d = draws.seed_differences  # tables x comps x benchmarks x seeds
    b = d.shape[2]
    seed_means = d.mean(axis=2, keepdims=True)
    bench_means = d.mean(axis=3, keepdims=True)
    grand = d.mean(axis=(2, 3), keepdims=True)
    ms_seed = b * ((seed_means - grand) ** 2).sum(axis=3)[..., 0] / (seeds - 1)
    ms_res = ((d - seed_means - bench_means + grand) ** 2).sum(axis=(2, 3)) / ((seeds - 1) * (b - 1))
    parts = (ms_seed / b, (b - 1) / b * ms_res)
    variance = parts[0] + parts[1]
    df = variance**2 / (parts[0] ** 2 / (seeds - 1) + parts[1] ** 2 / ((seeds - 1) * (b - 1)))
    flat = draws.delta.shape
    variance = np.repeat(variance[:, :, None], b, axis=2).reshape(flat)
    df = np.repeat(df[:, :, None], b, axis=2).reshape(flat)
    return _p(draws.delta, np.sqrt(variance / seeds + draws.pair_variance), df), df


METHODS: dict[str, Callable[[Draws, int], tuple[NDArray, NDArray]]] = {
    "satterthwaite": satterthwaite, "seed_df": seed_df, "moderated": moderated, "capped_twice": capped_twice, "capped": capped,
    "pooled": pooled,
}


def holm_rejections(p: NDArray[np.float64], alpha: float = ALPHA) -> NDArray[np.bool_]:
    """Holm's step-down decisions for each table (row) of p-values, through the project's own holm_bonferroni."""
    return np.stack([holm_bonferroni(row) <= alpha for row in p])


@dataclass(frozen=True)
class NullResult:
    method: str
    seeds: int
    share: float
    hetero: float
    rho_bench: float
    rate_at_bonferroni: float  # per-comparison rejection rate at alpha / m
    family_wise_error: float  # share of tables with any Holm rejection
    median_df: float


def null_grid(tables: int, seed: int = 0) -> list[NullResult]:
    """Complete null (no recipe differs) over the seed counts, run shares and structures the project meets."""
    layout = table3_layout()
    results = []
    for seeds in (3, 5, 10):
        for share in (0.5, 0.7, 0.9, 1.0):
            for hetero, rho_bench in ((0.0, 0.5), (1.0, 0.0), (1.0, 0.5), (1.0, 0.9), (1.5, 0.5)):
                structure = Structure(seeds, share, hetero=hetero, rho_bench=rho_bench)
                draws = simulate(layout, structure, tables, np.random.default_rng([seed, seeds, int(100 * share), int(10 * hetero), int(10 * rho_bench)]))
                for name, method in METHODS.items():
                    p, df = method(draws, seeds)
                    results.append(NullResult(
                        name, seeds, share, hetero, rho_bench, float(np.mean(p <= ALPHA / layout.size)),
                        float(np.mean(holm_rejections(p).any(axis=1))), float(np.median(df)),
                    ))
    return results


@dataclass(frozen=True)
class SizeResult:
    method: str
    comparisons: int
    family_wise_error: float  # worst over seeds 3, 5, 10 and run-variance spreads 0, 1, 1.5 (run share 1)
    worst_rate_ratio: float  # per-comparison rate at alpha/m over nominal, worst over the same


def size_sweep(tables: int, seed: int = 2) -> list[SizeResult]:
    """Smaller families than Table 3's: k rows against one baseline, 3 benchmarks, the hardest structure (no
    pair term) with run variances spread over rows."""
    results = []
    for pairs in (1, 2, 4, 6, 8, 14):
        layout = Layout(tuple(str(i) for i in range(pairs + 1)), tuple((i, pairs) for i in range(pairs)), 3)
        worst: dict[str, tuple[float, float]] = {name: (0.0, 0.0) for name in ("moderated", "capped_twice", "capped")}
        for seeds in (3, 5, 10):
            for hetero in (0.0, 1.0, 1.5):
                draws = simulate(layout, Structure(seeds, 1.0, hetero=hetero), tables,
                                 np.random.default_rng([seed, pairs, seeds, int(10 * hetero)]))
                for name in worst:
                    p, _ = METHODS[name](draws, seeds)
                    fwer = float(np.mean(holm_rejections(p).any(axis=1)))
                    ratio = float(np.mean(p <= ALPHA / layout.size)) / (ALPHA / layout.size)
                    worst[name] = (max(worst[name][0], fwer), max(worst[name][1], ratio))
        results += [SizeResult(name, layout.size, *w) for name, w in worst.items()]
    return results


@dataclass(frozen=True)
class Table3Truth:
    """Committed Table 3 taken as the truth: rows' run SDs, comparisons' differences and pair terms (fractions)."""

    row_sd: NDArray[np.float64]
    delta: NDArray[np.float64]
    pair_sd: NDArray[np.float64]


def table3_truth(layout: Layout, reports: Path = PROJECT_ROOT / "reports") -> Table3Truth:
    """Table 3's seed SDs, differences and pair SDs as `reports`' table3.csv and table3_tests.csv give them."""
    cells = pd.read_csv(reports / "table3.csv")
    tests = pd.read_csv(reports / "table3_tests.csv")
    names = layout.names
    cells = cells.set_index("model").loc[list(names)]
    row_sd = cells[[f"{b} seed sd" for b in BENCHMARKS]].to_numpy() / 100
    order = {(a, b, bench): i for i, (a, b, bench) in enumerate(zip(tests["a"], tests["b"], tests["benchmark"]))}
    index = [order[(names[a], names[b], bench)] for a, b in layout.comparisons for bench in BENCHMARKS]
    shape = (len(layout.comparisons), layout.benchmarks)
    return Table3Truth(row_sd, tests["delta"].to_numpy()[index].reshape(shape) / 100,
                       tests["pair_sd"].to_numpy()[index].reshape(shape) / 100)


@dataclass(frozen=True)
class PowerResult:
    method: str
    seeds: int
    resolved: float  # mean number of the 42 comparisons with a correct-sign Holm verdict
    wrong_sign: float  # mean number with a wrong-sign verdict
    null_family_wise_error: float  # the same structure with every difference 0


def table3_power(tables: int, seed: int = 1) -> list[PowerResult]:
    layout = table3_layout()
    truth = table3_truth(layout)
    results = []
    for seeds in (3, 5, 10):
        structure = Structure(seeds, share=0.9, rho_rows=0.06, rho_bench=0.45)
        alt = simulate(layout, structure, tables, np.random.default_rng([seed, seeds]), truth.row_sd, truth.delta, truth.pair_sd)
        null = simulate(layout, structure, tables, np.random.default_rng([seed, seeds, 0]), truth.row_sd, None, truth.pair_sd)
        sign = np.sign(truth.delta.reshape(-1))
        for name, method in METHODS.items():
            p, _ = method(alt, seeds)
            rejected = holm_rejections(p)
            right = rejected & (np.sign(alt.delta) == sign)
            p0, _ = method(null, seeds)
            results.append(PowerResult(name, seeds, float(right.sum(axis=1).mean()), float((rejected & ~right).sum(axis=1).mean()),
                                       float(np.mean(holm_rejections(p0).any(axis=1)))))
    return results


def markdown(null: list[NullResult], power: list[PowerResult], sizes: list[SizeResult], tables: int, m: int) -> str:
    mc = math.sqrt(ALPHA * (1 - ALPHA) / tables)
    per = ALPHA / m
    lines = [
        "# Which run-level test keeps a table's family-wise error",
        "",
        f"`python -m bench.verdict_calibration --tables {tables}` on {platform.processor() or platform.machine()}; "
        f"seeded, the same figures on every machine. {tables:,} simulated tables a cell, each shaped like Table 3 "
        f"({m} comparisons: 14 planned row pairs x 3 benchmarks, Holm at {ALPHA}). Nominal: family-wise error <= "
        f"{ALPHA} (Monte Carlo SE {mc:.3f}); per-comparison rate at alpha/m = {per:.5f}. See the module docstring for "
        "the model.",
        "",
        "## Complete null: family-wise error (per-comparison rate at alpha/m / nominal in brackets)",
        "",
        "| seeds | run share | hetero | rho bench | " + " | ".join(METHODS) + " |",
        "|---:|---:|---:|---:|" + "---|" * len(METHODS),
    ]
    keyed = {(r.method, r.seeds, r.share, r.hetero, r.rho_bench): r for r in null}
    for seeds, share, hetero, rho in sorted({(r.seeds, r.share, r.hetero, r.rho_bench) for r in null}):
        cells = []
        for name in METHODS:
            r = keyed[(name, seeds, share, hetero, rho)]
            cells.append(f"{r.family_wise_error:.3f} ({r.rate_at_bonferroni / per:.2f}x; df {r.median_df:.1f})")
        lines.append(f"| {seeds} | {share} | {hetero} | {rho} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Power on Table 3's own differences (committed per-row run SDs, differences and pair terms as the truth)",
        "",
        "Mean number of the 42 comparisons resolved with the right sign, wrong-sign verdicts, and the family-wise "
        "error of the same structure with every difference set to 0.",
        "",
        "| method | " + " | ".join(f"{s} seeds: resolved / wrong / null FWER" for s in (3, 5, 10)) + " |",
        "|---|---|---|---|",
    ]
    for name in METHODS:
        row = [p for p in power if p.method == name]
        lines.append(f"| {name} | " + " | ".join(f"{p.resolved:.1f} / {p.wrong_sign:.2f} / {p.null_family_wise_error:.3f}" for p in row) + " |")
    names = list(dict.fromkeys(r.method for r in sizes))
    lines += [
        "",
        "## Smaller families: k rows against one baseline on 3 benchmarks",
        "",
        "Complete null, no pair term (run share 1), run-variance spread 0, 1 and 1.5; the worst family-wise error and "
        "the worst per-comparison rate at alpha/m (over nominal) over 3, 5 and 10 seeds.",
        "",
        "| comparisons | " + " | ".join(names) + " |",
        "|---:|" + "---|" * len(names),
    ]
    for size in sorted({r.comparisons for r in sizes}):
        cells = [next(r for r in sizes if r.method == n and r.comparisons == size) for n in names]
        lines.append(f"| {size} | " + " | ".join(f"{c.family_wise_error:.3f} ({c.worst_rate_ratio:.2f}x)" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=4000, help="simulated tables per cell")
    args = parser.parse_args()
    null = null_grid(args.tables)
    power = table3_power(args.tables)
    sizes = size_sweep(args.tables)
    layout = table3_layout()
    out = PROJECT_ROOT / "reports" / "verdict_calibration"
    write_text_atomic(out.with_suffix(".json"), json.dumps({
        "tables": args.tables, "null": [asdict(r) for r in null], "power": [asdict(p) for p in power],
        "sizes": [asdict(s) for s in sizes]}, indent=1))
    write_text_atomic(out.with_suffix(".md"), markdown(null, power, sizes, args.tables, layout.size))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
