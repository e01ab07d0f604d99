"""Margin heads: registry and errors, fp32 under autocast, finite gradients at the edges, target-logit
monotonicity (AirFace Figure 2), stateful buffers. The formulas themselves: tests/test_heads_formulas.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.heads import HEADS, MarginHead, build, margin_names

torch.set_num_threads(1)

ALL = [
    "adacos", "adam_softmax", "arcface", "circleloss", "combined", "cosface",
    "curricularface", "li_arcface", "mv_softmax", "npcface", "nsoftmax",
]
# one build per head and variant; scale-free heads have no `s`
VARIANTS = [(name, {}) for name in ALL] + [
    ("arcface", {"variant": "straight_through"}),
    ("mv_softmax", {"variant": "arc"}),
]


def ids(case: tuple[str, dict]) -> str:
    name, margins = case
    return name + "".join(f"-{v}" for v in margins.values())


def data(seed: int, n: int = 16, d: int = 8, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_registry_lists_every_head():
    assert HEADS.names() == sorted(ALL)


@pytest.mark.parametrize("case", VARIANTS, ids=ids)
def test_builds_with_defaults_and_trains(case):
    name, margins = case
    torch.manual_seed(0)
    head = build(name, 8, 10, **margins)
    assert isinstance(head, MarginHead) and head.weight.shape == (10, 8)
    embeddings, labels = data(1)
    embeddings.requires_grad_(True)
    loss = head(embeddings, labels)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for grad in (embeddings.grad, head.weight.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(f"{key}={value!r}" in repr(head) for key, value in head.margins.items())


def test_build_is_seeded_by_torch_seed():
    torch.manual_seed(5)
    a = build("arcface", 8, 10).weight
    torch.manual_seed(5)
    b = build("arcface", 8, 10).weight
    torch.manual_seed(6)
    c = build("arcface", 8, 10).weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_head_names_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown head 'sphereface'.*arcface.*li_arcface"):
        build("sphereface", 8, 10)


def test_unknown_margin_names_head_keyword_and_accepted():
    with pytest.raises(ValueError, match=r"head 'li_arcface': unknown margin keyword 'm2'; accepted: s, m"):
        build("li_arcface", 8, 10, m2=0.3)
    with pytest.raises(ValueError, match=r"head 'adacos': unknown margin keyword 's'; accepted: none"):
        build("adacos", 8, 10, s=64.0)
    with pytest.raises(ValueError, match=r"head 'circleloss': unknown margin keyword 's'; accepted: gamma, m"):
        build("circleloss", 8, 10, s=64.0)


def test_margin_names():
    assert margin_names("arcface") == ["s", "m", "variant"]
    assert margin_names("combined") == ["s", "m1", "m2", "m3"]
    assert margin_names("adacos") == []
    assert all("s" in margin_names(n) for n in ALL if n not in ("adacos", "circleloss"))


@pytest.mark.parametrize(
    "name,margins,pattern",
    [
        ("arcface", {"variant": "easy"}, r"head 'arcface': margin 'variant' must be one of 'classic'"),
        ("arcface", {"s": 0}, r"head 'arcface': margin 's' must lie in \(0.0, inf\]"),
        ("cosface", {"m": -0.1}, r"head 'cosface': margin 'm' must lie in \[0.0, 1.0\]"),
        ("li_arcface", {"m": "0.4"}, r"head 'li_arcface': margin 'm' must be a finite number"),
        ("combined", {"m1": 3.0, "m2": 1.5}, r"head 'combined': margins m1=3.0, m2=1.5 .* monotonic"),
        ("mv_softmax", {"t": 0.2}, r"head 'mv_softmax': margin 't' must lie in \[1.0, inf\]"),
        ("npcface", {"m1": 0.5}, r"head 'npcface': margin 'm1'"),
    ],
)
def test_bad_margin_values_are_named(name, margins, pattern):
    with pytest.raises(ValueError, match=pattern):
        build(name, 8, 10, **margins)


def test_bad_sizes_and_inputs_are_named():
    with pytest.raises(ValueError, match=r"head 'cosface': num_classes must be >= 2"):
        build("cosface", 8, 1)
    with pytest.raises(ValueError, match=r"head 'adacos': num_classes must be >= 3"):
        build("adacos", 8, 2)
    head = build("cosface", 8, 10)
    with pytest.raises(ValueError, match=r"head 'cosface': embeddings must be N x 8, got \(4, 7\)"):
        head.cosine(torch.zeros(4, 7))
    cos = torch.zeros(4, 10)
    with pytest.raises(ValueError, match=r"head 'cosface': cosine must be N x 10"):
        head.logits(torch.zeros(4, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"head 'cosface': labels must lie in \[0, 10\), got min 0 max 10"):
        head.logits(cos, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match=r"head 'cosface': labels must be 4 integer class indices"):
        head.logits(cos, torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels must be 4 integer"):
        head.logits(cos, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("case", VARIANTS, ids=ids)
def test_finite_gradients_at_the_edges(case):
    """cos exactly +-1, +-(1 - 1e-7) and theta + m > pi on the target and elsewhere: loss and gradients finite."""
    name, margins = case
    head = build(name, 8, 4, **margins).train()
    edge = [1.0, -1.0, 1.0 - 1e-7, -1.0 + 1e-7, -0.99, math.cos(math.pi - 0.4), 0.0]
    cos = torch.tensor([[v, u, 0.3, -0.2] for v in edge for u in (1.0, -1.0, 0.999)], requires_grad=True)
    labels = torch.zeros(cos.shape[0], dtype=torch.long)
    loss = head.loss(head.logits(cos, labels), labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cos.grad).all()


@pytest.mark.parametrize("case", VARIANTS, ids=ids)
def test_finite_gradients_through_exactly_aligned_embeddings(case):
    """Embeddings equal to +- their class centre give cos exactly +-1 through `cosine`; gradients stay finite."""
    name, margins = case
    head = build(name, 8, 4, **margins).train()
    with torch.no_grad():
        head.weight.copy_(torch.eye(4, 8))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    embeddings = (torch.eye(4, 8)[labels] * torch.tensor([1.0, 1, 1, 1, -1, -1])[:, None]).requires_grad_(True)
    cos = head.cosine(embeddings)
    assert torch.equal(cos[torch.arange(6), labels], torch.tensor([1.0, 1, 1, 1, -1, -1]))
    head.loss(head.logits(cos, labels), labels).backward()
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()


def target_curve(name: str, **margins) -> np.ndarray:
    """The target logit over theta in [0, pi] (AirFace Figure 2), through the head's own logits."""
    theta = np.linspace(0.0, math.pi, 2001)
    cos = torch.tensor(np.cos(theta), dtype=torch.float32)[:, None].repeat(1, 3)
    cos[:, 1:] = -1.0  # negatives far away, so mining heads leave the target alone
    labels = torch.zeros(len(theta), dtype=torch.long)
    return build(name, 4, 3, **margins).eval().logits(cos, labels)[:, 0].numpy().astype(np.float64)


def test_li_arcface_target_decreases_over_the_whole_range():
    curve = target_curve("li_arcface", m=0.45)
    assert np.all(np.diff(curve) <= 1e-6)
    theta_min = math.acos(1 - 1e-6)  # the clamp keeps theta in [theta_min, pi - theta_min]
    assert curve[0] - curve[-1] == pytest.approx(2 * 64.0 * (1 - 2 * theta_min / math.pi), rel=1e-4)


def test_raw_arcface_target_is_not_monotonic_and_the_classic_fallback_is():
    m = 0.5
    raw = target_curve("arcface", m=m, variant="straight_through")  # the value is cos(theta + m), no fallback
    assert np.max(np.diff(raw)) > 1e-3
    rising = np.flatnonzero(np.diff(raw) > 1e-3) * math.pi / 2000
    assert rising.min() >= math.pi - m - 1e-2  # it turns upward only where theta + m > pi
    assert np.all(np.diff(target_curve("arcface", m=m)) <= 1e-4)
    assert np.all(np.diff(target_curve("combined")) <= 1e-4)
    assert np.all(np.diff(target_curve("combined", m1=1.35, m2=0.0, m3=0.0)) <= 1e-4)


def test_autocast_bf16_gives_fp32_logits_that_match_fp32():
    embeddings, labels = data(2, classes=10)
    low = embeddings.bfloat16()
    for name, margins in VARIANTS:
        torch.manual_seed(0)
        reference = build(name, 8, 10, **margins).train()
        torch.manual_seed(0)
        head = build(name, 8, 10, **margins).train()
        cos_ref = reference.cosine(low.float())
        logits_ref = reference.logits(cos_ref, labels)
        loss_ref = reference.loss(logits_ref, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cos = head.cosine(low)
            logits = head.logits(cos, labels)
            loss = head.loss(logits, labels)
        assert (cos.dtype, logits.dtype, loss.dtype) == (torch.float32,) * 3, name
        # bf16 matmul would be off by ~1e-2 in the cosine, i.e. ~1 in a logit of scale 64
        torch.testing.assert_close(cos, cos_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)


def test_fp16_embeddings_give_fp32_cosine():
    embeddings, labels = data(3, classes=10)
    half = embeddings.half()
    head = build("li_arcface", 8, 10)
    reference = head.cosine(half.float())
    for context in (torch.autocast("cpu", dtype=torch.float16), torch.autocast("cpu", enabled=False)):
        with context:
            cos = head.cosine(half)
            loss = head.loss(head.logits(cos, labels), labels)
        assert cos.dtype == torch.float32 and loss.dtype == torch.float32
        torch.testing.assert_close(cos, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,buffer", [("adacos", "s"), ("curricularface", "t")])
def test_running_statistics_are_checkpointed_buffers(name, buffer):
    head = build(name, 8, 10).train()
    start = getattr(head, buffer).clone()
    assert buffer in head.state_dict() and buffer not in dict(head.named_parameters())
    embeddings, labels = data(4)
    head(embeddings, labels).backward()
    moved = getattr(head, buffer).clone()
    assert not torch.equal(moved, start)
    head.eval()
    with torch.no_grad():
        head(embeddings, labels)
    assert torch.equal(getattr(head, buffer), moved)  # evaluation leaves it alone
    restored = build(name, 8, 10)
    restored.load_state_dict(head.state_dict())
    assert torch.equal(getattr(restored, buffer), moved)


def test_adam_softmax_learns_its_margins():
    head = build("adam_softmax", 8, 10)
    assert "margin" in dict(head.named_parameters())
    embeddings, labels = data(5)
    head(embeddings, labels).backward()
    grad = head.margin.grad
    # every class gets the penalty's push (-lam / C); classes in the batch also the cross-entropy's pull
    absent = torch.ones(10, dtype=torch.bool)
    absent[labels] = False
    assert absent.any() and (~absent).any()
    assert torch.allclose(grad[absent], torch.full_like(grad[absent], -70.0 / 10))
    assert torch.all(grad[~absent] > -70.0 / 10)
