"""Stage evaluate: the FINAL weights of one model on every aligned pair protocol (10-fold verification, flip test,
TAR@FAR, the insightface-tools protocol). Nothing here selects a checkpoint."""
from __future__ import annotations

import argparse
import json

import pandas as pd
from tqdm import tqdm

from pipeline import stage
from pipeline.config import Config
from pipeline.data.loader import load_benchmark_arrays
from pipeline.devices import resolve_device
from pipeline.evaluate.embeddings import evaluate_pairs
from pipeline.atomic_io import atomic_path, write_json_atomic
from pipeline.paths import Paths
from pipeline.recipes import Recipe, recipes
from pipeline.runs import experiment_of, identity_of, load_backbone, seed_dir, start_tracker
from pipeline.tracking import MlflowTracker, Store, finished_seed_run, guarded


def run(cfg: Config, paths: Paths, model: str) -> dict:
    recipe = recipes(cfg).get(model)
    if recipe is None:
        raise KeyError(f"model {model!r} is not trained by this profile; known: {', '.join(recipes(cfg))}")
    device = resolve_device(cfg.train.device)
    benchmarks = {d.name: load_benchmark_arrays(d) for d in sorted(paths.benchmarks(paths.aligned).iterdir())}
    for name, (_, pairs) in benchmarks.items():
        if pairs["fold"].nunique() != cfg.evaluate.folds:
            raise ValueError(
                f"benchmark {name} has {pairs['fold'].nunique()} folds but evaluate.folds is {cfg.evaluate.folds}"
            )
    per_seed: dict[str, dict] = {}
    per_pair = []
    progress = tqdm(total=len(cfg.seeds) * len(benchmarks), desc=f"evaluate {model}", unit="protocol", disable=None)
    for seed in cfg.seeds:
        backbone, meta = load_backbone(cfg, paths, model, seed)
        train_info = json.loads((seed_dir(paths, model, seed) / "train.json").read_text())
        entry: dict = {"diverged_at_step": meta.get("diverged_at_step"), "train": train_info, "benchmarks": {}}
        if meta.get("diverged_at_step") is None:
            for name, (images, pairs) in benchmarks.items():
                progress.update()
                result = evaluate_pairs(
                    backbone, images, pairs, device=device, batch_size=cfg.evaluate.batch_size, fars=cfg.evaluate.fars,
                    channels_last=cfg.train.channels_last,
                )
                entry["benchmarks"][name] = result.to_metrics()
                per_pair.append(
                    pd.DataFrame(
                        {
                            "seed": seed,
                            "benchmark": name,
                            "pair": range(len(pairs)),
                            "correct": result.correct_flip if cfg.evaluate.flip else result.correct,
                        }
                    )
                )
        per_seed[str(seed)] = entry
        _track(cfg, paths, recipe, seed, meta, entry)
    progress.close()
    report = {"model": model, "label": recipe.label, "flip": cfg.evaluate.flip, "seeds": per_seed}
    with atomic_path(paths.eval_dir(model) / "pairs.parquet") as staged:
        frame = pd.concat(per_pair, ignore_index=True) if per_pair else pd.DataFrame(columns=["seed", "benchmark", "pair", "correct"])
        frame.to_parquet(staged, index=False)
    write_json_atomic(paths.metrics("eval", model), report)
    return report


def _track(cfg: Config, paths: Paths, recipe: Recipe, seed: int, meta: dict, entry: dict) -> None:
    """Mirror the figures into the seed's MLflow run, found by its training identity (recorded in the model's
    metadata), or into a re-created run when the store has none (moved, emptied, another machine)."""
    if not cfg.tracking.enabled:
        return
    identity = identity_of(meta)
    metrics = {f"{bench}.{key}": value for bench, figures in entry["benchmarks"].items() for key, value in figures.items()}

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
