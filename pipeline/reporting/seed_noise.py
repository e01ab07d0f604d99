"""The seed-noise report: how much a row moves from seed to seed, against how much the finite pair sample moves
it, what pairing runs by seed buys, and how many seeds each unresolved comparison would need."""
from __future__ import annotations

import math

import pandas as pd

from pipeline.core.config import Config
from pipeline.reporting.tables import TableResult, setting
from pipeline.reporting.run_statistics import CellEstimate, RunComparison, pairing_gain


def row_spread(
    frame: pd.DataFrame, per_cell: dict[tuple[str, str], CellEstimate | None], benchmarks: list[str]
) -> str:
    """Per model and benchmark: the seeds' values, their range and SD, and the pair-sampling SD beside it."""
    lines = [
        "| Row | benchmark | per seed | range | run-to-run SD | pair-sampling SD of the mean |",
        "|---|---|---|---:|---:|---:|",
    ]
    for _, row in frame.iterrows():
        for bench in benchmarks:
            estimate = per_cell.get((row["model"], bench))
            if estimate is None:
                continue
            values = [100 * v for v in estimate.seed_values]
            run_sd = f"{100 * estimate.seed_std:.2f}" if estimate.run_variance_known else "n/a (1 seed)"
            lines.append(
                f"| {row['label']} | {bench} | {' / '.join(f'{v:.2f}' for v in values)} | {max(values) - min(values):.2f} | "
                f"{run_sd} | {100 * math.sqrt(estimate.pair_variance):.2f} |"
            )
    return "\n".join(lines) + "\n"


def unresolved(tests: pd.DataFrame, labels: dict[str, str]) -> str:
    """Each comparison without a verdict: its difference, the smallest one the design resolves, the seeds it needs."""
    rows = tests[~tests["verdict"].isin(["A better", "B better"])]
    if rows.empty:
        return "Every comparison of this table is resolved.\n"
    lines = ["| A | B | benchmark | A − B | resolvable now | seeds needed (80% power) |", "|---|---|---|---:|---:|---|"]
    for _, r in rows.iterrows():
        needed = r["seeds_needed"]
        if needed is None or (isinstance(needed, float) and math.isnan(needed)):
            need = "none on this pair set" if r["delta"] != 0 else "no difference measured"
        else:
            need = str(int(needed))
        lines.append(
            f"| {labels[r['a']]} | {labels[r['b']]} | {r['benchmark']} | {r['delta']:+.2f} | {_points(r['mde'])} | {need} |"
        )
    return "\n".join(lines) + "\n"


def _points(mde: float) -> str:
    return "none within 100" if math.isinf(mde) else f"{mde:.2f}"


def pairing_line(found: list[RunComparison]) -> str:
    gain = pairing_gain(found)
    if math.isnan(gain):
        return "Pairing by seed: not measurable (one seed).\n"
    return (
        f"Pairing by seed (common batch order, flips and initial weights): over this table's {len(found)} comparisons, "
        f"the run-to-run variance of a difference is {1 / gain:.2f} of what two independently seeded runs would give "
        f"(var(A) + var(B) over var(A − B) = {gain:.2f}): an unpaired design would need {gain:.1f}x the seeds.\n"
    )


def section(
    title: str, result: TableResult, cells: dict[tuple[str, str], CellEstimate | None], benchmarks: list[str]
) -> str:
    """One table's part of the report: its rows' spread, what pairing bought, what each open comparison needs."""
    return "\n".join([
        f"## {title}", "",
        row_spread(result.frame, cells, benchmarks),
        verdict_part(result),
    ])


def verdict_part(result: TableResult) -> str:
    """What pairing by seed bought, and the seeds each comparison without a verdict would need."""
    return "\n".join([
        pairing_line(result.found),
        "Comparisons without a verdict, and the seeds each would need: the table's own test (moderated t at the "
        "family's level alpha/m, 80% power) with the run variance as estimated now; the pair term does not shrink "
        "with seeds, so some differences no number of seeds resolves on this pair set:", "",
        unresolved(result.tests, result.labels),
    ])


def document(cfg: Config, sections: list[str]) -> str:
    return "\n".join([
        "# Seed noise: run-to-run variance against pair sampling",
        "",
        setting(cfg) + " A seed sets everything random in a training run: the initial weights (`torch.manual_seed` "
        "before the backbone and head are built), the batch order (a permutation per epoch, a function of seed and "
        "epoch) and the horizontal flips (a function of seed and step). Models that share a seed share the batch "
        "order and flips, and start from the same weights where the architecture and class count are the same "
        "(common random numbers). The NS rows start from the N-Softmax model of the same seed. The cleaning "
        "manifest comes from one bootstrap run (the first seed) and is shared by all. The synthetic data and "
        "the pair protocols are fixed by their own seeds in params.yaml.",
        "",
        "Run-to-run SD: the sample SD of one run's accuracy over seeds. Pair-sampling SD of the mean: how much the "
        "mean would move with another sample of pairs of the same protocol. When the first is larger, more seeds "
        "help; when the second is, only more pairs do.",
        "",
        *sections,
    ])
