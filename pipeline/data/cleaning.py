"""Dataset cleaning by intra-class centre distance: images far from their class centre are likely mislabelled."""
from __future__ import annotations

from typing import Literal

import numpy as np


def class_centres(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm mean of each class's unit-norm embeddings: c_y = sum x_i / ||sum x_i|| (centre of class y)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), unit.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, unit)
    centres = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return classes, centres


def centre_cosines(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """cos(x_i, c_{y_i}) for every image: its cosine to its own class centre."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    classes, centres = class_centres(embeddings, labels)
    return np.einsum("ij,ij->i", unit, centres[np.searchsorted(classes, labels)])




def distance_limits(
    distances: np.ndarray,
    labels: np.ndarray,
    method: Literal["absolute", "class_spread", "percentile"],
    threshold: float,
) -> np.ndarray:
    """Per-image limit on the cosine distance d = 1 - cos: absolute t; class mean + t * class std; or the t-th
    percentile of all distances."""
    if method == "absolute":
        return np.full_like(distances, threshold)
    if method == "percentile":
        if not 0 < threshold <= 100:
            raise ValueError(f"clean.threshold must be a percentile in (0, 100] for method 'percentile', got {threshold}")
        return np.full_like(distances, np.percentile(distances, threshold))
    if method == "class_spread":
        classes, inverse = np.unique(labels, return_inverse=True)
        counts = np.bincount(inverse)
        means = np.bincount(inverse, weights=distances) / counts
        spreads = np.sqrt(np.maximum(np.bincount(inverse, weights=distances**2) / counts - means**2, 0.0))
        return means[inverse] + threshold * spreads[inverse]
    raise ValueError(f"clean.method {method!r} is not one of absolute, class_spread, percentile")


def keep_mask(distances: np.ndarray, labels: np.ndarray, limits: np.ndarray, min_images: int) -> np.ndarray:
    """Keep images within their limit; a class always keeps its `min_images` closest images."""
    keep = distances <= limits
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if keep[members].sum() < min_images:
            closest = members[np.argsort(distances[members], kind="stable")[:min_images]]
            keep[closest] = True
    return keep


def precision_recall(dropped: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    """Of the dropped images, the share that were noisy (precision); of the noisy, the share dropped (recall)."""
    true_positive = int(np.sum(dropped & noisy))
    precision = true_positive / int(dropped.sum()) if dropped.any() else float("nan")
    recall = true_positive / int(noisy.sum()) if noisy.any() else float("nan")
    return {"precision": precision, "recall": recall, "dropped": int(dropped.sum()), "noisy": int(noisy.sum())}
