"""Tables from the evaluation metrics, with the training run as the unit of evidence.

A cell is the mean over seeds with its 95% interval (pipeline.reporting.run_statistics.cell_estimate: run-to-run and
pair-sampling variance); a comparison is paired by seed and by pair, judged with the table's other comparisons
(run_statistics.judge_family: moderated run variances, Holm over the family), with a plain verdict. The published figures stand beside ours for the ordering, not the level.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.atomic_io import atomic_path
from pipeline.core.config import STUDENT, Config, TableConfig
from pipeline.evaluate.record import IdentificationFigures, ModelEvaluation, PairFigures
from pipeline.evaluate.significance import holm_bonferroni
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import recipes
from pipeline.reporting.run_statistics import CellEstimate, DifferenceSummary, RunComparison, cell_estimate, judge_family, summarize, verdict

BENCHMARK_ORDER = ("lfw", "cfp_fp", "agedb")  # LFW-like, CFP-FP-like, AgeDB-like first: the papers' column order
COMPARISON_COLUMNS = [
    "a", "b", "benchmark", "seeds", "delta", "ci_low", "ci_high", "prob_a_beats_b", "p", "df", "p_holm", "verdict",
    "mde", "seeds_needed", "seed_differences", "run_sd", "moderated_run_sd", "pair_sd",
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


def cell(evaluation: ModelEvaluation, pairs: pd.DataFrame, benchmark: str, metric: str, alpha: float) -> Cell:
    # identification has no folds: its cells have no fold SD
    folds = [100 * result.fold_std(metric) for e in evaluation.seeds.values()
             if isinstance(result := e.benchmarks.get(benchmark), PairFigures)]
    seeds, matrix = correctness(pairs, benchmark)
    estimate = cell_estimate(matrix, alpha) if seeds else None
    return Cell(estimate, float(np.mean(folds)) if folds else math.nan, evaluation.diverged_steps())


def table(
    spec: TableConfig, labels: dict[str, str], evaluations: dict[str, ModelEvaluation],
    per_pair: dict[str, pd.DataFrame], benchmarks: list[str], metric: str, alpha: float,
) -> pd.DataFrame:
    """One row per model of `spec`: per benchmark the mean, interval, per-seed values and fold std (accuracy in
    %), then the published figures of the table's paper columns."""
    records = []
    for name, entry in spec.rows.items():
        row: dict = {"model": name, "label": entry.label or labels[name]}
        for bench in benchmarks:
            c = cell(evaluations[name], per_pair[name], bench, metric, alpha)
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
        row["seeds"] = len(evaluations[name].seeds)
        diverged = evaluations[name].diverged_steps()
        row["diverged_at_step"] = diverged[0] if diverged else None
        records.append(row)
    return pd.DataFrame.from_records(records)


def summarize_pair(a_pairs: pd.DataFrame, b_pairs: pd.DataFrame, benchmark: str) -> DifferenceSummary | None:
    """A - B on the seeds both have figures for (paired by seed), or None when they share none."""
    seeds_a, _ = correctness(a_pairs, benchmark)
    seeds_b, _ = correctness(b_pairs, benchmark)
    common = sorted(set(seeds_a) & set(seeds_b))
    if not common:
        return None
    return summarize(correctness(a_pairs, benchmark, common)[1], correctness(b_pairs, benchmark, common)[1])


def comparisons(
    pairs_of_models: list[tuple[str, str]], per_pair: dict[str, pd.DataFrame], benchmarks: list[str], alpha: float
) -> tuple[pd.DataFrame, list[RunComparison]]:
    """Every planned (a, b, benchmark) as a seed-paired test, judged as one family (run_statistics.judge_family:
    moderated run variances, Holm over the family); a verdict for each, its smallest resolvable difference at the
    family's level."""
    planned = [(a, b, bench) for a, b in pairs_of_models for bench in benchmarks]
    summaries = {key: summarize_pair(per_pair[key[0]], per_pair[key[1]], key[2]) for key in planned}
    found_keys = [key for key in planned if summaries[key] is not None]  # a diverged model has no runs to compare
    return comparison_frame(found_keys, [summaries[key] for key in found_keys], alpha)


def comparison_frame(
    keys: list[tuple[str, str, str]], summaries: list[DifferenceSummary], alpha: float
) -> tuple[pd.DataFrame, list[RunComparison]]:
    """The tests CSV of a family: one row per (a, b, benchmark) with its summary judged with the others."""
    found = judge_family(summaries, alpha)
    records = [
        {
            "a": a, "b": b, "benchmark": bench, "seeds": r.n_seeds, "delta": 100 * r.delta,
            "ci_low": 100 * r.low, "ci_high": 100 * r.high, "prob_a_beats_b": r.prob_a_beats_b,
            "p": r.p_value, "df": r.df, "mde": 100 * r.mde, "seeds_needed": r.seeds_needed,
            "seed_differences": ";".join(f"{100 * d:+.2f}" for d in r.seed_differences),
            "run_sd": 100 * math.sqrt(r.run_variance) if r.run_variance_known else math.nan,
            "moderated_run_sd": 100 * math.sqrt(r.moderated_run_variance) if r.run_variance_known else math.nan,
            "pair_sd": 100 * math.sqrt(r.pair_variance),
        }
        for (a, b, bench), r in zip(keys, found, strict=True)
    ]
    frame = pd.DataFrame.from_records(records, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_holm", "verdict")])
    frame["p_holm"] = holm_bonferroni(frame["p"].to_numpy()) if len(frame) else []
    frame["verdict"] = [verdict(c, float(p), alpha) for c, p in zip(found, frame["p_holm"])]
    return frame[COMPARISON_COLUMNS], found


def write_csvs(result: TableResult, reports: Path, table: str) -> None:
    """A table's two CSVs, each written whole or not at all: its rows (without the Markdown cell texts) and its tests."""
    with atomic_path(reports / f"{table}_tests.csv") as staged:
        result.tests.to_csv(staged, index=False)
    with atomic_path(reports / f"{table}.csv") as staged:
        result.frame.drop(columns=[c for c in result.frame.columns if c.endswith(" text")]).to_csv(staged, index=False)


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
        "| A | B | benchmark | A − B (points) | 95% interval | P(run of A > run of B) | df | p (Holm) | verdict |",
        "|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    for _, r in frame.iterrows():
        lines.append(
            f"| {labels[r['a']]} | {labels[r['b']]} | {r['benchmark']} | {r['delta']:+.2f} | "
            f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {r['prob_a_beats_b']:.2f} | {r['df']:.1f} | {r['p_holm']:.2g} | "
            f"{r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def order_benchmarks(names: list[str]) -> list[str]:
    """LFW-like first, then CFP-FP-like, then AgeDB-like (the papers' column order), then anything else."""
    rank = {key: i for i, key in enumerate(BENCHMARK_ORDER)}
    return sorted(names, key=lambda name: (rank.get(paper_key(name), len(rank)), name))


# --- a table from params `tables`, end to end -------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluations:
    """What the evaluate stages wrote for every trained model: the figures the tables are made from."""
    models: dict[str, ModelEvaluation]  # model -> its evaluation (per seed, per benchmark)
    per_pair: dict[str, pd.DataFrame]  # model -> per-pair correctness (seed, benchmark, pair, correct)
    benchmarks: list[str]  # every benchmark scored, in column order
    metric: str  # accuracy_flip or accuracy
    labels: dict[str, str]  # model -> its recipe's label
    cleaned: dict[str, bool]  # model -> trained on the cleaning manifest
    held_out: frozenset[str]  # the held-out protocols of params `protocols` (shown only by tables that list them)

    def shown(self, spec: TableConfig) -> list[str]:
        return shown_benchmarks(spec, self.benchmarks, self.held_out)


def shown_benchmarks(spec: TableConfig, scored: list[str], held_out: frozenset[str] | set[str]) -> list[str]:
    """A table's columns: its `benchmarks` that were scored, or every scored benchmark but the held-out ones."""
    if spec.benchmarks is not None:
        return [b for b in spec.benchmarks if b in scored]
    return [b for b in scored if b not in held_out]


def load_evaluations(cfg: Config, paths: Paths, names: Sequence[str]) -> Evaluations:
    """The evaluations of the models `names` (those a table or a report shows)."""
    models = {n: ModelEvaluation.load(paths.metrics("eval", n)) for n in names}
    all_recipes = recipes(cfg)
    return Evaluations(
        models=models,
        per_pair={n: pd.read_parquet(paths.eval_dir(n) / "pairs.parquet") for n in names},
        benchmarks=order_benchmarks(sorted(set().union(*(m.scored_benchmarks() for m in models.values())))),
        metric="accuracy_flip" if cfg.evaluate.flip else "accuracy",
        labels={n: all_recipes[n].label for n in names},
        cleaned={n: all_recipes[n].cleaned for n in names},
        held_out=frozenset(cfg.protocols),
    )


@dataclass(frozen=True)
class TableResult:
    frame: pd.DataFrame  # one row per model (report.table)
    tests: pd.DataFrame  # the planned comparisons with verdicts (report.comparisons)
    found: list[RunComparison]
    labels: dict[str, str]  # model -> the label this table shows it under
    benchmarks: list[str]  # its columns


def build_table(spec: TableConfig, ev: Evaluations, alpha: float) -> TableResult:
    benchmarks = ev.shown(spec)
    frame = table(spec, ev.labels, ev.models, ev.per_pair, benchmarks, ev.metric, alpha)
    tests, found = comparisons(planned_comparisons(spec), ev.per_pair, benchmarks, alpha)
    labels = {n: entry.label or ev.labels[n] for n, entry in spec.rows.items()}
    return TableResult(frame, tests, found, labels, benchmarks)


def group_gaps(spec: TableConfig, ev: Evaluations) -> pd.DataFrame:
    """Per row, the spread between the groups of `spec.group_gap` (RFW's fairness gap: best minus worst group
    accuracy), seed by seed, then its mean over the seeds all groups were scored for."""
    records = []
    for name, entry in spec.rows.items():
        per_group = {b: dict(zip(*_seed_means(ev.per_pair[name], b))) for b in spec.group_gap}
        seeds = sorted(set.intersection(*(set(v) for v in per_group.values())))
        gaps = [max(per_group[b][s] for b in spec.group_gap) - min(per_group[b][s] for b in spec.group_gap) for s in seeds]
        means = {b: float(np.mean([per_group[b][s] for s in seeds])) if seeds else math.nan for b in spec.group_gap}
        pairs = {b: int((ev.per_pair[name]["benchmark"] == b).sum() / max(len(seeds), 1)) for b in spec.group_gap}
        sd = math.sqrt(np.mean([means[b] * (1 - means[b]) / pairs[b] for b in spec.group_gap])) if seeds else math.nan
        records.append({
            "model": name, "label": entry.label or ev.labels[name], "seeds": len(seeds),
            "gap": 100 * float(np.mean(gaps)) if gaps else math.nan,
            "gap seed values": ";".join(f"{100 * g:.2f}" for g in gaps),
            "noise floor": 100 * expected_range(len(spec.group_gap)) * sd,
            "best group": max(means, key=means.get) if seeds else "", "worst group": min(means, key=means.get) if seeds else "",
        })
    return pd.DataFrame.from_records(records)


def expected_range(k: int, draws: int = 200_000) -> float:
    """E[max - min] of k independent standard normals (the d2 constant of range control charts: 1.128 for k = 2,
    2.059 for 4), by a seeded Monte Carlo: the gap k equal groups show from pair sampling alone, in SDs."""
    samples = np.random.default_rng(0).standard_normal((draws, k))
    return float((samples.max(axis=1) - samples.min(axis=1)).mean())


def _seed_means(pairs: pd.DataFrame, benchmark: str) -> tuple[list[int], list[float]]:
    seeds, matrix = correctness(pairs, benchmark)
    return seeds, [float(row.mean()) for row in matrix]


def gaps_markdown(frame: pd.DataFrame) -> str:
    lines = ["| Row | gap (points): mean over seeds | per seed | noise floor | best group | worst group |",
             "|---|---:|---|---:|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['label']} | {r['gap']:.2f} | {r['gap seed values'].replace(';', ' / ')} | "
                     f"{r['noise floor']:.2f} | {r['best group']} | {r['worst group']} |")
    return "\n".join(lines) + "\n"


CELL_INTERVAL = (
    "a t interval whose variance adds the run-to-run variance over seeds and the sampling variance of the pairs "
    "(Welch–Satterthwaite df), built on the logit scale so that it stays within 0-100 (pipeline/reporting/run_statistics.py)."
)


def comparisons_paragraph(family_size: int, alpha: float) -> str:
    """How a table's comparisons are judged, in words: the paragraph above its tests."""
    return (
        "Which differences are real. The unit is the training run: A − B is the mean over seeds of the per-seed "
        "difference (the two recipes share each seed's batch order, flips and, for the same architecture, initial "
        "weights), tested with a t test whose variance adds the run-to-run variance of that difference and the pairs' "
        "sampling variance. In a table of 24 or more comparisons the run variance is moderated toward the table's own "
        "(empirical Bayes, Smyth 2004: the table lends it at most the seeds' own degrees of freedom; column df), a "
        "smaller table tests on the seeds' S - 1 df alone: the test that keeps the family-wise error at its level "
        "where a table's verdicts are made (docs/statistics.md, reports/verdict_calibration.md); p is "
        f"Holm-adjusted over the {family_size} comparisons of this table. P(run of A > run of B) is the share of "
        f"(A seed, B seed) run pairs in which A scored higher. A verdict needs p (Holm) < {alpha}; otherwise it names "
        "the smallest difference this design resolves at the table's level (80% power), and reports/seed_noise.md "
        "says how many seeds it would take. One seed measures no run-to-run variance and is never judged."
    )


def setting(cfg: Config) -> str:
    """The run's size in one sentence: profile, crop, iterations, batch and seeds."""
    seeds = len(cfg.seeds)
    return (
        f"Profile `{cfg.profile}`, crop {cfg.align.crop_size}x{cfg.align.crop_size}, {cfg.train.iterations} iterations of "
        f"batch {cfg.train.batch_size}, {seeds} seed{'s' if seeds > 1 else ''} ({', '.join(map(str, cfg.seeds))}) per model."
    )


def document(cfg: Config, spec: TableConfig, result: TableResult, ev: Evaluations, cleaning: dict | None) -> str:
    """A table's Markdown: how a cell is made, the table, the planned tests with their verdicts, and for a table
    with a model trained without cleaning (`cleaning`: reports/cleaning.json), what the cleaning removed."""
    level = round(100 * (1 - cfg.evaluate.alpha))
    paper = (
        f"The paper columns are {spec.paper_source}: they set the ordering to compare, not the level, since our "
        "benchmarks are the synthetic protocols." if spec.paper_columns else ""
    )
    lines = [
        f"# {spec.title}",
        "",
        setting(cfg) + " Each cell is the FINAL checkpoint's 10-fold verification accuracy (%) "
        f"({'with' if ev.metric == 'accuracy_flip' else 'without'} the flip test; threshold chosen on the 9 other "
        f"folds){_identification_note(result.benchmarks, ev)}, averaged over the seeds, with its {level}% interval in "
        f"brackets: {CELL_INTERVAL} Per-seed values, interval bounds and the std over folds are in the CSV beside "
        "this file. " + paper,
        "",
        markdown(result.frame, result.benchmarks, list(spec.paper_columns.values())),
    ]
    if STUDENT in spec.rows and cfg.distill.reference_teacher is not None:
        lines += [reference_teacher_note(cfg), ""]
    if spec.group_gap:
        lines += [
            f"Between groups ({', '.join(spec.group_gap)}: identities drawn from differently shifted populations, "
            "the first the training population's): the gap is the best group's accuracy minus the worst's, per seed "
            "(RFW's measure of bias), then averaged. The noise floor is the gap that groups of equal accuracy would "
            "show from the finite pairs alone (the expected range of that many independent accuracies, each with "
            "its binomial SD): a gap near it says nothing about the groups.",
            "",
            gaps_markdown(group_gaps(spec, ev)),
        ]
    if len(result.tests):
        lines += [
            comparisons_paragraph(len(result.tests), cfg.evaluate.alpha),
            "",
            comparisons_markdown(result.tests, result.labels),
        ]
    if cleaning is not None:
        c = cleaning
        lines += [
            f"Cleaning ({c['method']}, threshold {c['threshold']}): kept {c['kept']} of {c['images']} images; "
            f"dropped {c['dropped']}, of which noisy: precision {_number(c['precision'])}, "
            f"recall {_number(c['recall'])} "
            f"against the generator's label-noise ground truth ({c['noisy']} noisy images). One cleaning manifest "
            f"(from the bootstrap of seed {cfg.seeds[0]}) serves every seed: the comparison is conditional on it.",
            "",
        ]
    return "\n".join(lines)


def reference_teacher_note(cfg: Config) -> str:
    """What the student learnt from where distill.reference_teacher names a pretrained teacher (no teacher row)."""
    name = cfg.distill.reference_teacher
    return (
        f"The student's teacher is {cfg.reference.models[name].label} (params reference.models.{name}), a pretrained "
        "model: it is not trained here, so the table has no teacher row (the reference stage scores it). Its "
        "descriptors of the training photos, computed once from the original photos with its own detector and face "
        "chip (data/reference_targets, pipeline/reference/teacher.py), are the student's hint targets (weight "
        f"distill.weight = {cfg.distill.weight}); a photo in which it found no face gives no hint."
    )


def _identification_note(benchmarks: list[str], ev: Evaluations) -> str:
    """How an identification column's cell is made, when the table has one."""
    found = [b for b in benchmarks if any(isinstance(e.benchmarks.get(b), IdentificationFigures)
                                          for m in ev.models.values() for e in m.seeds.values())]
    if not found:
        return ""
    return (f"; {', '.join(found)}: the rank-1 identification rate (%) of the probes against the gallery with every "
            "distractor, a probe being the unit in place of a pair (the curve over distractor counts and TAR@FAR are in "
            "reports/metrics/eval)")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # null in JSON: nothing dropped, or no noise to find
