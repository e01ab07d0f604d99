"""Backbones behind one registry: `build(name, embedding_size, input_size)` returns a plain nn.Module whose forward maps
N x 3 x input_size x input_size to the un-normalised N x embedding_size embedding (the head normalises)."""
from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from pipeline.core.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


def build(
    name: str,
    embedding_size: int,
    input_size: int = 112,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    **options: object,
) -> nn.Module:
    """Build backbone `name`; `seed` makes the initial weights reproducible without touching the global RNG."""
    factory = BACKBONES.get(name)
    accepted = set(inspect.signature(factory).parameters) - {"embedding_size", "input_size"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"backbone {name!r} takes no option {', '.join(unknown)}; its options: {sorted(accepted)}")
    rng = contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=[])
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        model = factory(embedding_size=embedding_size, input_size=input_size, **options)
    return model if device is None else model.to(device)


# Imported last: each module registers its networks with BACKBONES on import.
from pipeline.models import airface, iresnet, mobilefacenet  # noqa: E402,F401
