"""Fixed-margin heads: N-Softmax, ArcFace (classic / straight-through), Li-ArcFace, CosFace, combined margin.

Equations: AirFace = Li et al., "AirFace: Lightweight and Efficient Model for Face Recognition" (Li-ArcFace),
ArcFace = Deng et al., CVPR 2019, CosFace = Wang et al., CVPR 2018.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.heads.angular import angle, arc_target, target_of, with_target
from pipeline.heads.base import ANGULAR_MARGIN_MAX, COSINE_MARGIN_MAX, MarginHead, choice, number, register

ARC_VARIANTS = ("classic", "straight_through")


def nsoftmax_logits(cos: Tensor, s: float) -> Tensor:
    """s * cos(theta_j) for every class (AirFace Eq. 3, N-Softmax)."""
    return s * cos


def arcface_logits(cos: Tensor, labels: Tensor, s: float, m: float, variant: str) -> Tensor:
    """s * cos(theta_y + m) on the target, s * cos(theta_j) elsewhere (AirFace Eq. 4 / ArcFace Eq. 3).

    "classic" (default, the form the AirFace experiments used): the original release's fallback past pi (see
    `arc_target`); the gradient is that of the margin target. "straight_through": the later release's form;
    delta = cos(theta + m) - cos(theta) is added under no_grad, so the value is cos(theta + m) (no fallback) while
    the gradient is that of the plain cosine.
    """
    cos_t = target_of(cos, labels)
    if variant == "classic":
        target = arc_target(cos_t, m)
    else:
        with torch.no_grad():
            delta = torch.cos(angle(cos_t) + m) - cos_t
        target = cos_t + delta
    return s * with_target(cos, labels, target)


def li_arcface_logits(cos: Tensor, labels: Tensor, s: float, m: float) -> Tensor:
    """s * (pi - 2(theta_y + m)) / pi on the target, s * (pi - 2 theta_j) / pi elsewhere (AirFace Eq. 5)."""
    linear = (math.pi - 2.0 * angle(cos)) / math.pi
    return s * with_target(linear, labels, target_of(linear, labels) - 2.0 * m / math.pi)


def cosface_logits(cos: Tensor, labels: Tensor, s: float, m: float) -> Tensor:
    """s * (cos(theta_y) - m) on the target, s * cos(theta_j) elsewhere (CosFace Eq. 4, LMCL)."""
    return s * with_target(cos, labels, target_of(cos, labels) - m)


def combined_logits(cos: Tensor, labels: Tensor, s: float, m1: float, m2: float, m3: float) -> Tensor:
    """s * (cos(m1 theta_y + m2) - m3) on the target, s * cos(theta_j) elsewhere (ArcFace Eq. 4).

    All three margins act together for any m3 (unlike the implementation that drops m1, m2 when m3 > 0). Where
    m1 theta + m2 > pi the target would rise again with theta; as for ArcFace classic, it falls back to
    cos(theta) - d sin(d) - m3, where d = pi - (pi - m2) / m1 is the angle the margins add at that crossing
    (d = m2 when m1 = 1, i.e. exactly the ArcFace fallback, plus m3).
    """
    cos_t = target_of(cos, labels)
    theta = angle(cos_t)
    crossing = (math.pi - m2) / m1
    d = math.pi - crossing
    target = torch.where(theta <= crossing, torch.cos(m1 * theta + m2), cos_t - d * math.sin(d)) - m3
    return s * with_target(cos, labels, target)


@dataclass
class ScaleOnly:
    s: float = 64.0

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)


@dataclass
class ArcMargins:
    s: float = 64.0
    m: float = 0.5
    variant: str = "classic"  # the AirFace experiments predate the straight-through form

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)
        self.m = number("m", self.m, 0.0, ANGULAR_MARGIN_MAX)
        self.variant = choice("variant", self.variant, ARC_VARIANTS)


@dataclass
class LiArcMargins:
    s: float = 64.0
    m: float = 0.45  # AirFace Table 3: best between 0.4 and 0.45

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)
        self.m = number("m", self.m, 0.0, ANGULAR_MARGIN_MAX)


@dataclass
class CosMargins:
    s: float = 64.0
    m: float = 0.35  # CosFace paper's setting

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)
        self.m = number("m", self.m, 0.0, COSINE_MARGIN_MAX)


@dataclass
class CombinedMargins:
    s: float = 64.0
    m1: float = 1.0  # ArcFace paper's combined setting (1.0, 0.3, 0.2)
    m2: float = 0.3
    m3: float = 0.2

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)
        self.m1 = number("m1", self.m1, 0.0, 4.0, low_open=True)  # SphereFace's multiplicative margin reached 4
        self.m2 = number("m2", self.m2, 0.0, ANGULAR_MARGIN_MAX)
        self.m3 = number("m3", self.m3, 0.0, COSINE_MARGIN_MAX)
        d = math.pi - (math.pi - self.m2) / self.m1
        # The fallback starts d sin d - (1 - cos d) below the arc branch's end (-1); it must not start above it.
        if d > 0 and d * math.sin(d) < 1.0 - math.cos(d):
            raise ValueError(
                f"margins m1={self.m1}, m2={self.m2} add {d:.3f} rad at theta = (pi - m2) / m1, too much for a "
                "monotonic fallback (needs d sin d >= 1 - cos d)"
            )


@register("nsoftmax")
class NSoftmax(MarginHead):
    Margins = ScaleOnly

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        return nsoftmax_logits(cos, self.spec.s)


@register("arcface")
class ArcFace(MarginHead):
    Margins = ArcMargins

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        return arcface_logits(cos, labels, self.spec.s, self.spec.m, self.spec.variant)


@register("li_arcface")
class LiArcFace(MarginHead):
    Margins = LiArcMargins

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        return li_arcface_logits(cos, labels, self.spec.s, self.spec.m)


@register("cosface")
class CosFace(MarginHead):
    Margins = CosMargins

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        return cosface_logits(cos, labels, self.spec.s, self.spec.m)


@register("combined")
class Combined(MarginHead):
    Margins = CombinedMargins

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        spec = self.spec
        return combined_logits(cos, labels, spec.s, spec.m1, spec.m2, spec.m3)
