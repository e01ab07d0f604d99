"""The one training engine: plain, pre-train-then-margin and distillation runs are options of it.

Determinism: the batch order and the flips are pure functions of (seed, step) and the model and
optimiser state are checkpointed, so a killed run that is started again continues bit for bit.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.config import TrainConfig
from pipeline.io import write_json_atomic
from pipeline.tracking import NullTracker, Tracker
from pipeline.train import checkpoint
from pipeline.train.optim import make_optimizer, parameter_groups, step_lr_factor
from pipeline.train.order import StepBatchSampler, flip_mask

CurveFn = Callable[[nn.Module], dict[str, float]]


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available on this machine")
    return device


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
    """True when `out_dir` holds an unfinished run of this very job (a checkpoint of another job is ignored)."""
    path = out_dir / "checkpoint.pt"
    return path.is_file() and checkpoint.load(path).get("description") == description


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _all_finite(parameters: list[nn.Parameter]) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True


def train(
    job: TrainJob,
    dataset: Dataset,
    out_dir: Path,
    tracker: Tracker | None = None,
    curve_fn: CurveFn | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train to `job.train.iterations` steps, resuming from `out_dir/checkpoint.pt` if it is there.

    Writes `out_dir/model.pt` (final weights) and `out_dir/train.json`. `stop_after` ends the process-equivalent
    early (for resume tests) without writing the final model.
    """
    cfg = job.train
    tracker = tracker or NullTracker()
    device = resolve_device(cfg.device)
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
    if resumable(out_dir, job.description):
        state = checkpoint.load(ckpt_path, map_location=device)
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        if projection is not None:
            projection.load_state_dict(state["projection"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        start_step, history = state["step"], state["history"]

    sampler = StepBatchSampler(len(dataset), cfg.batch_size, job.seed, start_step, cfg.iterations)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )

    def save_checkpoint(step: int) -> None:
        checkpoint.save(
            ckpt_path,
            {
                "step": step,
                "description": job.description,
                "backbone": backbone.state_dict(),
                "head": head.state_dict(),
                "projection": projection.state_dict() if projection is not None else None,
                "optimizer": optimizer.state_dict(),
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
    for images, labels in loader:
        if diverged_at is not None:
            break
        factor = step_lr_factor(step, cfg.iterations, cfg.lr_milestones, cfg.lr_gamma, cfg.warmup_iterations)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        if cfg.flip_augment:
            mask = flip_mask(images.shape[0], job.seed, step)
            images = torch.where(mask[:, None, None, None], images.flip(-1), images)
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, cfg.amp):
            embeddings = backbone(images)
            cosine = head.cosine(embeddings)
            loss = head.loss(head.logits(cosine, labels), labels)
            if teacher is not None and projection is not None:
                with torch.no_grad():
                    target = teacher(images)
                loss = loss + job.distill_weight * distillation_loss(projection(embeddings.float()), target)
        optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            finite = _all_finite(trainable) or cfg.amp == "fp16"  # fp16: the scaler skips such steps itself
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
        loss_value = float(loss.detach())
        accuracy = float((cosine.detach().argmax(dim=1) == labels).float().mean())
        history["last_finite"] = {"loss": loss_value, "train_accuracy": accuracy, "step": step}
        history["images"] += images.shape[0]
        if step % cfg.log_every == 0 or step == cfg.iterations:
            tracker.log_metrics({"loss": loss_value, "train_accuracy": accuracy, "lr": cfg.lr * factor}, step=step)
        if curve_fn is not None and cfg.curve_every and (step % cfg.curve_every == 0 or step == cfg.iterations):
            curve = curve_fn(backbone)
            backbone.train()
            history.setdefault("curve", []).append({"step": step, **curve})
            tracker.log_metrics(curve, step=step)
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
            history["seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            save_checkpoint(step)
        if stop_after is not None and step >= stop_after:
            return _result(step, history, diverged_at)
    history["seconds"] += time.perf_counter() - started

    result = _result(step, history, diverged_at)
    checkpoint.save(
        out_dir / "model.pt",
        {
            "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "meta": {"name": job.name, "seed": job.seed, "diverged_at_step": diverged_at, **job.description},
        },
    )
    write_json_atomic(out_dir / "train.json", {**asdict(result), "curve": history.get("curve", [])})
    ckpt_path.unlink(missing_ok=True)  # finished: a later run with changed code must train afresh, not resume
    return result


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
    )

