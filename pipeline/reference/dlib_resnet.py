"""dlib's ResNet face descriptor as a reference model: a pretrained 128-d embedding with its own preprocessing.

dlib 20 (`dlib-bin`), model files from `face-recognition-models` 0.3.0 (both installed from the package registry,
nothing downloaded at run time): the HOG frontal face detector, the 5-point shape predictor and the ResNet-34-style
descriptor `dlib_face_recognition_resnet_model_v1`, applied to dlib's 150 px face chip of the ORIGINAL photo (padding
0.25), never to the project's aligned crop. Its authors compare descriptors by Euclidean distance (same person below
0.6) and publish 99.38% on LFW View 2. The package's own `__init__` imports `pkg_resources` (gone from recent
setuptools), so its files are located without importing it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.detect import Selection, as_rgb, detection_size, select_face, to_original
from pipeline.data.images import decode_image

MODEL_PACKAGE = "face_recognition_models"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
EMBEDDING_SIZE = 128
CHIP_SIZE = 150  # the descriptor's input: a 150 px chip (dlib's get_face_chip default)
CHIP_PADDING = 0.25  # dlib's default padding around the 5-point face box
PUBLISHED_THRESHOLD = 0.6  # dlib's same-person distance on LFW


def model_files() -> tuple[Path, Path]:
    """(descriptor, 5-point predictor) from the installed model package; a clear error when it is missing."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{MODEL_PACKAGE} is not installed: `bash scripts/setup` installs it (pyproject.toml pins 0.3.0)")
    folder = Path(spec.submodule_search_locations[0]) / "models"
    files = folder / DESCRIPTOR_FILE, folder / LANDMARKS_FILE
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the installed {MODEL_PACKAGE} (reinstall it)")
    return files


@dataclass(frozen=True)
class DlibFace:
    """The face dlib chose in a photo: what its chip was cut from, in the photo's pixels (x right, y down)."""

    box: np.ndarray  # (4,) left, top, right, bottom of the detector's box (or of the fallback box)
    score: float  # the HOG detector's SVM score (nan for the fallback box)
    points: np.ndarray  # (5, 2) the 5-point predictor's landmarks: two corners of each eye, then below the nose
    detected: bool  # False: no face found, the fallback box was used
    chip: np.ndarray  # (150, 150, 3) uint8: what the descriptor sees


@dataclass(frozen=True)
class ReferenceEmbedding:
    """One photo's descriptor and whether the detector found its face (False: the fallback box was described)."""

    vector: np.ndarray  # (128,) float32
    detected: bool


def fallback_box(height: int, width: int, share: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central square whose side is `share` of the shorter side."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"fallback share must be in (0, 1], got {share}")
    side = share * min(height, width)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return round(left), round(top), round(left + side) - 1, round(top + side) - 1


class DlibResnet:
    """dlib's detector, 5-point landmarks, face chip and descriptor, loaded once per process.

    `selection` picks among several detected faces (LFW labels the central one); a photo without a detection is
    described from its central `fallback_crop` square, so no pair is lost (counted as not detected)."""

    name = "dlib_resnet"
    embedding_size = EMBEDDING_SIZE

    def __init__(self, selection: Selection = "central", upsample: int = 1, fallback_crop: float = 0.6,
                 detect_max_side: int | None = None) -> None:
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        if detect_max_side is not None and detect_max_side < 48:
            raise ValueError(f"detect_max_side must be >= 48 pixels or None, got {detect_max_side}")
        fallback_box(2, 2, fallback_crop)  # validates the share
        self.selection, self.upsample, self.fallback_crop = selection, upsample, fallback_crop
        # None (the evaluation): detect on the photo itself. The demo bounds it, as HOG with one upsampling pass
        # took 13 s on a 1000 px photo (2 busy cores) and a phone photo is 4000 px; landmarks and chip use the
        # full photo either way.
        self.detect_max_side = detect_max_side

    @cached_property
    def _dlib(self):
        import dlib  # a compiled extension: imported where a reference model is used, not by every stage

        descriptor, landmarks = model_files()
        return (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmarks)),
                dlib.face_recognition_model_v1(str(descriptor)))

    def face(self, image: np.ndarray) -> DlibFace:
        """The chosen face of an RGB photo (grey and RGBA accepted): box, score, 5 points and 150 px chip."""
        dlib, detector, predictor, _ = self._dlib
        image = as_rgb(image)
        height, width = image.shape[:2]
        shown_height, shown_width = detection_size(height, width, self.detect_max_side or max(height, width))
        scaled = image if (shown_height, shown_width) == (height, width) else np.asarray(
            Image.fromarray(image).resize((shown_width, shown_height), Image.Resampling.BILINEAR))
        # run() with adjust_threshold 0 finds the boxes detector(image, upsample) finds, with their scores
        found, scores, _ = detector.run(scaled, self.upsample, 0.0)
        if len(found):
            boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in found], dtype=np.float64)
            boxes = to_original(boxes.reshape(-1, 2), np.array([shown_width / width, shown_height / height]))
            boxes = boxes.reshape(-1, 4)
            chosen = select_face(boxes, height, width, self.selection)
            box, score = np.round(boxes[chosen]).astype(np.int64), float(scores[chosen])
        else:
            box, score = np.array(fallback_box(height, width, self.fallback_crop), dtype=np.int64), float("nan")
        shape = predictor(image, dlib.rectangle(*(int(v) for v in box)))
        points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
        chip = np.asarray(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
        return DlibFace(box=box, score=score, points=points, detected=len(found) > 0, chip=chip)

    def chip(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """dlib's 150 px aligned chip of the chosen face (or of the fallback box) and whether a face was found."""
        face = self.face(image)
        return face.chip, face.detected

    def describe_chips(self, chips: list[np.ndarray]) -> np.ndarray:
        """(n, 128) float32 descriptors of aligned 150 px chips (one batched pass)."""
        if not chips:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        model = self._dlib[3]
        return np.asarray([np.asarray(v) for v in model.compute_face_descriptor(chips)], dtype=np.float32)

    def embed(self, image: np.ndarray) -> ReferenceEmbedding:
        chip, detected = self.chip(image)
        return ReferenceEmbedding(self.describe_chips([chip])[0], detected)

    def embed_encoded(self, data: bytes, where: str) -> ReferenceEmbedding:
        """Descriptor of an encoded photo (JPEG, PNG ...); `where` names it in a decoding error."""
        return self.embed(decode_image(data, where))


def distance_scores(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pair scores for dlib descriptors: minus the Euclidean distance (King 2017: same person below 0.6), so that a
    higher score means more alike, as the project's thresholding expects."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(f"descriptor pairs must be two (n, d) arrays of one shape, got {first.shape} and {second.shape}")
    return -np.linalg.norm(first - second, axis=1)
