"""Stage evaluate: the FINAL weights of one model on every aligned pair protocol (10-fold verification, flip test,
TAR@FAR, the insightface-tools protocol) and on the held-out protocols its evaluation plan names (stage protocols:
cross-pose, cross-age, per-group verification; 1:N identification). Nothing here selects a checkpoint."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.core import stage
from pipeline.core.config import TEACHER, Config
from pipeline.data.heldout.scoring import Scoring
from pipeline.data.identification_sets import IdentificationSet, read_identification_set
from pipeline.data.loader import load_benchmark_arrays
from pipeline.core.devices import resolve_device
from pipeline.evaluate import reuse
from pipeline.evaluate.embeddings import evaluate_pairs
from pipeline.evaluate.identify import identify
from pipeline.evaluate.record import (
    BenchmarkFigures, EvaluationTiming, ModelEvaluation, SeedEvaluation, benchmark_figures,
)
from pipeline.core.atomic_io import atomic_path
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import Recipe, recipes
from pipeline.experiment.runs import experiment_of, identity_of, load_backbone, seed_dir, seed_identity, start_tracker
from pipeline.core.tracking import MlflowTracker, Store, finished_seed_run, guarded


def run(cfg: Config, paths: Paths, model: str) -> ModelEvaluation:
    if model == TEACHER and cfg.distill.enabled and not cfg.trained_teacher():
        return _no_trained_teacher(cfg, paths)
    recipe = recipes(cfg).get(model)
    if recipe is None:
        raise KeyError(f"model {model!r} is not trained by this profile; known: {', '.join(recipes(cfg))}")
    trained = [seed_dir(paths, model, seed) / name for seed in cfg.seeds for name in ("model.pt", "train.json")]
    held_out = [paths.protocols] if cfg.protocols_for(model) else []
    stage.require(paths, paths.benchmarks(paths.aligned), *trained, *held_out)
    device = resolve_device(cfg.train.device)
    directories = {d.name: d for d in sorted(paths.benchmarks(paths.aligned).iterdir())}
    directories.update(_held_out_directories(cfg, paths, model))
    pairs_path = paths.eval_dir(model) / "pairs.parquet"
    previous = reuse.previous_evaluation(paths.metrics("eval", model), pairs_path)
    keys = reuse.evaluation_keys({seed: seed_dir(paths, model, seed) / "model.pt" for seed in cfg.seeds},
                                 reuse.settings_digest(cfg, recipe, device.type), directories)
    reused = reuse.reused_seeds(model, previous, keys)
    protocols = _read_protocols(cfg, directories) if len(reused) < len(keys) else {}
    per_seed: dict[int, SeedEvaluation] = {}
    per_pair = []
    progress = tqdm(total=(len(keys) - len(reused)) * len(protocols), desc=f"evaluate {model}", unit="protocol",
                    disable=None)
    for seed in cfg.seeds:
        if seed in reused:  # its figures as they were; its train.json as it is
            rows = reuse.in_protocol_order(previous.rows(seed), list(directories))
            entry, meta = replace(previous.seeds[seed], train=_train_info(paths, model, seed)), None
        else:
            entry, rows, meta = _evaluate_seed(cfg, paths, model, seed, device, protocols, progress)
        per_seed[seed] = replace(entry, key=keys[seed], pairs_digest=reuse.rows_digest(rows))
        if len(rows):
            per_pair.append(rows)
        _track(cfg, paths, recipe, seed, per_seed[seed], meta, reused=seed in reused)
    progress.close()
    evaluation = ModelEvaluation(model=model, label=recipe.label, flip=cfg.evaluate.flip, seeds=per_seed)
    with atomic_path(pairs_path) as staged:
        frame = pd.concat(per_pair, ignore_index=True) if per_pair else pd.DataFrame(columns=reuse.PAIR_COLUMNS)
        frame.to_parquet(staged, index=False)
    evaluation.save(paths.metrics("eval", model))
    return evaluation


def _no_trained_teacher(cfg: Config, paths: Paths) -> ModelEvaluation:
    """An evaluation without seeds (extra/dvc.yaml evaluates `teacher` either way): distill.reference_teacher names a
    pretrained teacher, which is not trained here (the reference stage scores it)."""
    label = f"no trained teacher: distill.reference_teacher is {cfg.distill.reference_teacher}"
    evaluation = ModelEvaluation(model=TEACHER, label=label, flip=cfg.evaluate.flip, seeds={})
    with atomic_path(paths.eval_dir(TEACHER) / "pairs.parquet") as staged:
        pd.DataFrame(columns=reuse.PAIR_COLUMNS).to_parquet(staged, index=False)
    evaluation.save(paths.metrics("eval", TEACHER))
    return evaluation


def _train_info(paths: Paths, model: str, seed: int) -> dict:
    return json.loads((seed_dir(paths, model, seed) / "train.json").read_text())


def _evaluate_seed(
    cfg: Config, paths: Paths, model: str, seed: int, device, protocols: dict[str, tuple[Scoring, ProtocolData]],
    progress: tqdm,
) -> tuple[SeedEvaluation, pd.DataFrame, dict]:
    """A seed's final weights on every protocol: its entry (no key yet), its rows of pairs.parquet (none when its
    training diverged) and the model's metadata."""
    backbone, meta = load_backbone(cfg, paths, model, seed)
    diverged_at_step, train_info = meta.get("diverged_at_step"), _train_info(paths, model, seed)
    if diverged_at_step is not None:
        return SeedEvaluation(diverged_at_step, train_info, {}, None), pd.DataFrame(columns=reuse.PAIR_COLUMNS), meta
    scored, rows, timing = _score(cfg, backbone, device, protocols, f"{model} seed {seed}", seed, progress)
    return SeedEvaluation(None, train_info, scored, timing), rows, meta


def _score(
    cfg: Config, backbone, device, protocols: dict[str, tuple[Scoring, ProtocolData]], what: str, seed: int,
    progress: tqdm,
) -> tuple[dict[str, BenchmarkFigures], pd.DataFrame, EvaluationTiming]:
    """One seed's weights on every protocol: its figures, its rows of pairs.parquet and what it took."""
    started = time.perf_counter()
    scored, rows = {}, []
    for name, (scoring, data) in protocols.items():
        progress.update()
        metrics, correct = _SCORERS[scoring](cfg, backbone, device, data)
        scored[name] = benchmark_figures(metrics, f"{what} on {name}")
        rows.append(pd.DataFrame({"seed": seed, "benchmark": name, "pair": range(len(correct)), "correct": correct}))
    images = sum(len(data.images if scoring is Scoring.IDENTIFICATION else data[0])
                 for scoring, data in protocols.values())
    # for bench/pipeline_time.py: every protocol's images embedded (twice with the flip test) and scored
    timing = EvaluationTiming(seconds=time.perf_counter() - started, images=images,
                              forward_passes=images * (2 if cfg.evaluate.flip else 1))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=reuse.PAIR_COLUMNS)
    return scored, frame, timing


def _read_protocols(cfg: Config, directories: dict[str, Path]) -> dict[str, tuple[Scoring, ProtocolData]]:
    """Every protocol read, each with its scoring (told by its layout); a pair protocol must have evaluate.folds."""
    protocols = {}
    for name, directory in directories.items():
        scoring = Scoring.of(directory)
        data = _READERS[scoring](directory)
        if scoring is Scoring.VERIFICATION and data[1]["fold"].nunique() != cfg.evaluate.folds:
            raise ValueError(
                f"benchmark {name} has {data[1]['fold'].nunique()} folds but evaluate.folds is {cfg.evaluate.folds}"
            )
        protocols[name] = (scoring, data)
    return protocols


ProtocolData = tuple[np.ndarray, pd.DataFrame] | IdentificationSet  # as its Scoring's reader gives it


def _held_out_directories(cfg: Config, paths: Paths, model: str) -> dict[str, Path]:
    """The held-out protocols of stage `protocols` that the tables showing `model` list (what stage validate writes
    into its evaluation plan, the file DVC watches); one the protocols stage skipped for this data source is left
    out, as its summary says."""
    found = {}
    for name in cfg.protocols_for(model):
        directory = paths.protocols / name
        if directory.is_dir():  # else reports/protocols.json says why (a synthetic protocol on another data source)
            found[name] = directory
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


def _track(
    cfg: Config, paths: Paths, recipe: Recipe, seed: int, entry: SeedEvaluation, meta: dict | None, reused: bool
) -> None:
    """Mirror the figures into the seed's MLflow run, found by its training identity (recorded in the model's
    metadata, `meta` or read again), or into a re-created run when the store has none (moved, emptied, another
    machine). A reused evaluation was mirrored when it was made: only figures its run lacks are logged."""
    if not cfg.tracking.enabled:
        return
    metrics = {f"{bench}.{key}": value for bench, figures in entry.benchmarks.items()
               for key, value in figures.to_metrics().items()}

    def mirror() -> None:
        identity = identity_of(meta) if meta is not None else seed_identity(paths, recipe.name, seed)
        store = Store(cfg.tracking, paths.root)
        run_id = finished_seed_run(store, experiment_of(cfg, recipe.name), recipe.name, seed, identity)
        if run_id is not None:
            logged = store.client.get_run(run_id).data.metrics if reused else {}
            MlflowTracker(store, run_id).log_metrics({k: v for k, v in metrics.items() if k not in logged})
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
