"""GPU check: the paper profile's CUDA training path proven in one short prepared run.

    bash scripts/gpu-check [--device cuda|cpu] [--tiny] [--out reports/bench] [--budget 330] [--deterministic]

On a synthetic training set rendered and aligned in the run (112x112 on GPU), through the engine and the stage code
of the paper profile (`pipeline.experiment.runs.build_backbone/build_head/shard_head`, `pipeline.train.engine.train`):
  - MobileFaceNet (128-d) and IResNet-50 (512-d) with Li-ArcFace, a few hundred steps at batch 256 in bf16, and a
    few steps in fp16 (grad scaler) and fp32; once more under `torchrun --nproc_per_node 1` with the sharded head
    (`train.shard_head`) at 125k classes;
  - images/s (median step after warm-up, CUDA-synchronised), TFLOP/s from the models' FLOPs against a bf16 matmul
    measured in the same run, peak memory, the largest class count the sharded head holds at 512-d;
  - checks: loss decreases, no NaN, checkpoint + stop + resume equals an uninterrupted run, evaluation on a
    synthetic pair protocol, channels_last and compile settings; ratios to insightface's published figures.
    The GPU check requires a lower loss on a probe set after the bf16 runs; `--tiny` requires instead that the
    loss on one fixed batch, trained on alone, at least halves (a dozen noisy batch-8 steps move the probe-set loss
    either way, with the CPU's bf16 kernels deciding which).
Writes <out>/gpu_check.json and <out>/gpu_check.md; exits 1 when a check fails. `--tiny` scales everything down
(crop 32, batch 8, a handful of steps) so the test suite runs it on CPU. A time guard stops starting new sections
once `--budget` seconds are spent and lists them as skipped.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import gc
import json
import math
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from bench.gpu_check_report import (
    PARTIALFC_8_V100,
    PARTIALFC_CLASSES,
    PUBLISHED_NOTE,
    PUBLISHED_PER_V100,
    describe_machine,
    render,
)
from pipeline import heads, models
from pipeline.experiment import runs
from pipeline.data.align import align
from pipeline.core.config import PROJECT_ROOT, Config, TrainConfig, deep_merge
from pipeline.data.synthetic import PROTOCOLS, ProtocolSpec, SyntheticSpec, plan_training
from pipeline.data.synthetic import render as render_face
from pipeline.data.synthetic.protocols import ImageJob
from pipeline.evaluate.embeddings import evaluate_pairs
from pipeline.heads import sharded as sharded_module
from pipeline.heads.sharded import ShardedMarginHead
from pipeline.core.atomic_io import write_json_atomic, write_text_atomic
from pipeline.models.complexity import count_macs
from pipeline.experiment.recipes import Recipe
from pipeline.train import checkpoint, distributed
from pipeline.train.compilation import compile_for_training
from pipeline.train.distributed import DistContext
from pipeline.train.engine import TrainJob, TrainResult, train
from pipeline.train.optim import make_optimizer, parameter_groups

SEED = 0
EMBEDDING = {"mobilefacenet": 128, "iresnet50": 512, "iresnet18": 512}  # paper profile's MobileFaceNet; IResNets 512-d
HEAD = "li_arcface"
RESUME_BOUND = 1e-3  # CUDA without bitwise equality: ||w_resumed - w_full|| / ||w_full|| at most this (or 4x the
#                      difference between two uninterrupted runs, whichever is larger)
SETTINGS_LOSS_TOL = 0.05  # first-step loss of a channels_last / compiled setting vs the first: relative, bf16
FIXED_BATCH_RATIO = 0.5  # tiny: loss on the one batch trained on, after / before, at most this; 0.0003-0.064 seen
#                          on an AMD EPYC without AMX under oneDNN's AVX2 and AVX-512 kernels, ATen's default, avx2
#                          and avx512 ones, 1 and 2 threads: a margin of 8x for other CPUs' rounding


@dataclass(frozen=True)
class Sizes:
    """Everything the run's length depends on; FULL is the GPU check, TINY the CPU test."""

    models: tuple[str, str]  # the mbf and r50 roles (published figures)
    fp16_models: int  # how many of them train in fp16 (CPU fp16 kernels are slow)
    descent_models: int  # how many must show a lower probe-set loss after long_steps
    fixed_batch_steps: int  # > 0: every model trains this many bf16 steps on one fixed batch, whose loss must halve
    crop: int
    batch: int
    identities: int
    images_per_identity: int
    long_steps: int  # bf16, both models
    short_steps: int  # fp16 and fp32
    warmup_steps: int  # step times left out of the median
    resume_steps: int
    torchrun_steps: int
    torchrun_classes: int
    setting_warmup: int
    setting_steps: int
    compile_modes: tuple[str, ...]
    eval_folds: int
    eval_identities_per_fold: int
    eval_images_per_identity: int
    eval_pairs_per_fold: int
    min_accuracy: float  # evaluation check: mean accuracy at least this
    num_workers: int
    matmul_n: int
    max_classes_start: int  # 0: skip the capacity search


FULL = Sizes(
    models=("mobilefacenet", "iresnet50"), fp16_models=2, descent_models=2, fixed_batch_steps=0, crop=112, batch=256,
    identities=200, images_per_identity=20, long_steps=300, short_steps=30, warmup_steps=10,
    resume_steps=40, torchrun_steps=60, torchrun_classes=PARTIALFC_CLASSES, setting_warmup=3, setting_steps=15,
    compile_modes=("none", "activations", "backbone"), eval_folds=5, eval_identities_per_fold=20,
    eval_images_per_identity=4, eval_pairs_per_fold=100, min_accuracy=0.6, num_workers=4, matmul_n=8192,
    max_classes_start=1_000_000,
)
TINY = Sizes(  # IResNet-18 stands in for -50 (same code, a third of the work), fp16 on MobileFaceNet only
    # descent on the batch trained on, not on a probe set: 12 steps of batch 8 are too few for the probe-set loss
    # to fall on every CPU (24.49 -> 24.0 to 29.9 with the kernels chosen); 24 steps on one batch cut its loss 15x+
    models=("mobilefacenet", "iresnet18"), fp16_models=1, descent_models=0, fixed_batch_steps=24, crop=32, batch=8,
    identities=8, images_per_identity=6,
    long_steps=12, short_steps=2, warmup_steps=2, resume_steps=4, torchrun_steps=2, torchrun_classes=1000,
    setting_warmup=1, setting_steps=1,
    compile_modes=("none",), eval_folds=2, eval_identities_per_fold=4, eval_images_per_identity=3,
    eval_pairs_per_fold=6, min_accuracy=0.0, num_workers=0, matmul_n=256, max_classes_start=0,
)


# --- data -----------------------------------------------------------------------------------------------------------


class FaceTensors(Dataset):
    """Aligned uint8 crops held in memory; item i -> (float CxHxW in [-1, 1], label), as the loader's transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(127.5).sub_(1.0), int(self.labels[i])


def _aligned(canvas: int, crop: int, job: ImageJob) -> np.ndarray:
    pixels, landmarks = render_face(job.identity.traits, job.nuisance, canvas)
    return align(pixels, landmarks, crop)[0]


def render_aligned(jobs: list[ImageJob], canvas: int, crop: int) -> np.ndarray:
    """N x crop x crop x 3 uint8, rendered in processes (fork: before any CUDA call) when there are many."""
    work = functools.partial(_aligned, canvas, crop)
    workers = min(16, os.cpu_count() or 1)
    if len(jobs) < 200 or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return np.stack([work(job) for job in jobs])
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return np.stack(pool.map(work, jobs, chunksize=32))


@dataclass
class Data:
    train: FaceTensors
    classes: int
    eval_images: np.ndarray  # N x H x W x 3 uint8 (evaluate_pairs' input)
    pairs: Any  # pandas DataFrame: a, b, same, fold


def make_data(sizes: Sizes) -> Data:
    protocol = ProtocolSpec(
        identities_per_fold=sizes.eval_identities_per_fold, images_per_identity=sizes.eval_images_per_identity,
        folds=sizes.eval_folds, pairs_per_fold=sizes.eval_pairs_per_fold,
    )
    spec = SyntheticSpec(
        seed=SEED, canvas=max(32, sizes.crop * 8 // 7), train_identities=sizes.identities,
        train_images_per_identity=sizes.images_per_identity, label_noise=0.0, protocols={"synth-lfw": protocol},
    )
    jobs = plan_training(spec)
    plan = PROTOCOLS.get("synth-lfw")(spec, protocol, "synth-lfw")
    images = render_aligned(jobs + plan.jobs, spec.canvas, sizes.crop)
    train_images = torch.from_numpy(images[: len(jobs)]).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([job.label for job in jobs], dtype=torch.long)
    return Data(FaceTensors(train_images, labels), sizes.identities, images[len(jobs) :], plan.pairs)


# --- the engine, as the paper profile drives it ---------------------------------------------------------------------


def paper_train_config() -> TrainConfig:
    """params.yaml's train section with the paper profile's overrides (validated as `train` alone)."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    paper = ((raw.get("profiles") or {}).get("paper") or {}).get("train") or {}
    return TrainConfig.model_validate(deep_merge(raw.get("train") or {}, paper))


class StepClock:
    """A tracker that timestamps every logged step (train.log_every = 1), CUDA-synchronised, with its loss."""

    run_id: str | None = None

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[tuple[int, float, float]] = []  # step, time, loss

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "loss" not in metrics:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append((int(step or 0), time.perf_counter(), float(metrics["loss"])))

    def log_artifact(self, path: Path) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def step_times(self) -> list[float]:
        return [b[1] - a[1] for a, b in zip(self.stamps, self.stamps[1:]) if b[0] == a[0] + 1]

    @property
    def losses(self) -> list[float]:
        return [loss for _, _, loss in self.stamps]


@dataclass
class Run:
    """One engine run and what was measured."""

    name: str
    model: str
    amp: str
    launch: str
    classes: int
    steps: int
    loss_first: float
    loss_last: float
    losses_finite: bool
    diverged_at_step: int | None
    median_step_s: float | None
    images_per_s: float | None
    tflops: float | None = None
    vs_matmul: float | None = None
    peak_memory_bytes: int | None = None
    seconds: float = 0.0
    loss_decreased: bool | None = None
    losses: list[float] = field(default_factory=list)  # every step's, as logged
    probe_loss_before: float | None = None  # the loss on a fixed probe set, before and after training
    probe_loss_after: float | None = None


def recipe_for(model: str, steps: int, cfg: TrainConfig) -> Recipe:
    return Recipe(
        name=f"gpu_check_{model}", label=f"gpu-check {model} + {HEAD}", backbone=model,
        embedding_size=EMBEDDING[model], head=HEAD, margins={}, init="scratch", weight_decay=cfg.weight_decay,
        embedding_wd_mult=cfg.embedding_wd_mult, iterations=steps, warmup_iterations=cfg.warmup_iterations,
    )


class Checker:
    """The run's state: device, sizes, data, the time guard, and every check's result."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, device: torch.device, work: Path) -> None:
        self.args, self.sizes, self.device, self.work = args, sizes, device, work
        self.started = time.perf_counter()
        self.checks: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.notes: list[str] = []
        self.result: dict[str, Any] = {}
        self.base_cfg = paper_train_config()
        self.data: Data | None = None
        self.matmul_tflops: float | None = None
        self.macs: dict[str, int] = {}
        self.trained: dict[str, nn.Module] = {}

    # time guard
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allow(self, name: str, estimate_s: float = 0.0) -> bool:
        """Start `name` only while the budget is unspent (and its estimate fits, for the long ones)."""
        if self.elapsed() + estimate_s <= self.args.budget:
            return True
        self.skipped.append(name)
        print(f"[gpu-check] time guard: {name} skipped at {self.elapsed():.0f} s", flush=True)
        return False

    def check(self, name: str, passed: bool, detail: str, **numbers: Any) -> None:
        self.checks.append({"name": name, "passed": bool(passed), "status": "pass" if passed else "FAIL",
                            "detail": detail, **numbers})
        print(f"[gpu-check] {'pass' if passed else 'FAIL'}: {name}: {detail}", flush=True)

    def section(self, name: str, body: Callable[[], None], estimate_s: float = 0.0) -> None:
        """Run one section under the time guard; an exception is a failed check, and the run goes on."""
        if not self.allow(name, estimate_s):
            return
        began = self.elapsed()
        print(f"[gpu-check] {name} ...", flush=True)
        try:
            body()
        except Exception as error:  # noqa: BLE001 -- one broken section must not hide the others' results
            tail = traceback.format_exc().strip().splitlines()[-6:]
            self.check(f"{name}: ran", False, f"{type(error).__name__}: {error}", traceback=tail)
        finally:
            self.result.setdefault("section_seconds", {})[name] = round(self.elapsed() - began, 2)
            self.release()

    def release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # the engine
    def train_cfg(self, steps: int, amp: str, **update: Any) -> TrainConfig:
        values = dict(
            device=str(self.device), batch_size=self.sizes.batch, iterations=steps, amp=amp, log_every=1,
            curve_every=0, checkpoint_every=steps, num_workers=self.sizes.num_workers, compile="none",
            channels_last=True, shard_head=False, grad_clip=None,
        )
        return self.base_cfg.model_copy(update={**values, **update})

    def engine_run(
        self, name: str, model: str, amp: str, steps: int, out_dir: Path, *, shard: bool = False,
        classes: int | None = None, stop_after: int | None = None, launch: str = "single process",
        dist_ctx: DistContext | None = None, probe: bool = False, dataset: FaceTensors | None = None, **update: Any,
    ) -> tuple[Run, TrainJob]:
        """Build the job as `runs.train_recipe` does (seeded backbone and head, `shard_head`) and train it, on
        `dataset` (default: the training set); `probe` measures the loss before and after (`probe_loss`)."""
        assert self.data is not None
        dataset = self.data.train if dataset is None else dataset
        cfg = self.train_cfg(steps, amp, shard_head=shard, **update)
        recipe = recipe_for(model, steps, cfg)
        num_classes = classes or self.data.classes
        torch.manual_seed(SEED)
        backbone = runs.build_backbone(recipe, self.sizes.crop)
        head = runs.build_head(recipe, num_classes, cfg.scale)
        if shard:
            # one process: torchrun's WORLD_SIZE=1 makes no process group (distributed.setup -> None), so the stage's
            # shard_head gets rank 0 of 1 explicitly: the sharded loss path, on one device
            stage_cfg = Config.model_construct(train=cfg)
            head = runs.shard_head(stage_cfg, recipe, head, dist_ctx or DistContext(0, 1, 0), SEED)
            if not isinstance(head, ShardedMarginHead):
                raise RuntimeError("runs.shard_head returned an unsharded head with train.shard_head set")
        description = recipe.description(SEED, self.sizes.crop, self.sizes.batch, cfg.scale)
        job = TrainJob(
            name=name, backbone=backbone, head=head, train=cfg, seed=SEED, weight_decay=recipe.weight_decay,
            embedding_wd_mult=recipe.embedding_wd_mult, description=description,
        )
        probe_set = None if dataset is self.data.train else dataset  # a dataset of its own is probed whole
        before = self.probe_loss(backbone, head, amp, probe_set) if probe else None
        clock = StepClock(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        began = time.perf_counter()
        result = train(job, dataset, out_dir, tracker=clock, stop_after=stop_after)
        self.sync()
        seconds = time.perf_counter() - began
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        run = self.summarise(name, model, amp, launch, num_classes, result, clock, seconds, peak)
        if probe:
            run.probe_loss_before, run.probe_loss_after = before, self.probe_loss(job.backbone, job.head, amp,
                                                                                  probe_set)
        return run, job

    def probe_loss(self, backbone: nn.Module, head: nn.Module, amp: str, dataset: FaceTensors | None = None) -> float:
        """Mean loss over a fixed probe set (up to 4 batches spread over the training set, or all of `dataset`),
        BatchNorm on batch statistics as in training, on copies (no running statistic changes): a loss curve free
        of batch noise."""
        assert self.data is not None
        data = self.data.train if dataset is None else dataset
        count = min(len(data), 4 * self.sizes.batch) if dataset is None else len(data)
        rows = np.linspace(0, len(data) - 1, count).round().astype(int)
        net, centres = copy.deepcopy(backbone).to(self.device).train(), copy.deepcopy(head).to(self.device)
        fmt = torch.channels_last
        total = 0.0
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16 if amp == "bf16"
                                             else torch.float16, enabled=amp != "none"):
            for start in range(0, count, self.sizes.batch):
                part = rows[start : start + self.sizes.batch]
                x = torch.stack([data[int(i)][0] for i in part]).to(self.device).contiguous(memory_format=fmt)
                y = data.labels[part].to(self.device)
                embeddings = net.to(memory_format=fmt)(x)
                if isinstance(centres, ShardedMarginHead):
                    loss = centres(embeddings, y).loss
                else:
                    loss = centres.loss(centres.logits(centres.cosine(embeddings), y), y)
                total += float(loss) * len(part)
        return total / count

    def summarise(
        self, name: str, model: str, amp: str, launch: str, classes: int, result: TrainResult, clock: StepClock,
        seconds: float, peak: int | None,
    ) -> Run:
        losses = clock.losses
        times = clock.step_times()[self.sizes.warmup_steps :]
        median = statistics.median(times) if times else None
        ips = self.sizes.batch / median if median else None
        flops = self.train_flops_per_image(model, classes)
        tflops = flops * ips / 1e12 if ips and flops else None
        k = max(1, len(losses) // 5)
        run = Run(
            name=name, model=model, amp=amp, launch=launch, classes=classes, steps=result.steps,
            loss_first=losses[0] if losses else math.nan, loss_last=losses[-1] if losses else math.nan,
            losses_finite=bool(losses) and all(math.isfinite(x) for x in losses),
            diverged_at_step=result.diverged_at_step, median_step_s=median, images_per_s=ips, tflops=tflops,
            vs_matmul=tflops / self.matmul_tflops if tflops and self.matmul_tflops else None,
            peak_memory_bytes=peak, seconds=seconds,
            loss_decreased=statistics.mean(losses[-k:]) < statistics.mean(losses[:k]) if len(losses) >= 2 else None,
            losses=[round(x, 4) for x in losses],
        )
        print(f"[gpu-check]   {name}: {run.steps} steps, loss {run.loss_first:.3f} -> {run.loss_last:.3f}, "
              f"{ips or math.nan:,.1f} images/s, {seconds:.1f} s", flush=True)
        return run

    def train_flops_per_image(self, model: str, classes: int) -> float | None:
        """3 x forward FLOPs (backward ~ 2x forward): backbone conv + matmul, and the head's cosine matmul."""
        if model not in self.macs:
            return None
        return 3.0 * (2.0 * self.macs[model] + 2.0 * EMBEDDING[model] * classes)

    def record(self, run: Run) -> None:
        self.result.setdefault("training", []).append(dataclasses.asdict(run))


# --- sections -------------------------------------------------------------------------------------------------------


def section_data(c: Checker) -> None:
    began = time.perf_counter()
    c.data = make_data(c.sizes)
    images = c.data.train.images
    c.result["data"] = {
        "train_images": len(c.data.train), "classes": c.data.classes, "crop": c.sizes.crop,
        "eval_images": len(c.data.eval_images), "pairs": len(c.data.pairs), "folds": c.sizes.eval_folds,
        "seconds": round(time.perf_counter() - began, 2),
    }
    c.check("synthetic data generated", images.shape[-1] == c.sizes.crop and len(c.data.pairs) > 0,
            f"{len(c.data.train)} train images {tuple(images.shape[1:])}, {len(c.data.pairs)} pairs, "
            f"{time.perf_counter() - began:.1f} s")


def section_matmul(c: Checker) -> None:
    n, reps = c.sizes.matmul_n, 10
    a = torch.randn(n, n, device=c.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=c.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    c.sync()
    began = time.perf_counter()
    for _ in range(reps):
        a @ b
    c.sync()
    seconds = time.perf_counter() - began
    c.matmul_tflops = 2 * n**3 * reps / seconds / 1e12
    c.result["matmul"] = {"n": n, "dtype": "bfloat16", "reps": reps, "tflops": c.matmul_tflops}
    c.check("bf16 matmul measured", c.matmul_tflops > 0, f"{n}x{n}x{n}: {c.matmul_tflops:.2f} TFLOP/s")


def section_flops(c: Checker) -> None:
    for model in c.sizes.models:
        net = models.build(model, EMBEDDING[model], c.sizes.crop, seed=SEED)
        c.macs[model] = count_macs(net, c.sizes.crop)
    c.result["flops"] = {m: {"forward_gflops": 2 * v / 1e9, "input": c.sizes.crop} for m, v in c.macs.items()}
    c.check("model FLOPs counted", all(v > 0 for v in c.macs.values()),
            ", ".join(f"{m} {2 * v / 1e9:.2f} GFLOPs" for m, v in c.macs.items()))


def section_bf16(c: Checker) -> None:
    for model in c.sizes.models:
        if not c.allow(f"bf16 {model}"):
            continue
        run, job = c.engine_run(f"{model} bf16", model, "bf16", c.sizes.long_steps, c.work / f"bf16_{model}",
                                probe=True)
        c.record(run)
        c.trained[model] = job.backbone
        c.check(f"{model} bf16: no NaN", run.losses_finite and run.diverged_at_step is None,
                f"{run.steps} steps, diverged_at={run.diverged_at_step}")
        decreased = run.probe_loss_after is not None and run.probe_loss_after < (run.probe_loss_before or -math.inf)
        detail = (f"probe-set loss {run.probe_loss_before:.3f} -> {run.probe_loss_after:.3f}; batch loss "
                  f"{run.loss_first:.3f} -> {run.loss_last:.3f}")
        if model in c.sizes.models[: c.sizes.descent_models]:
            c.check(f"{model} bf16: loss decreases", decreased, detail)
        else:  # tiny: a dozen batch-8 steps are inside the margin loss's transient (section_fixed_batch checks)
            c.notes.append(f"{model} bf16: probe-set loss decrease not required after {run.steps} steps ({detail}).")
        c.release()


def fixed_batch(c: Checker) -> FaceTensors:
    """One batch of the training set, its rows spread over it (distinct identities where there are enough)."""
    assert c.data is not None
    rows = torch.from_numpy(np.linspace(0, len(c.data.train) - 1, c.sizes.batch).round().astype(np.int64))
    return FaceTensors(c.data.train.images[rows], c.data.train.labels[rows])


def halved(before: float | None, after: float | None) -> bool:
    """after <= FIXED_BATCH_RATIO * before, both finite (descent on the data stepped on: Nesterov 2004, Lem. 1.2.3)."""
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return False
    return after <= FIXED_BATCH_RATIO * before


def section_fixed_batch(c: Checker) -> None:
    """Tiny: each model trains through the engine on one fixed batch alone (bf16); its loss on that batch must
    at least halve. It holds on any CPU's kernels, and still fails when the step does not descend (lr 0, a wrong
    gradient, an optimiser that does not step)."""
    batch = fixed_batch(c)
    for model in c.sizes.models:
        if not c.allow(f"bf16 {model} fixed batch"):
            continue
        # no flip: every step sees the very same tensors (the sampler permutes the batch; the mean loss and
        # BatchNorm's batch statistics do not depend on the order)
        run, _ = c.engine_run(f"{model} bf16 fixed batch", model, "bf16", c.sizes.fixed_batch_steps,
                              c.work / f"fixed_{model}", probe=True, dataset=batch, flip_augment=False)
        c.record(run)
        before, after = run.probe_loss_before, run.probe_loss_after
        passed = halved(before, after) and run.losses_finite and run.diverged_at_step is None
        c.check(f"{model} bf16: loss decreases on the batch it trains on", passed,
                f"loss on the fixed batch of {len(batch)} {before:.3f} -> {after:.3f} after {run.steps} steps "
                f"({after / before if before else math.nan:.2g}x; needs <= {FIXED_BATCH_RATIO}x)",
                loss_before=before, loss_after=after)
        c.release()


def section_evaluate(c: Checker) -> None:
    assert c.data is not None
    for model, backbone in c.trained.items():
        evaluation = evaluate_pairs(backbone, c.data.eval_images, c.data.pairs, device=c.device, batch_size=256,
                                    fars=(1e-2,), channels_last=True)
        metrics = evaluation.to_metrics()
        c.result.setdefault("evaluation", []).append({"model": model, **metrics})
        ok = math.isfinite(evaluation.accuracy) and evaluation.accuracy >= c.sizes.min_accuracy
        c.check(f"{model}: evaluation", ok, f"accuracy {evaluation.accuracy:.1%} (flip {evaluation.accuracy_flip:.1%}) "
                f"on {len(c.data.pairs)} pairs; needs >= {c.sizes.min_accuracy:.0%}")
    if not c.trained:
        c.check("evaluation", False, "no trained model to evaluate (the bf16 runs did not finish)")


def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load_weights(out_dir / "model.pt")
    return {**{f"backbone.{k}": v for k, v in state["backbone"].items()},
            **{f"head.{k}": v for k, v in state["head"].items()}}


def _difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[bool, float, float]:
    """(bitwise equal, ||a - b|| / ||a|| over the float tensors, max |a - b|)."""
    if a.keys() != b.keys():
        raise ValueError(f"the two runs' weights differ in keys: {sorted(a.keys() ^ b.keys())[:5]}")
    bitwise = all(torch.equal(a[k], b[k]) for k in a)
    floats = [k for k in a if a[k].is_floating_point()]
    diff = math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in floats))
    norm = math.sqrt(sum(float(a[k].double().pow(2).sum()) for k in floats))
    largest = max(float((a[k].double() - b[k].double()).abs().max()) for k in floats)
    return bitwise, diff / norm, largest


def section_resume(c: Checker) -> None:
    """Uninterrupted run vs (stop at half, rebuild everything, resume from the checkpoint): the same weights."""
    model, n = "mobilefacenet", c.sizes.resume_steps
    half = n // 2
    amp = c.base_cfg.amp  # the paper profile's precision
    caught: list[warnings.WarningMessage] = []
    deterministic = c.args.deterministic and c.device.type == "cuda"
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            c.engine_run("resume: uninterrupted", model, amp, n, c.work / "resume_full", checkpoint_every=half)
            c.engine_run("resume: stopped", model, amp, n, c.work / "resume_cut", checkpoint_every=half,
                         stop_after=half)
            c.engine_run("resume: resumed", model, amp, n, c.work / "resume_cut", checkpoint_every=half)
            reference = None
            if c.device.type == "cuda":  # what the kernels' own non-determinism gives
                c.engine_run("resume: reference", model, amp, n, c.work / "resume_ref", checkpoint_every=half)
                reference = _difference(_weights(c.work / "resume_full"), _weights(c.work / "resume_ref"))
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(False)
    resumed_from = json.loads((c.work / "resume_cut" / "train.json").read_text())["resumed_from_steps"]
    bitwise, rel, largest = _difference(_weights(c.work / "resume_full"), _weights(c.work / "resume_cut"))
    nondeterministic_ops = sorted({str(w.message).split(" does not have a deterministic")[0][:120]
                                   for w in caught if "deterministic" in str(w.message)})
    if c.device.type == "cpu":
        passed, bound = bitwise, "bitwise"
    else:
        limit = max(RESUME_BOUND, 4 * reference[1]) if reference else RESUME_BOUND
        passed, bound = bitwise or rel <= limit, f"bitwise, or relative difference <= {limit:.2e}"
    passed = passed and resumed_from == [half]
    c.result["resume"] = {
        "model": model, "amp": amp, "steps": n, "stopped_at": half, "resumed_from_steps": resumed_from,
        "bitwise": bitwise, "relative_difference": rel, "max_abs_difference": largest, "bound": bound,
        "deterministic_algorithms": deterministic,
        "reference_bitwise": reference[0] if reference else None,
        "reference_relative_difference": reference[1] if reference else None,
        "nondeterministic_ops": nondeterministic_ops,
        "note": (
            f"{model}, {amp}, {n} steps with a checkpoint at {half}: stopped after step {half} "
            f"(`train(stop_after=...)`), every object rebuilt, resumed from the checkpoint (resumed_from_steps "
            f"{resumed_from}). Against the uninterrupted run: bitwise {'equal' if bitwise else 'different'}, relative "
            f"difference {rel:.2e}, largest {largest:.2e}. Required: {bound}."
            + (f" Two uninterrupted runs differ by {reference[1]:.2e} (bitwise {reference[0]}): the kernels' own "
               "non-determinism." if reference else "")
            + (" torch.use_deterministic_algorithms(True, warn_only=True) was on; ops without a deterministic "
               f"implementation: {', '.join(nondeterministic_ops) or 'none'}." if deterministic else
               (" `--deterministic` turns on torch.use_deterministic_algorithms for this check."
                if c.device.type == "cuda" else ""))
        ),
    }
    c.check("checkpoint + stop + resume = uninterrupted", passed,
            f"resumed from {resumed_from}, bitwise {bitwise}, relative difference {rel:.2e} ({bound})")


def section_short(c: Checker) -> None:
    for amp in ("fp16", "fp32"):
        for model in c.sizes.models[: c.sizes.fp16_models] if amp == "fp16" else c.sizes.models:
            if not c.allow(f"{amp} {model}"):
                continue
            engine_amp = "none" if amp == "fp32" else amp
            run, _ = c.engine_run(f"{model} {amp}", model, engine_amp, c.sizes.short_steps,
                                  c.work / f"{amp}_{model}")
            run.amp = amp
            c.record(run)
            c.check(f"{model} {amp}: no NaN", run.losses_finite and run.diverged_at_step is None,
                    f"{run.steps} steps, loss {run.loss_first:.3f} -> {run.loss_last:.3f}"
                    + (" (GradScaler)" if amp == "fp16" else ""))
            c.release()


def section_torchrun(c: Checker) -> None:
    """The same engine runs under `torchrun --nproc_per_node 1` with train.shard_head, in a child process."""
    assert c.data is not None
    torch.save({"images": c.data.train.images, "labels": c.data.train.labels, "classes": c.data.classes,
                "macs": c.macs, "matmul_tflops": c.matmul_tflops}, c.work / "train_set.pt")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "bench.gpu_check",
        "--worker", "--device", c.args.device, "--work", str(c.work), *(["--tiny"] if c.args.tiny else []),
    ]
    timeout = max(60.0, c.args.budget - c.elapsed() + 60.0)
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    out = c.work / "torchrun.json"
    if completed.returncode != 0 or not out.is_file():
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-15:]
        c.check("torchrun --nproc_per_node 1, sharded head: ran", False, f"exit {completed.returncode}",
                output=tail)
        return
    worker = json.loads(out.read_text())
    launch = worker["launch"]
    for run in worker["runs"]:
        c.record(Run(**run))
        c.check(f"{run['model']} torchrun sharded: no NaN", run["losses_finite"] and run["diverged_at_step"] is None,
                f"{run['steps']} steps at {run['classes']:,} classes, loss {run['loss_first']:.3f} -> "
                f"{run['loss_last']:.3f}, {run['images_per_s'] or math.nan:,.0f} images/s")
    c.result["torchrun"] = {"command": shlex.join(command), **launch}
    c.check("torchrun --nproc_per_node 1: launched, head sharded", launch["launched"] and launch["sharded"],
            f"RANK={launch['env'].get('RANK')} WORLD_SIZE={launch['env'].get('WORLD_SIZE')}, head "
            f"{launch['head']}")


def torchrun_worker(args: argparse.Namespace) -> None:
    """Child of torchrun: the bf16 runs with the sharded head at the torchrun class count; writes torchrun.json."""
    sizes = TINY if args.tiny else FULL
    ctx, device = distributed.setup(torch.device(args.device))
    c = Checker(args, sizes, device, args.work)
    saved = torch.load(args.work / "train_set.pt", weights_only=False)
    c.data = Data(FaceTensors(saved["images"], saved["labels"]), saved["classes"], np.empty(0), None)
    c.macs, c.matmul_tflops = saved["macs"], saved["matmul_tflops"]
    env = {k: os.environ.get(k) for k in distributed.LAUNCH_VARIABLES}
    runs_out, head_repr = [], ""
    for model in sizes.models:
        run, job = c.engine_run(f"{model} bf16 torchrun sharded", model, "bf16", sizes.torchrun_steps,
                                args.work / f"torchrun_{model}", shard=True, classes=sizes.torchrun_classes,
                                launch="torchrun 1 proc", dist_ctx=ctx)
        head_repr = f"{type(job.head).__name__}({job.head.extra_repr()})"
        runs_out.append(dataclasses.asdict(run))
        c.release()
    launch = {"launched": env["RANK"] is not None and env["WORLD_SIZE"] is not None, "env": env,
              "process_group": ctx is not None, "sharded": "ShardedMarginHead" in head_repr, "head": head_repr}
    write_json_atomic(args.work / "torchrun.json", {"launch": launch, "runs": runs_out})
    distributed.shutdown(ctx)


@functools.wraps(sharded_module.init_centres)
def _device_centres(num_classes: int, embedding_size: int, start: int, stop: int, seed: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    # the library draws centres on the CPU in seeded blocks (minutes at millions of classes); memory is what is
    # measured here, so the centres are drawn on the device
    return torch.empty(stop - start, embedding_size, device=device).normal_(0.0, sharded_module.INIT_STD)


def _head_steps(c: Checker, classes: int) -> None:
    """Two SGD steps (momentum allocated) of a sharded li_arcface head at `classes` x 512, bf16 autocast."""
    with mock.patch.object(sharded_module, "init_centres", _device_centres):
        head = ShardedMarginHead(HEAD, 512, classes, rank=0, world_size=1, seed=SEED, device=c.device)
    optimizer = make_optimizer([{"params": [head.weight]}], 0.1, 0.9, c.device)
    x = torch.randn(c.sizes.batch, 512, device=c.device, requires_grad=True)
    y = torch.randint(0, classes, (c.sizes.batch,), device=c.device)
    for step in range(2):
        with torch.autocast(device_type=c.device.type, dtype=torch.bfloat16):
            loss = head(x, y, step).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    c.sync()


def section_max_classes(c: Checker) -> None:
    """Grow the class count (doubling, then bisecting) until a step runs out of device memory."""
    if c.device.type != "cuda" or not c.sizes.max_classes_start:
        note = "Not measured on CPU (it needs a GPU's memory to exhaust); run `--device cuda`."
        c.result["max_classes"] = {"classes": None, "note": note}
        c.notes.append(note)
        return
    tried: list[tuple[int, bool]] = []

    def fits(classes: int) -> bool:
        try:
            _head_steps(c, classes)
            ok = True
        except torch.cuda.OutOfMemoryError:
            ok = False
        c.release()
        tried.append((classes, ok))
        print(f"[gpu-check]   {classes:,} classes: {'fits' if ok else 'out of memory'}", flush=True)
        return ok

    low, high = 0, None
    classes = c.sizes.max_classes_start
    while high is None and classes <= 256_000_000 and c.elapsed() < c.args.budget:
        if fits(classes):
            low, classes = classes, classes * 2
        else:
            high = classes
    for _ in range(4):  # to within 1/16 of the last doubling
        if high is None or c.elapsed() >= c.args.budget:
            break
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    total = torch.cuda.get_device_properties(c.device).total_memory
    note = (
        f"The sharded li_arcface head (rank 0 of 1) at 512-d, batch {c.sizes.batch}, bf16 autocast, two SGD steps "
        f"with momentum: largest that fit **{low:,} classes**"
        + (f", out of memory at {high:,}" if high else " (no out-of-memory reached)")
        + f", on {total / 2**30:.0f} GiB (the backbone's activations not included; tried: "
        + ", ".join(f"{n:,} {'ok' if ok else 'OOM'}" for n, ok in tried) + ")."
    )
    c.result["max_classes"] = {"classes": low, "out_of_memory_at": high, "tried": tried, "note": note}
    c.check("sharded head capacity at 512-d measured", low > 0, f"{low:,} classes fit, OOM at {high or 'n/a'}")


def section_settings(c: Checker) -> None:
    """The step alone (a resident batch, no data loading) under channels_last and the compile modes, bf16."""
    assert c.data is not None
    images = torch.stack([c.data.train[i][0] for i in range(c.sizes.batch)]).to(c.device)
    labels = c.data.train.labels[: c.sizes.batch].to(c.device)
    variants = [("contiguous", "none"), *(("channels_last", mode) for mode in c.sizes.compile_modes)]
    for model in c.sizes.models:
        reference: float | None = None
        reference_ips: float | None = None
        for memory_format, mode in variants:
            estimate = (90.0 if model == "iresnet50" else 60.0) if mode == "backbone" else 0.0
            if not c.allow(f"settings {model} {memory_format} compile={mode}", estimate):
                continue
            fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
            backbone = models.build(model, EMBEDDING[model], c.sizes.crop, seed=SEED, device=c.device)
            backbone = backbone.to(memory_format=fmt)
            torch.manual_seed(SEED)
            head = heads.build(HEAD, EMBEDDING[model], c.data.classes, device=c.device)
            groups = parameter_groups(backbone, backbone.embedding_layers(), list(head.parameters()),
                                      c.base_cfg.weight_decay, c.base_cfg.embedding_wd_mult)
            optimizer = make_optimizer(groups, c.base_cfg.lr, c.base_cfg.momentum, c.device)
            net = compile_for_training(backbone, mode)  # type: ignore[arg-type]
            x = images.contiguous(memory_format=fmt)

            def step() -> float:
                with torch.autocast(device_type=c.device.type, dtype=torch.bfloat16):
                    loss = head.loss(head.logits(head.cosine(net(x)), labels), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                return float(loss.detach())

            began = time.perf_counter()
            first_loss = step()
            for _ in range(c.sizes.setting_warmup - 1):
                step()
            c.sync()
            warmup_s = time.perf_counter() - began
            times = []
            for _ in range(c.sizes.setting_steps):
                began = time.perf_counter()
                step()
                c.sync()
                times.append(time.perf_counter() - began)
            median = statistics.median(times)
            ips = c.sizes.batch / median
            reference = first_loss if reference is None else reference
            reference_ips = ips if reference_ips is None else reference_ips
            close = math.isfinite(first_loss) and abs(first_loss - reference) <= SETTINGS_LOSS_TOL * abs(reference)
            c.result.setdefault("settings", []).append({
                "model": model, "memory_format": memory_format, "compile": mode, "warmup_s": warmup_s,
                "median_step_s": median, "images_per_s": ips, "speedup": ips / reference_ips,
                "first_loss": first_loss,
            })
            c.check(f"{model} {memory_format} compile={mode}", close,
                    f"{ips:,.0f} images/s ({ips / reference_ips:.2f}x the first row), first loss {first_loss:.3f} "
                    f"vs {reference:.3f}")
            del backbone, head, optimizer, net
            c.release()
    if "backbone" not in c.sizes.compile_modes:
        c.result["settings_note"] = ("compile=activations and compile=backbone are measured on CUDA only (inductor on "
                                     "this CPU costs minutes); `--tiny` checks the memory formats.")


def published_comparison(c: Checker) -> None:
    rows = []
    runs_by_name = {run["name"]: run for run in c.result.get("training", [])}
    for (published, figure), model in zip(PUBLISHED_PER_V100.items(), c.sizes.models):  # by role: mbf, r50
        run = runs_by_name.get(f"{model} bf16")
        if run and run["images_per_s"]:
            rows.append({"ours": f"{model} bf16, engine, 1 device", "images_per_s": run["images_per_s"],
                         "published": f"{published}: {figure:,.0f} per V100",
                         "ratio": f"{run['images_per_s'] / figure:.2f}x"})
    run = runs_by_name.get(f"{c.sizes.models[1]} bf16 torchrun sharded")
    if run and run["images_per_s"]:
        low, high = PARTIALFC_8_V100
        ips = run["images_per_s"]
        rows.append({"ours": f"{run['model']} sharded head, {run['classes']:,} classes, torchrun 1 device",
                     "images_per_s": ips, "published": f"PartialFC {low:,.0f}-{high:,.0f} on 8 V100, "
                     f"{PARTIALFC_CLASSES:,} ids", "ratio": f"{ips / high:.2f}-{ips / low:.2f}x of 8 GPUs; "
                     f"{ips / (high / 8):.1f}-{ips / (low / 8):.1f}x per GPU"})
    note = PUBLISHED_NOTE
    if c.args.tiny or c.device.type != "cuda":
        note += " This run is not the 112x112, batch-256 GPU setting: its ratios say nothing about speed."
    c.result["published"] = {"rows": rows, "note": note}


# --- main -----------------------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="crop 32, batch 8, a handful of steps (the CPU test)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "bench",
                        help="folder for gpu_check.json and gpu_check.md (default reports/bench)")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds after which no new section starts (default 330)")
    parser.add_argument("--deterministic", action="store_true",
                        help="resume check under torch.use_deterministic_algorithms (CUDA)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the torchrun child
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.deterministic:  # cuBLAS reads it when its first handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: --device {args.device} but CUDA is not available here (torch {torch.__version__}); "
              "use --device cpu --tiny for the CPU run", file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        print(f"gpu-check: --device must be cuda, cuda:N or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    if args.worker:
        torchrun_worker(args)
        return 0
    sizes = TINY if args.tiny else FULL
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        c = Checker(args, sizes, device, work)
        c.section("data", lambda: section_data(c))  # first: it forks renderers before CUDA starts
        if c.data is None:
            c.check("synthetic data generated", False, "no training set: nothing else can run")
        else:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            c.section("matmul", lambda: section_matmul(c))
            c.section("flops", lambda: section_flops(c))
            c.section("train bf16", lambda: section_bf16(c))
            if sizes.fixed_batch_steps:
                c.section("train bf16 on a fixed batch", lambda: section_fixed_batch(c))
            c.section("evaluate", lambda: section_evaluate(c))
            c.section("resume", lambda: section_resume(c))
            c.section("train fp16 and fp32", lambda: section_short(c))
            c.section("torchrun sharded", lambda: section_torchrun(c), estimate_s=0.0 if args.tiny else 40.0)
            c.section("max classes", lambda: section_max_classes(c), estimate_s=0.0 if args.tiny else 20.0)
            c.section("settings", lambda: section_settings(c))
            published_comparison(c)
    failed = [check["name"] for check in c.checks if not check["passed"]]
    passed = not failed
    c.notes += [
        "One process under torchrun has WORLD_SIZE=1, for which `distributed.setup` makes no process group and no "
        "DDP wrapper: the run proves the launcher path and the sharded loss (rank 0 of 1 via `runs.shard_head`), "
        "not NCCL; that needs 2+ GPUs.",
        "Engine images/s include the engine's data path (loader, the flip on the CPU, pinned copy) and its "
        "per-step synchronisations; the settings table times the step alone.",
    ]
    summary = (f"{len(c.checks) - len(failed)} of {len(c.checks)} checks passed"
               + (f"; failed: {', '.join(failed)}" if failed else "")
               + (f"; skipped by the time guard: {', '.join(c.skipped)}" if c.skipped else ""))
    result = {
        "passed": passed,
        "summary": summary,
        "profile": "tiny" if args.tiny else "full",
        "profile_note": (
            f"crop {sizes.crop}, batch {sizes.batch}, {sizes.identities} identities x {sizes.images_per_identity} "
            f"images, bf16 {sizes.long_steps} steps, fp16/fp32 {sizes.short_steps}, resume {sizes.resume_steps}, "
            f"torchrun {sizes.torchrun_steps} at {sizes.torchrun_classes:,} classes."
            + (f" Loss descent: {sizes.fixed_batch_steps} bf16 steps on one fixed batch." if sizes.fixed_batch_steps
               else "")
            + (" CPU-tiny: a test that the path runs, not a GPU result." if args.tiny else "")
        ),
        "command": "bash scripts/gpu-check " + shlex.join(sys.argv[1:] if argv is None else argv),
        "budget_s": args.budget,
        "seconds": c.elapsed(),
        "skipped": c.skipped,
        "machine": describe_machine(device),
        "sizes": dataclasses.asdict(sizes),
        "train_config": c.base_cfg.model_dump(),
        "checks": c.checks,
        "notes": c.notes,
        **c.result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "gpu_check.json", result)
    write_text_atomic(args.out / "gpu_check.md", render(result))
    print(f"[gpu-check] {'PASSED' if passed else 'FAILED'}: {summary}; wrote {args.out / 'gpu_check.json'} and "
          f"gpu_check.md in {c.elapsed():.0f} s", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
