"""Heads that also reshape hard negatives: MV-Softmax, CurricularFace, NPCFace.

A negative class j of sample i is hard when cos(theta_j) exceeds the sample's margin target. MV-Softmax = Wang
et al., AAAI 2020; CurricularFace = Huang et al., CVPR 2020; NPCFace = Zeng et al., arXiv:2007.10172 (v1).
None of these papers is in shared/papers, so the equation numbers cited (arXiv versions) are not checked against the
papers; the formulas were checked against FaceX-Zoo's head/MV_Softmax.py, head/CurricularFace.py and head/NPCFace.py
(JDAI-CV/FaceX-Zoo, commit 16b793a), MV-Softmax also against its authors' release (xiaoboCASIA/SV-X-Softmax,
fc_layers.py, commit de3a82d). The hard-negative rule, the negative logits (t cos + t - 1, cos (t + cos),
t cos + alpha), the t update (momentum 0.99, t_0 = 0, before use) and m_i = m0 + m1 * mean hard cos (no gradient,
m0 with none) agree. Differences from FaceX-Zoo:
- Arc hard-negative threshold (all but am MV-Softmax): FaceX-Zoo compares with the raw cos(theta_y + m); here with
  the arc target and its fallback (arc_target), lower once theta_y + m > pi, so here more negatives count as hard.
- MV-Softmax target: FaceX-Zoo applies the margin only where cos(theta_y) > m (am) or > 0 (arc, an easy-margin
  branch; the authors' release uses cos(theta_y) > 0 for both); here always (am) or with the ArcFace fallback (arc).
- NPCFace target: FaceX-Zoo keeps cos(theta_y) where cos(theta_y) <= 0 (easy margin); here the ArcFace fallback.
  Both give cos(theta_y + m_i) where cos(theta_y) > 0, as m_i <= pi/2.
- CurricularFace target: the same ArcFace fallback, cos(theta_y) - m sin(m), in both.
- CurricularFace t: FaceX-Zoo also updates it in eval mode; here only in training.
- Defaults: MV-Softmax t = 1.12, s = 32 there (authors' release: 1.2 cos + 0.2, s = 32); NPCFace m = 0.5, s = 64
  in FaceX-Zoo's code but 0.35, 32 in its head_conf.yaml; m0, m1, t, alpha and CurricularFace's m, s agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.heads.angular import arc_target, non_target_mask, target_of, with_target
from pipeline.heads.base import ANGULAR_MARGIN_MAX, COSINE_MARGIN_MAX, MarginHead, choice, number, register


def hard_negatives(cos: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """I_j = 1 where a non-target cos(theta_j) exceeds the sample's margin target (MV-Softmax Eq. 6).

    FaceX-Zoo uses the raw cos(theta_y + m) as the arc threshold, with no fallback past pi (see the module docstring).
    """
    return (cos > target[:, None]) & non_target_mask(cos, labels)


def mv_softmax_logits(cos: Tensor, labels: Tensor, s: float, m: float, t: float, variant: str) -> Tensor:
    """MV-Softmax (Eq. 7-8, adaptive h): target s f(m, theta_y), hard negatives s (t cos(theta_j) + t - 1).

    f = cos(theta_y) - m ("am") or the arc target cos(theta_y + m) ("arc"). The adaptive weight
    h = exp(s (t - 1)(cos(theta_j) + 1) I_j) multiplying exp(s cos(theta_j)) is the logit s (t cos + t - 1).
    """
    cos_t = target_of(cos, labels)
    target = cos_t - m if variant == "am" else arc_target(cos_t, m)
    hard = hard_negatives(cos, labels, target)
    return s * with_target(torch.where(hard, t * cos + t - 1.0, cos), labels, target)


def curricular_logits(cos: Tensor, labels: Tensor, s: float, m: float, t: Tensor) -> Tensor:
    """CurricularFace (Eq. 7-8): target T = cos(theta_y + m); hard negatives cos(theta_j)(t + cos(theta_j))."""
    target = arc_target(target_of(cos, labels), m)
    hard = hard_negatives(cos, labels, target)
    return s * with_target(torch.where(hard, cos * (t + cos), cos), labels, target)


def curricular_t(cos_t: Tensor, t_prev: Tensor, momentum: float) -> Tensor:
    """t = momentum * t_prev + (1 - momentum) * mean_i cos(theta_{y_i}), t_0 = 0 (CurricularFace Eq. 10)."""
    return momentum * t_prev + (1.0 - momentum) * cos_t.mean()


def npcface_logits(
    cos: Tensor, labels: Tensor, s: float, m: float, m0: float, m1: float, t: float, alpha: float
) -> Tensor:
    """NPCFace (Eq. 6-8): hard negatives (cos(theta_j) > cos(theta_y + m)) become t cos(theta_j) + alpha; the
    target is cos(theta_y + m_i) with m_i = m0 + m1 * mean of the sample's hard-negative cosines (m0 with none).

    Chosen where the paper leaves it open: m_i is a per-sample constant (no gradient through it), and every arc
    target uses the ArcFace fallback past pi, so a far-off sample keeps a decreasing target.
    """
    cos_t = target_of(cos, labels)
    hard = hard_negatives(cos, labels, arc_target(cos_t, m))
    with torch.no_grad():
        mean_hard = torch.where(hard, cos, 0.0).sum(1) / hard.sum(1).clamp(min=1)
        m_i = m0 + m1 * mean_hard
    return s * with_target(torch.where(hard, t * cos + alpha, cos), labels, arc_target(cos_t, m_i))


@dataclass
class MVSettings:
    s: float = 64.0  # the paper trains with s = 32; the house default is 64
    m: float = 0.35
    t: float = 1.2  # the authors' release (t = 0.2 there): hard negatives become 1.2 cos + 0.2; FaceX-Zoo uses 1.12
    variant: str = "am"

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)
        self.m = number("m", self.m, 0.0, COSINE_MARGIN_MAX)  # the "am" target; below pi/2 for "arc" too
        self.t = number("t", self.t, 1.0)
        self.variant = choice("variant", self.variant, ("am", "arc"))


@dataclass
class CurricularSettings:
    s: float = 64.0
    m: float = 0.5
    momentum: float = 0.99

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)
        self.m = number("m", self.m, 0.0, ANGULAR_MARGIN_MAX)
        self.momentum = number("momentum", self.momentum, 0.0, 1.0)


@dataclass
class NPCSettings:
    s: float = 64.0
    m: float = 0.5  # the angular margin that decides which negatives are hard
    m0: float = 0.4
    m1: float = 0.2
    t: float = 1.1
    alpha: float = 0.2

    def __post_init__(self) -> None:
        self.s = number("s", self.s, 0.0, low_open=True)
        self.m = number("m", self.m, 0.0, ANGULAR_MARGIN_MAX)
        self.m0 = number("m0", self.m0, 0.0, ANGULAR_MARGIN_MAX)
        # m_i = m0 + m1 * (a cosine in [-1, 1]) stays within [0, pi/2].
        self.m1 = number("m1", self.m1, 0.0, min(self.m0, ANGULAR_MARGIN_MAX - self.m0))
        self.t = number("t", self.t, 1.0)
        self.alpha = number("alpha", self.alpha, 0.0)


@register("mv_softmax")
class MVSoftmax(MarginHead):
    Margins = MVSettings

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        spec = self.spec
        return mv_softmax_logits(cos, labels, spec.s, spec.m, spec.t, spec.variant)


@register("curricularface")
class CurricularFace(MarginHead):
    """Stateful buffer `t`: the running mean target cosine, updated from each training batch before use."""

    Margins = CurricularSettings

    def __init__(self, embedding_size: int, num_classes: int, **kwargs) -> None:
        super().__init__(embedding_size, num_classes, **kwargs)
        self.register_buffer("t", torch.zeros((), device=self.weight.device))

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.t.copy_(curricular_t(target_of(cos, labels), self.t, self.spec.momentum))
        return curricular_logits(cos, labels, self.spec.s, self.spec.m, self.t.clone())


@register("npcface")
class NPCFace(MarginHead):
    Margins = NPCSettings

    def _logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        spec = self.spec
        return npcface_logits(cos, labels, spec.s, spec.m, spec.m0, spec.m1, spec.t, spec.alpha)
