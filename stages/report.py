"""Stage report: Table 3, Table 2, the cleaning and distillation reports, and the training curves (CSV + PNG)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import report, stage  # noqa: E402
from pipeline.config import Config  # noqa: E402
from pipeline.io import atomic_path, write_text_atomic  # noqa: E402
from pipeline.paths import Paths  # noqa: E402
from pipeline.recipes import STUDENT, recipes, trained_models  # noqa: E402
from pipeline.runs import seed_dir  # noqa: E402

TITLES = {
    "table3": "Table 3 — verification accuracy (%) of the loss functions (AirFace paper, Table 3)",
    "table2": "Table 2 — weight decay (AirFace paper, Table 2; ArcFace m=0.5 after N-Softmax pre-training)",
    "distill": "Distillation — MobileFaceNet student with and without a teacher's embedding hints",
    "cleaning": "Cleaning — the same recipe trained with and without the cleaning manifest",
}


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

    tables: dict[str, list[str]] = {}
    for name in names:
        for t in all_recipes[name].tables:
            tables.setdefault(t, []).append(name)
    if STUDENT in names:
        tables["distill"] = [cfg.distill.student_row, "teacher", STUDENT]
    uncleaned = [n for n in names if not all_recipes[n].cleaned]
    if uncleaned:
        twins = [n for n in names if all_recipes[n].cleaned and _same_recipe(all_recipes[n], all_recipes[uncleaned[0]])]
        tables["cleaning"] = twins[:1] + uncleaned

    for table_name, members in tables.items():
        frame = report.table(members, all_recipes, reports, benchmarks, metric)
        pairs = report.planned_comparisons(all_recipes, members) if table_name == "table3" else _consecutive(members)
        tests = report.comparisons(pairs, per_pair, benchmarks)
        text = _document(cfg, table_name, frame, tests, benchmarks, labels, metric, paths)
        write_text_atomic(paths.reports / f"{table_name}.md", text)
        if len(tests):
            with atomic_path(paths.reports / f"{table_name}_tests.csv") as staged:
                tests.to_csv(staged, index=False)
        with atomic_path(paths.reports / f"{table_name}.csv") as staged:
            frame.drop(columns=[c for c in frame.columns if c.endswith(" text")]).to_csv(staged, index=False)
    _curves(cfg, paths, names, labels)


def _same_recipe(a, b) -> bool:
    return (a.head, a.margins, a.init, a.backbone) == (b.head, b.margins, b.init, b.backbone)


def _consecutive(members: list[str]) -> list[tuple[str, str]]:
    return [(members[i], members[0]) for i in range(1, len(members))]


def _document(cfg, table_name, frame, tests, benchmarks, labels, metric, paths) -> str:
    seeds = len(cfg.seeds)
    lines = [
        f"# {TITLES.get(table_name, table_name)}",
        "",
        f"Profile `{cfg.profile}`, crop {cfg.align.crop_size}x{cfg.align.crop_size}, {cfg.train.iterations} iterations of "
        f"batch {cfg.train.batch_size}, {seeds} seed{'s' if seeds > 1 else ''} ({', '.join(map(str, cfg.seeds))}). "
        f"Figures are the FINAL checkpoint's 10-fold verification accuracy (%) "
        f"({'with' if metric == 'accuracy_flip' else 'without'} the flip test; threshold chosen on the 9 other folds), "
        + ("mean ± sample std over seeds." if seeds > 1 else "one seed: the ± is the std over the 10 folds, not over seeds.")
        + " The paper's columns are its published figures on real LFW / CFP-FP / AgeDB-30 (CASIA-WebFace training): "
        "they set the ordering to compare, not the level, since our benchmarks are the synthetic protocols.",
        "",
        report.markdown(frame, benchmarks, seeds),
    ]
    if len(tests):
        lines += [
            f"Which differences are real: A − B in accuracy points on the same pairs, McNemar's exact test (pooled over "
            f"seeds), p Holm-adjusted over the {len(tests)} tests of this table; * marks p < {cfg.evaluate.alpha}. "
            "Each row's per-pair tallies are in the CSV beside this file.",
            "",
            report.comparisons_markdown(tests, labels, benchmarks, cfg.evaluate.alpha),
        ]
    if table_name == "cleaning":
        clean = json.loads((paths.reports / "cleaning.json").read_text())
        lines += [
            f"Cleaning ({clean['method']}, threshold {clean['threshold']}): kept {clean['kept']} of {clean['images']} images; "
            f"dropped {clean['dropped']}, of which noisy: precision {_number(clean['precision'])}, "
            f"recall {_number(clean['recall'])} "
            f"against the generator's label-noise ground truth ({clean['noisy']} noisy images).",
            "",
        ]
    return "\n".join(lines)


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
