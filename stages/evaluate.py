"""Stage evaluate: the FINAL weights of one model on every aligned pair protocol (10-fold verification, flip test,
TAR@FAR, the insightface-tools protocol) and on the held-out protocols its evaluation plan names (stage protocols:
cross-pose, cross-age, per-group verification; 1:N identification). Nothing here selects a checkpoint."""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.data.heldout.scoring import Scoring
from pipeline.data.identification_sets import IdentificationSet, read_identification_set
from pipeline.data.loader import load_benchmark_arrays
from pipeline.core.devices import resolve_device
from pipeline.evaluate.embeddings import evaluate_pairs
from pipeline.evaluate.identify import identify
from pipeline.evaluate.record import (
    BenchmarkFigures, EvaluationTiming, ModelEvaluation, SeedEvaluation, benchmark_figures,
)
from pipeline.core.atomic_io import atomic_path
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import Recipe, recipes
from pipeline.experiment.runs import experiment_of, identity_of, load_backbone, seed_dir, start_tracker
from pipeline.core.tracking import MlflowTracker, Store, finished_seed_run, guarded


def run(cfg: Config, paths: Paths, model: str) -> ModelEvaluation:
    recipe = recipes(cfg).get(model)
    if recipe is None:
        raise KeyError(f"model {model!r} is not trained by this profile; known: {', '.join(recipes(cfg))}")
    trained = [seed_dir(paths, model, seed) / name for seed in cfg.seeds for name in ("model.pt", "train.json")]
    held_out = [paths.protocols] if cfg.protocols_for(model) else []
    stage.require(paths, paths.benchmarks(paths.aligned), *trained, *held_out)
    device = resolve_device(cfg.train.device)
    benchmarks = {d.name: (Scoring.VERIFICATION, load_benchmark_arrays(d))
                  for d in sorted(paths.benchmarks(paths.aligned).iterdir())}
    protocols = {**benchmarks, **_held_out_protocols(cfg, paths, model)}
    for name, (scoring, data) in protocols.items():
        if scoring is Scoring.VERIFICATION and data[1]["fold"].nunique() != cfg.evaluate.folds:
            raise ValueError(
                f"benchmark {name} has {data[1]['fold'].nunique()} folds but evaluate.folds is {cfg.evaluate.folds}"
            )
    per_seed: dict[int, SeedEvaluation] = {}
    per_pair = []
    progress = tqdm(total=len(cfg.seeds) * len(protocols), desc=f"evaluate {model}", unit="protocol", disable=None)
    for seed in cfg.seeds:
        backbone, meta = load_backbone(cfg, paths, model, seed)
        train_info = json.loads((seed_dir(paths, model, seed) / "train.json").read_text())
        diverged_at_step = meta.get("diverged_at_step")
        scored: dict[str, BenchmarkFigures] = {}
        timing = None
        if diverged_at_step is None:
            started = time.perf_counter()
            for name, (scoring, data) in protocols.items():
                progress.update()
                metrics, correct = _SCORERS[scoring](cfg, backbone, device, data)
                scored[name] = benchmark_figures(metrics, f"{model} seed {seed} on {name}")
                per_pair.append(pd.DataFrame({"seed": seed, "benchmark": name, "pair": range(len(correct)),
                                              "correct": correct}))
            images = sum(len(data.images if scoring is Scoring.IDENTIFICATION else data[0])
                         for scoring, data in protocols.values())
            # for bench/pipeline_time.py: every protocol's images embedded (twice with the flip test) and scored
            timing = EvaluationTiming(seconds=time.perf_counter() - started, images=images,
                                      forward_passes=images * (2 if cfg.evaluate.flip else 1))
        per_seed[seed] = SeedEvaluation(diverged_at_step, train_info, scored, timing)
        _track(cfg, paths, recipe, seed, meta, per_seed[seed])
    progress.close()
    evaluation = ModelEvaluation(model=model, label=recipe.label, flip=cfg.evaluate.flip, seeds=per_seed)
    with atomic_path(paths.eval_dir(model) / "pairs.parquet") as staged:
        frame = pd.concat(per_pair, ignore_index=True) if per_pair else pd.DataFrame(columns=["seed", "benchmark", "pair", "correct"])
        frame.to_parquet(staged, index=False)
    evaluation.save(paths.metrics("eval", model))
    return evaluation


ProtocolData = tuple[np.ndarray, pd.DataFrame] | IdentificationSet  # as its Scoring's reader gives it


def _held_out_protocols(cfg: Config, paths: Paths, model: str) -> dict[str, tuple[Scoring, ProtocolData]]:
    """The held-out protocols of stage `protocols` that the tables showing `model` list (what stage validate writes
    into its evaluation plan, the file DVC watches), each with its scoring, told by its layout; one the protocols
    stage skipped for this data source is left out, as its summary says."""
    found = {}
    for name in cfg.protocols_for(model):
        directory = paths.protocols / name
        if not directory.is_dir():
            continue  # reports/protocols.json says why (a synthetic protocol on another data source)
        scoring = Scoring.of(directory)
        found[name] = (scoring, _READERS[scoring](directory))
    return found


def _verification(cfg: Config, backbone, device, data: tuple[np.ndarray, pd.DataFrame]) -> tuple[dict, np.ndarray]:
    """Pairs: the 10-fold figures and each pair's decision, with or without the flip test as evaluate.flip says."""
    images, pairs = data
    result = evaluate_pairs(backbone, images, pairs, device=device, batch_size=cfg.evaluate.batch_size,
                            fars=cfg.evaluate.fars, channels_last=cfg.train.channels_last)
    return result.to_metrics(), result.correct_flip if cfg.evaluate.flip else result.correct


def _identification(cfg: Config, backbone, device, data: IdentificationSet) -> tuple[dict, np.ndarray]:
    """1:N search: rank-1 and TAR figures and each probe's rank-1 hit with every distractor."""
    found = identify(backbone, data, cfg.evaluate.flip, device, cfg.evaluate.batch_size, cfg.train.channels_last)
    return found.to_metrics(), found.hits


_READERS = {Scoring.VERIFICATION: load_benchmark_arrays, Scoring.IDENTIFICATION: read_identification_set}
_SCORERS = {Scoring.VERIFICATION: _verification, Scoring.IDENTIFICATION: _identification}


def _track(cfg: Config, paths: Paths, recipe: Recipe, seed: int, meta: dict, entry: SeedEvaluation) -> None:
    """Mirror the figures into the seed's MLflow run, found by its training identity (recorded in the model's
    metadata), or into a re-created run when the store has none (moved, emptied, another machine)."""
    if not cfg.tracking.enabled:
        return
    identity = identity_of(meta)
    metrics = {f"{bench}.{key}": value for bench, figures in entry.benchmarks.items()
               for key, value in figures.to_metrics().items()}

    def mirror() -> None:
        store = Store(cfg.tracking, paths.root)
        run_id = finished_seed_run(store, experiment_of(cfg, recipe.name), recipe.name, seed, identity)
        if run_id is not None:
            MlflowTracker(store, run_id).log_metrics(metrics)
            return
        tracker = start_tracker(cfg, paths, recipe, seed, identity, resuming=False)
        tracker.log_metrics(metrics)
        tracker.end("FINISHED")

    guarded("evaluation mirror", mirror, None)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a row name, or pretrain / teacher / student")


def main() -> None:
    stage.main("evaluate", run, _arguments)


if __name__ == "__main__":
    main()
