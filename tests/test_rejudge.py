"""Re-judging from a tests CSV gives what the table stage gives from the per-pair outputs."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from pipeline.reporting import tables
from pipeline.reporting.rejudge import recovered_summary
from pipeline.reporting.run_statistics import cell_estimate

BENCHMARKS = ["synth-lfw", "synth-cfp-fp", "synth-agedb"]


def _per_pair(rng: np.random.Generator, skill: float, seeds: int = 3, pairs: int = 400) -> pd.DataFrame:
    """Per-pair correctness of one model (seed, benchmark, pair, correct), pair difficulty shared by all models."""
    difficulty = np.random.default_rng(0).normal(1.5, 1.2, (len(BENCHMARKS), pairs))
    rows = []
    for s in range(seeds):
        run = rng.normal(0, 0.15)
        for b, bench in enumerate(BENCHMARKS):
            p = 1 / (1 + np.exp(-(difficulty[b] + skill + run)))
            rows += [(s, bench, j, bool(c)) for j, c in enumerate(rng.random(pairs) < p)]
    return pd.DataFrame(rows, columns=["seed", "benchmark", "pair", "correct"])


@pytest.mark.parametrize("rows", [3, 10])  # a family of 6 lends no prior; one of 27 does
def test_tests_csv_carries_everything_the_test_needs(rows: int) -> None:
    rng = np.random.default_rng(rows)
    per_pair = {f"m{i}": _per_pair(rng, 0.1 * i) for i in range(rows)}
    plan = [(f"m{i}", "m0") for i in range(1, rows)]
    stage, _ = tables.comparisons(plan, per_pair, BENCHMARKS, 0.05)
    written = pd.read_csv(io.StringIO(stage.to_csv(index=False)))  # what a committed CSV keeps
    cells = {(m, b): cell_estimate(tables.correctness(per_pair[m], b)[1]) for m in per_pair for b in BENCHMARKS}
    summaries = [recovered_summary(r, cells[(r["a"], r["benchmark"])], cells[(r["b"], r["benchmark"])], 400)
                 for _, r in written.iterrows()]
    keys = [(r["a"], r["b"], r["benchmark"]) for _, r in written.iterrows()]
    again, found = tables.comparison_frame(keys, summaries, 0.05)
    for column in ("delta", "ci_low", "ci_high", "p", "df", "p_holm", "mde", "moderated_run_sd"):
        np.testing.assert_allclose(again[column], stage[column], rtol=1e-9, err_msg=column)
    assert list(again["verdict"]) == list(stage["verdict"])
    assert list(again["seeds_needed"].fillna(-1)) == list(stage["seeds_needed"].fillna(-1))
    assert (again["df"] == (2.0 if rows == 3 else again["df"].iloc[0])).all() and (rows == 3 or again["df"].iloc[0] > 2)
