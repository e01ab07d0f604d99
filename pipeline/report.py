"""Tables from the evaluation metrics, with the training run as the unit of evidence.

A cell is the mean over seeds with its 95% interval (pipeline.run_statistics.cell_estimate: run-to-run and
pair-sampling variance); a comparison is paired by seed and by pair (compare_runs), Holm-adjusted over the
table's family, with a plain verdict. The published figures stand beside ours for the ordering, not the level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import TableConfig
from pipeline.evaluate.significance import holm_bonferroni
from pipeline.run_statistics import CellEstimate, RunComparison, cell_estimate, compare_runs, verdict

BENCHMARK_ORDER = ("lfw", "cfp_fp", "agedb")  # LFW-like, CFP-FP-like, AgeDB-like first: the papers' column order
COMPARISON_COLUMNS = [
    "a", "b", "benchmark", "seeds", "delta", "ci_low", "ci_high", "prob_a_beats_b", "p", "p_holm", "verdict",
    "mde", "seeds_needed", "seed_differences", "run_sd", "pair_sd",
]


def paper_key(benchmark: str) -> str:
    """synth-cfp-fp -> cfp_fp, agedb_30 -> agedb: which published column a benchmark stands beside."""
    key = benchmark.removeprefix("synth-").replace("-", "_")
    return "agedb" if key.startswith("agedb") else key


def correctness(pairs: pd.DataFrame, benchmark: str, seeds: list[int] | None = None) -> tuple[list[int], np.ndarray]:
    """The seeds found (or asked for) and their per-pair correctness on `benchmark`, one row per seed, pairs in
    protocol order: the matrix the seed-level statistics take. A diverged seed has no pairs and no row."""
    chosen = pairs[pairs["benchmark"] == benchmark]
    found = sorted(int(s) for s in chosen["seed"].unique())
    keep = [s for s in found if seeds is None or s in seeds]
    rows = [chosen[chosen["seed"] == s].sort_values("pair")["correct"].to_numpy(bool) for s in keep]
    return keep, np.stack(rows) if rows else np.zeros((0, 0), bool)


@dataclass(frozen=True)
class Cell:
    estimate: CellEstimate | None  # None: no seed has figures (every seed diverged)
    fold_std: float  # mean over seeds of the std over the folds (points)
    diverged: tuple[int, ...]  # the steps at which seeds diverged

    def text(self) -> str:
        if self.estimate is None:
            return f"diverged at step {self.diverged[0]}" if self.diverged else "n/a"
        e = self.estimate
        if e.run_variance_known:
            text = f"{100 * e.mean:.2f} [{100 * e.low:.2f}, {100 * e.high:.2f}]"
        else:  # one seed: no run-to-run variance to put in the interval
            text = f"{100 * e.mean:.2f} [{100 * e.low:.2f}, {100 * e.high:.2f}] (1 seed: pairs only)"
        return text + (f" ({len(self.diverged)} seed(s) diverged)" if self.diverged else "")


def cell(report: dict, pairs: pd.DataFrame, benchmark: str, metric: str, alpha: float) -> Cell:
    folds = [100 * e["benchmarks"][benchmark][f"{metric}_std"] for e in report["seeds"].values() if benchmark in e["benchmarks"]]
    diverged = tuple(e["diverged_at_step"] for e in report["seeds"].values() if e["diverged_at_step"] is not None)
    seeds, matrix = correctness(pairs, benchmark)
    estimate = cell_estimate(matrix, alpha) if seeds else None
    return Cell(estimate, float(np.mean(folds)) if folds else math.nan, diverged)


def table(
    spec: TableConfig, labels: dict[str, str], reports: dict[str, dict], per_pair: dict[str, pd.DataFrame],
    benchmarks: list[str], metric: str, alpha: float,
) -> pd.DataFrame:
    """One row per model of `spec`: per benchmark the mean, interval, per-seed values and fold std (accuracy in
    %), then the published figures of the table's paper columns."""
    records = []
    for name, entry in spec.rows.items():
        row: dict = {"model": name, "label": entry.label or labels[name]}
        for bench in benchmarks:
            c = cell(reports[name], per_pair[name], bench, metric, alpha)
            e = c.estimate
            row[bench] = 100 * e.mean if e else math.nan
            row[f"{bench} ci_low"] = 100 * e.low if e else math.nan
            row[f"{bench} ci_high"] = 100 * e.high if e else math.nan
            row[f"{bench} seed values"] = ";".join(f"{100 * v:.2f}" for v in e.seed_values) if e else ""
            row[f"{bench} seed sd"] = 100 * e.seed_std if e else math.nan
            row[f"{bench} fold sd"] = c.fold_std
            row[f"{bench} text"] = c.text()
        for key, column in spec.paper_columns.items():
            row[f"paper {column}"] = entry.paper.get(key, np.nan)
        row["seeds"] = len(reports[name]["seeds"])
        diverged = [e["diverged_at_step"] for e in reports[name]["seeds"].values() if e["diverged_at_step"] is not None]
        row["diverged_at_step"] = diverged[0] if diverged else None
        records.append(row)
    return pd.DataFrame.from_records(records)


def compare(
    a_pairs: pd.DataFrame, b_pairs: pd.DataFrame, benchmark: str, alpha: float, family_size: int
) -> RunComparison | None:
    """A against B on the seeds both have figures for (paired by seed), or None when they share none."""
    seeds_a, _ = correctness(a_pairs, benchmark)
    seeds_b, _ = correctness(b_pairs, benchmark)
    common = sorted(set(seeds_a) & set(seeds_b))
    if not common:
        return None
    a, b = correctness(a_pairs, benchmark, common)[1], correctness(b_pairs, benchmark, common)[1]
    return compare_runs(a, b, alpha, family_size=family_size)


def comparisons(
    pairs_of_models: list[tuple[str, str]], per_pair: dict[str, pd.DataFrame], benchmarks: list[str], alpha: float
) -> tuple[pd.DataFrame, list[RunComparison]]:
    """Every planned (a, b, benchmark) as a seed-paired test; Holm over the whole family; a verdict for each, whose
    smallest resolvable difference is at the family's level."""
    records, found = [], []
    family_size = len(pairs_of_models) * len(benchmarks)
    for a, b in pairs_of_models:
        for bench in benchmarks:
            result = compare(per_pair[a], per_pair[b], bench, alpha, family_size)
            if result is None:
                continue  # a diverged model has no runs to compare
            found.append(result)
            records.append({
                "a": a, "b": b, "benchmark": bench, "seeds": result.n_seeds, "delta": 100 * result.delta,
                "ci_low": 100 * result.low, "ci_high": 100 * result.high, "prob_a_beats_b": result.prob_a_beats_b,
                "p": result.p_value, "mde": 100 * result.mde, "seeds_needed": result.seeds_needed,
                "seed_differences": ";".join(f"{100 * d:+.2f}" for d in result.seed_differences),
                "run_sd": 100 * math.sqrt(result.run_variance) if result.run_variance_known else math.nan,
                "pair_sd": 100 * math.sqrt(result.pair_variance),
            })
    frame = pd.DataFrame.from_records(records, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_holm", "verdict")])
    frame["p_holm"] = holm_bonferroni(frame["p"].to_numpy()) if len(frame) else []
    frame["verdict"] = [verdict(c, float(p), alpha) for c, p in zip(found, frame["p_holm"])]
    return frame[COMPARISON_COLUMNS], found


def planned_comparisons(spec: TableConfig) -> list[tuple[str, str]]:
    """The table's planned tests as (A, B): every other row against the baseline, then the listed pairs."""
    against_baseline = [(name, spec.baseline) for name in spec.rows if spec.baseline and name != spec.baseline]
    return list(dict.fromkeys([*against_baseline, *(tuple(pair) for pair in spec.compare)]))


def markdown(frame: pd.DataFrame, benchmarks: list[str], paper_columns: list[str]) -> str:
    heads = ["Row"] + benchmarks + [f"paper {v}" for v in paper_columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, row in frame.iterrows():
        paper = [("" if np.isnan(row[f"paper {v}"]) else f"{row[f'paper {v}']:.3f}") for v in paper_columns]
        lines.append("| " + " | ".join([row["label"]] + [row[f"{b} text"] for b in benchmarks] + paper) + " |")
    return "\n".join(lines) + "\n"


def comparisons_markdown(frame: pd.DataFrame, labels: dict[str, str]) -> str:
    """One line per comparison: A − B in points with its interval, P(a run of A beats a run of B), Holm's p, verdict."""
    lines = [
        "| A | B | benchmark | A − B (points) | 95% interval | P(run of A > run of B) | p (Holm) | verdict |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for _, r in frame.iterrows():
        lines.append(
            f"| {labels[r['a']]} | {labels[r['b']]} | {r['benchmark']} | {r['delta']:+.2f} | "
            f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['prob_a_beats_b']:.2f} | {r['p_holm']:.2g} | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def order_benchmarks(names: list[str]) -> list[str]:
    """LFW-like first, then CFP-FP-like, then AgeDB-like (the papers' column order), then anything else."""
    rank = {key: i for i, key in enumerate(BENCHMARK_ORDER)}
    return sorted(names, key=lambda name: (rank.get(paper_key(name), len(rank)), name))
