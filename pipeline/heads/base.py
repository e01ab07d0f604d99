"""The margin-head contract (class centres, fp32 cosine, margin logits, loss), the registry, and margin checks."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.registry import Registry


class MarginHead(nn.Module):
    """Class centres W (num_classes x embedding_size) and a margin on the target logit.

    A subclass sets `Margins`, a dataclass of its settings with the paper's defaults that checks them in
    `__post_init__`, and implements `_logits(cos, labels)` on fp32 cosines by calling its pure formula.
    Stateful buffers: heads with running statistics (AdaCos s, CurricularFace t) keep them as buffers, so they
    travel with `state_dict()` into checkpoints; they update only in training mode.
    """

    name: ClassVar[str]
    Margins: ClassVar[type]

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        device: torch.device | str | None = None,
        **margins: Any,
    ) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"head {self.name!r}: embedding_size must be >= 1, got {embedding_size}")
        if num_classes < 2:
            raise ValueError(f"head {self.name!r}: num_classes must be >= 2, got {num_classes}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.spec = make_margins(self.name, self.Margins, margins)
        # Only the direction of each centre matters (they are normalised); the engine seeds torch before building.
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size, device=device))
        nn.init.normal_(self.weight, std=0.01)

    @property
    def margins(self) -> dict[str, Any]:
        return dataclasses.asdict(self.spec)

    def extra_repr(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.margins.items())
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, {settings}"

    def cosine(self, embeddings: Tensor) -> Tensor:
        """cos(theta_j) = <x/|x|, W_j/|W_j|> (AirFace Eq. 2 with s = 1), N x C in fp32 whatever the autocast."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"head {self.name!r}: embeddings must be N x {self.embedding_size}, got {tuple(embeddings.shape)}"
            )
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return x @ w.t()

    def logits(self, cosine: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits with the head's margin on the target class, N x C in fp32."""
        self._check(cosine, labels)
        with torch.autocast(device_type=cosine.device.type, enabled=False):
            return self._logits(cosine.float(), labels.long())

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean softmax cross-entropy over the batch (AirFace Eq. 1 on the margin logits)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(logits.float(), labels.long())

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.loss(self.logits(self.cosine(embeddings), labels), labels)

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def _check(self, cosine: Tensor, labels: Tensor) -> None:
        if cosine.dim() != 2 or cosine.shape[1] != self.num_classes:
            raise ValueError(f"head {self.name!r}: cosine must be N x {self.num_classes}, got {tuple(cosine.shape)}")
        if labels.shape != cosine.shape[:1] or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                f"head {self.name!r}: labels must be {cosine.shape[0]} integer class indices, "
                f"got shape {tuple(labels.shape)} dtype {labels.dtype}"
            )
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(
                f"head {self.name!r}: labels must lie in [0, {self.num_classes}), "
                f"got min {int(labels.min())} max {int(labels.max())}"
            )


HEADS: Registry[MarginHead] = Registry[MarginHead]("head")

# The largest margins a head accepts. Past them even a sample on its own class centre (theta = 0) scores its class
# below a class orthogonal to it (cosine 0), so no training can meet the margin. An angular margin adds to theta:
# cos(0 + m) >= 0 needs m <= pi/2 (ArcFace, CurricularFace, NPCFace; Li-ArcFace's linear target 1 - 2m/pi alike).
# A cosine margin subtracts from cos(theta): 1 - m >= 0 needs m <= 1 (CosFace, AdaM-Softmax, MV-Softmax). The papers'
# settings lie well inside (0.35-0.5); m: 5 or m: 50 is a typo.
ANGULAR_MARGIN_MAX = math.pi / 2
COSINE_MARGIN_MAX = 1.0

H = TypeVar("H", bound=type[MarginHead])


def register(name: str) -> Callable[[H], H]:
    """`HEADS.register(name)` that also records the name on the class (for its error messages)."""

    def decorate(cls: H) -> H:
        cls.name = name
        HEADS.register(name)(cls)
        return cls

    return decorate


def make_margins(head: str, spec_type: type, margins: dict[str, Any]) -> Any:
    """The head's Margins dataclass from keyword settings; unknown or bad ones name the head and the keyword."""
    accepted = [f.name for f in dataclasses.fields(spec_type)]
    unknown = sorted(set(margins) - set(accepted))
    if unknown:
        raise ValueError(
            f"head {head!r}: unknown margin keyword {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    try:
        return spec_type(**margins)
    except ValueError as err:
        raise ValueError(f"head {head!r}: {err}") from None


def number(name: str, value: object, low: float, high: float = math.inf, *, low_open: bool = False) -> float:
    """`value` as a float in [low, high] ((low, high] with `low_open`), or a ValueError naming the keyword."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"margin {name!r} must be a finite number, got {value!r}")
    below = value <= low if low_open else value < low
    if below or value > high:
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"margin {name!r} must lie in {bounds}, got {value!r}")
    return float(value)


def choice(name: str, value: object, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"margin {name!r} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return str(value)
