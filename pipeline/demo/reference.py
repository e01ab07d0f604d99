"""Face verification for the web demo with a reference model (pipeline.reference: dlib's ResNet descriptor): its own
preprocessing of each photo (dlib's HOG detector, 5 landmarks, 150 px chip), the Euclidean distance of the two
descriptors, and the threshold stage `reference` chose for it on real pairs.

The threshold is read, not recomputed: the record (reports/metrics/reference/<model>.json) states each fold's
threshold in distance units, chosen by the project's 10-fold procedure (pipeline.evaluate.verification, the one the
trained models' thresholds come from). The single threshold used for one pair is the mean of the per-fold ones, as for
the trained models; a pair is "same" when its distance is BELOW it (dlib's convention; its authors use 0.6).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from pipeline.core.paths import Paths
from pipeline.demo.verify import DemoError, NoFaceError, decode_photo
from pipeline.reference.dlib_resnet import DlibFace, DlibResnet, distance_scores
from pipeline.reference.evaluation import ProtocolFigures, ReferenceEvaluation

METRICS = "reference"  # stage reference writes reports/metrics/reference/<model>.json
STAGE_COMMAND = "dvc repro reference"
PROFILE_COMMAND = "bash scripts/reproduce-profile lfw"  # the profile whose clone scores the reference on real photos
KINDS = {"dlib_resnet": DlibResnet}  # record kind -> the model class that describes a photo
# Photos are downscaled to this longer side for detection only (landmarks and chip come from the full photo): HOG
# with one upsampling pass took 13 s on a 1000 px photo, 0.9 s on a 2000 px one detected at 640 px (2 busy cores);
# LFW's 250 px photos are unaffected.
DETECT_MAX_SIDE = 640
HOG_WINDOW = 80  # px: the smallest face dlib's frontal detector finds without upsampling


@dataclass(frozen=True)
class ReferenceThreshold:
    value: float  # mean of the per-fold thresholds, in distance units: "same" when distance < value
    protocol: str
    figures: ProtocolFigures  # the protocol's scoring: pairs, folds, fold thresholds, accuracy and its interval
    record: ReferenceEvaluation
    metrics_path: Path


def reference_protocol(protocols: dict[str, ProtocolFigures], requested: str | None, where: Path) -> str:
    """`requested`, else the LFW-like protocol with the most pairs (View 2 where it was scored: 6,000 pairs, the
    protocol of the published figure), else the protocol with the most pairs."""
    if not protocols:
        raise DemoError(f"{where} scores no protocol (was the stage run on synthetic data only?); run "
                        f"`{STAGE_COMMAND}` in a profile with real photos (`{PROFILE_COMMAND}`)")
    if requested is not None:
        if requested not in protocols:
            raise DemoError(f"{where} has no protocol {requested!r}; it has {', '.join(sorted(protocols))}")
        return requested
    lfw_like = [name for name in sorted(protocols) if "lfw" in name.lower()] or sorted(protocols)
    return max(lfw_like, key=lambda name: protocols[name].pairs)  # max keeps the first of equal counts


def reference_threshold(paths: Paths, model: str, protocol: str | None) -> ReferenceThreshold:
    """The threshold stage `reference` chose for `model` on `protocol` (default: reference_protocol's)."""
    metrics_path = paths.metrics(METRICS, model)
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} does not exist: reference model {model} has not been scored under {paths.root}; "
            f"`{STAGE_COMMAND}` there writes it (`{PROFILE_COMMAND}` runs it, and the whole lfw profile, in "
            f"data/profiles/lfw: then pass --root data/profiles/lfw)"
        )
    record = ReferenceEvaluation.load(metrics_path)
    if record.model != model:
        raise DemoError(f"{metrics_path} holds reference model {record.model!r}, not {model!r}")
    if record.kind not in KINDS:
        raise DemoError(f"{metrics_path}: kind {record.kind!r} is none the demo can run ({', '.join(KINDS)})")
    name = reference_protocol(record.protocols, protocol, metrics_path)
    figures = record.protocols[name]
    thresholds = np.asarray(figures.fold_thresholds, dtype=np.float64)
    if thresholds.size == 0 or not np.isfinite(thresholds).all():
        raise DemoError(f"reference model {model} separates no pairs on {name} (fold thresholds "
                        f"{thresholds.tolist()} in {metrics_path})")
    return ReferenceThreshold(value=float(thresholds.mean()), protocol=name, figures=figures, record=record,
                              metrics_path=metrics_path)


def reference_model(record: ReferenceEvaluation, metrics_path: Path) -> DlibResnet:
    """The describer the record's figures were measured with: same face selection, upsampling and dlib version."""
    settings = record.describer_settings()
    installed = version("dlib-bin")
    if settings.dlib != installed:
        raise DemoError(f"{metrics_path} was measured with dlib-bin {settings.dlib}, but {installed} is installed: "
                        f"its threshold may not hold; rerun `{STAGE_COMMAND}`")
    return KINDS[record.kind](settings.face_selection, settings.upsample, settings.fallback_crop,
                              detect_max_side=DETECT_MAX_SIDE)


@dataclass(frozen=True)
class ReferenceFace:
    photo: np.ndarray  # the upright RGB photo
    face: DlibFace  # dlib's box, 5 points and 150 px chip, in the photo's pixels


@dataclass(frozen=True)
class ReferenceVerification:
    faces: tuple[ReferenceFace, ReferenceFace]
    distance: float  # Euclidean distance of the two 128-d descriptors
    threshold: float

    @property
    def same(self) -> bool:
        return self.distance < self.threshold


class ReferenceVerifier:
    """Two photos in, the descriptor distance and the decision out; one request at a time (dlib's objects are
    shared)."""

    kind = "reference"

    def __init__(self, model: DlibResnet, threshold: ReferenceThreshold) -> None:
        self.model, self.threshold = model, threshold
        self._lock = threading.Lock()

    decode = staticmethod(decode_photo)

    def smallest_face(self, photo: np.ndarray) -> int:
        """The smallest face width (px of the photo) the detector finds, after the detection downscale."""
        height, width = photo.shape[:2]
        shrink = max(1.0, max(height, width) / (self.model.detect_max_side or max(height, width)))
        return math.ceil(HOG_WINDOW / 2**self.model.upsample * shrink)

    def face(self, data: bytes, where: str) -> ReferenceFace:
        return self.locate(self.decode(data, where), where)

    def locate(self, photo: np.ndarray, where: str) -> ReferenceFace:
        """dlib's chosen face of a decoded photo; no detection is an error here (the evaluation's fallback box keeps
        every pair, but a person asking about a photo must be told that no face was found)."""
        face = self.model.face(photo)
        if not face.detected:
            raise NoFaceError(f"no face found in {where} by dlib's detector; try a photo where the face is frontal "
                              f"and at least ~{self.smallest_face(photo)} px wide")
        return ReferenceFace(photo=photo, face=face)

    def verify(self, data_a: bytes, where_a: str, data_b: bytes, where_b: str) -> ReferenceVerification:
        photos = (self.decode(data_a, where_a), self.decode(data_b, where_b))  # outside the lock, as Verifier
        with self._lock:
            faces = (self.locate(photos[0], where_a), self.locate(photos[1], where_b))
            descriptors = self.model.describe_chips([face.face.chip for face in faces])
        distance = -float(distance_scores(descriptors[:1], descriptors[1:])[0])
        return ReferenceVerification(faces=faces, distance=distance, threshold=self.threshold.value)


def build_reference_verifier(paths: Paths, model: str, protocol: str | None) -> ReferenceVerifier:
    """The reference model `model` as stage `reference` scored it under `paths`, with its threshold."""
    threshold = reference_threshold(paths, model, protocol)
    return ReferenceVerifier(reference_model(threshold.record, threshold.metrics_path), threshold)
