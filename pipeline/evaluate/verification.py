"""Pair verification metrics: the LFW 10-fold protocol, insightface's variant of it, and TAR@FAR.

Conventions used throughout this module:
- `scores` are similarities (higher = more alike); a pair is predicted "same" when score > threshold.
- Folds are consecutive equal blocks in pair order (fold k holds pairs k*n/folds ... (k+1)*n/folds - 1),
  as in LFW View 2, where the ten subsets are listed one after the other in pairs.txt.
- Accuracies are fractions in [0, 1]; their spread over folds is the population std (np.std, ddof=0),
  which is what the LFW and insightface evaluation tools print.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

INSIGHTFACE_THRESHOLDS = np.arange(0.0, 4.0, 0.01)  # the 0.01 grid over [0, 4) of squared L2 distances


def _as_scores(scores: ArrayLike, name: str = "scores") -> NDArray[np.float64]:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} must be finite; pair(s) {bad[:5].tolist()} are {array[bad[:5]].tolist()}")
    return array


def _as_labels(issame: ArrayLike, n: int, name: str = "issame") -> NDArray[np.bool_]:
    array = np.asarray(issame)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the scores, got {array.shape}")
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must be booleans (or 0/1), got values {np.unique(array)[:5].tolist()}")
        array = array.astype(bool)
    return array


def fold_bounds(n_pairs: int, folds: int) -> list[tuple[int, int]]:
    """[start, stop) of each fold: consecutive equal blocks in pair order (LFW View 2 layout)."""
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if n_pairs % folds:
        raise ValueError(f"{n_pairs} pairs cannot be split into {folds} equal consecutive folds")
    size = n_pairs // folds
    return [(k * size, (k + 1) * size) for k in range(folds)]


def best_threshold(scores: ArrayLike, issame: ArrayLike) -> float:
    """The threshold maximising accuracy of `score > threshold` on these pairs, by exact search.

    Every distinct cut of the sorted scores is tried: below all (-inf: everything "same"), between
    each two adjacent distinct scores (the midpoint), and above all (+inf: everything "different").
    Ties in accuracy go to the lowest such threshold, so the choice is deterministic.
    """
    s = _as_scores(scores)
    y = _as_labels(issame, s.size)
    if s.size == 0:
        raise ValueError("cannot choose a threshold from zero pairs")
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    # Cut k predicts the k lowest scores "different": correct = different among them + same above them.
    diff_below = np.concatenate(([0], np.cumsum(~y)))
    same_above = y.sum() - np.concatenate(([0], np.cumsum(y)))
    cuts = np.concatenate(([0], np.flatnonzero(s[1:] > s[:-1]) + 1, [s.size]))  # never split equal scores
    correct = diff_below[cuts] + same_above[cuts]
    k = int(cuts[int(np.argmax(correct))])  # argmax returns the first, i.e. lowest, best cut
    if k == 0:
        return -math.inf
    if k == s.size:
        return math.inf
    low, high = s[k - 1], s[k]
    mid = 0.5 * (low + high)
    # For adjacent doubles the midpoint can round up onto `high`, which would misplace that pair.
    return float(mid if mid < high else low)


def fold_predictions(
    scores: ArrayLike, issame: ArrayLike, folds: int = 10
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Each pair's held-out prediction under the LFW protocol (Huang et al. 2007, View 2).

    For fold k, the threshold is chosen by `best_threshold` on the other folds and applied to fold k.
    Returns (predicted_same per pair, threshold per fold); thresholds may be -inf/+inf (see
    `best_threshold`).
    """
    s = _as_scores(scores)
    y = _as_labels(issame, s.size)
    bounds = fold_bounds(s.size, folds)
    predicted = np.empty(s.size, dtype=bool)
    thresholds = np.empty(len(bounds), dtype=np.float64)
    for k, (start, stop) in enumerate(bounds):
        train = np.ones(s.size, dtype=bool)
        train[start:stop] = False
        thresholds[k] = best_threshold(s[train], y[train])
        predicted[start:stop] = s[start:stop] > thresholds[k]
    return predicted, thresholds


def fold_mean_std(correct: ArrayLike, folds: int = 10) -> tuple[float, float]:
    """Mean and population std (ddof=0) over consecutive folds of per-pair correctness."""
    right = _as_labels(correct, np.asarray(correct).size, "correct")
    per_fold = np.array([right[start:stop].mean() for start, stop in fold_bounds(right.size, folds)])
    return float(per_fold.mean()), float(per_fold.std())


def verification_accuracy(scores: ArrayLike, issame: ArrayLike, folds: int = 10) -> tuple[float, float]:
    """Mean and population std over folds of held-out accuracy (Huang et al. 2007, LFW View 2)."""
    s = _as_scores(scores)
    y = _as_labels(issame, s.size)
    predicted, _ = fold_predictions(s, y, folds)
    return fold_mean_std(predicted == y, folds)


def tar_at_far(
    scores: ArrayLike, issame: ArrayLike, fars: Sequence[float] = (1e-2, 1e-3, 1e-4)
) -> dict[float, float]:
    """TAR at the operating point with the largest FPR <= far on the ROC (no interpolation).

    The ROC is sklearn's `roc_curve` (accept when score >= threshold), with every threshold kept.
    Because TPR never decreases along the ROC, this is the best TAR whose FAR does not exceed `far`.
    Where there are fewer than 1/far different pairs, no FAR step is that fine, and the value is NaN.
    """
    from sklearn.metrics import roc_curve  # here, not at the top: sklearn costs ~2 s at every stage start
    s = _as_scores(scores)
    y = _as_labels(issame, s.size)
    n_same = int(y.sum())
    n_diff = s.size - n_same
    if n_same == 0:
        raise ValueError("TAR is undefined: the pair set has no 'same' pairs")
    for far in fars:
        if not 0.0 < far < 1.0:
            raise ValueError(f"each far must lie in (0, 1), got {far!r}")
    if n_diff == 0:
        return {float(far): math.nan for far in fars}
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    result: dict[float, float] = {}
    for far in fars:
        if n_diff < math.ceil(1.0 / far - 1e-9):  # 1e-9: 1/far is not exact in floating point
            result[float(far)] = math.nan
            continue
        reachable = np.flatnonzero(fpr <= far)
        result[float(far)] = float(tpr[reachable[-1]])  # fpr is sorted, so the last is the largest
    return result


def _l2_normalise(embeddings: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (pairs x dims), got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise ValueError(f"{name} rows {bad[:5].tolist()} have zero or non-finite norm and cannot be normalised")
    return array / norms


def _check_pair_embeddings(emb1: ArrayLike, emb2: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    a, b = _l2_normalise(emb1, "emb1"), _l2_normalise(emb2, "emb2")
    if a.shape != b.shape:
        raise ValueError(f"emb1 and emb2 must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def cosine_scores(emb1: ArrayLike, emb2: ArrayLike) -> NDArray[np.float64]:
    """cos(theta) = x1.x2 / (|x1| |x2|) per row (AirFace paper, Eq. 2: W^T x = |W| |x| cos theta)."""
    a, b = _check_pair_embeddings(emb1, emb2)
    return np.einsum("ij,ij->i", a, b)


def insightface_accuracy(
    emb1: ArrayLike, emb2: ArrayLike, issame: ArrayLike, folds: int = 10
) -> tuple[float, float]:
    """Mean and population std over folds of accuracy under insightface's evaluation protocol.

    Squared L2 distance between L2-normalised embeddings (= 2 - 2 cos theta); a pair is "same" when
    distance < threshold; the threshold is the first best of the 0.01 grid over [0, 4) on the other
    folds; folds are the unshuffled consecutive blocks (for divisible counts, what sklearn's
    KFold(shuffle=False) gives; other counts raise, as in `verification_accuracy`).
    """
    a, b = _check_pair_embeddings(emb1, emb2)
    dist = np.sum((a - b) ** 2, axis=1)
    y = _as_labels(issame, dist.size)
    predicted = dist[None, :] < INSIGHTFACE_THRESHOLDS[:, None]  # grid x pairs
    correct = predicted == y[None, :]
    per_fold = []
    for start, stop in fold_bounds(dist.size, folds):
        train = np.ones(dist.size, dtype=bool)
        train[start:stop] = False
        best = int(np.argmax(correct[:, train].mean(axis=1)))  # first best on ties
        per_fold.append(correct[best, start:stop].mean())
    per_fold_array = np.array(per_fold)
    return float(per_fold_array.mean()), float(per_fold_array.std())
