"""Angle helpers shared by the margin heads: stable arccos, target gather/scatter, the arc-margin target.

All functions are pure and work on fp32 tensors of cosines (N x C) and integer labels (N).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# acos'(x) = -1/sqrt(1-x^2) is infinite at +-1; clamping to [-1+eps, 1-eps] bounds it by ~1/sqrt(2*eps) (~707).
# 1e-6 is well above fp32 spacing near 1 (6e-8), so the clamp bounds are representable.
ACOS_EPS = 1e-6


def angle(cos: Tensor, eps: float = ACOS_EPS) -> Tensor:
    """theta = acos(clamp(cos, -1+eps, 1-eps)) (AirFace Sec. 3.1: theta_j = arccos(W_j^T x / s)), finite gradient."""
    return torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))


def target_of(cos: Tensor, labels: Tensor) -> Tensor:
    """The target-class column cos_{i, y_i} as an N vector."""
    return cos.gather(1, labels[:, None]).squeeze(1)


def with_target(values: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """`values` (N x C) with the target entries replaced by `target` (N); out of place, so autograd sees both."""
    return values.scatter(1, labels[:, None], target[:, None])


def non_target_mask(cos: Tensor, labels: Tensor) -> Tensor:
    """Boolean N x C mask, True everywhere except the target column."""
    mask = torch.ones_like(cos, dtype=torch.bool)
    return mask.scatter(1, labels[:, None], False)


def arc_target(cos_t: Tensor, m: float | Tensor) -> Tensor:
    """ArcFace target cos(theta + m) (ArcFace Eq. 3 / AirFace Eq. 4), with the original release's fallback past pi.

    Where theta + m > pi, i.e. cos(theta) < cos(pi - m), cos(theta + m) would rise again as theta grows, rewarding
    a sample for moving away from its centre (AirFace Fig. 2). The fallback cos(theta) - m*sin(m) (the CosFace form
    with margin m*sin(m)) keeps the target decreasing there: it starts below cos(pi) = -1 by m*sin(m) - (1 - cos m)
    >= 0 (for m in [0, ~2.3]) and falls with cos(theta). `m` may be a per-sample tensor.
    """
    m = torch.as_tensor(m, dtype=cos_t.dtype, device=cos_t.device)
    arc = torch.cos(angle(cos_t) + m)
    fallback = cos_t - m * torch.sin(m)
    return torch.where(cos_t >= torch.cos(math.pi - m), arc, fallback)
