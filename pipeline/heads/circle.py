"""Circle loss with class-level labels: Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
Optimization", CVPR 2020. The paper is not in shared/papers, so the equation numbers cited (arXiv version) are not
checked against it; the formula was checked against FaceX-Zoo's head/CircleLoss.py (JDAI-CV/FaceX-Zoo, commit
16b793a), its classification form: alpha_p, alpha_n (detached), O_p = 1 + m, O_n = -m, Delta_p = 1 - m,
Delta_n = m, the logits and the defaults m = 0.25, gamma = 256 agree.
One difference: FaceX-Zoo clamps the cosines to [-1, 1] first; MarginHead.cosine does not (rounding only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.heads.angular import target_of, with_target
from pipeline.heads.base import MarginHead, number, register


def circle_logits(cos: Tensor, labels: Tensor, gamma: float, m: float) -> Tensor:
    """gamma alpha_p (s_p - Delta_p) on the target, gamma alpha_n (s_n - Delta_n) elsewhere (Circle loss Eq. 6).

    s_p = cos(theta_y), s_n = cos(theta_j); alpha_p = [1 + m - s_p]_+, alpha_n = [s_n + m]_+ (Eq. 5 with
    O_p = 1 + m, O_n = -m) are weights, not differentiated, as in the paper's gradient analysis; Delta_p = 1 - m,
    Delta_n = m (Eq. 8). Softmax cross-entropy on these logits is Eq. 6 with one positive:
    log(1 + sum_j exp(gamma alpha_n (s_n - Delta_n)) exp(-gamma alpha_p (s_p - Delta_p))).
    """
    with torch.no_grad():
        alpha_n = (cos + m).clamp(min=0.0)
        alpha_p = (1.0 + m - target_of(cos, labels)).clamp(min=0.0)
    negative = gamma * alpha_n * (cos - m)
    positive = gamma * alpha_p * (target_of(cos, labels) - (1.0 - m))
    return with_target(negative, labels, positive)


@dataclass
class CircleSettings:
    gamma: float = 256.0  # the scale of Circle loss (face recognition setting)
    m: float = 0.25

    def __post_init__(self) -> None:
        self.gamma = number("gamma", self.gamma, 0.0, low_open=True)
        self.m = number("m", self.m, 0.0, 1.0)


@register("circleloss")
class CircleLoss(MarginHead):
    Margins = CircleSettings

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        return circle_logits(cos, labels, self.spec.gamma, self.spec.m)
