"""Heads that adapt a setting during training: AdaCos (the scale) and AdaM-Softmax (per-class margins).

AdaCos = Zhang et al., "AdaCos: Adaptively Scaling Cosine Logits...", CVPR 2019; AdaptiveFace = Liu et al.,
"AdaptiveFace: Adaptive Margin and Sampling for Face Recognition", CVPR 2019. Neither paper is in shared/papers,
so the equation numbers cited (arXiv versions) are not checked against the papers; the formulas were checked
against FaceX-Zoo's head/AdaCos.py and head/AdaM_Softmax.py (JDAI-CV/FaceX-Zoo, commit 16b793a): s_0, the B_avg /
theta_med scale update (made before the batch uses it), the per-class CosFace target and the margin term agree.
Differences from FaceX-Zoo, none in the formulas:
- AdaCos theta_med: for an even batch the midpoint of the two middle angles here; torch.median there takes the lower.
- AdaCos s: a buffer updated in training mode only here; there a plain attribute (not checkpointed), also updated
  in eval mode.
- AdaM-Softmax defaults: s = 64 here, 30 there (32 in its head_conf.yaml); margins start at m = 0.35 here, uniform
  in [0.3, 0.4] there; lam = 70 in both.
- AdaM-Softmax penalty: lam * L_m here, lam * (L_m + 1) there (a constant to keep the loss positive): same gradient.
- AdaM-Softmax clamp: there the margin parameter itself is clamped to [0, 1] in place before each forward, so it
  keeps its gradient at a bound; here only the value used is clamped, so a margin stepped outside [0, 1] gets no
  loss gradient and stays out there, used as the bound, unless momentum or weight decay bring it back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.heads.angular import angle, non_target_mask, target_of, with_target
from pipeline.heads.base import COSINE_MARGIN_MAX, MarginHead, number, register


def adacos_initial_scale(num_classes: int) -> float:
    """s_0 = sqrt(2) * log(C - 1), the fixed AdaCos scale and the dynamic one's start (AdaCos Eq. 13, 16)."""
    return math.sqrt(2.0) * math.log(num_classes - 1)


def adacos_scale(cos: Tensor, labels: Tensor, s_prev: Tensor) -> Tensor:
    """s_t = log(B_avg) / cos(min(pi/4, theta_med)) (AdaCos Eq. 16), B_avg from s_{t-1} (Eq. 15).

    B_avg = mean_i sum_{k != y_i} exp(s_{t-1} cos theta_{i,k}), taken in log space so that no exp overflows;
    theta_med is the batch median of the target angles (midpoint of the two middle ones for an even batch).
    Same update as FaceX-Zoo's head/AdaCos.py (16b793a), whose torch.median takes the lower middle one instead.
    """
    others = (s_prev * cos).masked_fill(~non_target_mask(cos, labels), -math.inf)
    log_b_avg = torch.logsumexp(torch.logsumexp(others, dim=1), dim=0) - math.log(cos.shape[0])
    theta_med = torch.quantile(angle(target_of(cos, labels)), 0.5)
    return log_b_avg / torch.cos(theta_med.clamp(max=math.pi / 4))


def adam_softmax_logits(cos: Tensor, labels: Tensor, s: float, margins: Tensor) -> Tensor:
    """s * (cos(theta_y) - m_y) on the target, per-class margin m_y; s * cos(theta_j) elsewhere (AdaptiveFace Eq. 4)."""
    return s * with_target(cos, labels, target_of(cos, labels) - margins[labels])


def adam_margin_penalty(margins: Tensor, lam: float) -> Tensor:
    """lambda * L_m with L_m = -(1/C) sum_j m_j: added to the loss, it rewards larger margins (AdaptiveFace Eq. 5-6).

    FaceX-Zoo's head/AdaM_Softmax.py (16b793a) adds lambda to keep the term positive; the gradient is the same.
    """
    return -lam * margins.mean()


@dataclass
class AdaCosSettings:
    """AdaCos is hyper-parameter free: its scale is a running statistic, not a setting."""


@dataclass
class AdaMSettings:
    s: float = 64.0
    m: float = 0.35  # the initial margin of every class (CosFace's value)
    lam: float = 70.0  # FaceX-Zoo's AdaM-Softmax configuration

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)
        self.m = number("m", self.m, 0.0, COSINE_MARGIN_MAX)
        self.lam = number("lam", self.lam, 0.0)


@register("adacos")
class AdaCos(MarginHead):
    """Dynamic AdaCos. Stateful buffer `s`: the current scale, updated from each training batch before use."""

    Margins = AdaCosSettings

    def __init__(self, embedding_size: int, num_classes: int, **kwargs) -> None:
        if num_classes < 3:
            raise ValueError(f"head 'adacos': num_classes must be >= 3 (s_0 = sqrt(2) log(C - 1)), got {num_classes}")
        super().__init__(embedding_size, num_classes, **kwargs)
        self.register_buffer("s", torch.tensor(adacos_initial_scale(num_classes), device=self.weight.device))

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.s.copy_(adacos_scale(cos, labels, self.s))
        # A copy, so that the next update cannot touch the value autograd saved for this batch.
        return self.s.clone() * cos


@register("adam_softmax")
class AdaMSoftmax(MarginHead):
    """AdaM-Softmax: CosFace target with learnable per-class margins `margin` (C), used clamped to [0, 1]
    (non-negative as the paper requires; the cap stops classes seldom in a batch drifting up on the penalty alone)."""

    Margins = AdaMSettings

    def __init__(self, embedding_size: int, num_classes: int, **kwargs) -> None:
        super().__init__(embedding_size, num_classes, **kwargs)
        self.margin = nn.Parameter(torch.full((num_classes,), self.spec.m, device=self.weight.device))

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        return adam_softmax_logits(cos, labels, self.spec.s, self.margin.clamp(0.0, 1.0))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy plus the margin term lambda * L_m (AdaptiveFace Eq. 6)."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            penalty = adam_margin_penalty(self.margin.float().clamp(0.0, 1.0), self.spec.lam)
        return super().loss(logits, labels) + penalty
