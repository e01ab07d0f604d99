"""Optimiser and schedule: SGD with per-group weight decay, step decay at fractions of the run."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def parameter_groups(
    model: nn.Module,
    embedding_layers: Iterable[nn.Module],
    others: Iterable[nn.Parameter],
    weight_decay: float,
    embedding_wd_mult: float,
) -> list[dict]:
    """Weight decay `weight_decay` everywhere, times `embedding_wd_mult` on the layers that produce the
    embedding (AirFace paper, Table 2: "wdml10" = wd_mult 10 on the last layers)."""
    embedding_ids = {id(p) for layer in embedding_layers for p in layer.parameters()}
    own = [p for p in model.parameters() if id(p) not in embedding_ids]
    embedding = [p for p in model.parameters() if id(p) in embedding_ids]
    if not embedding:
        raise ValueError(f"{type(model).__name__}.embedding_layers() holds no parameters of the model")
    return [
        {"params": own + list(others), "weight_decay": weight_decay, "name": "body"},
        {"params": embedding, "weight_decay": weight_decay * embedding_wd_mult, "name": "embedding"},
    ]


def step_lr_factor(step: int, total: int, milestones: Sequence[float], gamma: float, warmup: int = 0) -> float:
    """Learning-rate factor at `step`: linear warm-up, then times `gamma` at each milestone fraction of `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    passed = sum(step >= round(fraction * total) for fraction in milestones)
    return gamma**passed


def make_optimizer(groups: list[dict], lr: float, momentum: float, device: torch.device) -> torch.optim.Optimizer:
    # foreach kernels batch the update over parameters; fused SGD exists only on accelerators.
    fused = device.type == "cuda"
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=not fused, fused=fused or None)
