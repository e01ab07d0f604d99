import numpy as np
import pytest

from pipeline.data import cleaning


def test_centre_cosines_against_direct_computation():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(30, 8))
    labels = rng.integers(0, 4, size=30)
    got = cleaning.centre_cosines(embeddings, labels)
    for i in range(30):
        members = embeddings[labels == labels[i]]
        centre = (members / np.linalg.norm(members, axis=1, keepdims=True)).mean(axis=0)
        expected = embeddings[i] @ centre / (np.linalg.norm(embeddings[i]) * np.linalg.norm(centre))
        assert got[i] == pytest.approx(expected, abs=1e-12)


def test_class_spread_limits_are_mean_plus_k_std_per_class():
    distances = np.array([0.1, 0.2, 0.3, 0.5, 0.5, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    limits = cleaning.distance_limits(distances, labels, "class_spread", 1.0)
    first, second = distances[:3], distances[3:]
    assert limits[0] == pytest.approx(first.mean() + first.std())
    assert limits[5] == pytest.approx(second.mean() + second.std())


def test_percentile_and_absolute_limits():
    distances = np.linspace(0, 1, 101)
    labels = np.zeros(101, dtype=int)
    assert cleaning.distance_limits(distances, labels, "percentile", 90)[0] == pytest.approx(0.9)
    assert (cleaning.distance_limits(distances, labels, "absolute", 0.25) == 0.25).all()
    with pytest.raises(ValueError, match="percentile"):
        cleaning.distance_limits(distances, labels, "percentile", 0)


def test_keep_mask_keeps_a_minimum_per_class():
    distances = np.array([0.9, 0.8, 0.7, 0.1])
    labels = np.array([0, 0, 0, 1])
    keep = cleaning.keep_mask(distances, labels, np.full(4, 0.5), min_images=2)
    assert keep.tolist() == [False, True, True, True]


def test_noisy_labels_are_found_on_clustered_embeddings():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, 16)) * 5
    labels = np.repeat(np.arange(10), 20)
    embeddings = centres[labels] + rng.normal(size=(200, 16))
    noisy = np.zeros(200, dtype=bool)
    noisy[::17] = True
    labels = labels.copy()
    labels[noisy] = (labels[noisy] + 3) % 10  # mislabelled: the embedding stays with the true class
    distances = 1 - cleaning.centre_cosines(embeddings, labels)
    keep = cleaning.keep_mask(distances, labels, cleaning.distance_limits(distances, labels, "class_spread", 2.0), 2)
    scores = cleaning.precision_recall(~keep, noisy)
    assert scores["recall"] == 1.0 and scores["precision"] > 0.8


def test_precision_recall_edges():
    none = np.zeros(4, dtype=bool)
    assert np.isnan(cleaning.precision_recall(none, none)["precision"])
    assert cleaning.precision_recall(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))["precision"] == 0.5
