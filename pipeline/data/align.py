"""5-point face alignment: a least-squares similarity onto the ArcFace template, then an affine warp.

Coordinates are pixels with the centre of pixel (col, row) at (x=col, y=row); images are RGB uint8 HxWx3.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# left eye, right eye, nose tip, left mouth corner, right mouth corner ("left" = smaller x in the image)
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
FILL = (0, 0, 0)  # border colour of a warp where the crop leaves the image


def template(size: int) -> np.ndarray:
    """The ArcFace template for a square crop of `size` pixels (the 112 template scaled by size/112)."""
    if size < 8:
        raise ValueError(f"template size must be at least 8 pixels, got {size}")
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def _check_points(name: str, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 2:
        raise ValueError(f"{name} must be an (N, 2) array with N >= 2, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} holds NaN or infinite coordinates: {points.tolist()}")
    return points


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity dst ~ c R src + t without reflection (Umeyama 1991, Eq. 34-42); returns [cR | t], 2x3."""
    src = _check_points("src", src)
    dst = _check_points("dst", dst)
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same shape, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)  # Eq. 34, 35
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = float((src_c**2).sum(axis=1).mean())  # Eq. 36
    if var_src <= 1e-12 * max(1.0, float(np.abs(src).max())) ** 2:
        raise ValueError(f"src points are degenerate (all coincide): {src.tolist()}")
    if float((dst_c**2).sum(axis=1).mean()) <= 1e-12 * max(1.0, float(np.abs(dst).max())) ** 2:
        raise ValueError(f"dst points are degenerate (all coincide): {dst.tolist()}")
    cov = dst_c.T @ src_c / len(src)  # Eq. 38
    u, d, vt = np.linalg.svd(cov)
    s = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # Eq. 39/43: flip the weakest axis rather than reflect
        s[-1] = -1.0
    rotation = u @ np.diag(s) @ vt  # Eq. 40
    scale = float((d * s).sum()) / var_src  # Eq. 42
    translation = mu_dst - scale * rotation @ mu_src  # Eq. 41
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an RGB uint8 HxWx3 array, got dtype {image.dtype} shape {image.shape}")
    return image


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Resample `image` into a size x size crop where crop = matrix @ [x, y, 1] (bilinear, FILL outside)."""
    image = _check_image(image)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (2, 3) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"matrix must be a finite 2x3 affine matrix, got {matrix.tolist()}")
    linear = matrix[:, :2]
    if abs(np.linalg.det(linear)) < 1e-12:
        raise ValueError(f"matrix is singular: {matrix.tolist()}")
    inverse = np.linalg.inv(linear)
    offset = -inverse @ matrix[:, 2]
    # PIL samples output pixel centres at (i + 0.5) and reads input pixel centres at (j + 0.5);
    # shift by half a pixel on both sides to keep the centre-at-integer convention.
    offset = offset + 0.5 - inverse @ np.array([0.5, 0.5])
    data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    out = Image.fromarray(image).transform(
        (size, size), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=FILL
    )
    return np.asarray(out)


def align(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Warp a face onto the ArcFace template of `size`; returns (crop, landmarks in crop coordinates)."""
    landmarks = _check_points("landmarks", landmarks)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be a (5, 2) array, got shape {landmarks.shape}")
    matrix = similarity_transform(landmarks, template(size))
    return warp(image, matrix, size), apply_transform(matrix, landmarks)
