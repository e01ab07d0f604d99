"""Tables from the evaluation metrics: each row's accuracy per benchmark beside the paper's, and which
differences are real by a paired test on the same pairs (Holm-adjusted over the table's comparisons)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.evaluate.significance import holm_bonferroni, mcnemar_test, mean_std_over_seeds
from pipeline.recipes import PRETRAIN, Recipe

PAPER_COLUMNS = {"lfw": "LFW", "cfp_fp": "CFP-FP", "agedb": "AgeDB"}


def paper_key(benchmark: str) -> str:
    """synth-cfp-fp -> cfp_fp, agedb_30 -> agedb: which published column a benchmark stands beside."""
    key = benchmark.removeprefix("synth-").replace("-", "_")
    return "agedb" if key.startswith("agedb") else key


@dataclass(frozen=True)
class Cell:
    mean: float  # accuracy in %, mean over seeds
    seed_std: float  # sample std over seeds (NaN for one seed)
    fold_std: float  # mean over seeds of the std over the 10 folds
    seeds: int

    def text(self) -> str:
        if np.isnan(self.mean):
            return "n/a"
        spread = f" ± {self.seed_std:.2f}" if self.seeds > 1 else f" (±{self.fold_std:.2f} folds)"
        return f"{self.mean:.2f}{spread}"


def cell(report: dict, benchmark: str, metric: str) -> Cell:
    values, folds = [], []
    for entry in report["seeds"].values():
        metrics = entry["benchmarks"].get(benchmark)
        if metrics is not None:
            values.append(100 * metrics[metric])
            folds.append(100 * metrics[f"{metric}_std"])
    mean, std, n = mean_std_over_seeds(values) if values else (float("nan"), float("nan"), 0)
    return Cell(mean, std, float(np.mean(folds)) if folds else float("nan"), n)


def diverged(report: dict) -> list[int]:
    return [e["diverged_at_step"] for e in report["seeds"].values() if e["diverged_at_step"] is not None]


def table(
    names: list[str], recipes: dict[str, Recipe], reports: dict[str, dict], benchmarks: list[str], metric: str
) -> pd.DataFrame:
    records = []
    for name in names:
        report = reports[name]
        steps = diverged(report)
        row = {"model": name, "label": recipes[name].label}
        for bench in benchmarks:
            c = cell(report, bench, metric)
            row[bench] = c.mean
            row[f"{bench} ±"] = c.seed_std if c.seeds > 1 else c.fold_std
            row[f"{bench} text"] = c.text() if not steps else f"diverged at step {steps[0]}"
        for key in PAPER_COLUMNS:
            row[f"paper {PAPER_COLUMNS[key]}"] = recipes[name].paper.get(key, np.nan)
        row["seeds"] = len(report["seeds"])
        row["diverged_at_step"] = steps[0] if steps else None
        records.append(row)
    return pd.DataFrame.from_records(records)


def pooled_correct(pairs: pd.DataFrame, benchmark: str) -> np.ndarray:
    """Per-pair correctness over all seeds, in (seed, pair) order, so two models pair up pair by pair."""
    chosen = pairs[pairs["benchmark"] == benchmark].sort_values(["seed", "pair"])
    return chosen["correct"].to_numpy(bool)


def comparisons(pairs_of_models: list[tuple[str, str]], per_pair: dict[str, pd.DataFrame], benchmarks: list[str]) -> pd.DataFrame:
    """McNemar's exact test for each (a, b, benchmark) on the same pairs and seeds; Holm over the whole family."""
    records = []
    for a, b in pairs_of_models:
        for bench in benchmarks:
            ca, cb = pooled_correct(per_pair[a], bench), pooled_correct(per_pair[b], bench)
            if len(ca) == 0 or len(ca) != len(cb):
                continue  # a diverged model has no pairs to compare
            test = mcnemar_test(ca, cb)
            records.append(
                {"a": a, "b": b, "benchmark": bench, "delta": 100 * (ca.mean() - cb.mean()),
                 "a_only": test.b, "b_only": test.c, "p": test.p_value}
            )
    frame = pd.DataFrame.from_records(records, columns=["a", "b", "benchmark", "delta", "a_only", "b_only", "p"])
    frame["p_holm"] = holm_bonferroni(frame["p"].to_numpy()) if len(frame) else []
    return frame


def planned_comparisons(recipes: dict[str, Recipe], names: list[str]) -> list[tuple[str, str]]:
    """The paper's claims as tests: every margin row against N-Softmax, and Li-ArcFace against ArcFace at the
    same margin and initialisation."""
    found = [(name, PRETRAIN) for name in names if name != PRETRAIN and PRETRAIN in names]
    for a in names:
        for b in names:
            ra, rb = recipes[a], recipes[b]
            if (ra.head, rb.head) == ("li_arcface", "arcface") and ra.margins == rb.margins and ra.init == rb.init \
                    and ra.weight_decay == rb.weight_decay and ra.embedding_wd_mult == rb.embedding_wd_mult:
                found.append((a, b))
    return found


def markdown(frame: pd.DataFrame, benchmarks: list[str], seeds: int) -> str:
    heads = ["Row"] + benchmarks + [f"paper {v}" for v in PAPER_COLUMNS.values()]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, row in frame.iterrows():
        paper = [("" if np.isnan(row[f"paper {v}"]) else f"{row[f'paper {v}']:.3f}") for v in PAPER_COLUMNS.values()]
        lines.append("| " + " | ".join([row["label"]] + [row[f"{b} text"] for b in benchmarks] + paper) + " |")
    return "\n".join(lines) + "\n"


def comparisons_markdown(frame: pd.DataFrame, labels: dict[str, str], benchmarks: list[str], alpha: float) -> str:
    """One line per comparison: A − B in points per benchmark with the Holm-adjusted p; * where real at alpha."""
    lines = ["| A | B | " + " | ".join(benchmarks) + " |", "|---|---|" + "---|" * len(benchmarks)]
    for (a, b), group in frame.groupby(["a", "b"], sort=False):
        cells = []
        for bench in benchmarks:
            found = group[group["benchmark"] == bench]
            if found.empty:
                cells.append("")
                continue
            r = found.iloc[0]
            mark = " *" if r["p_holm"] < alpha else ""
            cells.append(f"{r['delta']:+.2f} (p={r['p_holm']:.2g}){mark}")
        lines.append(f"| {labels[a]} | {labels[b]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def order_benchmarks(names: list[str]) -> list[str]:
    """LFW-like first, then CFP-FP-like, then AgeDB-like (the paper's column order), then anything else."""
    rank = {key: i for i, key in enumerate(PAPER_COLUMNS)}
    return sorted(names, key=lambda name: (rank.get(paper_key(name), len(rank)), name))
