"""5-point alignment: the template, Umeyama's similarity against independent solves, the warp's pixel convention."""
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from pipeline.data.align import ARCFACE_TEMPLATE_112, align, apply_transform, similarity_transform, template, warp


def similarity(scale, angle, tx, ty):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def lstsq_similarity(src, dst):
    """Independent solve: dst = [[a, -b], [b, a]] src + t is linear in (a, b, tx, ty)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, float), np.array(rhs, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_template_is_the_arcface_112_template_scaled():
    assert np.allclose(template(112), [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                       [41.5493, 92.3655], [70.7299, 92.2041]])
    assert np.allclose(template(56), ARCFACE_TEMPLATE_112 / 2)
    assert np.allclose(template(224)[0], [76.5892, 103.3926])
    with pytest.raises(ValueError, match="template size"):
        template(4)


@pytest.mark.parametrize("scale,angle,tx,ty", [(1.0, 0.0, 0.0, 0.0), (0.37, 0.8, 12.0, -40.0), (2.5, np.pi, -3.0, 7.0),
                                               (1e-3, -2.0, 500.0, 500.0), (40.0, 3.1, 0.0, 0.0)])
def test_exact_similarity_is_recovered(scale, angle, tx, ty):
    src = np.random.default_rng(1).uniform(0, 100, (5, 2))
    truth = similarity(scale, angle, tx, ty)
    assert np.allclose(similarity_transform(src, apply_transform(truth, src)), truth, atol=1e-9 * max(1, scale) * 100)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_similarity_matches_linear_least_squares(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 128, (5, 2))
    dst = apply_transform(similarity(rng.uniform(0.3, 3), rng.uniform(-np.pi, np.pi), *rng.uniform(-50, 50, 2)), src)
    dst += rng.normal(0, 2.0, dst.shape)
    assert np.allclose(similarity_transform(src, dst), lstsq_similarity(src, dst), atol=1e-8)


def test_mirrored_points_give_a_rotation_not_a_reflection():
    src = ARCFACE_TEMPLATE_112.copy()
    dst = src * np.array([-1.0, 1.0])  # a mirror image: the best similarity must not reflect
    m = similarity_transform(src, dst)
    assert np.linalg.det(m[:, :2]) > 0
    assert np.allclose(m, lstsq_similarity(src, dst), atol=1e-8)


def test_two_points_are_enough():
    src = np.array([[0.0, 0.0], [10.0, 0.0]])
    dst = np.array([[5.0, 5.0], [5.0, 25.0]])
    assert np.allclose(apply_transform(similarity_transform(src, dst), src), dst)


@pytest.mark.parametrize("src,dst,match", [
    (np.full((5, 2), 3.0), ARCFACE_TEMPLATE_112, "src points are degenerate"),
    (ARCFACE_TEMPLATE_112, np.full((5, 2), 3.0), "dst points are degenerate"),
    (np.where(np.arange(10).reshape(5, 2) == 3, np.nan, 1.0), ARCFACE_TEMPLATE_112, "src holds NaN"),
    (ARCFACE_TEMPLATE_112[:4], ARCFACE_TEMPLATE_112, "same shape"),
    (np.zeros(5), ARCFACE_TEMPLATE_112, "src must be an"),
])
def test_bad_points_are_refused_by_name(src, dst, match):
    with pytest.raises(ValueError, match=match):
        similarity_transform(src, dst)


def test_warp_keeps_pixel_centres_at_integers():
    image = np.zeros((20, 20, 3), np.uint8)
    image[7, 5] = 200
    moved = warp(image, similarity(1.0, 0.0, 3.0, 5.0), 20)
    assert moved[12, 8].tolist() == [200, 200, 200] and moved.sum() == 600
    doubled = warp(image, similarity(2.0, 0.0, 0.0, 0.0), 30)
    assert doubled[14, 10].tolist() == [200, 200, 200]  # (5, 7) -> (10, 14) lands on a pixel centre exactly


def test_warp_matches_an_independent_bilinear_sampler():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    m = similarity(1.4, 0.35, -6.0, 4.0)
    out = warp(image, m, 48).astype(float)
    ys, xs = np.mgrid[0:48, 0:48]
    src = (np.stack([xs.ravel(), ys.ravel()], 1) - m[:, 2]) @ np.linalg.inv(m[:, :2]).T
    ref = np.stack([map_coordinates(image[..., c].astype(float), [src[:, 1], src[:, 0]], order=1) for c in range(3)], 1)
    inside = (src[:, 0] >= 0) & (src[:, 0] <= 49) & (src[:, 1] >= 0) & (src[:, 1] <= 39)
    assert inside.sum() > 1000
    assert np.abs(out.reshape(-1, 3)[inside] - ref[inside]).max() <= 1.0  # PIL rounds to 8 bits
    far = (src[:, 0] < -1) | (src[:, 0] > 50) | (src[:, 1] < -1) | (src[:, 1] > 40)
    assert far.sum() > 100 and (out.reshape(-1, 3)[far] == 0).all()  # constant border


def test_warp_refuses_bad_input():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="RGB uint8"):
        warp(image.astype(np.float32), similarity(1, 0, 0, 0), 8)
    with pytest.raises(ValueError, match="singular"):
        warp(image, np.zeros((2, 3)), 8)


@pytest.mark.parametrize("size", [56, 112])
def test_align_maps_landmarks_onto_the_template(size):
    rng = np.random.default_rng(size)
    image = np.zeros((160, 160, 3), np.uint8)
    placed = apply_transform(similarity(0.9, 0.3, 30.0, 20.0), ARCFACE_TEMPLATE_112)
    landmarks = placed + rng.normal(0, 0.5, placed.shape)  # a detector's jitter
    for x, y in np.round(placed).astype(int):
        image[y - 1:y + 2, x - 1:x + 2] = 255
    crop, moved = align(image, landmarks, size)
    assert crop.shape == (size, size, 3)
    assert np.abs(moved - template(size)).max() < 1.5 * size / 112
    # the drawn dots land on the template too: each dot's centroid lies near its template point
    for tx, ty in template(size):
        x0, y0 = int(round(tx)), int(round(ty))
        window = crop[y0 - 4:y0 + 5, x0 - 4:x0 + 5, 0].astype(float)
        ys, xs = np.mgrid[y0 - 4:y0 + 5, x0 - 4:x0 + 5]
        cx, cy = (window * xs).sum() / window.sum(), (window * ys).sum() / window.sum()
        assert window.max() > 100 and np.hypot(cx - tx, cy - ty) <= 1.5


def test_align_names_nan_or_degenerate_landmarks():
    image = np.zeros((64, 64, 3), np.uint8)
    bad = ARCFACE_TEMPLATE_112.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="landmarks holds NaN"):
        align(image, bad, 112)
    with pytest.raises(ValueError, match="degenerate"):
        align(image, np.ones((5, 2)), 112)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        align(image, ARCFACE_TEMPLATE_112[:3], 112)
