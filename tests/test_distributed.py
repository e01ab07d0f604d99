"""Multi-process training helpers: launch variables, rank batch slices, and 2 gloo processes training MobileFaceNet.

The 2-process runs use the engine's pieces (parameter groups, optimiser, order, flips) with the helpers of
`pipeline.train.distributed`. With BatchNorm in training mode the ranks must end with identical weights. With BatchNorm
frozen (eval mode: per-sample forward), 2 ranks on slices of the global batch must reproduce one process on the whole
batch, for a replicated head (DDP average + head-gradient average) and for a sharded head (DDP sum).
"""
from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from pipeline import heads, models

from pipeline.core import config
from pipeline.core.config import TrainConfig
from pipeline.heads.sharded import ShardedMarginHead, init_centres
from pipeline.train import checkpoint, distributed
from pipeline.train.distributed import DistContext, RankBatchSampler, context_from_env, rank_flip_mask
from pipeline.train.engine import TrainJob, train
from pipeline.train.optim import make_optimizer, parameter_groups
from pipeline.train.order import StepBatchSampler, flip_mask

torch.set_num_threads(1)

WORLD = 2
SIZE = 32
EMB = 16
CLASSES = 7  # uneven shards: 4 + 3
GLOBAL_BATCH = 16
STEPS = 3
SEED = 11
LR = 0.05


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(SEED)
    labels = torch.arange(40) % CLASSES
    images = torch.randn(40, 3, SIZE, SIZE, generator=generator) * 0.5 + labels[:, None, None, None] * 0.1
    return TensorDataset(images, labels)


def run(ctx: DistContext | None, mode: str, train_bn: bool) -> dict:
    """A few SGD steps as the engine takes them. With frozen BatchNorm (`train_bn` False), every step first computes
    the single-process reference on the whole global batch at the current weights (plain head, no helpers), and
    records how far this rank's reduced gradients are from it, relative to the reference's largest gradient."""
    device = torch.device("cpu")
    data = dataset()
    backbone = models.build("mobilefacenet", embedding_size=EMB, input_size=SIZE, seed=SEED)
    backbone = backbone.to(memory_format=torch.channels_last)
    if not train_bn:
        freeze_batchnorm(backbone, data.tensors[0])
    sharded = mode == "sharded"
    if sharded:
        head = sharded_head(ctx, SEED)
    else:
        head = heads.build("li_arcface", EMB, CLASSES, s=16.0)
        with torch.no_grad():
            head.weight.copy_(init_centres(CLASSES, EMB, 0, CLASSES, SEED))
    model = distributed.wrap_backbone(backbone, ctx, device, sum_gradients=sharded)
    groups = parameter_groups(backbone, backbone.embedding_layers(), list(head.parameters()), 5e-4, 10.0)
    optimizer = make_optimizer(groups, LR, 0.9, device)
    sampler = distributed.batch_sampler(len(data), GLOBAL_BATCH, SEED, 0, STEPS, ctx)
    global_batches = StepBatchSampler(len(data), GLOBAL_BATCH, SEED, 0, STEPS)
    model.train(train_bn)
    errors = []
    for step, (indices, global_indices) in enumerate(zip(sampler, global_batches)):
        reference = None if train_bn else single_process_step(backbone, full_weight(head), data, global_indices, step)
        images, labels = data[indices]
        mask = rank_flip_mask(GLOBAL_BATCH, SEED, step, ctx)
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
        embeddings = model(images.contiguous(memory_format=torch.channels_last))
        loss = head(embeddings, labels, step).loss if sharded else head(embeddings, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not sharded:
            distributed.average_gradients_(head.parameters(), ctx)
        if reference is not None:
            ref_loss, ref_backbone, ref_head = reference
            rows = slice(head.start, head.stop) if sharded else slice(None)
            got_loss = distributed.mean_over_ranks(float(loss), ctx, device) if not sharded else float(loss)
            errors.append({
                "loss": abs(got_loss - ref_loss) / abs(ref_loss),
                "backbone": relative_error(flat_grads(backbone), ref_backbone),
                "head": relative_error(head.weight.grad, ref_head[rows]),
            })
        optimizer.step()
    return {
        "backbone": torch.cat([p.detach().reshape(-1) for p in backbone.parameters()]),
        "head": full_weight(head),
        "errors": errors,
        "state": state_round_trip(backbone, head, optimizer, ctx),
    }


def state_round_trip(backbone: torch.nn.Module, head: torch.nn.Module, optimizer, ctx: DistContext) -> dict:
    """The checkpointed head and optimiser state (one process's shapes), and a fresh rank's copy loaded from it."""
    head_state, optimizer_state = distributed.full_training_state(head, optimizer)
    if isinstance(head, ShardedMarginHead):
        fresh = sharded_head(ctx, SEED + 1)
    else:
        fresh = heads.build("li_arcface", EMB, CLASSES, s=16.0)
    groups = parameter_groups(backbone, backbone.embedding_layers(), list(fresh.parameters()), 5e-4, 10.0)
    fresh_optimizer = make_optimizer(groups, LR, 0.9, torch.device("cpu"))
    distributed.load_training_state(fresh, fresh_optimizer, head_state, optimizer_state)
    centres = len(groups[0]["params"]) - 1  # the head's centres close the "body" group (optim.parameter_groups)
    return {
        "weight": head_state["weight"],
        "momentum": optimizer.state[head.weight]["momentum_buffer"].clone(),
        "saved_momentum": optimizer_state["state"][centres]["momentum_buffer"],
        "loaded_weight": fresh.weight.detach().clone(),
        "loaded_momentum": fresh_optimizer.state[fresh.weight]["momentum_buffer"].clone(),
    }


def sharded_head(ctx: DistContext, seed: int) -> ShardedMarginHead:
    return ShardedMarginHead("li_arcface", EMB, CLASSES, rank=ctx.rank, world_size=ctx.world_size, seed=seed, s=16.0)


def full_weight(head: torch.nn.Module) -> torch.Tensor:
    return head.full_weight() if isinstance(head, ShardedMarginHead) else head.weight.detach().clone()


def flat_grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


def single_process_step(
    backbone: torch.nn.Module, weight: torch.Tensor, data: TensorDataset, indices: list[int], step: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Loss and gradients of one process on the whole global batch (its flips from `order.flip_mask`)."""
    model = copy.deepcopy(backbone).eval()
    head = heads.build("li_arcface", EMB, CLASSES, s=16.0)
    with torch.no_grad():
        head.weight.copy_(weight)
    images, labels = data[indices]
    mask = flip_mask(GLOBAL_BATCH, SEED, step)
    images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    loss = head(model(images.contiguous(memory_format=torch.channels_last)), labels)
    loss.backward()
    return float(loss), flat_grads(model), head.weight.grad


def freeze_batchnorm(backbone: torch.nn.Module, images: torch.Tensor) -> None:
    """Running statistics := the statistics of `images` (the same in every process): eval-mode BatchNorm is then a
    per-sample affine map of sane scale, so a batch split over ranks must give the whole batch's gradients."""
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    with torch.no_grad():
        backbone.train()(images.contiguous(memory_format=torch.channels_last))


MODES = [("replicated", True), ("sharded", True), ("replicated", False), ("sharded", False)]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    ctx, _ = distributed.setup(torch.device("cpu"))
    try:
        results = {(mode, train_bn): run(ctx, mode, train_bn) for mode, train_bn in MODES}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        distributed.shutdown(ctx)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_ranks_end_with_identical_weights(two_ranks, mode):
    first, second = (r[(mode, True)] for r in two_ranks)
    assert torch.equal(first["backbone"], second["backbone"])
    assert torch.equal(first["head"], second["head"])
    start = models.build("mobilefacenet", EMB, SIZE, seed=SEED)
    initial = torch.cat([p.detach().reshape(-1) for p in start.parameters()])
    assert not torch.allclose(first["backbone"], initial)  # the steps really trained


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_two_ranks_reproduce_one_process(two_ranks, mode):
    for rank, result in enumerate(two_ranks):
        errors = result[(mode, False)]["errors"]
        assert len(errors) == STEPS
        for step, error in enumerate(errors):
            # float32 sums in another order: a few 1e-6 of the largest gradient. An average where a sum is due
            # (or the reverse) is off by 0.5 or more.
            assert error["loss"] < 1e-5 and error["backbone"] < 2e-5 and error["head"] < 2e-5, (rank, step, error)


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_checkpoint_state_has_one_process_shapes_and_loads_back(two_ranks, mode):
    start = 0
    for rank, result in enumerate(two_ranks):
        state = result[(mode, True)]["state"]
        assert state["weight"].shape == (CLASSES, EMB)  # the whole head, whatever the number of ranks
        assert state["saved_momentum"].shape == (CLASSES, EMB)
        rows = state["momentum"].shape[0]
        assert rows == (CLASSES if mode == "replicated" else [4, 3][rank])
        own = slice(0, CLASSES) if mode == "replicated" else slice(start, start + rows)
        torch.testing.assert_close(state["saved_momentum"][own], state["momentum"], rtol=0, atol=0)
        torch.testing.assert_close(state["loaded_weight"], state["weight"][own], rtol=0, atol=0)
        torch.testing.assert_close(state["loaded_momentum"], state["momentum"], rtol=0, atol=0)
        start += rows


# --- single-process pieces ----------------------------------------------------------------------------------------


def test_rank_slices_tile_the_global_batches():
    ctxs = [DistContext(r, 4, r) for r in range(4)]
    whole = list(StepBatchSampler(30, 8, seed=2, start_step=3, total_steps=11))  # crosses epochs (3 batches each)
    parts = [list(RankBatchSampler(30, 8, 2, 3, 11, ctx)) for ctx in ctxs]
    assert all(len(p) == len(whole) == 8 for p in parts)
    for step, batch in enumerate(whole):
        assert sum((p[step] for p in parts), []) == batch
    assert torch.equal(torch.cat([rank_flip_mask(8, 2, 5, ctx) for ctx in ctxs]), flip_mask(8, 2, 5))


def test_global_batch_must_split_evenly():
    with pytest.raises(ValueError, match="train.batch_size=10 .* multiple of the 4 processes"):
        RankBatchSampler(40, 10, 0, 0, 5, DistContext(0, 4, 0))


def test_launch_variables():
    full = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert context_from_env({}) is None
    assert context_from_env(full) == DistContext(1, 2, 1)
    assert context_from_env({**full, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    with pytest.raises(ValueError, match="MASTER_PORT not"):
        context_from_env({k: v for k, v in full.items() if k != "MASTER_PORT"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        context_from_env({**full, "WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        context_from_env({**full, "RANK": "2"})
    assert distributed.setup(torch.device("cpu"), environ={}) == (None, torch.device("cpu"))
    assert distributed.writes(None) and distributed.writes(DistContext(0, 2, 0))
    assert not distributed.writes(DistContext(1, 2, 1))


# --- the engine under 2 gloo processes ------------------------------------------------------------------------------


class NoNormNet(torch.nn.Module):
    """A backbone without BatchNorm, whose forward is per sample: a batch split over ranks must then train exactly as
    the whole batch in one process (up to float summation order)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(SEED)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.linear = torch.nn.Linear(8, EMB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    def embedding_layers(self) -> list[torch.nn.Module]:
        return [self.linear]


ENGINE_STEPS = 5  # 2.5 epochs of 40 images in global batches of 16


def train_config(**fields) -> TrainConfig:
    """params.yaml's cpu train section (the one source of defaults), curves off, eager (compiling has its own
    tests), with the test's fields."""
    return TrainConfig(**{**config.load(profile="cpu").train.model_dump(), "curve_every": 0, "compile": "none", **fields})


def engine_job(mode: str, ctx: DistContext | None, lr: float = LR) -> TrainJob:
    """The same job for any number of processes; `mode` sharded splits the centres over the ranks."""
    if mode == "sharded":
        head: torch.nn.Module = sharded_head(ctx, SEED)
        head.load_full_weight(init_centres(CLASSES, EMB, 0, CLASSES, SEED))
    else:
        head = heads.build("li_arcface", EMB, CLASSES, s=16.0)
        with torch.no_grad():
            head.weight.copy_(init_centres(CLASSES, EMB, 0, CLASSES, SEED))
    cfg = train_config(
        batch_size=GLOBAL_BATCH, iterations=ENGINE_STEPS, lr=lr, checkpoint_every=2, log_every=1, device="cpu"
    )
    return TrainJob("ddp", NoNormNet(), head, cfg, seed=SEED, weight_decay=5e-4, embedding_wd_mult=10.0,
                    description={"test": "ddp"})


def _engine_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    ctx, _ = distributed.setup(torch.device("cpu"))
    out = Path(out_dir)
    try:
        for mode in ("replicated", "sharded"):
            train(engine_job(mode, ctx), dataset(), out / mode / "whole")
            train(engine_job(mode, ctx), dataset(), out / mode / "killed", stop_after=3)  # last checkpoint: step 2
            train(engine_job(mode, ctx), dataset(), out / mode / "killed")  # every rank resumes from rank 0's file
        diverged = train(engine_job("sharded", ctx, lr=1e30), dataset(), out / "diverged")
        torch.save(diverged, out / f"diverged_rank{rank}.pt")
    finally:
        distributed.shutdown(ctx)


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engine")
    mp.spawn(_engine_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    train(engine_job("replicated", None), dataset(), out / "single")
    return out


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load_weights(run_dir / "model.pt")
    return {f"{part}.{key}": value for part in ("backbone", "head") for key, value in state[part].items()}


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_engine_on_two_ranks_trains_as_one_process(engine_runs, mode):
    single, ranks = _state(engine_runs / "single"), _state(engine_runs / mode / "whole")
    assert single.keys() == ranks.keys() and ranks["head.weight"].shape == (CLASSES, EMB)  # gathered centres
    start = NoNormNet().state_dict()
    for key, value in single.items():
        # float32 sums in another order, over 5 steps: ~1e-6 relative. A slice's gradient where the global batch's
        # is due, or a sum where a mean is, is off by tens of percent.
        tolerance = {"rtol": 1e-4, "atol": 1e-5 * float(value.abs().max())}
        torch.testing.assert_close(ranks[key], value, **tolerance, msg=lambda m, key=key: f"{key}: {m}")
    assert not torch.allclose(single["backbone.linear.weight"], start["linear.weight"])  # it really trained
    one = json.loads((engine_runs / "single" / "train.json").read_text())
    two = json.loads((engine_runs / mode / "whole" / "train.json").read_text())
    assert two["steps"] == one["steps"] == ENGINE_STEPS
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)
    assert two["final_train_accuracy"] == pytest.approx(one["final_train_accuracy"])


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_engine_on_two_ranks_resumes_bitwise(engine_runs, mode):
    whole, resumed = _state(engine_runs / mode / "whole"), _state(engine_runs / mode / "killed")
    for key, value in whole.items():
        assert torch.equal(resumed[key], value), key
    assert not (engine_runs / mode / "killed" / "checkpoint.pt").exists()


def test_engine_ranks_agree_on_divergence(engine_runs):
    results = [torch.load(engine_runs / f"diverged_rank{r}.pt", weights_only=False) for r in range(WORLD)]
    steps = {result.diverged_at_step for result in results}
    assert len(steps) == 1 and None not in steps
    record = json.loads((engine_runs / "diverged" / "train.json").read_text())
    assert record["diverged_at_step"] == results[0].diverged_at_step
