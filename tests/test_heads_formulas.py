"""Every head's logits (and reductions) against float64 numpy re-derivations of the papers' formulas.

The references below are written from the equations, sample by sample, without calling pipeline.heads code. The
cosines include theta = 0 and pi exactly (cos = +-1), theta near both ends, and theta + m > pi on the target.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.heads import build

torch.set_num_threads(1)

EPS = 1e-6  # the documented clamp: theta = acos(clamp(cos, -1 + eps, 1 - eps))
PI = math.pi


def theta_of(c: float) -> float:
    return math.acos(min(max(c, -1.0 + EPS), 1.0 - EPS))


def arc_classic(c: float, m: float) -> float:
    """cos(theta + m) while theta + m <= pi, else cos(theta) - m sin(m)."""
    theta = theta_of(c)
    return math.cos(theta + m) if theta + m <= PI else c - m * math.sin(m)


def cosine_batch(seed: int, n: int = 24, classes: int = 7, m: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """fp32-representable cosines (returned as float64) with edge angles on the targets and a few non-targets."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0.0, PI, size=(n, classes))
    labels = rng.integers(0, classes, size=n)
    edges = [0.0, 1e-4, 1e-3, 0.2, PI / 2, PI - m - 0.05, PI - m + 0.05, PI - m + 0.3, PI - 1e-3, PI - 1e-4, PI]
    theta[np.arange(len(edges)), labels[: len(edges)]] = edges
    theta[0, (labels[0] + 1) % classes] = 0.0  # a non-target at cos = 1
    theta[1, (labels[1] + 1) % classes] = PI  # and one at cos = -1
    return np.cos(theta).astype(np.float32).astype(np.float64), labels


def run_logits(head, c: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = head.logits(torch.tensor(c, dtype=torch.float32), torch.tensor(labels))
    assert out.dtype == torch.float32
    return out.detach().numpy().astype(np.float64)


def close(actual: np.ndarray, expected: np.ndarray, scale: float) -> None:
    # fp32 acos near the clamp moves theta by ~2e-5 rad: a few 1e-4 in a logit of scale 64.
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=3e-5 * scale)


def ce_mean(logits: np.ndarray, labels: np.ndarray) -> float:
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


# --- references, one sample at a time ---------------------------------------------------------------------------


def ref_nsoftmax(c, labels, s):
    return s * c


def ref_arcface(c, labels, s, m, variant):
    out = s * c.copy()
    for i, y in enumerate(labels):
        raw = math.cos(theta_of(c[i, y]) + m)
        out[i, y] = s * (arc_classic(c[i, y], m) if variant == "classic" else raw)
    return out


def ref_li_arcface(c, labels, s, m):
    out = np.empty_like(c)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            theta = theta_of(c[i, j]) + (m if j == labels[i] else 0.0)
            out[i, j] = s * (PI - 2.0 * theta) / PI
    return out


def ref_cosface(c, labels, s, m):
    out = s * c.copy()
    for i, y in enumerate(labels):
        out[i, y] = s * (c[i, y] - m)
    return out


def ref_combined(c, labels, s, m1, m2, m3):
    out = s * c.copy()
    switch = (PI - m2) / m1  # where m1 theta + m2 reaches pi
    d = PI - switch
    for i, y in enumerate(labels):
        theta = theta_of(c[i, y])
        value = math.cos(m1 * theta + m2) if m1 * theta + m2 <= PI else c[i, y] - d * math.sin(d)
        out[i, y] = s * (value - m3)
    return out


def ref_mv_softmax(c, labels, s, m, t, variant):
    out = np.empty_like(c)
    for i, y in enumerate(labels):
        f = c[i, y] - m if variant == "am" else arc_classic(c[i, y], m)
        for j in range(c.shape[1]):
            if j == y:
                out[i, j] = s * f
            elif c[i, j] > f:  # mis-classified vector: h = exp(s (t-1)(cos+1)) folds into the logit
                out[i, j] = s * c[i, j] + s * (t - 1.0) * (c[i, j] + 1.0)
            else:
                out[i, j] = s * c[i, j]
    return out


def ref_curricular(c, labels, s, m, t):
    out = np.empty_like(c)
    for i, y in enumerate(labels):
        target = arc_classic(c[i, y], m)
        for j in range(c.shape[1]):
            if j == y:
                out[i, j] = s * target
            else:
                out[i, j] = s * (c[i, j] * (t + c[i, j]) if c[i, j] > target else c[i, j])
    return out


def ref_npcface(c, labels, s, m, m0, m1, t, alpha):
    out = np.empty_like(c)
    for i, y in enumerate(labels):
        threshold = arc_classic(c[i, y], m)
        hard = [j for j in range(c.shape[1]) if j != y and c[i, j] > threshold]
        m_i = m0 + m1 * (np.mean([c[i, j] for j in hard]) if hard else 0.0)
        for j in range(c.shape[1]):
            if j == y:
                out[i, j] = s * arc_classic(c[i, y], m_i)
            else:
                out[i, j] = s * (t * c[i, j] + alpha if j in hard else c[i, j])
    return out


def ref_circle(c, labels, gamma, m):
    out = np.empty_like(c)
    for i, y in enumerate(labels):
        for j in range(c.shape[1]):
            if j == y:
                out[i, j] = gamma * max(1.0 + m - c[i, j], 0.0) * (c[i, j] - (1.0 - m))
            else:
                out[i, j] = gamma * max(c[i, j] + m, 0.0) * (c[i, j] - m)
    return out


def ref_circle_loss(c, labels, gamma, m):
    """Circle loss with one positive: log(1 + sum_j exp(gamma a_n (s_n - m)) exp(-gamma a_p (s_p - 1 + m)))."""
    losses = []
    for i, y in enumerate(labels):
        s_p = c[i, y]
        positive = gamma * max(1.0 + m - s_p, 0.0) * (s_p - (1.0 - m))
        terms = [gamma * max(c[i, j] + m, 0.0) * (c[i, j] - m) - positive for j in range(c.shape[1]) if j != y]
        losses.append(np.logaddexp.reduce([0.0, *terms]))
    return float(np.mean(losses))


def ref_adacos_scale(c, labels, s_prev):
    b = [sum(math.exp(s_prev * c[i, j]) for j in range(c.shape[1]) if j != y) for i, y in enumerate(labels)]
    theta_med = np.median([theta_of(c[i, y]) for i, y in enumerate(labels)])
    return math.log(np.mean(b)) / math.cos(min(PI / 4, theta_med))


# --- tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [64.0, 30.0])
def test_nsoftmax(s):
    c, labels = cosine_batch(0)
    close(run_logits(build("nsoftmax", 4, 7, s=s), c, labels), ref_nsoftmax(c, labels, s), s)


@pytest.mark.parametrize("variant", ["classic", "straight_through"])
@pytest.mark.parametrize("m", [0.5, 0.3, 0.8])
def test_arcface(variant, m):
    c, labels = cosine_batch(1, m=m)
    head = build("arcface", 4, 7, m=m, variant=variant)
    close(run_logits(head, c, labels), ref_arcface(c, labels, 64.0, m, variant), 64.0)


def test_arcface_default_is_the_classic_published_form():
    assert build("arcface", 4, 7).margins == {"s": 64.0, "m": 0.5, "variant": "classic"}


@pytest.mark.parametrize("m", [0.45, 0.4, 0.0])
def test_li_arcface(m):
    c, labels = cosine_batch(2, m=m)
    close(run_logits(build("li_arcface", 4, 7, m=m), c, labels), ref_li_arcface(c, labels, 64.0, m), 64.0)


@pytest.mark.parametrize("m", [0.35, 0.2])
def test_cosface(m):
    c, labels = cosine_batch(3)
    close(run_logits(build("cosface", 4, 7, m=m), c, labels), ref_cosface(c, labels, 64.0, m), 64.0)


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.3, 0.2), (1.2, 0.3, 0.2), (1.35, 0.0, 0.0), (0.9, 0.4, 0.1)])
def test_combined(m1, m2, m3):
    c, labels = cosine_batch(4)
    head = build("combined", 4, 7, m1=m1, m2=m2, m3=m3)
    close(run_logits(head, c, labels), ref_combined(c, labels, 64.0, m1, m2, m3), 64.0)


def test_combined_margins_all_take_effect():
    """Changing any one of m1, m2, m3 moves the target logit exactly as cos(m1 theta + m2) - m3 says."""
    theta = np.linspace(0.05, 2.0, 40)  # m1 theta + m2 stays below pi for every setting used here
    c = np.cos(theta).astype(np.float32).astype(np.float64)[:, None].repeat(3, axis=1)
    labels = np.zeros(len(theta), dtype=np.int64)
    base = {"m1": 1.0, "m2": 0.3, "m3": 0.2}
    targets = {}
    for key, changed in [("base", {}), ("m1", {"m1": 1.2}), ("m2", {"m2": 0.45}), ("m3", {"m3": 0.35})]:
        margins = {**base, **changed}
        got = run_logits(build("combined", 4, 3, **margins), c, labels)[:, 0]
        th = np.arccos(np.clip(c[:, 0], -1 + EPS, 1 - EPS))
        expected = 64.0 * (np.cos(margins["m1"] * th + margins["m2"]) - margins["m3"])
        close(got, expected, 64.0)
        targets[key] = got
    for key in ("m1", "m2", "m3"):
        assert np.all(targets[key] < targets["base"] - 0.1), f"raising {key} must lower every target logit"
    # m3 > 0 does not switch m1, m2 off: the result is not the CosFace logit with m = m3.
    cosface = run_logits(build("cosface", 4, 3, m=0.2), c, labels)[:, 0]
    assert np.all(np.abs(targets["base"] - cosface) > 1.0)


def test_combined_reduces_to_arcface_and_cosface():
    c, labels = cosine_batch(5)
    arc = run_logits(build("arcface", 4, 7, m=0.5), c, labels)
    close(run_logits(build("combined", 4, 7, m1=1.0, m2=0.5, m3=0.0), c, labels), arc, 64.0)
    cos = run_logits(build("cosface", 4, 7, m=0.35), c, labels)
    close(run_logits(build("combined", 4, 7, m1=1.0, m2=0.0, m3=0.35), c, labels), cos, 64.0)


@pytest.mark.parametrize("variant,m", [("am", 0.35), ("arc", 0.5)])
def test_mv_softmax(variant, m):
    c, labels = cosine_batch(6, m=m)
    got = run_logits(build("mv_softmax", 4, 7, m=m, variant=variant), c, labels)
    close(got, ref_mv_softmax(c, labels, 64.0, m, 1.2, variant), 64.0)
    f = [c[i, y] - m if variant == "am" else arc_classic(c[i, y], m) for i, y in enumerate(labels)]
    hard = c > np.array(f)[:, None]
    assert hard.sum() > len(labels) and (~hard).sum() > len(labels)  # both kinds of negative are exercised


def test_curricularface_logits_and_running_t():
    head = build("curricularface", 4, 7).train()
    t = 0.0
    for seed in (7, 8):
        c, labels = cosine_batch(seed)
        t = 0.99 * t + 0.01 * float(np.mean(c[np.arange(len(labels)), labels]))
        close(run_logits(head, c, labels), ref_curricular(c, labels, 64.0, 0.5, t), 64.0)
        assert float(head.t) == pytest.approx(t, abs=1e-6)
    head.eval()
    c, labels = cosine_batch(9)
    close(run_logits(head, c, labels), ref_curricular(c, labels, 64.0, 0.5, t), 64.0)
    assert float(head.t) == pytest.approx(t, abs=1e-6)  # evaluation does not move the statistic


def test_curricularface_hard_negatives_use_t():
    """With t set well away from 0 the hard-negative branch cos (t + cos) is visible (t = 0 would hide t)."""
    head = build("curricularface", 4, 7, momentum=0.0).train()
    c, labels = cosine_batch(10)
    t = float(np.mean(c[np.arange(len(labels)), labels]))
    close(run_logits(head, c, labels), ref_curricular(c, labels, 64.0, 0.5, t), 64.0)


def test_npcface():
    c, labels = cosine_batch(11)
    close(run_logits(build("npcface", 4, 7), c, labels), ref_npcface(c, labels, 64.0, 0.5, 0.4, 0.2, 1.1, 0.2), 64.0)
    margins = {"m": 0.3, "m0": 0.35, "m1": 0.3, "t": 1.2, "alpha": 0.1}
    got = run_logits(build("npcface", 4, 7, **margins), c, labels)
    close(got, ref_npcface(c, labels, 64.0, **margins), 64.0)


def test_circleloss_logits_and_loss():
    c, labels = cosine_batch(12)
    head = build("circleloss", 4, 7)
    logits = head.logits(torch.tensor(c, dtype=torch.float32), torch.tensor(labels))
    close(logits.numpy().astype(np.float64), ref_circle(c, labels, 256.0, 0.25), 256.0)
    loss = float(head.loss(logits, torch.tensor(labels)))
    assert loss == pytest.approx(ref_circle_loss(c, labels, 256.0, 0.25), rel=1e-5)


def test_adacos_dynamic_scale():
    classes = 7
    head = build("adacos", 4, classes).train()
    s = math.sqrt(2.0) * math.log(classes - 1)
    assert float(head.s) == pytest.approx(s, rel=1e-6)
    rng = np.random.default_rng(13)
    for n, top in [(24, 0.7), (23, 0.7), (24, PI)]:  # even and odd batches with theta_med < pi/4, then above it
        c, labels = cosine_batch(int(rng.integers(100)), n=n)
        rows = np.arange(n)
        c[rows, labels] = np.cos(rng.uniform(0.0, top, size=n)).astype(np.float32)
        s = ref_adacos_scale(c, labels, s)
        close(run_logits(head, c, labels), s * c, 64.0)
        assert float(head.s) == pytest.approx(s, rel=1e-5)
    head.eval()
    c, labels = cosine_batch(15)
    close(run_logits(head, c, labels), s * c, 64.0)
    assert float(head.s) == pytest.approx(s, rel=1e-5)


def test_adam_softmax_margins_clamped_and_penalised():
    c, labels = cosine_batch(16)
    head = build("adam_softmax", 4, 7, m=0.3, lam=5.0)
    raw = np.array([-0.2, 0.1, 0.3, 0.5, 0.7, 1.4, 0.25])
    with torch.no_grad():
        head.margin.copy_(torch.tensor(raw))
    used = np.clip(raw, 0.0, 1.0)
    expected = 64.0 * c.copy()
    expected[np.arange(len(labels)), labels] = 64.0 * (c[np.arange(len(labels)), labels] - used[labels])
    logits = head.logits(torch.tensor(c, dtype=torch.float32), torch.tensor(labels))
    close(logits.detach().numpy().astype(np.float64), expected, 64.0)
    loss = float(head.loss(logits, torch.tensor(labels)).detach())
    assert loss == pytest.approx(ce_mean(expected, labels) - 5.0 * used.mean(), rel=1e-5)


def test_adam_softmax_starts_every_class_at_m():
    head = build("adam_softmax", 4, 5, m=0.4)
    assert torch.equal(head.margin.detach(), torch.full((5,), 0.4))


@pytest.mark.parametrize("name", ["arcface", "li_arcface", "cosface", "combined", "nsoftmax"])
def test_default_loss_is_mean_cross_entropy(name):
    c, labels = cosine_batch(17)
    head = build(name, 4, 7)
    logits = head.logits(torch.tensor(c, dtype=torch.float32), torch.tensor(labels))
    expected = ce_mean(logits.detach().numpy().astype(np.float64), labels)
    assert float(head.loss(logits, torch.tensor(labels))) == pytest.approx(expected, rel=1e-5)


def test_arcface_gradients_match_the_derivatives():
    """classic: d/dc s cos(theta + m) = s sin(theta + m) / sin(theta); straight-through: s, as the plain cosine."""
    theta = np.array([0.3, 1.0, 2.0, 2.5])  # theta + 0.5 < pi
    c = torch.tensor(np.cos(theta), dtype=torch.float32, requires_grad=True)
    cos = torch.stack([c, torch.zeros_like(c)], dim=1)
    labels = torch.zeros(4, dtype=torch.long)
    for variant, expected in [
        ("classic", 64.0 * np.sin(theta + 0.5) / np.sin(theta)),
        ("straight_through", np.full(4, 64.0)),
    ]:
        (grad,) = torch.autograd.grad(build("arcface", 4, 2, variant=variant).logits(cos, labels)[:, 0].sum(), c)
        np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-4)
