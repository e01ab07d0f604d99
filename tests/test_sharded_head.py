"""The sharded margin head against the single-process head: loss, accuracy and gradients, in 2 gloo processes.

References: the registered single-process head (F.cross_entropy over all classes) for the full softmax, and a float64
numpy cross-entropy over the scored columns for negative-centre sampling. 7 classes over 2 ranks (4 + 3) make the
shards uneven; one sample per batch sits opposite its centre (theta near pi, ArcFace's fallback branch) and labels
fall on both ranks.
"""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline import heads
from pipeline.heads.sharded import (
    ShardedMarginHead,
    centre_memory_per_rank,
    centre_memory_table,
    init_centres,
    sample_columns,
    shard_range,
)

torch.set_num_threads(1)

WORLD = 2
CLASSES = 7
DIM = 6
PER_RANK = 4
CASES = [  # (name, margins): every fixed-margin form whose target logit differs
    ("li_arcface", {"m": 0.45}),
    ("arcface", {"m": 0.5}),
    ("cosface", {"m": 0.35}),
    ("combined", {"m1": 1.0, "m2": 0.3, "m3": 0.2}),
    ("nsoftmax", {}),
]
SAMPLED = ("arcface", {"m": 0.5}, 0.75)  # (name, margins, sample_fraction)


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global-batch embeddings, labels and full centre matrix; sample 0 points away from its own centre."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(CLASSES, DIM, generator=generator)
    labels = torch.tensor([0, 5, 3, 6, 5, 0, 6, 3])  # owners: rank 0 holds 0..3, rank 1 holds 4..6; 1, 2, 4 absent
    embeddings = torch.randn(WORLD * PER_RANK, DIM, generator=generator)
    embeddings[0] = -weight[labels[0]] * 1.5  # theta = pi: arcface's fallback, li_arcface's linear end
    return embeddings, labels, weight


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        embeddings, labels, weight = problem()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results = {}
        cases = [(name, margins, 1.0) for name, margins in CASES] + [SAMPLED]
        for name, margins, fraction in cases:
            head = ShardedMarginHead(
                name, DIM, CLASSES, rank=rank, world_size=WORLD, seed=0, sample_fraction=fraction, **margins
            )
            head.load_full_weight(weight)
            x = embeddings[rows].clone().requires_grad_(True)
            out = head(x, labels[rows], step=3)
            out.loss.backward()
            results[(name, fraction)] = {
                "loss": out.loss.detach(),
                "accuracy": out.accuracy,
                "x_grad": x.grad,
                "w_grad": head.weight.grad,
                "full_weight": head.full_weight(),
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def reference(name: str, margins: dict) -> dict:
    embeddings, labels, weight = problem()
    head = heads.build(name, DIM, CLASSES, **margins)
    with torch.no_grad():
        head.weight.copy_(weight)
    x = embeddings.clone().requires_grad_(True)
    cos = head.cosine(x)
    loss = head.loss(head.logits(cos, labels), labels)
    loss.backward()
    accuracy = (cos.argmax(dim=1) == labels).float().mean()
    return {"loss": loss.detach(), "accuracy": accuracy, "x_grad": x.grad, "w_grad": head.weight.grad}


@pytest.mark.parametrize("name,margins", CASES, ids=[c[0] for c in CASES])
def test_two_ranks_match_one_process(two_ranks, name, margins):
    expected = reference(name, margins)
    ranks = [r[(name, 1.0)] for r in two_ranks]
    for got in ranks:  # every rank computes the whole global-batch loss
        torch.testing.assert_close(got["loss"], expected["loss"], rtol=1e-5, atol=1e-5)
        assert float(got["accuracy"]) == float(expected["accuracy"])
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), expected["x_grad"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["w_grad"] for r in ranks]), expected["w_grad"], rtol=1e-4, atol=1e-6)
    assert [r["w_grad"].shape[0] for r in ranks] == [4, 3]  # uneven shards really were exercised


def test_full_weight_reassembles_the_shards(two_ranks):
    _, _, weight = problem()
    for rank in two_ranks:
        torch.testing.assert_close(rank[("arcface", 1.0)]["full_weight"], weight, rtol=0, atol=0)


def numpy_sampled_loss(name: str, margins: dict, fraction: float) -> tuple[float, list[int]]:
    """float64 CE over the scored columns: the positives plus each rank's seeded negatives."""
    embeddings, labels, weight = problem()
    kept: list[int] = []
    for rank in range(WORLD):
        start, stop = shard_range(CLASSES, WORLD, rank)
        positive = torch.zeros(stop - start, dtype=torch.bool)
        owned = labels[(labels >= start) & (labels < stop)]
        positive[owned - start] = True
        kept += (sample_columns(positive, fraction, 0, 3, rank) + start).tolist()
    x = embeddings.numpy().astype(np.float64)
    w = weight.numpy().astype(np.float64)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    s, m = 64.0, margins["m"]
    assert name == "arcface"
    logits = s * cos
    for i, y in enumerate(labels.tolist()):
        theta = math.acos(min(max(cos[i, y], -1 + 1e-6), 1 - 1e-6))
        logits[i, y] = s * (math.cos(theta + m) if theta + m <= math.pi else cos[i, y] - m * math.sin(m))
    z = logits[:, kept]
    target = np.array([kept.index(y) for y in labels.tolist()])
    top = z.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_z - z[np.arange(len(target)), target])), kept


def test_sampled_negatives_give_the_softmax_over_the_scored_columns(two_ranks):
    name, margins, fraction = SAMPLED
    expected, kept = numpy_sampled_loss(name, margins, fraction)
    assert len(kept) < CLASSES  # some centres really were left out
    for rank in two_ranks:
        assert float(rank[(name, fraction)]["loss"]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # unscored centres get no gradient this step
    w_grad = torch.cat([r[(name, fraction)]["w_grad"] for r in two_ranks])
    dropped = sorted(set(range(CLASSES)) - set(kept))
    assert torch.all(w_grad[dropped] == 0) and torch.all(w_grad[kept].abs().sum(dim=1) > 0)


# --- single-process properties (no process group needed) --------------------------------------------------------


@pytest.mark.parametrize("classes,world", [(7, 2), (8, 2), (10, 3), (3, 3), (1001, 8)])
def test_shard_ranges_tile_the_classes(classes, world):
    ranges = [shard_range(classes, world, r) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == classes
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no gap, no overlap
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_bad_sharding_is_refused():
    with pytest.raises(ValueError, match="fewer than world_size"):
        shard_range(2, 3, 0)
    with pytest.raises(ValueError, match="rank must lie"):
        shard_range(7, 2, 2)
    with pytest.raises(ValueError, match="'adacos' cannot be sharded"):
        ShardedMarginHead("adacos", DIM, CLASSES, rank=0, world_size=1, seed=0)
    with pytest.raises(ValueError, match="sample_fraction"):
        ShardedMarginHead("arcface", DIM, CLASSES, rank=0, world_size=1, seed=0, sample_fraction=0.0)
    with pytest.raises(ValueError, match="unknown margin keyword 'q'"):
        ShardedMarginHead("arcface", DIM, CLASSES, rank=0, world_size=1, seed=0, q=1.0)
    head = ShardedMarginHead("arcface", DIM, CLASSES, rank=0, world_size=1, seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 7\)"):
        head(torch.randn(2, DIM), torch.tensor([0, 7]))


def test_one_rank_is_the_plain_head():
    embeddings, labels, weight = problem()
    head = ShardedMarginHead("li_arcface", DIM, CLASSES, rank=0, world_size=1, seed=0, m=0.45)
    head.load_full_weight(weight)
    expected = reference("li_arcface", {"m": 0.45})
    x = embeddings.clone().requires_grad_(True)
    out = head(x, labels)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), expected["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, expected["x_grad"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, expected["w_grad"], rtol=1e-4, atol=1e-6)


def test_centre_init_does_not_depend_on_the_number_of_ranks(monkeypatch):
    monkeypatch.setattr("pipeline.heads.sharded.INIT_BLOCK", 4)  # blocks smaller than the shards: crossings
    whole = init_centres(11, 3, 0, 11, seed=5)
    for world in (2, 3):
        parts = [init_centres(11, 3, *shard_range(11, world, r), seed=5) for r in range(world)]
        torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    assert not torch.equal(init_centres(11, 3, 0, 11, seed=6), whole)
    assert whole.std().item() == pytest.approx(0.01, rel=0.5)


def test_sampling_keeps_every_positive_and_is_seeded():
    positive = torch.zeros(40, dtype=torch.bool)
    positive[[1, 7, 30]] = True
    kept = sample_columns(positive, 0.25, seed=1, step=9, rank=0)
    assert kept.numel() == 10 and set([1, 7, 30]) <= set(kept.tolist())
    assert torch.equal(kept, sample_columns(positive, 0.25, seed=1, step=9, rank=0))
    assert not torch.equal(kept, sample_columns(positive, 0.25, seed=1, step=10, rank=0))
    # more positives than the fraction allows: all of them are still scored
    many = torch.ones(40, dtype=torch.bool)
    assert sample_columns(many, 0.1, seed=1, step=0, rank=0).numel() == 40


def test_centre_memory_per_rank():
    # 85,742 x 512 fp32 on one rank: 175,599,616 B per matrix; on 8 ranks the largest block has ceil(85742/8) rows
    one = centre_memory_per_rank(85_742, 512, 1)
    assert one["weight"] == one["momentum"] == one["gradient"] == 85_742 * 512 * 4 == 175_599_616
    assert one["total"] == 3 * 175_599_616
    eight = centre_memory_per_rank(85_742, 512, 8)
    assert eight["rows"] == 10_718 and eight["weight"] == 10_718 * 2048
    assert centre_memory_per_rank(1_000_000, 512, 4)["weight"] == 250_000 * 2048
    table = centre_memory_table([1_000_000], 512, [1, 8])
    assert "| 1,000,000 | 3,906.2 MiB | 5,859.4 MiB | 488.3 MiB | 732.4 MiB |" in table
