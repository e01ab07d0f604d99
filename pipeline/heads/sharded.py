"""Model-parallel margin head: class centres W split over ranks (ArcFace paper, appendix "parallel acceleration").

Every rank holds a contiguous block of class centres. A step all-gathers the embeddings of the global batch, scores
them against the local block with a registered head's `logits()` (the target margin applies only on the rank that
owns the label), and reduces the softmax cross-entropy across ranks: the max, then the sum of exponentials and the
target logit. The loss on every rank is the single-process loss of the global batch; the local block of W gets its
exact gradient and each rank's embeddings theirs (the gathered embeddings' gradients are summed over ranks, the
appendix's step 4).

Backbone gradients are therefore each rank's share of the global-batch gradient: they must be SUMMED over ranks,
not averaged (`pipeline.train.distributed.wrap_backbone(..., sum_gradients=True)`).

Optional negative-centre sampling (`sample_fraction` < 1, after PartialFC, An et al., ICCVW 2021): each rank scores
every centre whose class occurs in the global batch plus a seeded random share of the other local centres; the
softmax runs over the scored classes only, and unscored centres get no gradient that step.

Only heads whose logits are column-local (a class's logit depends on its own cosine and on whether it is the target)
and that keep no batch statistics can be split this way: `SHARDABLE`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import Function

from pipeline.heads.base import HEADS, MarginHead

SHARDABLE = ("nsoftmax", "arcface", "li_arcface", "cosface", "combined")
INIT_BLOCK = 4096  # rows per seeded init block: the centres do not depend on how many ranks share them
INIT_STD = 0.01  # as MarginHead: only the direction of a centre matters


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """Class range [start, stop) of `rank`: contiguous blocks, the first (num_classes mod world_size) one larger."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
    if num_classes < world_size:
        raise ValueError(f"num_classes={num_classes} is fewer than world_size={world_size}: a rank would hold no class")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def centre_memory_per_rank(
    num_classes: int, embedding_size: int, world_size: int, bytes_per_value: int = 4
) -> dict[str, int]:
    """Bytes one rank holds for its block of W (the largest, ceil(C/N) rows x d): the centres, their gradient and
    their SGD momentum, each rows x d x bytes_per_value, and their total."""
    start, stop = shard_range(num_classes, world_size, 0)  # rank 0's block is the largest
    one = (stop - start) * embedding_size * bytes_per_value
    return {"rows": stop - start, "weight": one, "gradient": one, "momentum": one, "total": 3 * one}


def centre_memory_table(class_counts: list[int], embedding_size: int, world_sizes: list[int]) -> str:
    """Markdown table of `centre_memory_per_rank` (MiB): weights + momentum, and with the gradient, per rank."""
    mib = 2**20
    head = "| identities | " + " | ".join(
        f"N={n}: W + momentum | N={n}: + gradient" for n in world_sizes
    ) + " |"
    lines = [head, "| --- |" + " ---: | ---: |" * len(world_sizes)]
    for classes in class_counts:
        cells = []
        for n in world_sizes:
            memory = centre_memory_per_rank(classes, embedding_size, n)
            cells += [f"{(memory['weight'] + memory['momentum']) / mib:,.1f} MiB", f"{memory['total'] / mib:,.1f} MiB"]
        lines.append(f"| {classes:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def init_centres(
    num_classes: int, embedding_size: int, start: int, stop: int, seed: int, device: torch.device | str | None = None
) -> Tensor:
    """Rows start..stop of N(0, 0.01^2) class centres, drawn in seeded blocks of INIT_BLOCK rows, so that a class's
    centre depends on (seed, class) only, never on the number of ranks."""
    if not 0 <= start < stop <= num_classes:
        raise ValueError(f"centre rows must satisfy 0 <= start < stop <= {num_classes}, got [{start}, {stop})")
    parts = []
    for block in range(start // INIT_BLOCK, (stop - 1) // INIT_BLOCK + 1):
        generator = torch.Generator().manual_seed(_mix(seed, block))
        first = block * INIT_BLOCK
        rows = min(INIT_BLOCK, num_classes - first)
        values = torch.randn(rows, embedding_size, generator=generator) * INIT_STD
        parts.append(values[max(start, first) - first : min(stop, first + rows) - first])
    return torch.cat(parts).to(device)


def sample_columns(positive: Tensor, fraction: float, seed: int, step: int, rank: int) -> Tensor:
    """Sorted local class indices scored this step: every positive, topped up with seeded random negatives to
    ceil(fraction * local classes) (PartialFC, An et al. 2021, Sec. 3: positive centres plus a random subset)."""
    count = positive.numel()
    keep = max(math.ceil(fraction * count), int(positive.sum()))
    generator = torch.Generator().manual_seed(_mix(seed, step, rank))
    negatives = torch.nonzero(~positive.cpu()).squeeze(1)
    chosen = negatives[torch.randperm(negatives.numel(), generator=generator)[: keep - int(positive.sum())]]
    kept = torch.cat([torch.nonzero(positive.cpu()).squeeze(1), chosen])
    return kept.sort().values.to(positive.device)


def _mix(*values: int) -> int:
    # SeedSequence hashes the tuple well: nearby (seed, step, rank) give unrelated streams.
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1, np.uint64)[0] >> 1)


class _GatherRows(Function):
    """Forward: the ranks' row blocks concatenated. Backward: the summed gradient's own block (appendix step 4)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.group = group
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        start = dist.get_rank(ctx.group) * ctx.rows
        return grad[start : start + ctx.rows], None


class _SumReplicated(Function):
    """Forward: the sum over ranks. Backward: identity, because every rank goes on to compute the same loss from the
    sum, so each rank's upstream gradient already is the whole gradient with respect to its own addend."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class ShardedOutput(NamedTuple):
    loss: Tensor  # the global batch's mean cross-entropy, the same on every rank
    accuracy: Tensor  # top-1 over the scored classes for the global batch (detached)


class ShardedMarginHead(nn.Module):
    """One rank's block of a margin head's class centres; `forward` is a collective: every rank must call it."""

    def __init__(
        self,
        name: str,
        embedding_size: int,
        num_classes: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        sample_fraction: float = 1.0,
        group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        **margins: object,
    ) -> None:
        super().__init__()
        if name not in SHARDABLE:
            raise ValueError(
                f"head {name!r} cannot be sharded (its logits use statistics across classes or batches); "
                f"shardable heads: {', '.join(SHARDABLE)}"
            )
        if not 0.0 < sample_fraction <= 1.0:
            raise ValueError(f"sample_fraction must lie in (0, 1], got {sample_fraction!r}")
        if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"ShardedMarginHead with world_size={world_size} needs an initialised process group")
        self.name = name
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.rank, self.world_size, self.group = rank, world_size, group
        self.seed = seed
        self.sample_fraction = sample_fraction
        self.start, self.stop = shard_range(num_classes, world_size, rank)
        self.margins = dict(margins)
        # The registered head supplies the margin math only: built on the meta device it holds no centre memory,
        # and it is kept out of the module tree so it adds no parameters. One per scored width (a local block
        # plus one column standing in for "target on another rank").
        self._margin_heads: dict[int, MarginHead] = {}
        self._margin_head(self.stop - self.start + 1)  # checks the name's margins now, not at the first step
        self.weight = nn.Parameter(init_centres(num_classes, embedding_size, self.start, self.stop, seed, device))

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, classes [{self.start}, {self.stop}) of {self.num_classes}, rank {self.rank} of "
            f"{self.world_size}, sample_fraction={self.sample_fraction}, margins={self.margins}"
        )

    def forward(self, embeddings: Tensor, labels: Tensor, step: int = 0) -> ShardedOutput:
        """Loss and accuracy of the global batch (this rank's `embeddings` and `labels` are its rows of it)."""
        self._check(embeddings, labels)
        x_all = self._gather_embeddings(embeddings)
        y_all = self._gather_labels(labels)
        owned = (y_all >= self.start) & (y_all < self.stop)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            centres, local_labels = self._scored(y_all, owned, step)
            x = nn.functional.normalize(x_all.float(), dim=1)
            cos = x @ nn.functional.normalize(centres.float(), dim=1).t()  # AirFace Eq. 2 with s = 1, local block
            width = cos.shape[1]
            # targets on other ranks point at an extra zero column: the margin math leaves every real column alone
            local_labels = torch.where(owned, local_labels, torch.full_like(local_labels, width))
            padded = torch.cat([cos, cos.new_zeros(cos.shape[0], 1)], dim=1)
            logits = self._margin_head(width + 1).logits(padded, local_labels)[:, :width]
            loss, accuracy = self._cross_entropy(cos, logits, local_labels, owned)
        return ShardedOutput(loss, accuracy)

    def _scored(self, y_all: Tensor, owned: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """The centres scored this step and each sample's column among them (meaningful where `owned`)."""
        local_count = self.stop - self.start
        local_labels = (y_all - self.start).clamp(0, local_count - 1)
        if self.sample_fraction == 1.0:
            return self.weight, local_labels
        positive = torch.zeros(local_count, dtype=torch.bool, device=y_all.device)
        positive[local_labels[owned]] = True
        kept = sample_columns(positive, self.sample_fraction, self.seed, step, self.rank)
        column_of = torch.full((local_count,), -1, dtype=torch.long, device=y_all.device)
        column_of[kept] = torch.arange(kept.numel(), device=y_all.device)
        return self.weight[kept], column_of[local_labels]

    def _cross_entropy(self, cos: Tensor, logits: Tensor, labels: Tensor, owned: Tensor) -> tuple[Tensor, Tensor]:
        """mean_i [log sum_j exp(z_ij) - z_{i,y_i}], j over every rank's classes (AirFace Eq. 1, split by class)."""
        # The shift by the global max cancels in the loss and its gradient: it only keeps exp() finite.
        local_max = torch.stack([logits.detach().max(dim=1).values, cos.detach().max(dim=1).values], dim=1)
        global_max = self._reduce(local_max, dist.ReduceOp.MAX)
        shift, best_cos = global_max[:, 0], global_max[:, 1]
        rows = torch.arange(labels.shape[0], device=labels.device)
        safe = labels.clamp(max=logits.shape[1] - 1)
        zero = logits.new_zeros(())
        target_logit = torch.where(owned, logits[rows, safe], zero)
        target_cos = torch.where(owned, cos.detach()[rows, safe], zero)
        sum_exp = torch.exp(logits - shift[:, None]).sum(dim=1)
        totals = self._sum(torch.stack([sum_exp, target_logit, target_cos], dim=1))
        loss = (torch.log(totals[:, 0]) + shift - totals[:, 1]).mean()
        accuracy = (totals[:, 2].detach() >= best_cos).float().mean()
        return loss, accuracy

    def full_weight(self) -> Tensor:
        """Every rank's block of W concatenated (a collective): the plain num_classes x embedding_size matrix that a
        single-process head's `weight` would hold, for checkpoints that load anywhere."""
        return self.full_rows(self.weight.detach())

    def full_rows(self, block: Tensor) -> Tensor:
        """Every rank's `block` (one row per local class: the centres, or their SGD momentum) concatenated in class
        order; a collective that every rank must call."""
        if block.shape[0] != self.stop - self.start:
            raise ValueError(
                f"sharded head {self.name!r}: block must have {self.stop - self.start} rows, got {block.shape[0]}"
            )
        if self.world_size == 1:
            return block.clone()
        largest = shard_range(self.num_classes, self.world_size, 0)
        padded = block.new_zeros(largest[1] - largest[0], *block.shape[1:])
        padded[: block.shape[0]] = block
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.group)  # gloo gathers equal shapes only: pad, then trim
        blocks = [shard_range(self.num_classes, self.world_size, r) for r in range(self.world_size)]
        return torch.cat([part[: stop - start] for part, (start, stop) in zip(parts, blocks)])

    def own_rows(self, full: Tensor) -> Tensor:
        """This rank's rows of a num_classes-row tensor (a full centre matrix, or its momentum)."""
        if full.shape[0] != self.num_classes or full.shape[1:] != self.weight.shape[1:]:
            raise ValueError(
                f"sharded head {self.name!r}: full tensor must be {self.num_classes} x {self.embedding_size}, "
                f"got {tuple(full.shape)}"
            )
        return full[self.start : self.stop]

    def load_full_weight(self, weight: Tensor) -> None:
        """Take this rank's rows of a full num_classes x embedding_size centre matrix (e.g. a single-process head's)."""
        with torch.no_grad():
            self.weight.copy_(self.own_rows(weight))

    def _margin_head(self, width: int) -> MarginHead:
        if width not in self._margin_heads:
            self._margin_heads[width] = HEADS.get(self.name)(self.embedding_size, width, device="meta", **self.margins)
        return self._margin_heads[width]

    def _check(self, embeddings: Tensor, labels: Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"sharded head {self.name!r}: embeddings must be N x {self.embedding_size}, "
                f"got {tuple(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:1] or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"sharded head {self.name!r}: labels must be {embeddings.shape[0]} integer class indices, "
                f"got shape {tuple(labels.shape)} dtype {labels.dtype}"
            )
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"sharded head {self.name!r}: labels must lie in [0, {self.num_classes}), "
                f"got min {int(labels.min())} max {int(labels.max())}"
            )

    def _gather_embeddings(self, embeddings: Tensor) -> Tensor:
        if self.world_size == 1:
            return embeddings
        sizes = [torch.zeros((), dtype=torch.long, device=embeddings.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor(embeddings.shape[0], device=embeddings.device), group=self.group)
        if len({int(s) for s in sizes}) != 1:
            counts = [int(s) for s in sizes]
            raise ValueError(f"sharded head {self.name!r}: every rank needs the same batch size, got {counts}")
        return _GatherRows.apply(embeddings, self.group)

    def _gather_labels(self, labels: Tensor) -> Tensor:
        labels = labels.long()
        if self.world_size == 1:
            return labels
        parts = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(parts, labels.contiguous(), group=self.group)
        return torch.cat(parts)

    def _reduce(self, tensor: Tensor, op: dist.ReduceOp) -> Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def _sum(self, tensor: Tensor) -> Tensor:
        return tensor if self.world_size == 1 else _SumReplicated.apply(tensor, self.group)
