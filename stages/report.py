"""Stage report: Table 3, Table 2, the cleaning and distillation reports, and the training curves (CSV + PNG)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import report, seed_noise, stage  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.atomic_io import atomic_path, write_text_atomic  # noqa: E402
from pipeline.paths import Paths  # noqa: E402
from pipeline.recipes import recipes, trained_models  # noqa: E402
from pipeline.runs import experiment_of, seed_dir, seed_identity  # noqa: E402
from pipeline.tracking import experiment_addresses, mirror_recipe_metrics  # noqa: E402

MLFLOW_UI = "http://127.0.0.1:5000"


def outputs(cfg: Config) -> list[str]:
    """The files this stage writes, project-relative: dvc.yaml declares exactly these (tests/test_dependencies.py)."""
    per_table = [f"reports/{table}{suffix}" for table in cfg.tables for suffix in (".md", ".csv", "_tests.csv")]
    return [*per_table, "reports/seed_noise.md", "reports/figures/curves.png"]


def run(cfg: Config, paths: Paths) -> None:
    all_recipes = recipes(cfg)
    names = trained_models(cfg)
    reports = {n: json.loads(paths.metrics("eval", n).read_text()) for n in names}
    per_pair = {n: pd.read_parquet(paths.eval_dir(n) / "pairs.parquet") for n in names}
    benchmarks = report.order_benchmarks(
        sorted({b for r in reports.values() for e in r["seeds"].values() for b in e["benchmarks"]})
    )
    metric = "accuracy_flip" if cfg.evaluate.flip else "accuracy"
    labels = {n: all_recipes[n].label for n in names}
    alpha = cfg.evaluate.alpha

    cells = {(n, b): report.cell(reports[n], per_pair[n], b, metric, alpha).estimate for n in names for b in benchmarks}
    noise_sections = []
    for table_name, spec in cfg.tables.items():
        frame = report.table(spec, labels, reports, per_pair, benchmarks, metric, alpha)
        tests, found = report.comparisons(report.planned_comparisons(spec), per_pair, benchmarks, alpha)
        shown = {n: entry.label or labels[n] for n, entry in spec.rows.items()}
        uncleaned = any(not all_recipes[n].cleaned for n in spec.rows)
        cleaning = json.loads((paths.reports / "cleaning.json").read_text()) if uncleaned else None
        text = _document(cfg, spec, frame, tests, benchmarks, shown, metric, cleaning)
        write_text_atomic(paths.reports / f"{table_name}.md", text)
        with atomic_path(paths.reports / f"{table_name}_tests.csv") as staged:
            tests.to_csv(staged, index=False)
        with atomic_path(paths.reports / f"{table_name}.csv") as staged:
            frame.drop(columns=[c for c in frame.columns if c.endswith(" text")]).to_csv(staged, index=False)
        noise_sections += [
            f"## {spec.title}", "",
            seed_noise.row_spread(frame, cells, benchmarks),
            seed_noise.pairing_line(found),
            "Comparisons without a verdict, and the seeds each would need (normal approximation; the pair term does "
            "not shrink with seeds):", "",
            seed_noise.unresolved(tests, shown),
        ]
    write_text_atomic(paths.reports / "seed_noise.md", _seed_noise_document(cfg, noise_sections))
    _mirror(cfg, paths, names, all_recipes, cells, benchmarks)
    _curves(cfg, paths, names, labels)


def _mirror(cfg, paths, names, all_recipes, cells, benchmarks) -> None:
    """Each recipe's mean, interval and seed count on its MLflow parent run; each table's address in the log."""
    for name in names:
        identity = seed_identity(paths, name, cfg.seeds[0])
        if identity is None:
            continue
        metrics = {"seeds": float(len(cfg.seeds))}
        for bench in benchmarks:
            estimate = cells[(name, bench)]
            if estimate is not None:
                metrics.update({f"{bench}.mean": estimate.mean, f"{bench}.ci_low": estimate.low,
                                f"{bench}.ci_high": estimate.high})
        recipe = all_recipes[name]
        mirror_recipe_metrics(cfg.tracking, paths.root, experiment_of(cfg, name), name, recipe.label, identity, metrics)
    experiments = sorted({experiment_of(cfg, n) for n in names} & set(cfg.tables))
    for experiment, address in experiment_addresses(cfg.tracking, paths.root, experiments, MLFLOW_UI).items():
        print(f"MLflow {experiment}: {address}  (after `mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000`)")


def _setting(cfg: Config) -> str:
    seeds = len(cfg.seeds)
    return (
        f"Profile `{cfg.profile}`, crop {cfg.align.crop_size}x{cfg.align.crop_size}, {cfg.train.iterations} iterations of "
        f"batch {cfg.train.batch_size}, {seeds} seed{'s' if seeds > 1 else ''} ({', '.join(map(str, cfg.seeds))}) per model."
    )


def _document(cfg, spec, frame, tests, benchmarks, labels, metric, cleaning) -> str:
    """A table's Markdown: how a cell is made, the table, the planned tests with their verdicts, and for a table
    with a model trained without cleaning, what the cleaning removed."""
    level = round(100 * (1 - cfg.evaluate.alpha))
    paper = (
        f"The paper columns are {spec.paper_source}: they set the ordering to compare, not the level, since our "
        "benchmarks are the synthetic protocols." if spec.paper_columns else ""
    )
    lines = [
        f"# {spec.title}",
        "",
        _setting(cfg) + " Each cell is the FINAL checkpoint's 10-fold verification accuracy (%) "
        f"({'with' if metric == 'accuracy_flip' else 'without'} the flip test; threshold chosen on the 9 other folds), "
        f"averaged over the seeds, with its {level}% interval in brackets: a t interval whose variance adds the "
        "run-to-run variance over seeds and the sampling variance of the pairs (pipeline/run_statistics.py). "
        "Per-seed values, interval bounds and the std over folds are in the CSV beside this file. " + paper,
        "",
        report.markdown(frame, benchmarks, list(spec.paper_columns.values())),
    ]
    if len(tests):
        lines += [
            "Which differences are real. The unit is the training run: A − B is the mean over seeds of the per-seed "
            "difference (the two recipes share each seed's batch order, flips and, for the same architecture, initial "
            "weights), tested with a t test whose variance adds the run-to-run variance of that difference and the "
            f"pairs' sampling variance; p is Holm-adjusted over the {len(tests)} comparisons of this table. "
            "P(run of A > run of B) is the share of (A seed, B seed) run pairs in which A scored higher. "
            f"A verdict needs p (Holm) < {cfg.evaluate.alpha}; otherwise it names the smallest difference this design "
            "resolves (80% power), and reports/seed_noise.md says how many seeds it would take.",
            "",
            report.comparisons_markdown(tests, labels),
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


def _seed_noise_document(cfg: Config, sections: list[str]) -> str:
    return "\n".join([
        "# Seed noise: run-to-run variance against pair sampling",
        "",
        _setting(cfg) + " A seed sets everything random in a training run: the initial weights (`torch.manual_seed` "
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


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # null in JSON: nothing dropped, or no noise to find


def _curves(cfg: Config, paths: Paths, names: list[str], labels: dict[str, str]) -> None:
    """Protocol accuracy during training (the paper's Figure 4), seed 0: one CSV per benchmark and one PNG."""
    seed = cfg.seeds[0]
    frames = {}
    for name in names:
        curve = json.loads((seed_dir(paths, name, seed) / "train.json").read_text()).get("curve", [])
        if curve:
            frames[name] = pd.DataFrame(curve).set_index("step")
    if not frames:
        return
    benchmarks = sorted({c.removeprefix("curve_") for f in frames.values() for c in f.columns})
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(6 * len(benchmarks), 4.5), squeeze=False)
    for axis, bench in zip(axes[0], benchmarks):
        wide = pd.DataFrame({name: f[f"curve_{bench}"] for name, f in frames.items() if f"curve_{bench}" in f})
        with atomic_path(paths.reports / "curves" / f"{bench}.csv") as staged:
            (100 * wide).rename_axis("step").to_csv(staged)
        for name in wide.columns:
            axis.plot(wide.index, 100 * wide[name], label=labels[name], linewidth=1.2)
        axis.set_title(f"{bench} during training (curves only)")
        axis.set_xlabel("iteration")
        axis.set_ylabel("10-fold accuracy (%)")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_path(paths.reports / "figures" / "curves.png") as staged:
        figure.savefig(staged, dpi=110, format="png")
    plt.close(figure)


def main() -> None:
    stage.main("report", run)


if __name__ == "__main__":
    main()
