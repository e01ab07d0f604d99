"""What a flow run shows in Prefect: each row's Markdown artifact (its cells over seeds, as the tables print them)
with links to the MLflow run of each seed."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect.artifacts import create_markdown_artifact

from pipeline.core import config
from pipeline.core.config import Config
from pipeline.core.paths import Paths
from pipeline.evaluate.record import ModelEvaluation
from pipeline.reporting import tables


@dataclass(frozen=True)
class RowArtifact:
    table: str
    model: str
    mlflow_ui: str


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from names such as table3, li_arcface_m040."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if not key:
        raise ValueError(f"no artifact key can be made from {parts}")
    return key


def mlflow_run_url(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_links(cfg: Config, paths: Paths, model: str, ui: str) -> list[str]:
    """A Markdown link to the MLflow run of each seed, found by the training identity in the model's metadata."""
    from pipeline.experiment.runs import experiment_of, seed_identity  # here, not at the top: torch and the models load with it
    from pipeline.core.tracking import Store, finished_seed_run

    store = Store(cfg.tracking, paths.root)
    experiment = experiment_of(cfg, model)
    links = []
    for seed in cfg.seeds:
        identity = seed_identity(paths, model, seed)
        run_id = finished_seed_run(store, experiment, model, seed, identity) if identity is not None else None
        if run_id is None:
            links.append(f"seed {seed}: no MLflow run of this model in experiment {experiment}")
            continue
        experiment_id = store.client.get_run(run_id).info.experiment_id
        links.append(f"[seed {seed}: MLflow run {run_id}]({mlflow_run_url(ui, experiment_id, run_id)})")
    return links


def row_markdown(
    cfg: Config, table: str, model: str, evaluation: ModelEvaluation, per_pair: pd.DataFrame, links: Sequence[str]
) -> str:
    """One row of the table (the report's own formatting: mean over seeds with its interval) with its MLflow runs,
    under the label the table gives it (Table 2 shows arcface_m050_ns as "5e-4 wdml10")."""
    metric = "accuracy_flip" if evaluation.flip else "accuracy"
    spec = cfg.tables[table]
    label = spec.rows[model].label or evaluation.label
    scored = tables.order_benchmarks(sorted(evaluation.scored_benchmarks()))
    benchmarks = tables.shown_benchmarks(spec, scored, set(cfg.protocols))
    one_row = spec.model_copy(update={"rows": {model: spec.rows[model]}})
    labels = {model: evaluation.label}
    frame = tables.table(one_row, labels, {model: evaluation}, {model: per_pair}, benchmarks, metric, cfg.evaluate.alpha)
    return "\n".join(
        [
            f"# {table}: {label}",
            "",
            f"Row `{model}`, profile `{cfg.profile}`, {metric.replace('_', ' ')} (%), seeds {list(cfg.seeds)}: "
            f"mean over seeds [{round(100 * (1 - cfg.evaluate.alpha))}% interval].",
            "",
            tables.markdown(frame, benchmarks, list(spec.paper_columns.values())),
            "MLflow: " + "; ".join(links),
        ]
    )


def publish_row(root: Path, row: RowArtifact) -> None:
    paths = Paths(root)
    cfg = config.load(root / "params.yaml")
    evaluation = ModelEvaluation.load(paths.metrics("eval", row.model))
    per_pair = pd.read_parquet(paths.eval_dir(row.model) / "pairs.parquet")
    links = mlflow_links(cfg, paths, row.model, row.mlflow_ui) if cfg.tracking.enabled else ["tracking is off"]
    create_markdown_artifact(
        markdown=row_markdown(cfg, row.table, row.model, evaluation, per_pair, links),
        key=artifact_key(row.table, row.model),
        description=f"{row.table} row {row.model}: verification accuracy and its MLflow runs",
    )
