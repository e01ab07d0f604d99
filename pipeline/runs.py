"""Train one recipe for one seed: build the pieces from params, run the engine, track it in MLflow."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline import heads, models
from pipeline.config import Config
from pipeline.data.loader import FaceDataset, load_benchmark_arrays
from pipeline.devices import resolve_device
from pipeline.evaluate.embeddings import extract_embeddings
from pipeline.evaluate.verification import cosine_scores, verification_accuracy
from pipeline.io import write_json_atomic
from pipeline.paths import Paths
from pipeline.recipes import PRETRAIN, Recipe, recipes
from pipeline.tracking import MlflowTracker, NullTracker, Tracker, flatten
from pipeline.heads.sharded import ShardedMarginHead
from pipeline.train import checkpoint, distributed
from pipeline.train.distributed import DistContext
from pipeline.train.engine import TrainJob, TrainResult, resumable, train


def seed_dir(paths: Paths, name: str, seed: int) -> Path:
    return paths.model_dir(name) / f"seed{seed}"


def build_backbone(recipe: Recipe, crop_size: int) -> nn.Module:
    return models.build(recipe.backbone, embedding_size=recipe.embedding_size, input_size=crop_size)


def build_head(recipe: Recipe, num_classes: int, scale: float) -> nn.Module:
    # heads with their own scale (AdaCos adapts s, CircleLoss calls it gamma) take no `s`
    scale_arg = {"s": scale} if "s" in heads.margin_names(recipe.head) else {}
    return heads.build(recipe.head, recipe.embedding_size, num_classes, **{**scale_arg, **recipe.margins})


def shard_head(cfg: Config, recipe: Recipe, head: nn.Module, ctx: DistContext | None, seed: int) -> nn.Module:
    """This rank's block of `head`'s centres when `train.shard_head` is set under a launcher; else `head` itself.
    The block is cut from the single-process head, so every number of ranks starts from the same centres."""
    if ctx is None or not cfg.train.shard_head:
        return head
    scale_arg = {"s": cfg.train.scale} if "s" in heads.margin_names(recipe.head) else {}
    sharded = ShardedMarginHead(
        recipe.head,
        recipe.embedding_size,
        head.weight.shape[0],
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=seed,
        sample_fraction=cfg.train.head_sample_fraction,
        device=head.weight.device,
        **{**scale_arg, **recipe.margins},
    )
    sharded.load_full_weight(head.weight.detach())
    return sharded


def load_backbone(
    cfg: Config, paths: Paths, name: str, seed: int, model_path: Path | None = None
) -> tuple[nn.Module, dict]:
    """The final weights of a trained model (eval mode) and their metadata."""
    state = checkpoint.load_weights(model_path or seed_dir(paths, name, seed) / "model.pt")
    backbone = build_backbone(recipes(cfg)[name], cfg.align.crop_size)
    backbone.load_state_dict(state["backbone"])
    return backbone.eval(), state["meta"]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def training_indices(cfg: Config, paths: Paths, recipe: Recipe) -> np.ndarray | None:
    """Rows of the aligned training set this recipe trains on: the manifest's kept rows, or all."""
    if not (recipe.cleaned and cfg.clean.enabled):
        return None
    manifest = pd.read_parquet(paths.manifest, columns=["kept"])
    return np.flatnonzero(manifest["kept"].to_numpy())


def curve_subset(pairs: pd.DataFrame, count: int, folds: int) -> pd.DataFrame:
    """A fold-balanced subset of a protocol's pairs (the first same and different pairs of every fold)."""
    per_kind = max(1, count // (2 * folds))
    parts = [
        pairs[(pairs["fold"] == fold) & (pairs["same"] == same)].head(per_kind)
        for fold in sorted(pairs["fold"].unique())
        for same in (True, False)
    ]
    return pd.concat(parts).sort_values(["fold", "same"], ascending=[True, False])


def make_curve_fn(cfg: Config, paths: Paths, device: torch.device):
    """Protocol accuracy during training, for the curves only (AirFace Figure 4); never used to pick a model."""
    benchmarks = {}
    for bench_dir in sorted(paths.benchmarks(paths.aligned).iterdir()):
        images, pairs = load_benchmark_arrays(bench_dir)
        subset = curve_subset(pairs, cfg.train.curve_pairs, cfg.evaluate.folds)
        used = np.unique(subset[["a", "b"]].to_numpy())
        remap = {old: new for new, old in enumerate(used)}
        benchmarks[bench_dir.name] = (
            images[used],
            subset["a"].map(remap).to_numpy(),
            subset["b"].map(remap).to_numpy(),
            subset["same"].to_numpy(bool),
        )

    def curve(backbone: nn.Module) -> dict[str, float]:
        result = {}
        for name, (images, a, b, same) in benchmarks.items():
            embeddings = extract_embeddings(
                backbone, images, cfg.evaluate.batch_size, device, flip=False, channels_last=cfg.train.channels_last
            )
            mean, _ = verification_accuracy(cosine_scores(embeddings[a], embeddings[b]), same, folds=cfg.evaluate.folds)
            result[f"curve_{name}"] = mean
        return result

    return curve


def start_tracker(cfg: Config, paths: Paths, recipe: Recipe, seed: int) -> Tracker:
    if not cfg.tracking.enabled:
        return NullTracker()
    experiment = recipe.tables[0] if recipe.tables else "auxiliary"
    params = {
        **flatten("recipe", recipe.__dict__),
        **flatten("train", cfg.train.model_dump()),
        "seed": seed,
        "crop_size": cfg.align.crop_size,
    }
    tags = {
        "row": recipe.name,
        "label": recipe.label,
        "tables": ",".join(recipe.tables),
        "profile": cfg.profile,
        "params_hash": cfg.digest(),
        "mlflow.runName": f"{recipe.label} [seed {seed}]",
    }
    return MlflowTracker.start(cfg.tracking, experiment, f"{recipe.label} [seed {seed}]", params, tags, paths.root)


def train_recipe(cfg: Config, paths: Paths, name: str, seed: int, stop_after: int | None = None) -> TrainResult:
    recipe = recipes(cfg)[name]
    out_dir = seed_dir(paths, name, seed)
    ctx, device = distributed.setup(resolve_device(cfg.train.device))
    dataset = FaceDataset(
        paths.train_records(paths.aligned), indices=training_indices(cfg, paths, recipe), skip_corrupt=cfg.data.skip_corrupt
    )
    num_classes = int(max(dataset.labels)) + 1
    torch.manual_seed(seed)
    backbone = build_backbone(recipe, cfg.align.crop_size)
    head = build_head(recipe, num_classes, cfg.train.scale)
    if recipe.init == "pretrain":
        state = checkpoint.load_weights(seed_dir(paths, PRETRAIN, seed) / "model.pt")
        backbone.load_state_dict(state["backbone"])
        head.weight.data.copy_(state["head"]["weight"])  # the N-Softmax class centres start the margin head
    head = shard_head(cfg, recipe, head, ctx, seed)
    teacher = None
    if recipe.teacher is not None:
        teacher, _ = load_backbone(cfg, paths, recipe.teacher, seed)
    description = recipe.description(seed, cfg.align.crop_size, cfg.train.batch_size, cfg.train.scale)
    if isinstance(head, ShardedMarginHead) and head.sample_fraction < 1.0:  # sampling changes the trained weights
        description["head_sample_fraction"] = head.sample_fraction
    job = TrainJob(
        name=name,
        backbone=backbone,
        head=head,
        train=cfg.train.model_copy(update={"iterations": recipe.iterations, "warmup_iterations": recipe.warmup_iterations}),
        seed=seed,
        weight_decay=recipe.weight_decay,
        embedding_wd_mult=recipe.embedding_wd_mult,
        teacher=teacher,
        distill_weight=recipe.distill_weight,
        description=description,
    )
    run_file = out_dir / "mlflow_run.json"
    tracker: Tracker
    if not distributed.writes(ctx):  # rank 0 alone tracks
        tracker = NullTracker()
    elif run_file.is_file() and cfg.tracking.enabled and resumable(out_dir, description):  # a resumed run keeps its MLflow run
        tracker = MlflowTracker.resume(cfg.tracking, json.loads(run_file.read_text())["run_id"], paths.root)
    else:
        tracker = start_tracker(cfg, paths, recipe, seed)
        if tracker.run_id:
            write_json_atomic(run_file, {"run_id": tracker.run_id})
    curve_fn = make_curve_fn(cfg, paths, device) if cfg.train.curve_every and distributed.writes(ctx) else None
    try:
        result = train(job, dataset, out_dir, tracker=tracker, curve_fn=curve_fn, stop_after=stop_after)
    except BaseException:
        tracker.end("FAILED")
        raise
    if stop_after is None:
        tracker.log_metrics({"final_loss": result.final_loss, "final_train_accuracy": result.final_train_accuracy})
        tracker.log_artifact(out_dir / "model.pt")
        tracker.end("FINISHED")
    return result
