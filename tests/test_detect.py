"""Face detection (pipeline/data/detect.py) and the align stage's use of it (pipeline/data/align_records.py).

facenet-pytorch is a dependency, so the MTCNN tests always run; LFW tests skip when the LFW root ($FACEREPRO_LFW or
the lfw profile's data.lfw_root, ../shared/data/lfw from the project root) is absent.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from pipeline.core import config
from pipeline.data.align import align, apply_transform, similarity_transform, template
from pipeline.data.align_records import (
    DetectionTally, align_dataset, align_photo, align_record, central_crop, reduction_factor,
)
from pipeline.data.images import decode_image, encode_png
from pipeline.data.lfw import lfw_root_from_env, read_labels
from pipeline.data.records import NO_LANDMARKS, FaceRecord, iter_records, read_benchmark, write_benchmark, write_records
from pipeline.data.synthetic import make_identity, neutral, render
from pipeline.core.paths import Paths
from pipeline.data.detect import (
    Detection, DetectorSpec, GroundTruthLandmarks, MtcnnDetector, as_rgb, detection_size,
    make_detector, select_face, to_original,
)
from stages import align as align_stage

LFW = lfw_root_from_env()
needs_lfw = pytest.mark.skipif(not (LFW / "labels.csv").is_file(), reason=f"LFW not found at {LFW} (set $FACEREPRO_LFW)")

# measured over the first 40 neutral frontal synthetic identities (seed 0) at canvas 128, default thresholds:
# 23 detected (0.57), mean error 0.10 and median 0.08 inter-ocular distances; the bounds leave margin
SYNTH_FACES = 40
MIN_SYNTH_DETECTION_RATE = 0.35
MAX_SYNTH_MEAN_ERROR = 0.2
MAX_SYNTH_MEDIAN_ERROR = 0.15


def synthetic_face(index: int, canvas: int = 128) -> tuple[np.ndarray, np.ndarray]:
    identity = make_identity(0, 0, index, 0, 0, 0.0, 0.3, 1.0)
    return render(identity.traits, neutral(canvas), canvas)


def error_iod(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean point error as a fraction of the inter-ocular distance (the distance between the eye centres)."""
    return float(np.linalg.norm(found - truth, axis=1).mean() / np.linalg.norm(truth[1] - truth[0]))


@pytest.fixture(scope="module")
def mtcnn() -> MtcnnDetector:
    torch.set_num_threads(1)
    return MtcnnDetector(DetectorSpec(), device="cpu")


@pytest.fixture(scope="module")
def found_face(mtcnn) -> tuple[np.ndarray, np.ndarray]:
    """The first synthetic identity MTCNN finds in colour and in grey (half find it at all), with its landmarks;
    the tests using it check the plumbing around the detector (grey, scale, EXIF, selection)."""
    for index in range(SYNTH_FACES):
        pixels, landmarks = synthetic_face(index)
        grey = np.asarray(Image.fromarray(pixels).convert("L"))
        if mtcnn.detect(pixels) is not None and mtcnn.detect(grey) is not None:
            return pixels, landmarks
    pytest.fail("MTCNN found none of the synthetic faces")


# --- pure helpers ----------------------------------------------------------------------------------------------


def test_as_rgb_grey_rgba_and_bad_input():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for given in (grey, grey[:, :, None]):
        out = as_rgb(given)
        assert out.shape == (3, 4, 3) and all(np.array_equal(out[:, :, c], grey) for c in range(3))
    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(as_rgb(rgba), rgba[:, :, :3])
    with pytest.raises(ValueError, match="photo.*uint8"):
        as_rgb(grey.astype(np.float32), "photo")
    with pytest.raises(ValueError, match="shape"):
        as_rgb(np.zeros((3, 4, 2), np.uint8))


@pytest.mark.parametrize("height, width, expected", [(250, 250, (250, 250)), (1024, 700, (1024, 700)),
                                                      (3000, 4000, (768, 1024)), (5000, 10, (1024, 2))])
def test_detection_size(height, width, expected):
    assert detection_size(height, width, 1024) == expected


def test_to_original_inverts_a_box_reduction():
    # a 4x4 bright block at rows 8..11, cols 20..23 becomes pixel (2, 5) after a 4x box reduction; its centre
    # in the original, computed as the block's centroid, is where pixel (x=5, y=2) must map back to
    image = np.zeros((32, 40), np.uint8)
    image[8:12, 20:24] = 255
    small = np.asarray(Image.fromarray(image).reduce(4))
    y, x = np.unravel_index(np.argmax(small), small.shape)
    rows, cols = np.nonzero(image)
    np.testing.assert_allclose(to_original(np.array([[x, y]]), np.array([0.25, 0.25])), [[cols.mean(), rows.mean()]])
    # and for any scale it inverts x' = s (x + 1/2) - 1/2
    points = np.random.default_rng(1).uniform(-5, 300, (7, 2))
    scale = np.array([0.37, 0.61])
    np.testing.assert_allclose(to_original(scale * (points + 0.5) - 0.5, scale), points)


def test_select_face_against_numpy():
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 200, (6, 2))
    boxes = np.hstack([corners, corners + rng.uniform(5, 80, (6, 2))])
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    assert select_face(boxes, 240, 320, "largest") == int(np.argmax(areas))
    distances = [np.hypot((b[0] + b[2]) / 2 - 159.5, (b[1] + b[3]) / 2 - 119.5) for b in boxes]
    assert select_face(boxes, 240, 320, "central") == int(np.argmin(distances))
    with pytest.raises(ValueError, match="at least one box"):
        select_face(np.zeros((0, 4)), 10, 10, "largest")


def test_detector_spec_and_factory_reject_bad_settings():
    with pytest.raises(ValueError, match="selection"):
        DetectorSpec(selection="first")
    with pytest.raises(ValueError, match="min_face_size"):
        DetectorSpec(min_face_size=5)
    with pytest.raises(ValueError, match="thresholds"):
        DetectorSpec(thresholds=(0.6, 0.7))
    with pytest.raises(ValueError, match="cpu_threads"):
        DetectorSpec(cpu_threads=0)
    assert make_detector("none", DetectorSpec(), "cpu") is None
    with pytest.raises(ValueError, match="align.detector"):
        make_detector("haar", DetectorSpec(), "cpu")


def test_ground_truth_landmarks():
    points = np.array([[10, 20], [30, 21], [20, 30], [12, 40], [28, 41]], np.float32)
    found = GroundTruthLandmarks(points).detect(np.zeros((50, 50, 3), np.uint8))
    np.testing.assert_array_equal(found.landmarks, points)
    np.testing.assert_array_equal(found.box, [10, 20, 30, 41])
    assert GroundTruthLandmarks(NO_LANDMARKS).detect(np.zeros((5, 5, 3), np.uint8)) is None
    with pytest.raises(ValueError, match="shape"):
        GroundTruthLandmarks(np.zeros(10)).detect(np.zeros((5, 5, 3), np.uint8))


def test_central_crop_takes_the_centre():
    image = np.random.default_rng(4).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    # half of the shorter side (6 px) resized to 6 px is the central 6x6 block itself
    np.testing.assert_array_equal(central_crop(image, 6, 0.5), image[3:9, 5:11])
    with pytest.raises(ValueError, match="fallback_crop"):
        central_crop(image, 6, 0.0)


@pytest.mark.parametrize("factor, expected", [(1.0, 1), (1.99, 1), (2.0, 2), (3.5, 3)])
def test_reduction_factor(factor, expected):
    # landmarks = the template blown up by `factor` (plus a shift): the warp shrinks by 1 / factor
    landmarks = template(48) * factor + np.array([7.0, -3.0])
    assert reduction_factor(landmarks, 48) == expected


def test_align_photo_prefilters_a_large_photo():
    # a one-pixel checkerboard shrunk 4x: box-reduced first it averages to grey; a bare bilinear warp would alias
    size, factor = 48, 4.0
    yy, xx = np.mgrid[0:400, 0:400]
    board = np.repeat((((xx + yy) % 2) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    landmarks = template(size) * factor + 20.0
    crop, crop_landmarks = align_photo(board, landmarks, size)
    inner = crop[8:40, 8:40].astype(float)
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3
    np.testing.assert_allclose(crop_landmarks, template(size), atol=1e-6)


# --- the align stage with a detector ----------------------------------------------------------------------------


class MarkedFaces:
    """A stand-in detector: a face wherever the top-left pixel is white, at fixed landmarks."""

    def __init__(self, landmarks: np.ndarray) -> None:
        self.landmarks, self.calls = landmarks, 0

    def detect(self, image: np.ndarray) -> Detection | None:
        self.calls += 1
        if image[0, 0, 0] != 255:
            return None
        return Detection(box=np.array([0.0, 0.0, 40.0, 40.0]), score=0.99, landmarks=self.landmarks)


def _photo(face: bool, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 200, (40, 40, 3), dtype=np.uint8)
    pixels[0, 0] = 255 if face else 0
    return encode_png(pixels)


def test_align_dataset_drops_faceless_training_photos_and_centre_crops_benchmark_ones(tmp_path):
    landmarks = np.array([[14, 16], [26, 16], [20, 22], [15, 28], [25, 28]], np.float32)
    detector = MarkedFaces(landmarks)
    raw = tmp_path / "raw"
    train = [
        FaceRecord(_photo(True, 0), 0, NO_LANDMARKS.copy(), "a/face.png"),
        FaceRecord(_photo(False, 1), 0, NO_LANDMARKS.copy(), "a/empty.png"),
        FaceRecord(_photo(False, 2), 1, landmarks + 1, "b/given.png"),  # own landmarks: the detector is not asked
    ]
    write_records(raw / "train", train)
    bench = [FaceRecord(_photo(True, 3), 0, NO_LANDMARKS.copy(), "x.png"),
             FaceRecord(_photo(False, 4), 1, NO_LANDMARKS.copy(), "y.png")]
    pairs = pd.DataFrame({"a": [0, 0], "b": [1, 1], "same": [False, False], "fold": [0, 1]})
    write_benchmark(raw / "benchmarks" / "bench", bench, pairs)

    summary = align_dataset(raw, tmp_path / "aligned", 32, detector=detector, fallback_crop=0.5)
    assert detector.calls == 4
    assert summary["train_images"] == 2
    assert summary["train_landmarks"]["no_face_sources"] == ["a/empty.png"]
    assert summary["train_landmarks"]["given"] == 1 and summary["train_landmarks"]["detected"] == 1
    assert summary["detection"]["train_dropped_no_face"] == 1
    assert summary["detection"]["benchmark_central_crops"] == {"bench": 1}
    assert [r.source for r in iter_records(tmp_path / "aligned" / "train")] == ["a/face.png", "b/given.png"]
    images, kept_pairs = read_benchmark(tmp_path / "aligned" / "benchmarks" / "bench")
    assert [r.source for r in images] == ["x.png", "y.png"]
    pd.testing.assert_frame_equal(kept_pairs, pairs)
    expected = central_crop(decode_image(bench[1].image, "y"), 32, 0.5)
    np.testing.assert_array_equal(decode_image(images[1].image, "y"), expected)
    assert np.isnan(images[1].landmarks).all()
    np.testing.assert_allclose(images[0].landmarks, apply_transform(similarity_transform(landmarks, template(32)), landmarks), atol=1e-4)


def test_without_a_detector_nothing_changes_for_landmarkless_records():
    pixels = np.random.default_rng(5).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    tally = DetectionTally()
    out = align_record(FaceRecord(encode_png(pixels), 0, NO_LANDMARKS.copy(), "s"), 48, "s", None, tally)
    expected = np.asarray(Image.fromarray(pixels).resize((48, 48), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decode_image(out.image, "s"), expected)
    assert tally.summary()["resized_whole"] == 1 and tally.summary()["detection_rate"] is None


# --- MTCNN --------------------------------------------------------------------------------------------------------


def test_mtcnn_finds_no_face_in_a_blank_or_noise_image(mtcnn):
    assert mtcnn.detect(np.full((120, 160, 3), 128, np.uint8)) is None
    assert mtcnn.detect(np.random.default_rng(6).integers(0, 256, (120, 160, 3), dtype=np.uint8)) is None


def test_mtcnn_finds_no_face_in_a_photo_smaller_than_the_smallest_face(mtcnn):
    side = mtcnn.spec.min_face_size - 1
    assert mtcnn.detect_all(np.full((side, side + 5, 3), 128, dtype=np.uint8)) == []


def test_mtcnn_landmarks_on_frontal_synthetic_faces(mtcnn):
    errors = []
    for index in range(SYNTH_FACES):
        pixels, truth = synthetic_face(index)
        found = mtcnn.detect(pixels)
        if found is not None:
            assert 0.0 <= found.score <= 1.0 and found.landmarks.shape == (5, 2)
            errors.append(error_iod(found.landmarks, truth))
    assert len(errors) >= MIN_SYNTH_DETECTION_RATE * SYNTH_FACES, f"found {len(errors)} of {SYNTH_FACES} faces"
    assert np.mean(errors) < MAX_SYNTH_MEAN_ERROR and np.median(errors) < MAX_SYNTH_MEDIAN_ERROR, errors


def test_mtcnn_accepts_grey_and_rgba(mtcnn, found_face):
    pixels, truth = found_face
    rgb = mtcnn.detect(pixels)
    rgba = mtcnn.detect(np.dstack([pixels, np.full(pixels.shape[:2], 7, np.uint8)]))
    np.testing.assert_array_equal(rgba.landmarks, rgb.landmarks)
    grey = np.asarray(Image.fromarray(pixels).convert("L"))
    found = mtcnn.detect(grey)
    assert found is not None and error_iod(found.landmarks, truth) < 0.3


def test_mtcnn_on_a_very_large_photo_maps_landmarks_back(mtcnn, found_face):
    pixels, truth = found_face
    factor = 12  # 1536 px: detected on a 1024 px copy
    big = np.asarray(Image.fromarray(pixels).resize((128 * factor, 128 * factor), Image.Resampling.BICUBIC))
    found = mtcnn.detect(big)
    assert found is not None
    assert error_iod(found.landmarks, (truth + 0.5) * factor - 0.5) < 0.3
    assert found.box[2] > 500  # the box is in the large photo's pixels too


def test_mtcnn_sees_the_exif_upright_photo(mtcnn, found_face):
    pixels, truth = found_face
    stored = np.rot90(pixels, k=1)  # stored on its side; EXIF orientation 6 says "rotate 90 clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    found = mtcnn.detect(decode_image(buffer.getvalue(), "rotated.jpg"))
    assert found is not None and error_iod(found.landmarks, truth) < 0.3


@pytest.mark.parametrize("selection", ["largest", "central"])
def test_mtcnn_chooses_largest_or_most_central_face(found_face, selection):
    pixels, truth = found_face
    big = np.asarray(Image.fromarray(pixels).resize((192, 192), Image.Resampling.BICUBIC))
    scene = np.full((192, 448, 3), 128, np.uint8)
    scene[:, :192] = big  # large face, centre x = 95.5
    scene[32:160, 224:352] = pixels  # smaller face, centre x = 287.5, nearer the scene centre 223.5
    detector = MtcnnDetector(DetectorSpec(selection=selection), device=torch.device("cpu"))
    found = detector.detect(scene)
    expected = (truth + 0.5) * 1.5 - 0.5 if selection == "largest" else truth + np.array([224.0, 32.0])
    assert found is not None and error_iod(found.landmarks, expected) < 0.3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_mtcnn_on_cuda_agrees_with_cpu(mtcnn, found_face):
    pixels, _ = found_face
    on_cpu, on_cuda = mtcnn.detect(pixels), MtcnnDetector(DetectorSpec(), "cuda").detect(pixels)
    np.testing.assert_allclose(on_cuda.landmarks, on_cpu.landmarks, atol=0.5)


@needs_lfw
def test_mtcnn_on_lfw_photos_in_arcface_order(mtcnn):
    labels = read_labels(LFW).sample(5, random_state=0)
    for image in labels["image"]:
        photo = decode_image((LFW / image).read_bytes(), image)
        found = mtcnn.detect(photo)
        assert found is not None, image
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = found.landmarks
        assert lx < rx and mlx < mrx, image  # left = smaller x
        assert max(ly, ry) < ny < min(mly, mry), image  # eyes above the nose above the mouth
        crop, crop_landmarks = align_photo(photo, found.landmarks, 112)
        assert crop.shape == (112, 112, 3)
        # a least-squares fit of 5 real points: each lands within a few pixels of its template point
        assert np.abs(crop_landmarks - template(112)).max() < 8, image


def test_given_landmarks_keep_the_plain_warp_and_detected_ones_are_prefiltered():
    pixels = np.random.default_rng(8).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # MarkedFaces: "a face here"
    landmarks = (template(32) * 4.0 + 30.0).astype(np.float32)  # a 4x shrink: reduction factor 4
    given = align_record(FaceRecord(encode_png(pixels), 0, landmarks, "given"), 32, "given")
    np.testing.assert_array_equal(decode_image(given.image, "given"), align(pixels, landmarks, 32)[0])
    record = FaceRecord(encode_png(pixels), 0, NO_LANDMARKS.copy(), "photo")
    detected = align_record(record, 32, "photo", MarkedFaces(landmarks), DetectionTally(), None)
    np.testing.assert_array_equal(decode_image(detected.image, "photo"), align_photo(pixels, landmarks, 32)[0])
    assert not np.array_equal(decode_image(detected.image, "photo"), decode_image(given.image, "given"))


def test_align_stage_detects_landmarks_when_configured(tmp_path, found_face):
    # stages/align.py builds the detector from align.*: a landmark-less face is detected, a blank photo is
    # dropped from training and listed, and the synthetic record with landmarks keeps its own
    raw = yaml.safe_load((config.PROJECT_ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["align"].update(detector="mtcnn", device="cpu")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    pixels, landmarks = found_face
    paths = Paths(tmp_path)
    write_records(paths.raw / "train", [
        FaceRecord(encode_png(pixels), 0, NO_LANDMARKS.copy(), "face.png"),
        FaceRecord(encode_png(np.full((128, 128, 3), 128, np.uint8)), 0, NO_LANDMARKS.copy(), "blank.png"),
        FaceRecord(encode_png(pixels), 1, landmarks.astype(np.float32), "given.png"),
    ])
    summary = align_stage.run(config.load(params), paths)
    assert summary["train_images"] == 2 and summary["detection"]["train_dropped_no_face"] == 1
    assert summary["train_landmarks"]["detected"] == 1 and summary["train_landmarks"]["given"] == 1
    assert summary["train_landmarks"]["no_face_sources"] == ["blank.png"]
    assert (paths.reports / "align.json").is_file()


def test_cpu_detection_uses_its_own_thread_count_and_restores_the_callers(found_face):
    pixels, _ = found_face
    before = torch.get_num_threads()
    seen = []
    detector = MtcnnDetector(DetectorSpec(cpu_threads=1), "cpu")
    inner = detector._mtcnn.detect
    detector._mtcnn.detect = lambda *a, **k: (seen.append(torch.get_num_threads()), inner(*a, **k))[1]
    torch.set_num_threads(2)
    try:
        assert detector.detect(pixels) is not None
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
