"""The one training engine: plain, pre-train-then-margin and distillation runs are options of it.

Determinism: the batch order and the flips are pure functions of (seed, step) and the model and
optimiser state are checkpointed, so a killed run that is started again continues bit for bit.

Under `torchrun` (pipeline.train.distributed) every rank trains on its slice of each global batch with the backbone
in DDP; the head is replicated, or sharded over the ranks when `job.head` is a ShardedMarginHead. Rank 0 writes.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.core.config import TrainConfig
from pipeline.data.loader import FaceDataset, Preloaded
from pipeline.core.devices import resolve_device
from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.tracking import NullTracker, Tracker
from pipeline.heads.sharded import ShardedMarginHead
from pipeline.train import checkpoint, distributed
from pipeline.train.compilation import compile_for_training
from pipeline.train.optim import make_optimizer, parameter_groups, step_lr_factor

CurveFn = Callable[[nn.Module], dict[str, float]]
log = logging.getLogger("facerepro.train")


@dataclass
class TrainJob:
    name: str
    backbone: nn.Module
    head: nn.Module
    train: TrainConfig
    seed: int
    weight_decay: float
    embedding_wd_mult: float
    teacher: nn.Module | None = None  # frozen, eval mode: feature distillation target
    distill_weight: float = 0.0
    description: dict[str, Any] = field(default_factory=dict)  # what identifies the job (checked on resume)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    final_train_accuracy: float
    diverged_at_step: int | None
    images_per_second: float
    seconds: float
    last_finite: dict[str, float]
    images: int = 0  # trained on, over every rank
    timing: dict[str, float] = field(default_factory=dict)  # LoopClock's parts


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Hint loss on unit-normalised embeddings, ||s/|s| - t/|t|||^2 (FitNets, Romero et al. 2015, Eq. 3)."""
    return (F.normalize(student.float(), dim=1) - F.normalize(teacher.float(), dim=1)).pow(2).sum(dim=1).mean()


class _Projection(nn.Module):
    """Maps the student's embedding to the teacher's width for the hint loss only; dropped after training."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def resumable(out_dir: Path, description: dict[str, Any]) -> bool:
    """True when `out_dir` holds an unfinished run of this very job; a checkpoint of another job, or one that cannot
    be read (cut short, overwritten), is left alone (and overwritten by the new run's first checkpoint), with a log
    line naming what differs or why it cannot be read. Starting over is exact: training is deterministic."""
    path = out_dir / "checkpoint.pt"
    if not path.is_file():
        return False
    try:
        saved = checkpoint.load(path).get("description") or {}
    except ValueError as error:  # checkpoint.load's message names the file and what the reader met
        log.warning("%s: training starts over", error)
        return False
    if saved == description:
        return True
    sections = sorted(key for key in saved.keys() | description.keys() if saved.get(key) != description.get(key))
    changes = ", ".join(identity_changes(saved, description))
    log.info("%s was written by another job (%s differ: %s): training starts over", path, ", ".join(sections), changes)
    return False


_ABSENT = object()


def identity_changes(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """`dotted.key: old -> new` for every value that differs between two nested job descriptions, by key."""
    changes = []
    for key in sorted(saved.keys() | wanted.keys()):
        old, new = saved.get(key, _ABSENT), wanted.get(key, _ABSENT)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += identity_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {_shown(old)} -> {_shown(new)}")
    return changes


def _shown(value: Any) -> str:
    text = "absent" if value is _ABSENT else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _check_sharded(job: TrainJob) -> None:
    """What a sharded head cannot do: every rank would clip by its own norm, skip its own fp16 steps, or need the
    whole centre matrix for distillation."""
    if job.train.grad_clip:
        raise ValueError("train.grad_clip is not supported with a sharded head (train.shard_head): set it to null")
    if job.train.amp == "fp16":
        raise ValueError("train.amp=fp16 is not supported with a sharded head (train.shard_head): use bf16 or none")
    if job.teacher is not None:
        raise ValueError(f"{job.name}: distillation is not supported with a sharded head (train.shard_head)")


class ModelBlewUp(RuntimeError):
    """Raised by a curve function whose model can no longer be scored (its embeddings overflow): a divergence."""


def _all_finite(parameters: list[nn.Parameter]) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True


def _state_finite(parameters: list[nn.Parameter], modules: list[nn.Module]) -> bool:
    """The weights and floating buffers (BatchNorm's running statistics) after a step: finite gradients can still
    overflow them, and the next step's loss would say so only after a curve point or a checkpoint had used them."""
    tensors = [*parameters, *(b for m in modules for b in m.buffers() if b.is_floating_point())]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


PRELOAD_LIMIT_BYTES = 2 << 30  # a decoded training set up to this size is held in memory (the synthetic one: 32 MB)


def _batches(dataset: Dataset, sampler: Iterable[list[int]], num_workers: int, device: torch.device) -> Iterable:
    """Batches in the sampler's order: without loader workers, a small FaceDataset is decoded once and its batches
    cut from memory (the same tensors, without decoding every image at every step); else a DataLoader decodes."""
    if (
        num_workers == 0
        and isinstance(dataset, FaceDataset)
        and dataset.normalises_only
        and dataset.decoded_bytes() <= PRELOAD_LIMIT_BYTES
    ):
        return Preloaded(dataset, sampler)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


def train(
    job: TrainJob,
    dataset: Dataset,
    out_dir: Path,
    tracker: Tracker | None = None,
    curve_fn: CurveFn | None = None,
    stop_after: int | None = None,
    resume: bool | None = None,
) -> TrainResult:
    """Train to `job.train.iterations` steps, resuming from `out_dir/checkpoint.pt` if it is there.

    Writes `out_dir/model.pt` (final weights) and `out_dir/train.json`. `stop_after` ends the process-equivalent
    early (for resume tests) without writing the final model. `resume`: the caller's `resumable(out_dir,
    job.description)`, so that the checkpoint is judged (and why not logged) once; None judges it here.
    """
    cfg = job.train
    tracker = tracker or NullTracker()
    ctx, device = distributed.setup(resolve_device(cfg.device))
    writer = distributed.writes(ctx)
    sharded = isinstance(job.head, ShardedMarginHead)
    if sharded:
        _check_sharded(job)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"

    torch.manual_seed(job.seed)
    backbone = job.backbone.to(device=device, memory_format=memory_format)
    head = job.head.to(device)
    extra: list[nn.Parameter] = list(head.parameters())
    projection: _Projection | None = None
    teacher = job.teacher
    if teacher is not None:
        teacher = teacher.to(device=device, memory_format=memory_format).eval().requires_grad_(False)
        with torch.no_grad():
            probe = torch.zeros(1, 3, *dataset[0][0].shape[-2:], device=device)
            student_dim = backbone.eval()(probe).shape[1]
            teacher_dim = teacher(probe).shape[1]
        projection = _Projection(student_dim, teacher_dim).to(device)
        extra += list(projection.parameters())
    groups = parameter_groups(backbone, backbone.embedding_layers(), extra, job.weight_decay, job.embedding_wd_mult)
    optimizer = make_optimizer(groups, cfg.lr, cfg.momentum, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    trainable = [p for g in groups for p in g["params"]]

    start_step, history = 0, {"last_finite": {}, "seconds": 0.0, "images": 0}
    if resume is None:
        resume = resumable(out_dir, job.description)
    if resume:  # every rank loads rank 0's checkpoint (a shared file system)
        state = checkpoint.load(ckpt_path, map_location=device)
        backbone.load_state_dict(state["backbone"])
        if projection is not None:
            projection.load_state_dict(state["projection"])
        distributed.load_training_state(head, optimizer, state["head"], state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        start_step, history = state["step"], state["history"]
        history.setdefault("resumed_from", []).append(start_step)
        log.info("%s: resumed from step %d of %d (%s)", job.name, start_step, cfg.iterations, ckpt_path)
        tracker.log_metrics({"resumed_from_step": start_step}, step=start_step)

    if not sharded:
        distributed.broadcast_(head.parameters(), ctx)
    model = distributed.wrap_backbone(backbone, ctx, device, sum_gradients=sharded)
    model = compile_for_training(model, cfg.compile)
    sampler = distributed.batch_sampler(len(dataset), cfg.batch_size, job.seed, start_step, cfg.iterations, ctx)
    loader = _batches(dataset, sampler, cfg.num_workers, device)

    def save_checkpoint(step: int) -> None:
        head_state, optimizer_state = distributed.full_training_state(head, optimizer)  # a collective: every rank
        if not writer:
            return
        checkpoint.save(
            ckpt_path,
            {
                "step": step,
                "description": job.description,
                "backbone": backbone.state_dict(),
                "head": head_state,
                "projection": projection.state_dict() if projection is not None else None,
                "optimizer": optimizer_state,
                "scaler": scaler.state_dict(),
                "rng": checkpoint.rng_state(),
                "history": history,
            },
        )

    diverged_at: int | None = history.get("diverged_at_step")
    step = start_step
    started = time.perf_counter()
    loss_value, accuracy = math.nan, math.nan
    backbone.train()
    head.train()
    # rate and time left for a person at a terminal; silent in logs and under DVC's captured output
    progress = tqdm(total=cfg.iterations, initial=start_step, desc=job.name, unit="step", disable=None if writer else True)
    clock = LoopClock(history.setdefault("timing", {}))
    batches = iter(loader)
    while diverged_at is None:
        with clock.part("data"):
            batch = next(batches, None)
        if batch is None:
            break
        images, labels = batch
        step_started = time.perf_counter()
        factor = step_lr_factor(step, cfg.iterations, cfg.lr_milestones, cfg.lr_gamma, cfg.warmup_iterations)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        if cfg.flip_augment:
            mask = distributed.rank_flip_mask(cfg.batch_size, job.seed, step, ctx)
            images = torch.where(mask[:, None, None, None], images.flip(-1), images)
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, cfg.amp):
            embeddings = model(images)
            if sharded:  # the global batch's loss and accuracy, softmax reduced across ranks
                output = head(embeddings, labels, step)
                loss, correct = output.loss, output.accuracy
            else:
                cosine = head.cosine(embeddings)
                loss = head.loss(head.logits(cosine, labels), labels)
                correct = (cosine.detach().argmax(dim=1) == labels).float().mean()
            if teacher is not None and projection is not None:
                with torch.no_grad():
                    target = teacher(images)
                loss = loss + job.distill_weight * distillation_loss(projection(embeddings.float()), target)
        optimizer.zero_grad(set_to_none=True)
        finite = distributed.all_ranks(bool(torch.isfinite(loss)), ctx, device)
        if finite:
            scaler.scale(loss).backward()
            if not sharded:
                distributed.average_gradients_(extra, ctx)  # DDP reduced the backbone's; the head's and projection's
            scaler.unscale_(optimizer)
            # fp16: the scaler skips steps with non-finite gradients itself
            finite = distributed.all_ranks(_all_finite(trainable), ctx, device) or cfg.amp == "fp16"
            if finite and cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        if not finite:
            diverged_at = step
            history["diverged_at_step"] = step
            tracker.log_metrics({"diverged_at_step": step}, step=step)
            break
        scaler.step(optimizer)
        scaler.update()
        step += 1
        progress.update()
        curve_due = cfg.curve_every and (step % cfg.curve_every == 0 or step == cfg.iterations)
        saving = step % cfg.checkpoint_every == 0 or step == cfg.iterations
        if (curve_due or saving) and not distributed.all_ranks(_state_finite(trainable, [backbone, head]), ctx, device):
            diverged_at = step - 1  # the step just taken left the weights non-finite
            history["diverged_at_step"] = diverged_at
            tracker.log_metrics({"diverged_at_step": diverged_at}, step=diverged_at)
            break
        # a replicated head's figures are its slice's: their mean over ranks is the global batch's
        loss_value = float(loss.detach()) if sharded else distributed.mean_over_ranks(float(loss.detach()), ctx, device)
        accuracy = float(correct) if sharded else distributed.mean_over_ranks(float(correct), ctx, device)
        history["last_finite"] = {"loss": loss_value, "train_accuracy": accuracy, "step": step}
        history["images"] += images.shape[0] * (ctx.world_size if ctx else 1)
        clock.add("steps", time.perf_counter() - step_started)  # to the first host read of the loss: a CUDA sync
        if step % cfg.log_every == 0 or step == cfg.iterations:
            with clock.part("tracking"):
                tracker.log_metrics({"loss": loss_value, "train_accuracy": accuracy, "lr": cfg.lr * factor}, step=step)
        curve, blew_up = None, False
        if writer and curve_fn is not None and curve_due:
            with clock.part("curve"):
                try:
                    curve = curve_fn(backbone)
                except ModelBlewUp:
                    blew_up = True
            backbone.train()
        if curve_due and not distributed.all_ranks(not blew_up, ctx, device):  # every rank stops together
            diverged_at = step - 1  # finite weights, but embeddings past float32 in eval mode (running statistics)
            history["diverged_at_step"] = diverged_at
            tracker.log_metrics({"diverged_at_step": diverged_at}, step=diverged_at)
            break
        if curve is not None:
            history.setdefault("curve", []).append({"step": step, **curve})
            with clock.part("tracking"):
                tracker.log_metrics(curve, step=step)
        if saving:
            history["seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            with clock.part("checkpoints"):
                save_checkpoint(step)
        if stop_after is not None and step >= stop_after:
            progress.close()
            distributed.barrier(ctx)
            return _result(step, history, diverged_at)
    progress.close()
    history["seconds"] += time.perf_counter() - started

    result = _result(step, history, diverged_at)
    head_state = distributed.full_head_state(head)  # a collective: every rank
    if writer:
        checkpoint.save(
            out_dir / "model.pt",
            {
                "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
                "head": {k: v.detach().cpu() for k, v in head_state.items()},
                "meta": {"name": job.name, "seed": job.seed, "diverged_at_step": diverged_at, **job.description},
            },
        )
        record = {**asdict(result), "resumed_from_steps": history.get("resumed_from", [])}
        write_json_atomic(out_dir / "train.json", {**record, "curve": history.get("curve", [])})
        ckpt_path.unlink(missing_ok=True)  # finished: a later run with changed code must train afresh, not resume
    distributed.barrier(ctx)  # no rank starts the next job (or exits) before rank 0 has written this one
    return result


class LoopClock:
    """Where a training loop's wall time goes, by part (data, steps, curve, checkpoints, tracking), kept in the run's
    history so that a resumed run adds to it: what bench/pipeline_time.py splits a training stage into."""

    def __init__(self, parts: dict[str, float]) -> None:
        self.parts = parts

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)


def _result(step: int, history: dict[str, Any], diverged_at: int | None) -> TrainResult:
    last = history.get("last_finite", {})
    seconds = history.get("seconds", 0.0)
    return TrainResult(
        steps=step,
        final_loss=last.get("loss", math.nan),
        final_train_accuracy=last.get("train_accuracy", math.nan),
        diverged_at_step=diverged_at,
        images_per_second=history.get("images", 0) / seconds if seconds else math.nan,
        seconds=seconds,
        last_finite=last,
        images=history.get("images", 0),
        timing=dict(history.get("timing", {})),
    )

