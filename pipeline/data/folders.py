"""A folder per person, `root/<person>/*.jpg|jpeg|png`, ingested as records.

Labels number the persons (those with at least one image) in sorted name order, so the same tree always gets
the same labels. Images are stored as they are when they already are upright RGB JPEG/PNG, otherwise as a PNG
of the decoded upright RGB pixels, so landmarks (given in upright image coordinates) match any decoder.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.images import CorruptImageError, normalise_encoded
from pipeline.data.records import NO_LANDMARKS, FaceRecord, write_records

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

# Given an upright RGB uint8 image, the (5, 2) landmarks in pixels, or None when no face is found.
LandmarksFn = Callable[[np.ndarray], "np.ndarray | None"]


def _visible_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def scan_folders(root: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """(image path, person name) for every image, sorted by person then file name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} does not exist or is not a directory")
    persons = _visible_dirs(root)
    if not persons:
        raise ValueError(f"image root {root} holds no person folders (expected root/<person>/*.jpg)")
    items = [
        (path, person.name)
        for person in persons
        for path in sorted(person.iterdir(), key=lambda p: p.name)
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    ]
    if not items:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"image root {root}: its {len(persons)} person folders hold no images ({suffixes})")
    return items


def label_map(items: list[tuple[Path, str]]) -> dict[str, int]:
    """Person name -> label, numbering the persons in sorted name order."""
    return {name: label for label, name in enumerate(sorted({name for _, name in items}))}


def _landmarks(landmarks_fn: LandmarksFn | None, array: np.ndarray, where: str) -> np.ndarray:
    if landmarks_fn is None:
        return NO_LANDMARKS.copy()
    found = landmarks_fn(array)
    if found is None:
        return NO_LANDMARKS.copy()
    found = np.asarray(found, dtype=np.float32)
    if found.shape != (5, 2):
        raise ValueError(f"{where}: landmarks_fn returned shape {found.shape}, expected (5, 2)")
    return found


def folders_to_records(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    landmarks_fn: LandmarksFn | None = None,
    skip_corrupt: bool = False,
) -> dict[str, Any]:
    """Ingest `root/<person>/*` into records at `out_dir` (atomically); returns a report.

    `identity` is the label (the folder is the ground truth); `source` is the path relative to root. A corrupt
    image raises, or with `skip_corrupt` is left out and listed under `skipped`. Landmarks are NaN unless
    `landmarks_fn` is given; images it finds no face in are listed under `no_landmarks`. Labels are fixed by
    the scan, so a person whose every image was skipped leaves an unused label, listed under `empty_labels`.
    """
    root = Path(root)
    items = scan_folders(root)
    labels = label_map(items)
    report: dict[str, Any] = {
        "root": str(root),
        "identities": len(labels),
        "labels": labels,
        "empty_folders": sorted(p.name for p in _visible_dirs(root) if p.name not in labels),
        "skipped": [],
        "no_landmarks": [],
    }
    written = {name: 0 for name in labels}

    def records() -> Iterator[FaceRecord]:
        for path, name in items:
            source = path.relative_to(root).as_posix()
            try:
                data, array = normalise_encoded(path.read_bytes(), str(path))
            except CorruptImageError as error:
                if not skip_corrupt:
                    raise
                report["skipped"].append({"source": source, "error": str(error)})
                continue
            landmarks = _landmarks(landmarks_fn, array, str(path))
            if landmarks_fn is not None and np.isnan(landmarks).all():
                report["no_landmarks"].append(source)
            written[name] += 1
            yield FaceRecord(image=data, label=labels[name], identity=labels[name], landmarks=landmarks, source=source)

    report["images"] = write_records(out_dir, records())
    report["empty_labels"] = sorted(labels[name] for name, count in written.items() if count == 0)
    return report
