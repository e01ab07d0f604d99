"""The machine's measured matmul peak, the yardstick the throughput benchmarks report achieved FLOP/s against."""
from __future__ import annotations

import time

import torch


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of a size x size `torch.matmul` (2 n^3 FLOP) in `dtype` on the current threads, best of `repeats`."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peaks() -> dict[str, float]:
    return {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
