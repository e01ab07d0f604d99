"""Align a records tree (train + benchmarks) to square crops.

Each record's landmarks come from one place: its own (the synthetic generator's, a user's), else the configured
detector, else none. Without landmarks, a record is resized whole (InsightFace sets are stored aligned) when no
detector is configured; when the detector finds no face, a training record is dropped and counted, and a
benchmark image gets a central crop and is counted (dropping it would silently change its pairs).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.data.align import align, similarity_transform, template
from pipeline.core.config import AlignConfig
from pipeline.data.images import decode_image, encode_png
from pipeline.data.records import FaceRecord, iter_records, read_benchmark, write_benchmark, write_records
from pipeline.data.detect import DetectorSpec, GroundTruthLandmarks, LandmarkDetector, make_detector
from pipeline.core.devices import resolve_device
from pipeline.core.atomic_io import atomic_path


@dataclass
class DetectionTally:
    """Where each record's landmarks came from, for the stage's summary."""

    given: int = 0  # the record's own landmarks
    detected: int = 0  # found by the detector
    no_face: list[str] = field(default_factory=list)  # sources the detector found no face in
    undetected: int = 0  # no landmarks and no detector: resized whole

    def summary(self, limit: int = 1000) -> dict[str, Any]:
        looked = self.detected + len(self.no_face)
        return {
            "given": self.given, "detected": self.detected, "no_face": len(self.no_face),
            "no_face_sources": self.no_face[:limit], "resized_whole": self.undetected,
            "detection_rate": self.detected / looked if looked else None,
        }


def detector_from_config(cfg: AlignConfig) -> LandmarkDetector | None:
    """The detector `align.detector` names (None for "none"), with the align section's settings."""
    if cfg.detector == "none":
        return None
    spec = DetectorSpec(
        selection=cfg.face_selection, max_side=cfg.detect_max_side, min_face_size=cfg.min_face_size
    )
    return make_detector(cfg.detector, spec, resolve_device(cfg.device, "align.device"))


def central_crop(image: np.ndarray, crop_size: int, fraction: float) -> np.ndarray:
    """The central square of side `fraction` x the shorter image side, resized (antialiased) to crop_size."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"align.fallback_crop must be in (0, 1], got {fraction}")
    height, width = image.shape[:2]
    side = fraction * min(height, width)
    box = ((width - side) / 2.0, (height - side) / 2.0, (width + side) / 2.0, (height + side) / 2.0)
    return np.asarray(Image.fromarray(image).resize((crop_size, crop_size), Image.Resampling.BILINEAR, box=box))


def reduction_factor(landmarks: np.ndarray, crop_size: int) -> int:
    """k = floor(1 / s) for the template similarity's scale s (Umeyama Eq. 42 via pipeline.data.align), at least 1."""
    matrix = similarity_transform(landmarks, template(crop_size))
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    return max(1, int(np.floor(1.0 / scale + 1e-9)))


def align_photo(image: np.ndarray, landmarks: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`pipeline.data.align.align`, after a k x k box reduction where the warp would shrink the face by k >= 2: a
    bilinear warp reads 4 pixels per output pixel, so a large photo would alias into a small crop."""
    k = reduction_factor(landmarks, crop_size)
    if k >= 2:
        image = np.asarray(Image.fromarray(image).reduce(k))
        landmarks = (np.asarray(landmarks, dtype=np.float64) + 0.5) / k - 0.5  # pixel centres at integers
    return align(image, landmarks, crop_size)


def _landmarks(record: FaceRecord, image: np.ndarray, detector: LandmarkDetector | None, tally: DetectionTally) -> tuple[np.ndarray | None, bool]:
    """(landmarks or None, whether the detector found them)."""
    found = GroundTruthLandmarks(record.landmarks).detect(image)
    if found is not None:
        tally.given += 1
        return found.landmarks, False
    if detector is None:
        tally.undetected += 1
        return None, False
    found = detector.detect(image)
    if found is None:
        tally.no_face.append(record.source)
        return None, False
    tally.detected += 1
    return found.landmarks, True


def align_record(
    record: FaceRecord,
    crop_size: int,
    where: str,
    detector: LandmarkDetector | None = None,
    tally: DetectionTally | None = None,
    fallback_crop: float | None = None,
) -> FaceRecord | None:
    """The aligned record; None where the detector finds no face and `fallback_crop` is None (drop it).

    Detected landmarks are aligned with `align_photo` (box reduction first where the face shrinks 2x or more)."""
    tally = tally if tally is not None else DetectionTally()
    image = decode_image(record.image, where)
    landmarks, detected = _landmarks(record, image, detector, tally)
    if landmarks is not None:
        # photos get the anti-aliasing reduction; given landmarks (synthetic sets) keep the plain warp, so their
        # crops stay byte-identical to those made before detection existed
        crop, crop_landmarks = (align_photo if detected else align)(image, landmarks, crop_size)
    elif detector is None:  # InsightFace sets are stored aligned at 112x112: scale to the crop
        crop = np.asarray(Image.fromarray(image).resize((crop_size, crop_size), Image.Resampling.BILINEAR))
        crop_landmarks = np.full((5, 2), np.nan)
    elif fallback_crop is None:
        return None
    else:
        crop = central_crop(image, crop_size, fallback_crop)
        crop_landmarks = np.full((5, 2), np.nan)
    return FaceRecord(
        image=encode_png(crop),
        label=record.label,
        identity=record.identity,
        landmarks=np.asarray(crop_landmarks, dtype=np.float32),
        source=record.source,
        noisy=record.noisy,
        extras=record.extras,
    )


def _aligned(
    records: Iterable[FaceRecord], crop_size: int, where: str, skipped: list[str], skip: bool,
    detector: LandmarkDetector | None, tally: DetectionTally, fallback_crop: float | None,
) -> Iterator[FaceRecord]:
    for index, record in enumerate(records):
        try:
            aligned = align_record(record, crop_size, f"{where} record {index} ({record.source})", detector, tally, fallback_crop)
        except ValueError as error:
            if not skip:
                raise
            skipped.append(str(error))
            continue
        if aligned is not None:
            yield aligned


def align_dataset(
    raw_dir: Path,
    out_dir: Path,
    crop_size: int,
    skip_corrupt: bool = False,
    detector: LandmarkDetector | None = None,
    fallback_crop: float = 1.0,
) -> dict:
    """Align `raw_dir/{train,benchmarks/*}` into `out_dir` (whole or not at all); returns the stage's summary."""
    train_dir = raw_dir / "train"
    skipped: list[str] = []
    train_tally = DetectionTally()
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        count = write_records(
            staged / "train",
            _aligned(iter_records(train_dir), crop_size, str(train_dir), skipped, skip_corrupt, detector, train_tally, None),
        )
        benchmarks = {}
        for bench_dir in sorted((raw_dir / "benchmarks").glob("*")):
            images, pairs = read_benchmark(bench_dir)
            tally = DetectionTally()
            # a benchmark image is never skipped: its pairs would change
            aligned = list(_aligned(images, crop_size, str(bench_dir), [], False, detector, tally, fallback_crop))
            write_benchmark(staged / "benchmarks" / bench_dir.name, aligned, pairs)
            benchmarks[bench_dir.name] = {"images": len(aligned), "pairs": len(pairs), "landmarks": tally.summary()}
    detection = None
    if detector is not None:
        detection = {
            "detector": type(detector).__name__,
            "train_dropped_no_face": len(train_tally.no_face),
            "benchmark_central_crops": {name: b["landmarks"]["no_face"] for name, b in benchmarks.items()},
        }
    return {
        "crop_size": crop_size, "train_images": count, "skipped": len(skipped), "skipped_detail": skipped[:100],
        "train_landmarks": train_tally.summary(), "benchmarks": benchmarks, "detection": detection,
    }
