"""Re-judge committed tables with the current run-level test, from the per-seed figures their CSVs keep.

A test needs only each comparison's sufficient statistics: the mean difference, the run variance of the seed
differences and the pair term, all in `<table>_tests.csv` at full precision, so its verdicts are recomputed
exactly. A cell keeps its committed half width t x se (the cell interval's variance and df did not change), now
on the logit scale as the table stage builds it. Nothing is re-evaluated: the models' per-pair outputs are in the
DVC cache of the machine that made them, not in this repository.

`python -m pipeline.reporting.rejudge [table ...]` rewrites reports/<table>.csv, <table>_tests.csv, the cells, tests and
their explanation in <table>.md (with a list of which earlier verdicts survive), and reports/seed_noise.md.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.reporting import tables, seed_noise
from pipeline.core.atomic_io import write_text_atomic
from pipeline.core.config import PROJECT_ROOT
from pipeline.reporting.run_statistics import CellEstimate, DifferenceSummary, binomial_floor, rate_interval

TABLES = ("table3", "table2", "cleaning", "distill", "facex_heads")
ALPHA = 0.05


def judgements_per_seed(reports: Path) -> dict[str, int]:
    """Pairs (verification) or probes (identification) per benchmark, from the align and protocols reports."""
    found = {name: entry["pairs"] for name, entry in json.loads((reports / "align.json").read_text())["benchmarks"].items()}
    protocols = json.loads((reports / "protocols.json").read_text())["protocols"]
    found |= {name: entry.get("pairs", entry.get("probes")) for name, entry in protocols.items()}
    return found


def _values(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in str(text).split(";")) if isinstance(text, str) and text else ()


def recovered_cell(row: pd.Series, benchmark: str, pairs: int) -> CellEstimate | None:
    """A committed cell on the logit scale: its interval's half width t x se (the committed interval is
    symmetric) mapped by rate_interval, as cell_estimate does. se, df and the pair term are not in the CSV (NaN)."""
    seed_values = tuple(v / 100 for v in _values(row[f"{benchmark} seed values"]))
    if not seed_values:
        return None
    s = len(seed_values)
    if s == 1:
        raise ValueError(f"{row['model']} {benchmark}: one seed; re-judging needs a run variance")
    mean = float(np.mean(seed_values))
    half_width = max(mean - row[f"{benchmark} ci_low"] / 100, binomial_floor(mean, s * pairs, ALPHA))
    low, high = rate_interval(mean, half_width, s * pairs)
    run_variance = float(np.var(seed_values, ddof=1))
    return CellEstimate(mean, low, high, ALPHA, math.nan, math.nan, seed_values, math.sqrt(run_variance), run_variance,
                        math.nan, s, pairs, True)


def recovered_summary(test: pd.Series, a: CellEstimate, b: CellEstimate, pairs: int) -> DifferenceSummary:
    """A committed comparison's sufficient statistics (the CSV's points back to fractions); A's and B's means and
    run variances from their cells."""
    return DifferenceSummary(
        delta=test["delta"] / 100,
        seed_differences=tuple(v / 100 for v in _values(test["seed_differences"])),
        run_variance=(test["run_sd"] / 100) ** 2,
        pair_variance=(test["pair_sd"] / 100) ** 2,
        n_seeds=int(test["seeds"]),
        n_pairs=pairs,
        mean_a=a.mean,
        mean_b=b.mean,
        run_variance_a=a.run_variance,
        run_variance_b=b.run_variance,
        prob_a_beats_b=float(test["prob_a_beats_b"]),
    )


@dataclass(frozen=True)
class Rejudged:
    name: str
    title: str
    result: tables.TableResult
    cells: dict[tuple[str, str], CellEstimate | None]
    earlier: pd.DataFrame  # the committed tests


def rejudge(name: str, reports: Path, alpha: float = ALPHA) -> Rejudged:
    """One table's cells and tests with the current code, from its committed CSVs."""
    frame = pd.read_csv(reports / f"{name}.csv")
    earlier = pd.read_csv(reports / f"{name}_tests.csv")
    if "moderated_run_sd" in earlier:
        raise ValueError(f"{reports / (name + '_tests.csv')} is already judged by the current test: re-judging needs the "
                         "earlier test's files (git checkout them from before the change)")
    document = (reports / f"{name}.md").read_text()
    benchmarks = list(dict.fromkeys(earlier["benchmark"])) or [c for c in frame.columns if f"{c} seed values" in frame]
    pairs = judgements_per_seed(reports)
    cells = {(row["model"], b): recovered_cell(row, b, pairs[b]) for _, row in frame.iterrows() for b in benchmarks}
    for b in benchmarks:
        frame[f"{b} ci_low"] = [100 * cells[(m, b)].low if cells[(m, b)] else math.nan for m in frame["model"]]
        frame[f"{b} ci_high"] = [100 * cells[(m, b)].high if cells[(m, b)] else math.nan for m in frame["model"]]
        frame[f"{b} text"] = [tables.Cell(cells[(m, b)], math.nan, ()).text() for m in frame["model"]]
    keys = [(r["a"], r["b"], r["benchmark"]) for _, r in earlier.iterrows()]
    summaries = [
        recovered_summary(r, cells[(r["a"], r["benchmark"])], cells[(r["b"], r["benchmark"])], pairs[r["benchmark"]])
        for _, r in earlier.iterrows()
    ]
    tests, found = tables.comparison_frame(keys, summaries, alpha)
    labels = dict(zip(frame["model"], frame["label"]))
    title = document.splitlines()[0].removeprefix("# ")
    return Rejudged(name, title, tables.TableResult(frame, tests, found, labels, benchmarks), cells, earlier)


def survivors_markdown(done: Rejudged) -> str:
    """The earlier test's verdicts beside today's, comparison by comparison (only those that had one, or have one)."""

    def decided(verdict: str) -> str:
        return verdict if verdict in ("A better", "B better") else "not resolved"

    lines = ["| A | B | benchmark | A − B | earlier verdict (Welch–Satterthwaite df) | now |", "|---|---|---|---:|---|---|"]
    for (_, before), (_, after) in zip(done.earlier.iterrows(), done.result.tests.iterrows(), strict=True):
        then, now = decided(before["verdict"]), decided(after["verdict"])
        if then != "not resolved" or now != "not resolved":
            lines.append(f"| {done.result.labels[after['a']]} | {done.result.labels[after['b']]} | {after['benchmark']} | "
                         f"{after['delta']:+.2f} | {then} | {now} |")
    if len(lines) == 2:
        return "Neither test resolves any comparison of this table.\n"
    return "\n".join(lines) + "\n"


def _replace_block(text: str, header_start: str, block: str) -> str:
    """Swap the Markdown table whose header line starts with header_start for `block`."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join([*lines[:start], block.rstrip("\n"), *lines[end:]])


def rewrite_document(text: str, done: Rejudged, alpha: float) -> str:
    """The committed document with today's cells, test explanation, tests and the survivors' list."""
    result = done.result
    paper_columns = [c.removeprefix("paper ") for c in result.frame.columns if c.startswith("paper ")]
    text = re.sub(r"brackets: a t interval whose variance adds .*?\(pipeline/run_statistics\.py\)\.",
                  lambda _: f"brackets: {tables.CELL_INTERVAL}", text, flags=re.S)
    text = _replace_block(text, "| Row | " + result.benchmarks[0], tables.markdown(result.frame, result.benchmarks, paper_columns))
    text = re.sub(r"Which differences are real\..*?\n", lambda _: tables.comparisons_paragraph(len(result.tests), alpha) + "\n", text, count=1)
    text = _replace_block(text, "| A | B | benchmark | A − B (points)", tables.comparisons_markdown(result.tests, result.labels))
    return text.rstrip("\n") + "\n\n" + "\n".join([
        "Re-judged on 2026-12-07 from the committed per-seed figures (`python -m pipeline.reporting.rejudge`): the "
        "comparisons' statistics are exact and each cell keeps its half width on the logit scale; the models "
        "were not re-evaluated. Which verdicts of the earlier test (plug-in Welch–Satterthwaite df, which at Holm's "
        "tail claimed a difference in about half of the tables where none exists) survive:",
        "",
        survivors_markdown(done),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="*", default=list(TABLES))
    args = parser.parse_args()
    reports = PROJECT_ROOT / "reports"
    done = [rejudge(name, reports) for name in args.tables]
    for item in done:
        tables.write_csvs(item.result, reports, item.name)
        path = reports / f"{item.name}.md"
        write_text_atomic(path, rewrite_document(path.read_text(), item, ALPHA))
        decided = item.result.tests["verdict"].isin(["A better", "B better"]).sum()
        print(f"{item.name}: {decided} of {len(item.result.tests)} comparisons resolved (earlier {item.earlier['verdict'].isin(['A better', 'B better']).sum()})")
    noise = reports / "seed_noise.md"
    write_text_atomic(noise, rewrite_seed_noise(noise.read_text(), {item.title: item for item in done}))


def rewrite_seed_noise(text: str, done: dict[str, Rejudged]) -> str:
    """Each re-judged table's section of the seed-noise report: the committed spread of its rows (exact figures),
    then today's pairing gain and unresolved comparisons."""
    head, *sections = text.split("\n## ")
    rewritten = [head.rstrip("\n")]
    for section in sections:
        title = section.split("\n")[0]
        if title in done:
            spread = section.split("\nPairing by seed")[0].rstrip("\n")
            section = spread + "\n\n" + seed_noise.verdict_part(done[title].result)
        rewritten.append("## " + section.rstrip("\n"))
    return "\n\n".join(rewritten) + "\n"


if __name__ == "__main__":
    main()
