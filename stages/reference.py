"""Stage reference: each pretrained reference model (params reference.models) on every real-photo pair protocol of
the run, the raw benchmarks and LFW View 2 when data.lfw_root is set, with its own detector, landmarks and crop of
the original photos (pipeline.reference). Writes data/reference/<model>/ (descriptors, kept between runs, and each
protocol's pair distances) and reports/metrics/reference/<model>.json. On synthetic data it scores nothing and
records why."""
from __future__ import annotations

import shutil

from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.core.paths import Paths
from pipeline.reference.evaluation import ReferenceEvaluation
from pipeline.reference.protocols import real_photo_protocols
from pipeline.reference.score import evaluate_model

METRICS = "reference"  # reports/metrics/reference/<model>.json


def run(cfg: Config, paths: Paths) -> dict[str, ReferenceEvaluation]:
    benchmarks = paths.benchmarks(paths.raw)
    stage.require(paths, benchmarks)
    protocols, not_scored = real_photo_protocols(benchmarks, cfg.data.lfw_root)
    evaluations = {}
    for name, model in cfg.reference.models.items():
        evaluations[name] = evaluate_model(name, model, cfg.reference, protocols, not_scored,
                                           paths.reference_dir(name), cfg.evaluate.fars)
        evaluations[name].save(paths.metrics(METRICS, name))
    _keep_only(paths, set(cfg.reference.models))
    return evaluations


def _keep_only(paths: Paths, models: set[str]) -> None:
    """Remove the outputs of a model no longer in params reference.models (data/reference persists between runs);
    both output folders exist afterwards, as DVC expects, even with no model."""
    descriptors, metrics = paths.reference_dir("-").parent, paths.metrics(METRICS, "-").parent
    for folder in (descriptors, metrics):
        folder.mkdir(parents=True, exist_ok=True)
    for entry in descriptors.iterdir():
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in models:
            shutil.rmtree(entry)
    for entry in metrics.glob("*.json"):
        if entry.stem not in models:
            entry.unlink()


def main() -> None:
    stage.main("reference", run)


if __name__ == "__main__":
    main()
