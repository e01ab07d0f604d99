"""MegaFace-style identification against a brute-force reference (explicit loops over probes and candidates)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.evaluate import identification
from pipeline.evaluate.identification import evaluate_identification
from pipeline.evaluate.verification import tar_at_far


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float64) / math.sqrt(_dot(v, v))


def _brute_curve(probes, probe_labels, mates, mate_labels, distractors, counts, ranks, seed):
    """Rank-r rates per distractor count: for each probe, count every candidate scoring >= its mate."""
    order = np.random.default_rng(seed).permutation(len(distractors))
    curve = {}
    for k in counts:
        candidates = [(_unit(m), label) for m, label in zip(mates, mate_labels)]
        candidates += [(_unit(distractors[i]), None) for i in order[:k]]
        positions = []
        for probe, label in zip(probes, probe_labels):
            p = _unit(probe)
            mate_score = _dot(p, _unit(mates[list(mate_labels).index(label)]))
            ahead = 0
            for embedding, candidate_label in candidates:
                if candidate_label == label:
                    continue
                if _dot(p, embedding) >= mate_score:
                    ahead += 1
            positions.append(ahead + 1)
        curve[k] = {r: sum(pos <= r for pos in positions) / len(positions) for r in ranks}
    return curve


def _brute_pairs(probes, probe_labels, mates, mate_labels, distractors):
    genuine, impostor = [], []
    for probe, label in zip(probes, probe_labels):
        p = _unit(probe)
        for mate, mate_label in zip(mates, mate_labels):
            (genuine if mate_label == label else impostor).append(_dot(p, _unit(mate)))
        impostor += [_dot(p, _unit(d)) for d in distractors]
    return np.array(genuine), np.array(impostor)


def _sorted_tar(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
    """Best TAR over every threshold t (accept score >= t) whose FAR does not exceed `far`, by sorting."""
    best = 0.0
    for t in [*np.sort(np.concatenate([genuine, impostor])), math.inf]:
        if (impostor >= t).sum() / impostor.size <= far:
            best = max(best, (genuine >= t).sum() / genuine.size)
    return best


def _planted(rng, n_mates, n_probes, n_distractors, dim, noise):
    """Unit mates, probes = their mate + Gaussian noise, independent distractors."""
    mates = rng.standard_normal((n_mates, dim))
    probe_labels = rng.integers(0, n_mates, n_probes)
    probes = mates[probe_labels] + noise * rng.standard_normal((n_probes, dim))
    distractors = rng.standard_normal((n_distractors, dim))
    return probes, probe_labels, mates, np.arange(n_mates), distractors, np.arange(n_mates, n_mates + n_distractors)


def _lattice(rng, n, dim=8):
    """Unit vectors with four entries +-1/2: every dot product is a multiple of 1/4, exact in float32, so ties abound."""
    out = np.zeros((n, dim), dtype=np.float32)
    for row in out:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return out


def _run(data, **kwargs):
    probes, probe_labels, mates, mate_labels, distractors, distractor_labels = data
    return evaluate_identification(probes, probe_labels, mates, mate_labels, distractors, distractor_labels, **kwargs)


def _curve(result):
    return {point.distractors: point.rates for point in result.curve}


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 23, 1000])
def test_curve_matches_brute_force_for_chunk_sizes(chunk_size):
    # 7 mates and 23 distractors: chunks of 3 divide neither, 7 divides the mates, 23 the distractors.
    data = _planted(np.random.default_rng(0), 7, 12, 23, 6, noise=0.9)
    counts, ranks = [0, 1, 4, 10, 23], [1, 2, 5]
    result = _run(data, distractor_counts=counts, ranks=ranks, seed=5, chunk_size=chunk_size, dtype=torch.float64)
    expected = _brute_curve(*data[:5], counts, ranks, seed=5)
    assert _curve(result) == expected
    assert 0.0 < expected[23][1] < 1.0  # the data leaves room for a wrong count to show
    assert [p.candidates for p in result.curve] == [7 + k for k in counts]


def test_lattice_ties_match_brute_force_in_float32():
    rng = np.random.default_rng(1)
    mates, distractors = _lattice(rng, 9), _lattice(rng, 40)
    probe_labels = rng.integers(0, 9, 15)
    probes = _lattice(rng, 15)
    data = (probes, probe_labels, mates, np.arange(9), distractors, np.arange(100, 140))
    counts, ranks = [0, 5, 17, 40], [1, 3]
    for chunk_size in (4, 64):
        result = _run(data, distractor_counts=counts, ranks=ranks, seed=2, chunk_size=chunk_size)
        assert _curve(result) == _brute_curve(*data[:5], counts, ranks, seed=2)


def test_a_tie_with_the_mate_is_a_miss():
    mate = np.array([[0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0], [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    distractors = np.array([[0, 0, 0, 0, -0.5, -0.5, -0.5, -0.5]] * 3 + [mate[0]], dtype=np.float32)
    position = int(np.flatnonzero(np.random.default_rng(0).permutation(4) == 3)[0])  # where the twin enters
    result = _run((mate[:1], [0], mate, [0, 1], distractors, [7, 8, 9, 10]),
                  distractor_counts=[position, position + 1], seed=0, chunk_size=2)
    assert [p.rank1 for p in result.curve] == [1.0, 0.0]
    twin_mates = _run((mate[:1], [0], np.concatenate([mate, mate[:1]]), [0, 1, 2], distractors[:0], np.empty(0)),
                      distractor_counts=[0], ranks=[2])
    assert twin_mates.curve[0].rates == {1: 0.0, 2: 1.0}


def test_one_probe_and_zero_distractors():
    data = _planted(np.random.default_rng(3), 5, 1, 0, 4, noise=0.3)
    result = _run(data, distractor_counts=[0], ranks=[1, 2], fars=[0.3], dtype=torch.float64)
    assert (result.probes, result.mates, result.distractors) == (1, 5, 0)
    assert _curve(result) == _brute_curve(*data[:5], [0], [1, 2], seed=0)
    assert result.impostor_pairs == 4 and result.genuine_pairs == 1
    genuine, impostor = _brute_pairs(*data[:5])
    assert result.verification[0].tar == _sorted_tar(genuine, impostor, 0.3)


def test_planted_mates_are_found_and_random_probes_are_not():
    rng = np.random.default_rng(4)
    close = _planted(rng, 50, 200, 2000, 64, noise=0.2)
    result = _run(close, distractor_counts=[10, 100, 1000, 2000], chunk_size=256)
    assert min(result.rank1().values()) >= 0.99
    probes, labels, *rest = close
    unrelated = (rng.standard_normal(probes.shape), labels, *rest)
    # Random probes: the mate is one of 50 + k candidates, so rank 1 by chance is about 1 / (50 + k).
    assert max(_run(unrelated, distractor_counts=[10, 2000]).rank1().values()) < 0.1


def test_curve_never_rises_and_is_nested():
    data = _planted(np.random.default_rng(5), 20, 100, 3000, 16, noise=1.0)
    rates = list(_run(data, distractor_counts=[0, 10, 100, 1000, 3000], chunk_size=500).rank1().values())
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]


def test_tar_at_far_matches_sorting_all_pairs():
    data = _planted(np.random.default_rng(6), 10, 30, 60, 8, noise=1.2)
    fars = [0.5, 0.1, 0.01, 1e-3, 1e-4]
    result = _run(data, distractor_counts=[60], fars=fars, chunk_size=7, dtype=torch.float64)
    genuine, impostor = _brute_pairs(*data[:5])
    assert (result.genuine_pairs, result.impostor_pairs) == (genuine.size, impostor.size) == (30, 30 * 69)
    reference = tar_at_far(np.concatenate([genuine, impostor]),
                           np.concatenate([np.ones(genuine.size, bool), np.zeros(impostor.size, bool)]), fars)
    for point in result.verification[:4]:
        assert point.measurable
        assert point.tar == pytest.approx(_sorted_tar(genuine, impostor, point.far), abs=1e-12)
        assert point.tar == pytest.approx(reference[point.far], abs=1e-12)
        assert point.false_accepts == (impostor > point.threshold).sum() <= point.far * impostor.size
        assert point.tar == (genuine > point.threshold).mean()
    assert 0.0 < result.verification[2].tar < 1.0
    for point in result.verification[1:4]:  # alone, each far keeps fewer impostors than a chunk holds
        assert _run(data, distractor_counts=[60], fars=[point.far], chunk_size=7, dtype=torch.float64).verification == (point,)
    # 1e-4 needs 10,000 impostor pairs and there are 2,070: reported as not measurable, never extrapolated.
    last = result.verification[4]
    assert not last.measurable and math.isnan(last.tar) and math.isnan(last.threshold)


def test_tar_at_far_with_tied_scores():
    rng = np.random.default_rng(7)
    data = (_lattice(rng, 12), rng.integers(0, 6, 12), _lattice(rng, 6), np.arange(6), _lattice(rng, 30), 10 + np.arange(30))
    fars = [0.2, 0.05, 0.02]
    result = _run(data, distractor_counts=[30], fars=fars, chunk_size=5)
    genuine, impostor = _brute_pairs(*data[:5])
    for point in result.verification:
        assert point.tar == pytest.approx(_sorted_tar(genuine, impostor, point.far), abs=1e-12)


def test_no_score_block_wider_than_the_chunk(monkeypatch):
    widths = []
    original = identification._scores
    monkeypatch.setattr(identification, "_scores", lambda p, rows: widths.append(rows.shape[0]) or original(p, rows))
    data = _planted(np.random.default_rng(8), 30, 10, 250, 8, noise=0.5)
    _run(data, distractor_counts=[10, 100, 250], chunk_size=64)
    assert max(widths) <= 64 and sum(widths) == 2 * 30 + 250  # mates are searched twice: genuine, then ranks


def test_inputs_agree_across_types_and_are_not_modified():
    data = _planted(np.random.default_rng(9), 8, 20, 50, 8, noise=0.8)
    copies = [np.copy(x) for x in data]
    as_numpy = _run(data, distractor_counts=[10, 50], fars=[0.01], dtype=torch.float64)
    tensors = tuple(torch.as_tensor(x) for x in data)
    assert _run(tensors, distractor_counts=[10, 50], fars=[0.01], dtype=torch.float64) == as_numpy
    scaled = (data[0] * 3.0, data[1], data[2] * 0.5, *data[3:])  # normalised on entry: scale does not matter
    assert _curve(_run(scaled, distractor_counts=[10, 50], dtype=torch.float64)) == _curve(as_numpy)
    for before, after in zip(copies, data):
        np.testing.assert_array_equal(before, after)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    data = _planted(np.random.default_rng(10), 8, 20, 50, 8, noise=0.8)
    kwargs = dict(distractor_counts=[10, 50], fars=[0.01], dtype=torch.float64)
    assert _run(data, device="cuda", **kwargs) == _run(data, **kwargs)


def _bad(data, **overrides):
    names = ["probes", "probe_labels", "mates", "mate_labels", "distractors", "distractor_labels"]
    arguments = dict(zip(names, data)) | {"distractor_counts": [2]} | overrides
    return arguments


@pytest.mark.parametrize("overrides, message", [
    (lambda d: {"probes": d[0][:, :3]}, "differ in dimension"),
    (lambda d: {"probes": d[0][0]}, "must be 2-D"),
    (lambda d: {"probes": d[0][:0], "probe_labels": d[1][:0]}, "at least one probe"),
    (lambda d: {"mates": d[2][:0], "mate_labels": d[3][:0]}, "at least one probe and one mate"),
    (lambda d: {"probe_labels": d[1][:2]}, "probe_labels must have shape"),
    (lambda d: {"distractor_labels": np.r_[d[5][:-1], d[1][0]]}, "shared with the probes"),
    (lambda d: {"mate_labels": np.r_[d[3][:-1], 0]}, "one image per identity"),
    (lambda d: {"probe_labels": np.r_[d[1][:-1], 999]}, "without a mate"),
    (lambda d: {"distractors": np.where(np.arange(4)[:, None] == 2, np.nan, d[4])}, r"distractors rows \[2\]"),
    (lambda d: {"mates": np.where(np.arange(3)[:, None] == 1, np.inf, d[2])}, r"mates rows \[1\]"),
    (lambda d: {"probes": np.zeros_like(d[0])}, "zero or non-finite norm"),
    (lambda d: {"distractors": d[4].astype(np.int64)}, "floating-point"),
    (lambda d: {"distractor_counts": [5]}, "distractor_counts must be an integer in"),
    (lambda d: {"distractor_counts": []}, "distractor_counts is empty"),
    (lambda d: {"distractor_counts": [1, 1]}, "repeated"),
    (lambda d: {"ranks": [0]}, "ranks must be an integer"),
    (lambda d: {"fars": [1.0]}, r"far must lie in \(0, 1\)"),
    (lambda d: {"chunk_size": 0}, "chunk_size must be an integer >= 1"),
    (lambda d: {"dtype": torch.float16}, "dtype must be"),
])
def test_invalid_inputs_raise_clear_errors(overrides, message):
    data = _planted(np.random.default_rng(11), 3, 5, 4, 4, noise=0.1)
    with pytest.raises(ValueError, match=message):
        evaluate_identification(**_bad(data, **overrides(data)))


def test_valid_call_of_the_error_cases_runs():
    data = _planted(np.random.default_rng(11), 3, 5, 4, 4, noise=0.1)
    assert evaluate_identification(**_bad(data)).curve[0].distractors == 2
