"""Face detection with 5 landmarks for real photos: one interface, an MTCNN implementation and the generator's truth.

Landmarks come in the ArcFace order of `pipeline.data.align`: left eye, right eye, nose tip, left mouth corner, right
mouth corner, "left" meaning the smaller x in the image; coordinates are pixels with pixel centres at integers.
MTCNN runs on the weights shipped inside the facenet-pytorch 2.5.3 wheel (`facenet_pytorch/data/*.pt`); nothing
is downloaded. It is one of facerepro's dependencies (pyproject.toml).
"""
from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from PIL import Image

Selection = Literal["largest", "central"]
MTCNN_WEIGHTS = ("pnet.pt", "rnet.pt", "onet.pt")
# MTCNN's O-Net emits (left eye, right eye, nose, left mouth, right mouth) with left = smaller x, as ArcFace
# does (checked on LFW photos in tests/test_detect.py); this maps O-Net's point i to ArcFace point i.
MTCNN_TO_ARCFACE = np.array([0, 1, 2, 3, 4])


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in pixels of the image given to `detect`
    score: float  # detector confidence in [0, 1]
    landmarks: np.ndarray  # (5, 2) ArcFace order, pixels of the image given to `detect`


class LandmarkDetector(Protocol):
    def detect(self, image: np.ndarray) -> Detection | None:
        """The chosen face of an RGB uint8 HxWx3 image (grey HxW and RGBA accepted), or None if there is none."""
        ...


@dataclass(frozen=True)
class DetectorSpec:
    selection: Selection = "largest"  # which face where there are several: the largest box, or the most central
    max_side: int = 1024  # photos with a longer side are downscaled for detection; landmarks are mapped back
    min_face_size: int = 20  # MTCNN's smallest face (pixels of the detection image); larger is faster
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-Net score thresholds
    # torch threads while detecting on the CPU: MTCNN is many tiny convolutions, and with 2 threads on 2 busy cores
    # it measured 310-410 ms a photo against 22 ms with 1 (LFW, min_face_size 60)
    cpu_threads: int = 1

    def __post_init__(self) -> None:
        if self.selection not in ("largest", "central"):
            raise ValueError(f"detector selection must be 'largest' or 'central', got {self.selection!r}")
        if self.max_side < 48:
            raise ValueError(f"detector max_side must be >= 48 pixels, got {self.max_side}")
        if self.min_face_size < 12:
            raise ValueError(f"detector min_face_size must be >= 12 pixels (MTCNN's P-Net window), got {self.min_face_size}")
        if self.cpu_threads < 1:
            raise ValueError(f"detector cpu_threads must be >= 1, got {self.cpu_threads}")
        if len(self.thresholds) != 3 or not all(0.0 <= t < 1.0 for t in self.thresholds):
            raise ValueError(f"detector thresholds must be three scores in [0, 1), got {self.thresholds}")


def as_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """An RGB uint8 HxWx3 view of a grey (HxW or HxWx1), RGB or RGBA (alpha dropped, as decoding does) array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


def detection_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of the detection image: the photo scaled so its longer side is at most `max_side`."""
    longest = max(height, width)
    if longest <= max_side:
        return height, width
    factor = max_side / longest
    return max(1, round(height * factor)), max(1, round(width * factor))


def to_original(points: np.ndarray, scale_xy: np.ndarray) -> np.ndarray:
    """Map pixel coordinates of a resized image back: x = (x' + 1/2) / s - 1/2, pixel centres at integers."""
    return (np.asarray(points, dtype=np.float64) + 0.5) / scale_xy - 0.5


def select_face(boxes: np.ndarray, height: int, width: int, selection: Selection) -> int:
    """Index of the chosen box: the largest area, or the centre nearest the image centre ((W-1)/2, (H-1)/2)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError("select_face needs at least one box")
    if selection == "largest":
        return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    if selection == "central":
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        target = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        return int(np.argmin(((centres - target) ** 2).sum(axis=1)))
    raise ValueError(f"selection must be 'largest' or 'central', got {selection!r}")


def facenet_pytorch_available() -> bool:
    return importlib.util.find_spec("facenet_pytorch") is not None


def _mtcnn_class() -> type:
    if not facenet_pytorch_available():
        raise ModuleNotFoundError(
            "align.detector 'mtcnn' needs facenet-pytorch 2.5.3 (its wheel ships the MTCNN weights): "
            "it is a facerepro dependency: pip install -e . (or pip install 'facenet-pytorch==2.5.3')"
        )
    import facenet_pytorch

    weights = Path(facenet_pytorch.__file__).parent / "data"
    missing = [name for name in MTCNN_WEIGHTS if not (weights / name).is_file()]
    if missing:  # facenet-pytorch would not download them, but a stripped install would fail obscurely
        raise FileNotFoundError(f"facenet-pytorch at {weights.parent} lacks its MTCNN weights {missing}; reinstall 2.5.3")
    return facenet_pytorch.MTCNN


class MtcnnDetector:
    """MTCNN (Zhang et al. 2016) from facenet-pytorch on `device`; deterministic, no random source."""

    def __init__(self, spec: DetectorSpec = DetectorSpec(), device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self._mtcnn = _mtcnn_class()(
            min_face_size=spec.min_face_size, thresholds=list(spec.thresholds), keep_all=True, device=self.device
        ).eval()

    def detect_all(self, image: np.ndarray) -> list[Detection]:
        """Every face MTCNN finds, in the photo's pixels (downscaled for detection where it is large)."""
        image = as_rgb(image)
        height, width = image.shape[:2]
        small_h, small_w = detection_size(height, width, self.spec.max_side)
        if min(small_h, small_w) < self.spec.min_face_size:  # MTCNN builds no pyramid level and fails on it
            return []
        small = image
        if (small_h, small_w) != (height, width):
            small = np.asarray(Image.fromarray(image).resize((small_w, small_h), Image.Resampling.BOX))
        with self._threads():
            boxes, scores, points = self._mtcnn.detect(small, landmarks=True)
        if boxes is None or len(boxes) == 0:
            return []
        # facenet-pytorch returns object arrays; make them plain floats
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        scale = np.array([small_w / width, small_h / height])
        return [
            Detection(box=to_original(box, scale).reshape(4), score=float(score),
                      landmarks=to_original(landmarks[MTCNN_TO_ARCFACE], scale))
            for box, score, landmarks in zip(boxes, scores, points)
        ]

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """`spec.cpu_threads` torch threads during a CPU detection; the caller's setting afterwards."""
        before = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(self.spec.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def detect(self, image: np.ndarray) -> Detection | None:
        faces = self.detect_all(image)
        if not faces:
            return None
        height, width = np.asarray(image).shape[:2]
        return faces[select_face(np.stack([f.box for f in faces]), height, width, self.spec.selection)]


@dataclass(frozen=True)
class GroundTruthLandmarks:
    """The landmarks a record already carries (the synthetic generator's), behind the detector interface."""

    landmarks: np.ndarray  # (5, 2), NaN where unknown

    def detect(self, image: np.ndarray) -> Detection | None:
        points = np.asarray(self.landmarks, dtype=np.float64)
        if points.shape != (5, 2):
            raise ValueError(f"ground-truth landmarks must have shape (5, 2), got {points.shape}")
        if not np.isfinite(points).all():
            return None
        box = np.concatenate([points.min(axis=0), points.max(axis=0)])
        return Detection(box=box, score=1.0, landmarks=points)


def make_detector(name: str, spec: DetectorSpec, device: str | torch.device) -> LandmarkDetector | None:
    """The detector named by `align.detector`: None for "none", else a ready detector on `device`."""
    if name == "none":
        return None
    if name == "mtcnn":
        return MtcnnDetector(spec, device)
    raise ValueError(f"align.detector must be 'none' or 'mtcnn', got {name!r}")
