"""Stage report: what spans the tables of a scope (the tables themselves are stage `table`, one per table): the
seed-noise report, each recipe's mean and interval mirrored on its MLflow run, and the training curves (CSV + PNG).
Scope `default`: params `tables` (dvc.yaml; reports/); `extra`: params `extra_tables` (extra/dvc.yaml; reports/extra/)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.reporting import tables, seed_noise  # noqa: E402

from pipeline.core import stage
from pipeline.core.atomic_io import atomic_path, write_text_atomic  # noqa: E402
from pipeline.core.config import Config  # noqa: E402
from pipeline.core.paths import Paths  # noqa: E402
from pipeline.experiment.runs import experiment_of, seed_dir, seed_identity  # noqa: E402
from pipeline.core.tracking import experiment_addresses, mirror_recipe_metrics  # noqa: E402
from stages.table import evaluation_files  # noqa: E402

MLFLOW_UI = "http://127.0.0.1:5000"
SCOPES = ("default", "extra")


def _folder(scope: str) -> str:
    """A scope's report folder, project-relative: reports for the default run, reports/extra for the other tables."""
    return "reports" if scope == "default" else "reports/extra"


def output_dir(paths: Paths, scope: str) -> Path:
    """Where a scope's report goes."""
    return paths.root / _folder(scope)


def outputs(scope: str) -> list[str]:
    """The files this stage writes for `scope`, project-relative (and the curves' CSVs, declared as plots)."""
    return [f"{_folder(scope)}/seed_noise.md", f"{_folder(scope)}/figures/curves.png"]


def scope_tables(cfg: Config, scope: str) -> list[str]:
    """The tables of `scope`: params `tables` (default) or `extra_tables` (extra)."""
    return [t for t in cfg.tables if (t in cfg.default_tables) == (scope == "default")]


def run(cfg: Config, paths: Paths, scope: str) -> None:
    shown = scope_tables(cfg, scope)
    names = list(dict.fromkeys(model for table in shown for model in cfg.tables[table].rows))
    evaluations = stage.read_inputs(paths, evaluation_files(paths, names),
                                    lambda: tables.load_evaluations(cfg, paths, names))
    benchmarks, alpha, out = evaluations.benchmarks, cfg.evaluate.alpha, output_dir(paths, scope)
    cells = {
        (n, b): tables.cell(evaluations.models[n], evaluations.per_pair[n], b, evaluations.metric, alpha).estimate
        for n in names for b in benchmarks
    }
    results = [(spec, tables.build_table(spec, evaluations, alpha)) for spec in (cfg.tables[t] for t in shown)]
    sections = [seed_noise.section(spec.title, result, cells, result.benchmarks) for spec, result in results]
    write_text_atomic(out / "seed_noise.md", seed_noise.document(cfg, sections))
    _mirror(cfg, paths, evaluations.labels, cells, benchmarks, shown)
    _curves(cfg, paths, out, names, evaluations.labels)


def _mirror(cfg, paths, labels, cells, benchmarks, shown: list[str]) -> None:
    """Each recipe's mean, interval and seed count on its MLflow parent run; each table's address in the log."""
    for name, label in labels.items():
        identity = seed_identity(paths, name, cfg.seeds[0])
        if identity is None:
            continue
        metrics = {"seeds": float(len(cfg.seeds))}
        for bench in benchmarks:
            estimate = cells[(name, bench)]
            if estimate is not None:
                metrics.update({f"{bench}.mean": estimate.mean, f"{bench}.ci_low": estimate.low,
                                f"{bench}.ci_high": estimate.high})
        mirror_recipe_metrics(cfg.tracking, paths.root, experiment_of(cfg, name), name, label, identity, metrics)
    experiments = sorted({experiment_of(cfg, n) for n in labels} & set(shown))
    for experiment, address in experiment_addresses(cfg.tracking, paths.root, experiments, MLFLOW_UI).items():
        print(f"MLflow {experiment}: {address}  (after `mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000`)")


def _curves(cfg: Config, paths: Paths, out: Path, names: list[str], labels: dict[str, str]) -> None:
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
        with atomic_path(out / "curves" / f"{bench}.csv") as staged:
            (100 * wide).rename_axis("step").to_csv(staged)
        for name in wide.columns:
            axis.plot(wide.index, 100 * wide[name], label=labels[name], linewidth=1.2)
        axis.set_title(f"{bench} during training (curves only)")
        axis.set_xlabel("iteration")
        axis.set_ylabel("10-fold accuracy (%)")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_path(out / "figures" / "curves.png") as staged:
        figure.savefig(staged, dpi=110, format="png")
    plt.close(figure)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scope", choices=SCOPES, required=True,
                        help="default: the tables of params `tables` (dvc.yaml); extra: those of `extra_tables`")


def main() -> None:
    stage.main("report", run, _arguments)


if __name__ == "__main__":
    main()
