"""The LFW 10-fold protocol, insightface's variant, TAR@FAR and cosine scores, checked by hand and by brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluate.verification import (
    best_threshold,
    cosine_scores,
    fold_predictions,
    insightface_accuracy,
    tar_at_far,
    verification_accuracy,
)

# Two folds of four pairs, scores chosen as integers so every midpoint is exact.
HAND_SCORES = np.array([9, 2, 6, 4, 8, 5, 3, 7], dtype=float)
HAND_SAME = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=bool)


def test_hand_worked_two_folds() -> None:
    # Fold 0 held out; train on fold 1, sorted: 3 F, 5 T, 7 F, 8 T.  Accuracy of "score > t":
    #   t=-inf 2/4, t=4 (3|5) 3/4, t=6 (5|7) 2/4, t=7.5 (7|8) 3/4, t=+inf 2/4.
    #   Tie between 4 and 7.5 -> lowest, t=4.  Fold 0: 9>4 T ok, 2 F ok, 6>4 T ok, 4>4 is false -> F ok: 4/4.
    # Fold 1 held out; train on fold 0, sorted: 2 F, 4 F, 6 T, 9 T.
    #   t=-inf 2/4, t=3 3/4, t=5 4/4, t=7.5 3/4, t=+inf 2/4 -> t=5.
    #   Fold 1: 8 T ok, 5>5 false -> F but T (wrong), 3 F ok, 7>5 -> T but F (wrong): 2/4.
    # Mean (1 + 0.5)/2 = 0.75; population std = 0.25 (the sample std would be 0.354).
    predicted, thresholds = fold_predictions(HAND_SCORES, HAND_SAME, folds=2)
    np.testing.assert_array_equal(thresholds, [4.0, 5.0])
    np.testing.assert_array_equal(predicted, [True, False, True, False, True, False, False, True])
    mean, std = verification_accuracy(HAND_SCORES, HAND_SAME, folds=2)
    assert mean == pytest.approx(0.75)
    assert std == pytest.approx(0.25)


def test_hand_worked_one_class_training_gives_infinite_threshold() -> None:
    # Folds of two: [0.25 T, 0.75 T], [0.5 T, 0.875 T], [0.875 T, 0.125 F].
    # Fold 0 out: train 0.5 T, 0.875 T, 0.875 T, 0.125 F -> cut 0.125|0.5 scores 4/4: t = 0.3125,
    #   so held-out 0.25 is predicted "different" and 0.75 "same".
    # Fold 1 out: train 0.25 T, 0.75 T, 0.875 T, 0.125 F -> cut 0.125|0.25: t = 0.1875.
    # Fold 2 out: train all "same" -> the cut below every score, t = -inf; held out both predicted "same".
    scores = np.array([0.25, 0.75, 0.5, 0.875, 0.875, 0.125])
    same = np.array([1, 1, 1, 1, 1, 0], dtype=bool)
    predicted, thresholds = fold_predictions(scores, same, folds=3)
    np.testing.assert_array_equal(thresholds, [0.3125, 0.1875, -math.inf])
    np.testing.assert_array_equal(predicted, [False] + [True] * 5)
    # All "different" in training: the cut above every score, +inf; everything held out is "different".
    assert best_threshold([0.3, 0.9], [False, False]) == math.inf


def _brute_force(scores: np.ndarray, same: np.ndarray, folds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent: a fine grid plus every midpoint and +-inf, chosen by broadcasting over all candidates."""
    n = scores.size
    size = n // folds
    grid = np.linspace(scores.min() - 0.05, scores.max() + 0.05, 4001)
    predicted = np.zeros(n, dtype=bool)
    thresholds = np.zeros(folds)
    per_fold = np.zeros(folds)
    for k in range(folds):
        test = np.arange(k * size, (k + 1) * size)
        train = np.setdiff1d(np.arange(n), test)
        values = np.unique(scores[train])
        exact = np.concatenate(([-np.inf], (values[:-1] + values[1:]) / 2, [np.inf]))
        def accuracy(candidates: np.ndarray) -> np.ndarray:
            return ((scores[train][None, :] > candidates[:, None]) == same[train][None, :]).mean(axis=1)
        exact_acc = accuracy(exact)
        # No grid threshold beats the exact candidates: the search over cuts misses nothing.
        assert accuracy(grid).max() <= exact_acc.max() + 1e-12
        thresholds[k] = exact[np.flatnonzero(exact_acc == exact_acc.max())[0]]  # lowest best
        predicted[test] = scores[test] > thresholds[k]
        per_fold[k] = (predicted[test] == same[test]).mean()
    return predicted, thresholds, per_fold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    same = rng.random(n) < 0.5
    # Overlapping classes, rounded so that equal scores (ties) occur.
    scores = np.round(np.where(same, rng.normal(0.4, 0.2, n), rng.normal(0.1, 0.2, n)), 2)
    predicted, thresholds = fold_predictions(scores, same, folds=10)
    bf_predicted, bf_thresholds, bf_per_fold = _brute_force(scores, same, 10)
    np.testing.assert_array_equal(thresholds, bf_thresholds)
    np.testing.assert_array_equal(predicted, bf_predicted)
    mean, std = verification_accuracy(scores, same, folds=10)
    assert mean == pytest.approx(bf_per_fold.mean())
    assert std == pytest.approx(np.sqrt(np.mean((bf_per_fold - bf_per_fold.mean()) ** 2)))


def test_folds_are_consecutive_blocks_so_order_matters() -> None:
    rng = np.random.default_rng(3)
    n = 40
    same = np.tile([True, False], n // 2)
    scores = np.round(np.where(same, rng.normal(0.3, 0.3, n), rng.normal(0.0, 0.3, n)), 2)
    order = rng.permutation(n)
    original = verification_accuracy(scores, same, folds=4)
    shuffled = verification_accuracy(scores[order], same[order], folds=4)
    assert original != shuffled
    # And each equals the brute force taken over consecutive blocks of its own order.
    assert shuffled[0] == pytest.approx(_brute_force(scores[order], same[order], 4)[2].mean())
    assert original[0] == pytest.approx(_brute_force(scores, same, 4)[2].mean())


def test_perfectly_separable_gives_one() -> None:
    rng = np.random.default_rng(4)
    same = rng.random(100) < 0.5
    scores = np.where(same, rng.uniform(0.6, 1.0, 100), rng.uniform(-1.0, 0.4, 100))
    assert verification_accuracy(scores, same, folds=10) == (1.0, 0.0)


def test_threshold_never_lands_on_the_upper_score_of_adjacent_doubles() -> None:
    # Rounding the midpoint of adjacent doubles goes to the even one, which is `high` half the time.
    low = 0.5
    for _ in range(4):
        high = np.nextafter(low, 1.0)
        t = best_threshold([low, high], [False, True])
        assert low <= t < high
        low = high


def test_non_divisible_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="11 pairs cannot be split into 10"):
        verification_accuracy(np.zeros(11), np.zeros(11, dtype=bool), folds=10)


@pytest.mark.parametrize(
    ("scores", "same", "match"),
    [
        (np.array([0.1, np.nan]), np.array([True, False]), "finite"),
        (np.array([0.1, 0.2]), np.array([True]), "shape"),
        (np.array([0.1, 0.2]), np.array([2, 0]), "booleans"),
    ],
)
def test_bad_input_is_named(scores: np.ndarray, same: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        verification_accuracy(scores, same, folds=2)


def test_tar_at_far_hand_count() -> None:
    negatives = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.62, 0.9]  # 10 different pairs
    positives = [0.95, 0.8, 0.7, 0.6, 0.3]  # 5 same pairs
    scores = np.array(negatives + positives)
    same = np.array([False] * 10 + [True] * 5)
    # Accept when score >= t.  FAR <= 0.1 allows 1 negative (0.9): t = 0.7 accepts 0.95, 0.8, 0.7 -> 3/5.
    # FAR <= 0.2 allows 0.9, 0.62: t = 0.6 accepts 4 positives -> 4/5.
    # FAR <= 0.4 allows 4 negatives (>= 0.35): 4/5; the positive at 0.3 ties a negative, so reaching it
    # would admit a 5th negative (FAR 0.5) -- no interpolation, so TAR stays 0.8.
    # FAR 0.05 needs >= 20 negatives: NaN.
    result = tar_at_far(scores, same, fars=(0.1, 0.2, 0.4, 0.05))
    assert result[0.1] == pytest.approx(0.6)
    assert result[0.2] == pytest.approx(0.8)
    assert result[0.4] == pytest.approx(0.8)
    assert math.isnan(result[0.05])


def test_tar_at_far_matches_threshold_sweep() -> None:
    rng = np.random.default_rng(5)
    same = rng.random(3000) < 0.3
    scores = np.round(np.where(same, rng.normal(0.5, 0.2, 3000), rng.normal(0.0, 0.2, 3000)), 3)
    result = tar_at_far(scores, same, fars=(1e-2, 1e-3, 1e-4))
    neg, pos = scores[~same], scores[same]
    for far in (1e-2, 1e-3):
        # Independent: sweep every score as an acceptance threshold, keep the best TAR within the FAR.
        candidates = np.unique(scores)
        fars_at = (neg[None, :] >= candidates[:, None]).mean(axis=1)
        tars_at = (pos[None, :] >= candidates[:, None]).mean(axis=1)
        assert result[far] == pytest.approx(tars_at[fars_at <= far].max())
    assert math.isnan(result[1e-4])  # about 2100 negatives < 10000


def test_tar_at_far_reaches_exactly_one_over_negatives() -> None:
    # 1000 negatives reach FAR 1e-3 exactly: one false accept allowed. The top negatives are 0.0 and
    # -1/999 = -0.001001; accepting >= -0.0005 admits only the first of them and positives 0.5, -0.0005.
    negatives = np.linspace(-1, 0, 1000)
    scores = np.concatenate([negatives, [0.5, -0.0005, -2.0]])
    same = np.concatenate([np.zeros(1000, bool), np.ones(3, bool)])
    assert tar_at_far(scores, same, fars=(1e-3,))[1e-3] == pytest.approx(2 / 3)


def test_tar_at_far_errors() -> None:
    with pytest.raises(ValueError, match="no 'same' pairs"):
        tar_at_far([0.1, 0.2], [False, False])
    with pytest.raises(ValueError, match="far"):
        tar_at_far([0.1, 0.2], [True, False], fars=(0.0,))


def _unit_pair(distance: float, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    # Unit vectors at squared distance d: cos(theta) = 1 - d / 2.
    cos = 1.0 - distance / 2.0
    return np.array([1.0, 0.0]), scale * np.array([cos, math.sqrt(1.0 - cos**2)])


def test_insightface_protocol_hand_worked() -> None:
    # Squared distances; folds of four: [0.305 T, 1.505 F, 0.605 T, 2.105 F], [0.405 T, 1.005 F, 1.305 F, 0.705 F].
    # Fold 0 held out, train on fold 1, "same" when d < t on the 0.01 grid:
    #   t <= 0.40: 3/4; 0.41..0.70: 4/4; 0.71..1.00: 3/4; ... -> first best 0.41.
    #   Fold 0 at 0.41: 0.305 T ok, 1.505 F ok, 0.605 -> F but T (wrong), 2.105 F ok: 3/4.
    # Fold 1 held out, train on fold 0: t <= 0.30: 2/4; 0.31..0.60: 3/4; 0.61..1.50: 4/4 -> first best 0.61.
    #   Fold 1 at 0.61: 0.405 T ok, 1.005 F ok, 1.305 F ok, 0.705 F ok: 4/4.
    # Mean 0.875, population std 0.125.  (The last best, 0.70 and 1.50, would give 4/4 and 1/4.)
    distances = [0.305, 1.505, 0.605, 2.105, 0.405, 1.005, 1.305, 0.705]
    same = np.array([1, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    pairs = [_unit_pair(d, scale=3.0) for d in distances]  # scaled: the protocol must normalise
    emb1 = np.stack([p[0] for p in pairs])
    emb2 = np.stack([p[1] for p in pairs])
    mean, std = insightface_accuracy(emb1, emb2, same, folds=2)
    assert mean == pytest.approx(0.875)
    assert std == pytest.approx(0.125)


def test_insightface_protocol_same_is_strictly_below_threshold() -> None:
    # Folds: [0 T, 2 F], [0.005 F, 0.8 T] (squared distances).  "same" only when d < t.
    # Fold 0 out, train fold 1: t = 0.00 -> both "different": 1/2; 0.01..0.80: 0/2; >= 0.81: 1/2 -> t = 0.00.
    #   Fold 0 at 0.00: d = 0 is not < 0, so "different" (wrong); 2 F ok: 1/2.
    # Fold 1 out, train fold 0: t = 0.00: 1/2; t = 0.01: 2/2 -> t = 0.01.
    #   Fold 1 at 0.01: 0.005 -> "same" (wrong), 0.8 -> "different" (wrong): 0/2.
    # Mean 0.25, std 0.25.  (With d <= t instead, both folds would pick 0.00 and score 1 and 1/2.)
    pairs = [(np.array([1.0, 0.0]), np.array([1.0, 0.0])), (np.array([1.0, 0.0]), np.array([0.0, 1.0]))]
    pairs += [_unit_pair(0.005), _unit_pair(0.8)]
    emb1 = np.stack([p[0] for p in pairs])
    emb2 = np.stack([p[1] for p in pairs])
    mean, std = insightface_accuracy(emb1, emb2, [True, False, False, True], folds=2)
    assert mean == pytest.approx(0.25)
    assert std == pytest.approx(0.25)


def test_cosine_scores_normalise() -> None:
    emb1 = np.array([[3.0, 0.0], [1.0, 1.0]])
    emb2 = np.array([[0.0, 2.0], [-5.0, -5.0]])
    np.testing.assert_allclose(cosine_scores(emb1, emb2), [0.0, -1.0], atol=1e-12)
    with pytest.raises(ValueError, match="emb2 rows \\[0\\]"):
        cosine_scores(emb1, np.array([[0.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="same shape"):
        cosine_scores(emb1, emb1[:1])
