"""Multi-process training under `torchrun --nproc_per_node=N`: the process group, the DDP backbone, each rank's slice
of every global batch, and the agreements ranks must reach (divergence, metrics) so that none waits forever.

Conventions:
- `train.batch_size` is the GLOBAL batch. Rank r takes the r-th of N equal consecutive slices of each global batch
  (and the same slice of its flip mask), so N processes see exactly the images one process would, in the same
  order, and a resumed run continues the same sequence.
- Two ways to treat the margin head:
  replicated (default): every rank holds all of W and computes the loss of its own slice; DDP averages the backbone
  gradients and `average_gradients_` the head's, which together give the global-batch gradient.
  sharded (`pipeline.heads.sharded.ShardedMarginHead`): every rank holds a block of W and computes the loss of the
  whole global batch; each rank's backbone gradient is its share of the global one, so DDP must SUM
  (`wrap_backbone(..., sum_gradients=True)`).
- BatchNorm statistics stay per rank (as in plain data-parallel multi-GPU training without SyncBatchNorm).
  DDP broadcasts rank 0's buffers before each forward, so rank 0's checkpoint is the run's state.
- Rank 0 alone writes files and logs metrics (`writes`).
"""
# No `from __future__ import annotations`: DDP checks the comm hook's `bucket` annotation at run time.
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.heads.sharded import ShardedMarginHead
from pipeline.train.order import StepBatchSampler, flip_mask

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int


def context_from_env(environ: Mapping[str, str] | None = None) -> DistContext | None:
    """The launcher's rank layout (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or None
    for a plain single-process run (no variable set, or WORLD_SIZE=1)."""
    environ = os.environ if environ is None else environ
    present = [name for name in LAUNCH_VARIABLES if name in environ]
    if not present:
        return None
    missing = [name for name in LAUNCH_VARIABLES if name not in environ]
    if missing:
        raise ValueError(
            f"multi-process launch variables are incomplete: {', '.join(present)} set but {', '.join(missing)} not "
            "(start with `torchrun --nproc_per_node=N -m stages.train ...`)"
        )
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        try:
            values[name] = int(environ[name])
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got {environ[name]!r}") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise ValueError(
            f"need 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got RANK={values['RANK']}, "
            f"WORLD_SIZE={values['WORLD_SIZE']}, LOCAL_RANK={values['LOCAL_RANK']}"
        )
    if values["WORLD_SIZE"] == 1:
        return None
    return DistContext(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def setup(
    device: torch.device, environ: Mapping[str, str] | None = None, timeout_s: float = 1800.0
) -> tuple[DistContext | None, torch.device]:
    """Join the launcher's process group (nccl for CUDA, gloo otherwise) and return the device this rank trains on
    (cuda:LOCAL_RANK for CUDA). A single-process run returns (None, device) and touches nothing."""
    ctx = context_from_env(environ)
    if ctx is None:
        return None, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method="env://",
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    return ctx, device


def shutdown(ctx: DistContext | None) -> None:
    if ctx is not None and dist.is_initialized():
        dist.destroy_process_group()


def writes(ctx: DistContext | None) -> bool:
    """Whether this process writes checkpoints, model files, metrics and tracking (rank 0, or a single process)."""
    return ctx is None or ctx.rank == 0


def local_batch_size(batch_size: int, ctx: DistContext | None) -> int:
    """Images per rank and step: the global `train.batch_size` split evenly over the ranks."""
    if ctx is None:
        return batch_size
    if batch_size % ctx.world_size:
        raise ValueError(
            f"train.batch_size={batch_size} (the global batch) must be a multiple of the {ctx.world_size} processes"
        )
    return batch_size // ctx.world_size


class RankBatchSampler(StepBatchSampler):
    """`StepBatchSampler`'s global batches, of which this rank yields its slice (rank r: the r-th of N equal parts)."""

    def __init__(
        self, num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int, ctx: DistContext
    ) -> None:
        super().__init__(num_items, batch_size, seed, start_step, total_steps)
        self.part = local_batch_size(batch_size, ctx)
        self.rank = ctx.rank

    def __iter__(self) -> Iterator[list[int]]:
        for batch in super().__iter__():
            yield batch[self.rank * self.part : (self.rank + 1) * self.part]


def batch_sampler(
    num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int, ctx: DistContext | None
) -> StepBatchSampler:
    """The engine's sampler: the plain one for a single process, this rank's slices under a launcher."""
    if ctx is None:
        return StepBatchSampler(num_items, batch_size, seed, start_step, total_steps)
    return RankBatchSampler(num_items, batch_size, seed, start_step, total_steps, ctx)


def rank_flip_mask(batch_size: int, seed: int, step: int, ctx: DistContext | None) -> torch.Tensor:
    """This rank's part of the global batch's flip mask (`order.flip_mask` of the global `batch_size`)."""
    mask = flip_mask(batch_size, seed, step)
    if ctx is None:
        return mask
    part = local_batch_size(batch_size, ctx)
    return mask[ctx.rank * part : (ctx.rank + 1) * part]


def _sum_hook(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    # DDP's default hook divides by the world size before the all-reduce; a sharded head needs the plain sum.
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def wrap_backbone(
    backbone: nn.Module, ctx: DistContext | None, device: torch.device, *, sum_gradients: bool = False
) -> nn.Module:
    """The backbone in DistributedDataParallel (rank 0's weights broadcast now, gradients reduced in backward):
    averaged for a replicated head, summed for a sharded one. Unchanged for a single process. Call it after the
    backbone is on `device` in its memory format; build optimisers and checkpoints from the unwrapped backbone,
    so state-dict keys do not depend on the wrapper."""
    if ctx is None:
        return backbone
    wrapped = DistributedDataParallel(backbone, device_ids=[device.index] if device.type == "cuda" else None)
    if sum_gradients:
        wrapped.register_comm_hook(None, _sum_hook)
    return wrapped


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def broadcast_(tensors: Iterable[torch.Tensor], ctx: DistContext | None) -> None:
    """Rank 0's values into every rank's tensors (a replicated head's centres, before the first step)."""
    if ctx is None:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def average_gradients_(parameters: Iterable[nn.Parameter], ctx: DistContext | None) -> None:
    """Mean over ranks of the gradients of replicated parameters outside DDP (the margin head), in one all-reduce."""
    if ctx is None:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def all_ranks(flag: bool, ctx: DistContext | None, device: torch.device) -> bool:
    """True only where every rank's `flag` is True: ranks must agree to skip backward or stop on divergence, or the
    others would wait in the next collective."""
    if ctx is None:
        return flag
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value)


def mean_over_ranks(value: float, ctx: DistContext | None, device: torch.device) -> float:
    """The mean of a per-rank metric (a replicated head's slice loss and accuracy -> the global batch's)."""
    if ctx is None:
        return value
    total = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total) / ctx.world_size


def full_head_state(head: nn.Module) -> dict:
    """The head's state dict as one process would hold it (a sharded head's centres gathered: a collective)."""
    return {"weight": head.full_weight()} if isinstance(head, ShardedMarginHead) else head.state_dict()


def full_training_state(head: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The head's and the optimiser's state dicts as one process would hold them: a sharded head's centres and their
    SGD momentum are gathered from every rank (a collective: every rank calls it, rank 0 writes), so a checkpoint
    does not depend on the number of ranks. A replicated head's are returned as they are."""
    state = optimizer.state_dict()
    if not isinstance(head, ShardedMarginHead):
        return head.state_dict(), state
    index = _parameter_index(optimizer, head.weight)
    entry = state["state"].get(index, {})
    if entry.get("momentum_buffer") is not None:  # no momentum before the first step, on every rank alike
        full = head.full_rows(entry["momentum_buffer"])
        state["state"] = {**state["state"], index: {**entry, "momentum_buffer": full}}
    return full_head_state(head), state


def load_training_state(
    head: nn.Module, optimizer: torch.optim.Optimizer, head_state: dict, optimizer_state: dict
) -> None:
    """Inverse of `full_training_state`: a sharded head keeps its own rows of the centres and of their momentum."""
    if not isinstance(head, ShardedMarginHead):
        head.load_state_dict(head_state)
        optimizer.load_state_dict(optimizer_state)
        return
    head.load_full_weight(head_state["weight"])
    index = _parameter_index(optimizer, head.weight)
    entry = optimizer_state["state"].get(index, {})
    if entry.get("momentum_buffer") is not None:
        own = head.own_rows(entry["momentum_buffer"]).clone()
        states = {**optimizer_state["state"], index: {**entry, "momentum_buffer": own}}
        optimizer_state = {**optimizer_state, "state": states}
    optimizer.load_state_dict(optimizer_state)


def _parameter_index(optimizer: torch.optim.Optimizer, parameter: nn.Parameter) -> int:
    # the optimiser's state dict numbers parameters in group order
    flat = [p for group in optimizer.param_groups for p in group["params"]]
    return next(i for i, p in enumerate(flat) if p is parameter)


def barrier(ctx: DistContext | None) -> None:
    """Wait for every rank (e.g. until rank 0 has written the checkpoint the others may resume from)."""
    if ctx is not None:
        dist.barrier()
