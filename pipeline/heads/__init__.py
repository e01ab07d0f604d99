"""Margin heads behind one registry: `build(name, embedding_size, num_classes, **margins)`.

Names: nsoftmax, arcface, li_arcface, cosface, combined, adacos, adam_softmax, mv_softmax, curricularface,
circleloss, npcface. Each head's accepted margin keywords and defaults are its `Margins` dataclass.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pipeline.heads import adaptive, circle, margins, mining  # noqa: F401  (each module registers its heads)
from pipeline.heads.base import HEADS, MarginHead

__all__ = ["HEADS", "MarginHead", "build", "margin_names"]


def build(
    name: str,
    embedding_size: int,
    num_classes: int,
    *,
    device: torch.device | str | None = None,
    **margins: Any,
) -> MarginHead:
    """The registered head `name`; an unknown name or margin keyword raises an error listing the accepted ones."""
    return HEADS.get(name)(embedding_size, num_classes, device=device, **margins)


def margin_names(name: str) -> list[str]:
    """The margin keywords head `name` accepts (not every head has a scale `s`: AdaCos adapts its own, Circle
    loss calls it `gamma`)."""
    return [field.name for field in dataclasses.fields(HEADS.get(name).Margins)]
