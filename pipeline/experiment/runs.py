"""Train one recipe for one seed: build the pieces from params, run the engine, track it in MLflow."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline import heads, models
from pipeline.core.config import Config, TrainConfig
from pipeline.core.dependencies import code_digest
from pipeline.data.loader import FaceDataset, load_benchmark_arrays
from pipeline.core.devices import resolve_device
from pipeline.evaluate.embeddings import UnnormalisableEmbedding, extract_embeddings
from pipeline.evaluate.verification import cosine_scores, verification_accuracy
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import PRETRAIN, Recipe, recipes
from pipeline.core.tracking import NullTracker, Tracker, flatten, seed_tracker
from pipeline.heads.sharded import ShardedMarginHead
from pipeline.train import checkpoint, distributed
from pipeline.train.distributed import DistContext
from pipeline.train.compilation import effective_compile_mode
from pipeline.train.engine import (
    MODEL_ONLY_META, FixedTargets, ModelBlewUp, TrainJob, TrainResult, finished, resumable, train,
)


log = logging.getLogger("facerepro.train")


@dataclass(frozen=True)
class ReferenceHints:
    """A pretrained reference model's descriptors of the training photos, computed once (pipeline.reference.teacher):
    what a recipe with a `reference_teacher` is hinted toward instead of a trained teacher's embeddings."""

    identity: dict[str, Any]  # the model, its describer settings and a digest of the descriptors: in the training identity
    lookup: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]  # sources -> (vectors, has-a-target mask)

    def targets(self, sources: Sequence[str]) -> FixedTargets:
        """The targets of training items whose record sources are `sources`, in that order."""
        vectors, found = self.lookup(sources)
        return FixedTargets(torch.from_numpy(np.asarray(vectors, dtype=np.float32)),
                            torch.from_numpy(np.asarray(found, dtype=bool)))


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


def seed_identity(paths: Paths, name: str, seed: int) -> dict | None:
    """The training identity a finished model was trained under (its metadata), or None when it is not there."""
    path = seed_dir(paths, name, seed) / "model.pt"
    if not path.is_file():
        return None
    return identity_of(checkpoint.load_weights(path)["meta"])


def identity_of(meta: dict) -> dict:
    """A model's training identity from its metadata (the engine stores it beside the name and divergence step)."""
    return {k: v for k, v in meta.items() if k not in MODEL_ONLY_META}


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
            try:
                embeddings = extract_embeddings(
                    backbone, images, cfg.evaluate.batch_size, device, flip=False, channels_last=cfg.train.channels_last
                )
            except UnnormalisableEmbedding as error:
                raise ModelBlewUp(f"{name}: {error}") from error
            mean, _ = verification_accuracy(cosine_scores(embeddings[a], embeddings[b]), same, folds=cfg.evaluate.folds)
            result[f"curve_{name}"] = mean
        return result

    return curve


# TrainConfig fields that do not change the trained weights (how often to log, save or draw a curve, and how many
# loader workers: the batches and flips are functions of (seed, step)); every other field is part of the identity
NOT_IN_IDENTITY = frozenset({"log_every", "curve_every", "curve_pairs", "checkpoint_every", "num_workers", "device"})


def records_digest(records_dir: Path) -> str:
    """sha256 over a records directory's shard files: the training data a run saw."""
    digest = hashlib.sha256()
    for shard in sorted(records_dir.glob("*.parquet")):
        digest.update(shard.name.encode() + b"\0" + shard.read_bytes())
    return digest.hexdigest()[:16]


def training_identity(
    cfg: Config, paths: Paths, recipe: Recipe, seed: int, train_cfg: TrainConfig, device: torch.device,
    hints: ReferenceHints | None = None,
) -> dict:
    """Everything that changes the trained weights: the recipe, every training parameter, the compile mode in
    effect, the device type, the training data and cleaning manifest, the weights it starts from or learns from (a
    reference teacher: its model, settings and descriptors), and the code of the training path. A checkpoint of
    another identity is never resumed."""
    train_fields = {k: v for k, v in train_cfg.model_dump().items() if k not in NOT_IN_IDENTITY}
    train_fields["compile"] = effective_compile_mode(train_cfg.compile)
    identity = {
        **recipe.description(seed, cfg.align.crop_size, train_cfg.batch_size, train_cfg.scale),
        "train": train_fields,
        "device_type": device.type,
        "data": records_digest(paths.train_records(paths.aligned)),
        "manifest": file_digest(paths.manifest) if recipe.cleaned and cfg.clean.enabled else None,
        "code": code_digest("pipeline/experiment/runs.py"),
    }
    if recipe.init == "pretrain":
        identity["init_weights"] = file_digest(seed_dir(paths, PRETRAIN, seed) / "model.pt")
    if recipe.teacher is not None:
        identity["teacher_weights"] = file_digest(seed_dir(paths, recipe.teacher, seed) / "model.pt")
    if (recipe.reference_teacher is None) != (hints is None):
        raise ValueError(f"{recipe.name}: " + (
            f"distils from reference model {recipe.reference_teacher!r}: its descriptors of the training photos are "
            "needed (stage distill computes them)" if hints is None else "no reference teacher, yet hints were given"))
    if hints is not None:
        identity["reference_teacher_targets"] = hints.identity
    return identity


def experiment_of(cfg: Config, name: str) -> str:
    """A model's MLflow experiment: the first table that shows it, else `auxiliary` (the cleaning bootstrap)."""
    return next(iter(cfg.tables_showing(name)), "auxiliary")


def tracking_params(cfg: Config, recipe: Recipe) -> dict:
    return {
        **flatten("recipe", recipe.__dict__),
        **flatten("train", cfg.train.model_dump()),
        "seeds": ",".join(map(str, cfg.seeds)),
        "crop_size": cfg.align.crop_size,
    }


def start_tracker(cfg: Config, paths: Paths, recipe: Recipe, seed: int, identity: dict, resuming: bool) -> Tracker:
    tags = {"label": recipe.label, "tables": ",".join(cfg.tables_showing(recipe.name)), "profile": cfg.profile,
            "params_hash": cfg.digest()}
    return seed_tracker(
        cfg.tracking, paths.root, experiment_of(cfg, recipe.name), recipe.name, recipe.label, seed, identity,
        {**tracking_params(cfg, recipe), "seed": seed}, tags, resuming,
    )


def train_recipe(
    cfg: Config, paths: Paths, name: str, seed: int, stop_after: int | None = None, hints: ReferenceHints | None = None
) -> TrainResult | None:
    """Train one seed of a recipe, resuming its checkpoint of this very identity; None, with nothing trained, tracked
    or written, when the seed's final model of this identity is already there (a seed added to `seeds` trains alone).
    `hints`: a reference teacher's descriptors, for a recipe that distils from one."""
    recipe = recipes(cfg)[name]
    out_dir = seed_dir(paths, name, seed)
    ctx, device = distributed.setup(resolve_device(cfg.train.device))
    train_cfg = cfg.train.model_copy(update={"iterations": recipe.iterations, "warmup_iterations": recipe.warmup_iterations})
    description = training_identity(cfg, paths, recipe, seed, train_cfg, device, hints)
    if finished(out_dir, description):
        log.info("%s seed %d: already trained with this identity (%s), not trained again", name, seed, out_dir)
        return None
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
    job = TrainJob(
        name=name,
        backbone=backbone,
        head=head,
        train=train_cfg,
        seed=seed,
        weight_decay=recipe.weight_decay,
        embedding_wd_mult=recipe.embedding_wd_mult,
        teacher=teacher,
        distill_weight=recipe.distill_weight,
        targets=hints.targets(dataset.sources()) if hints is not None else None,
        description=description,
    )
    resuming = resumable(out_dir, description)  # judged once: train() would otherwise judge (and log) it again
    tracker: Tracker = NullTracker()
    if distributed.writes(ctx):  # rank 0 alone tracks
        tracker = start_tracker(cfg, paths, recipe, seed, description, resuming=resuming)
    curve_fn = make_curve_fn(cfg, paths, device) if cfg.train.curve_every and distributed.writes(ctx) else None
    try:
        result = train(
            job, dataset, out_dir, tracker=tracker, curve_fn=curve_fn, stop_after=stop_after, resume=resuming
        )
    except (KeyboardInterrupt, SystemExit):  # SIGINT, or SIGTERM as the stage entry point turns it
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    if stop_after is None:
        tracker.log_metrics({"final_loss": result.final_loss, "final_train_accuracy": result.final_train_accuracy})
        tracker.log_artifact(out_dir / "model.pt")
        tracker.end("FINISHED")
    return result
