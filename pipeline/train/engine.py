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
from collections.abc import Callable, Iterable, Iterator, Sequence
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
from pipeline.data.loader import FaceDataset, Preloaded, WithItems
from pipeline.core.devices import resolve_device
from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.tracking import NullTracker, Tracker
from pipeline.heads.sharded import ShardedMarginHead
from pipeline.train import checkpoint, distributed
from pipeline.train.compilation import compile_for_training
from pipeline.train.optim import make_optimizer, parameter_groups, step_lr_factor

CurveFn = Callable[[nn.Module], dict[str, float]]
log = logging.getLogger("facerepro.train")


@dataclass(frozen=True)
class FixedTargets:
    """A fixed teacher's embedding of every training item, computed once before training (a pretrained model whose
    input pipeline is not the student's, so it cannot run on the batch): row i is item i's target, and `mask[i]`
    says whether item i has one (False: that model found no face in its photo, and the item gets no hint)."""

    vectors: torch.Tensor  # (n items, teacher width) float32
    mask: torch.Tensor  # (n items,) bool

    def __post_init__(self) -> None:
        n = self.mask.shape[0]
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n or self.mask.ndim != 1 or self.mask.dtype != torch.bool:
            raise ValueError(f"fixed targets need (n, d) vectors and an (n,) bool mask, got {tuple(self.vectors.shape)} "
                             f"and {tuple(self.mask.shape)} {self.mask.dtype}")


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
    targets: FixedTargets | None = None  # or the distillation targets given per training item (not with `teacher`)
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


def hint_distances(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per sample, ||s/|s| - t/|t|||^2: the hint loss's term (FitNets, Romero et al. 2015, Eq. 3) on unit-normalised
    embeddings, s the (projected) student's and t the teacher's."""
    return (F.normalize(student.float(), dim=1) - F.normalize(teacher.float(), dim=1)).pow(2).sum(dim=1)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Hint loss on unit-normalised embeddings, mean over the batch of ||s/|s| - t/|t|||^2 (FitNets, Romero et al.
    2015, Eq. 3)."""
    return hint_distances(student, teacher).mean()


def masked_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hint loss (FitNets, Romero et al. 2015, Eq. 3, as `distillation_loss`) over the samples that have a
    teacher embedding (`mask`): the mean of their terms, so a sample without one adds nothing; 0 when none has.
    Eq. 3's teacher is fixed while the student learns, so its embeddings may as well be computed once beforehand."""
    terms = hint_distances(student, teacher)
    chosen = mask.to(device=terms.device, dtype=terms.dtype)
    return (terms * chosen).sum() / chosen.sum().clamp(min=1.0)


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


MODEL_ONLY_META = ("name", "diverged_at_step")  # what model.pt's metadata holds beside the job's description


def finished(out_dir: Path, description: dict[str, Any]) -> bool:
    """True when `out_dir` holds the final model and record of this very job: training it again would write the same
    bytes (training is deterministic), so it is not trained again. A model of another job, or one that cannot be read,
    is retrained, with a log line saying why."""
    model = out_dir / "model.pt"
    if not (model.is_file() and (out_dir / "train.json").is_file()):
        return False
    try:
        meta = checkpoint.load_weights(model)["meta"]
    except ValueError as error:  # load_weights' message names the file and what the reader met
        log.warning("%s: training starts over", error)
        return False
    saved = {k: v for k, v in meta.items() if k not in MODEL_ONLY_META}
    if saved == description:
        return True
    changes = ", ".join(identity_changes(saved, description))
    log.info("%s was trained by another job (%s): training starts over", model, changes)
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
    if job.teacher is not None or job.targets is not None:
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


def _batches(
    dataset: Dataset, sampler: Iterable[list[int]], num_workers: int, device: torch.device, with_items: bool = False
) -> Iterable:
    """Batches in the sampler's order: without loader workers, a small FaceDataset is decoded once and its batches
    cut from memory (the same tensors, without decoding every image at every step); else a DataLoader decodes.
    `with_items`: each batch also carries its item numbers, (images, labels, items), for per-item targets."""
    if (
        num_workers == 0
        and isinstance(dataset, FaceDataset)
        and dataset.normalises_only
        and dataset.decoded_bytes() <= PRELOAD_LIMIT_BYTES
    ):
        return Preloaded(dataset, sampler, with_items=with_items)
    return DataLoader(
        WithItems(dataset) if with_items else dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


@dataclass
class _Run:
    """What the parts of one run share: the job, where it trains and writes, its modules and optimiser, the step it is
    at, and the history that its checkpoints carry (figures, curve, images, seconds, timing, divergence)."""

    job: TrainJob
    out_dir: Path
    tracker: Tracker
    ctx: distributed.DistContext | None
    device: torch.device
    memory_format: torch.memory_format
    backbone: nn.Module
    head: nn.Module
    teacher: nn.Module | None
    targets: FixedTargets | None  # on the run's device
    projection: _Projection | None
    outside_ddp: list[nn.Parameter]  # the head's and the projection's: DDP does not reduce their gradients
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    model: nn.Module  # the backbone as it is called: DDP-wrapped and compiled by `_start_loop`
    step: int = 0
    history: dict[str, Any] = field(default_factory=lambda: {"last_finite": {}, "seconds": 0.0, "images": 0})
    segment_started: float = 0.0  # since when wall time is not yet in history["seconds"]

    @property
    def writer(self) -> bool:
        return distributed.writes(self.ctx)

    @property
    def sharded(self) -> bool:
        return isinstance(self.head, ShardedMarginHead)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    @property
    def diverged_at(self) -> int | None:
        return self.history.get("diverged_at_step")

    def bank_seconds(self) -> None:
        """Adds the wall time since the last call to history["seconds"] (at checkpoints and at the end)."""
        now = time.perf_counter()
        self.history["seconds"] += now - self.segment_started
        self.segment_started = now


@dataclass
class _StepTaken:
    """What one optimisation step leaves for the loop: its figures (still on the device) and its learning rate."""

    loss: torch.Tensor  # this rank's (a replicated head) or the global batch's (a sharded head)
    correct: torch.Tensor  # the share of the batch classified right, in the same sense
    images: int  # on this rank
    lr: float


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
    run = _setup(job, dataset, out_dir, tracker or NullTracker())
    if resume is None:
        resume = resumable(out_dir, job.description)
    if resume:
        _resume(run)
    batches = _start_loop(run, dataset)
    # rate and time left for a person at a terminal; silent in logs and under DVC's captured output
    progress = tqdm(
        total=cfg.iterations, initial=run.step, desc=job.name, unit="step", disable=None if run.writer else True
    )
    clock = LoopClock(run.history.setdefault("timing", {}))
    while run.diverged_at is None:
        with clock.part("data"):
            batch = next(batches, None)
        if batch is None:
            break
        step_started = time.perf_counter()
        images, labels, *items = batch  # items: with fixed targets, the batch's item numbers
        taken = _step(run, images, labels, items[0] if items else None)
        if taken is None:
            break
        progress.update()
        curve_due = bool(cfg.curve_every) and (run.step % cfg.curve_every == 0 or run.step == cfg.iterations)
        saving = run.step % cfg.checkpoint_every == 0 or run.step == cfg.iterations
        if (curve_due or saving) and not _weights_finite(run):
            break
        figures = _record_figures(run, taken)
        clock.add("steps", time.perf_counter() - step_started)  # to the first host read of the loss: a CUDA sync
        if run.step % cfg.log_every == 0 or run.step == cfg.iterations:
            with clock.part("tracking"):
                run.tracker.log_metrics({**figures, "lr": taken.lr}, step=run.step)
        if curve_due and not _curve_point(run, curve_fn, clock):
            break
        if saving:
            run.bank_seconds()
            with clock.part("checkpoints"):
                _save_checkpoint(run)
        if stop_after is not None and run.step >= stop_after:
            progress.close()
            distributed.barrier(run.ctx)
            return _result(run)
    progress.close()
    run.bank_seconds()
    return _finish(run)


def _setup(job: TrainJob, dataset: Dataset, out_dir: Path, tracker: Tracker) -> _Run:
    """The job's modules on this rank's device, the optimiser and the fp16 loss scaler, seeded by the job: what is
    drawn here (a distillation projection's weights) is the same in every run of it."""
    cfg = job.train
    ctx, device = distributed.setup(resolve_device(cfg.device))
    if isinstance(job.head, ShardedMarginHead):
        _check_sharded(job)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(job.seed)
    backbone = job.backbone.to(device=device, memory_format=memory_format)
    head = job.head.to(device)
    teacher, targets, projection = _distillation_parts(job, dataset, backbone, device, memory_format)
    outside_ddp = [*head.parameters(), *(projection.parameters() if projection is not None else [])]
    wd, wd_mult = job.weight_decay, job.embedding_wd_mult
    groups = parameter_groups(backbone, backbone.embedding_layers(), outside_ddp, wd, wd_mult)
    return _Run(
        job=job,
        out_dir=out_dir,
        tracker=tracker,
        ctx=ctx,
        device=device,
        memory_format=memory_format,
        backbone=backbone,
        head=head,
        teacher=teacher,
        targets=targets,
        projection=projection,
        outside_ddp=outside_ddp,
        trainable=[p for g in groups for p in g["params"]],
        optimizer=make_optimizer(groups, cfg.lr, cfg.momentum, device),
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16"),
        model=backbone,
    )


def _distillation_parts(
    job: TrainJob, dataset: Dataset, backbone: nn.Module, device: torch.device, memory_format: torch.memory_format
) -> tuple[nn.Module | None, FixedTargets | None, _Projection | None]:
    """The frozen teacher or the fixed targets on the device, and a fresh projection from the student's width to the
    teacher's (widths probed on one blank image of the dataset's size); all None without either."""
    if job.teacher is not None and job.targets is not None:
        raise ValueError(f"{job.name}: a job distils from a teacher model or from fixed targets, not both")
    if job.teacher is None and job.targets is None:
        return None, None, None
    with torch.no_grad():
        probe = torch.zeros(1, 3, *dataset[0][0].shape[-2:], device=device)
        student_dim = backbone.eval()(probe).shape[1]
    if job.targets is not None:
        if len(job.targets.mask) != len(dataset):
            raise ValueError(f"{job.name}: {len(job.targets.mask)} fixed targets for a training set of {len(dataset)} "
                             "items (one per item, in item order)")
        targets = FixedTargets(job.targets.vectors.to(device=device, dtype=torch.float32), job.targets.mask.to(device))
        return None, targets, _Projection(student_dim, targets.vectors.shape[1]).to(device)
    teacher = job.teacher.to(device=device, memory_format=memory_format).eval().requires_grad_(False)
    with torch.no_grad():
        teacher_dim = teacher(probe).shape[1]
    return teacher, None, _Projection(student_dim, teacher_dim).to(device)


def _resume(run: _Run) -> None:
    """The run's state as its checkpoint holds it: weights, optimiser, loss scaler, RNG, step and history. Every rank
    loads rank 0's file (a shared file system). The caller has checked that the checkpoint is this job's."""
    state = checkpoint.load(run.checkpoint_path, map_location=run.device)
    run.backbone.load_state_dict(state["backbone"])
    if run.projection is not None:
        run.projection.load_state_dict(state["projection"])
    distributed.load_training_state(run.head, run.optimizer, state["head"], state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    checkpoint.set_rng_state(state["rng"])
    run.step, run.history = state["step"], state["history"]
    run.history.setdefault("resumed_from", []).append(run.step)
    job = run.job
    log.info("%s: resumed from step %d of %d (%s)", job.name, run.step, job.train.iterations, run.checkpoint_path)
    run.tracker.log_metrics({"resumed_from_step": run.step}, step=run.step)


def _start_loop(run: _Run, dataset: Dataset) -> Iterator[Sequence[torch.Tensor]]:
    """A replicated head made equal on every rank, the backbone wrapped (DDP) and compiled, the modules in training
    mode, and the batches of the run's order from its step on."""
    cfg = run.job.train
    if not run.sharded:
        distributed.broadcast_(run.head.parameters(), run.ctx)
    run.model = distributed.wrap_backbone(run.backbone, run.ctx, run.device, sum_gradients=run.sharded)
    run.model = compile_for_training(run.model, cfg.compile)
    sampler = distributed.batch_sampler(len(dataset), cfg.batch_size, run.job.seed, run.step, cfg.iterations, run.ctx)
    loader = _batches(dataset, sampler, cfg.num_workers, run.device, with_items=run.targets is not None)
    run.segment_started = time.perf_counter()
    run.backbone.train()
    run.head.train()
    return iter(loader)


def _step(run: _Run, images: torch.Tensor, labels: torch.Tensor, items: torch.Tensor | None = None) -> _StepTaken | None:
    """One optimisation step at `run.step`: the schedule's learning rate, the step's flips, forward, backward and
    update. None, with the run marked diverged at this step, where the loss or a gradient is not finite on a rank.
    `items`: the batch's item numbers, where the run distils toward fixed targets."""
    cfg = run.job.train
    lr = cfg.lr * step_lr_factor(run.step, cfg.iterations, cfg.lr_milestones, cfg.lr_gamma, cfg.warmup_iterations)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if cfg.flip_augment:
        mask = distributed.rank_flip_mask(cfg.batch_size, run.job.seed, run.step, run.ctx)
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    images = images.to(run.device, non_blocking=True).contiguous(memory_format=run.memory_format)
    labels = labels.to(run.device, non_blocking=True)
    loss, correct = _forward(run, images, labels, items)
    run.optimizer.zero_grad(set_to_none=True)
    if not _backward(run, loss):
        _diverge(run, run.step)
        return None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.step += 1
    return _StepTaken(loss, correct, images.shape[0], lr)


def _forward(
    run: _Run, images: torch.Tensor, labels: torch.Tensor, items: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's loss (plus the weighted hint loss when distilling) and the share it classifies right. Fixed targets
    are each item's original photo's embedding, whether or not the step flipped the image (a face descriptor is
    meant to be the same for a mirrored face)."""
    with _autocast(run.device, run.job.train.amp):
        embeddings = run.model(images)
        if run.sharded:  # the global batch's loss and accuracy, softmax reduced across ranks
            output = run.head(embeddings, labels, run.step)
            loss, correct = output.loss, output.accuracy
        else:
            cosine = run.head.cosine(embeddings)
            loss = run.head.loss(run.head.logits(cosine, labels), labels)
            correct = (cosine.detach().argmax(dim=1) == labels).float().mean()
        if run.teacher is not None and run.projection is not None:
            with torch.no_grad():
                target = run.teacher(images)
            loss = loss + run.job.distill_weight * distillation_loss(run.projection(embeddings.float()), target)
        elif run.targets is not None and run.projection is not None:
            if items is None:
                raise ValueError(f"{run.job.name}: fixed targets need each batch's item numbers")
            rows = items.to(run.device, non_blocking=True)
            hint = masked_distillation_loss(run.projection(embeddings.float()), run.targets.vectors[rows],
                                            run.targets.mask[rows])
            loss = loss + run.job.distill_weight * hint
    return loss, correct


def _backward(run: _Run, loss: torch.Tensor) -> bool:
    """Gradients of `loss`, reduced over the ranks, unscaled and clipped; False where the loss or (but under fp16,
    whose scaler skips such steps itself) a gradient is not finite on some rank."""
    cfg = run.job.train
    if not distributed.all_ranks(bool(torch.isfinite(loss)), run.ctx, run.device):
        return False
    run.scaler.scale(loss).backward()
    if not run.sharded:
        distributed.average_gradients_(run.outside_ddp, run.ctx)  # DDP reduced the backbone's
    run.scaler.unscale_(run.optimizer)
    finite = distributed.all_ranks(_all_finite(run.trainable), run.ctx, run.device) or cfg.amp == "fp16"
    if finite and cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.trainable, cfg.grad_clip)
    return finite


def _diverge(run: _Run, step: int) -> None:
    """Marks the run diverged at `step` (the index of the step that failed) in its history and its tracking."""
    run.history["diverged_at_step"] = step
    run.tracker.log_metrics({"diverged_at_step": step}, step=step)


def _weights_finite(run: _Run) -> bool:
    """Whether the step just taken left the weights finite on every rank; if not, the run diverged at that step."""
    if distributed.all_ranks(_state_finite(run.trainable, [run.backbone, run.head]), run.ctx, run.device):
        return True
    _diverge(run, run.step - 1)
    return False


def _record_figures(run: _Run, taken: _StepTaken) -> dict[str, float]:
    """The step's loss and train accuracy of the global batch, kept as the last finite figures."""
    loss, accuracy = float(taken.loss.detach()), float(taken.correct)
    if not run.sharded:  # a replicated head's figures are its slice's: their mean over ranks is the global batch's
        loss = distributed.mean_over_ranks(loss, run.ctx, run.device)
        accuracy = distributed.mean_over_ranks(accuracy, run.ctx, run.device)
    run.history["last_finite"] = {"loss": loss, "train_accuracy": accuracy, "step": run.step}
    run.history["images"] += taken.images * (run.ctx.world_size if run.ctx else 1)
    return {"loss": loss, "train_accuracy": accuracy}


def _curve_point(run: _Run, curve_fn: CurveFn | None, clock: LoopClock) -> bool:
    """Rank 0 scores the backbone and the curve gains a point; False, with the run marked diverged at the step before,
    where the model could not be scored (finite weights, but embeddings past float32 in eval mode). Every rank learns
    the outcome, so that all stop together."""
    curve, blew_up = None, False
    if run.writer and curve_fn is not None:
        with clock.part("curve"):
            try:
                curve = curve_fn(run.backbone)
            except ModelBlewUp:
                blew_up = True
        run.backbone.train()
    if not distributed.all_ranks(not blew_up, run.ctx, run.device):
        _diverge(run, run.step - 1)
        return False
    if curve is not None:
        run.history.setdefault("curve", []).append({"step": run.step, **curve})
        with clock.part("tracking"):
            run.tracker.log_metrics(curve, step=run.step)
    return True


def _save_checkpoint(run: _Run) -> None:
    """Everything a bitwise resume needs, written atomically by rank 0."""
    head_state, optimizer_state = distributed.full_training_state(run.head, run.optimizer)  # a collective: every rank
    if not run.writer:
        return
    checkpoint.save(
        run.checkpoint_path,
        {
            "step": run.step,
            "description": run.job.description,
            "backbone": run.backbone.state_dict(),
            "head": head_state,
            "projection": run.projection.state_dict() if run.projection is not None else None,
            "optimizer": optimizer_state,
            "scaler": run.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "history": run.history,
        },
    )


def _finish(run: _Run) -> TrainResult:
    """The final model and the run's record written by rank 0, and the checkpoint removed: a finished run is not
    resumed by a later one (with changed code), which trains afresh."""
    result = _result(run)
    head_state = distributed.full_head_state(run.head)  # a collective: every rank
    if run.writer:
        job = run.job
        checkpoint.save(
            run.out_dir / "model.pt",
            {
                "backbone": {k: v.detach().cpu() for k, v in run.backbone.state_dict().items()},
                "head": {k: v.detach().cpu() for k, v in head_state.items()},
                "meta": {"name": job.name, "seed": job.seed, "diverged_at_step": run.diverged_at, **job.description},
            },
        )
        record = {**asdict(result), "resumed_from_steps": run.history.get("resumed_from", [])}
        write_json_atomic(run.out_dir / "train.json", {**record, "curve": run.history.get("curve", [])})
        run.checkpoint_path.unlink(missing_ok=True)
    distributed.barrier(run.ctx)  # no rank starts the next job (or exits) before rank 0 has written this one
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


def _result(run: _Run) -> TrainResult:
    last = run.history.get("last_finite", {})
    seconds = run.history.get("seconds", 0.0)
    images = run.history.get("images", 0)
    return TrainResult(
        steps=run.step,
        final_loss=last.get("loss", math.nan),
        final_train_accuracy=last.get("train_accuracy", math.nan),
        diverged_at_step=run.diverged_at,
        images_per_second=images / seconds if seconds else math.nan,
        seconds=seconds,
        last_finite=last,
        images=images,
        timing=dict(run.history.get("timing", {})),
    )
