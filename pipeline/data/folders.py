"""A folder per person, `root/<person>/*.jpg|jpeg|png`, ingested as records.

Labels number the persons (those with at least one image) in sorted name order, so the same tree always gets
the same labels. Images are stored as they are when they already are upright RGB JPEG/PNG, otherwise as a PNG
of the decoded upright RGB pixels, so landmarks (given in upright image coordinates) match any decoder.
"""
from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.images import CorruptImageError, normalise_encoded
from pipeline.data.records import (
    NO_LANDMARKS, FaceRecord, iter_records, read_metadata, write_benchmark, write_records,
)

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


# --- held-out persons as a pair protocol (the folders one-command job) -----------------------------------------

HELDOUT_PROTOCOL = "folders-heldout"


def balanced_folds(same: pd.DataFrame, different: pd.DataFrame, folds: int) -> pd.DataFrame:
    """Pairs (a, b, same, fold) in `folds` consecutive blocks, each the next 1/folds of `same` then of `different`."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    for name, frame in (("same", same), ("different", different)):
        if len(frame) == 0 or len(frame) % folds:
            raise ValueError(f"{len(frame)} {name} pairs do not split into {folds} equal folds")
    per_same, per_different = len(same) // folds, len(different) // folds
    blocks = []
    for fold in range(folds):
        blocks.append(same[["a", "b"]].iloc[fold * per_same:(fold + 1) * per_same].assign(same=True, fold=fold))
        blocks.append(different[["a", "b"]].iloc[fold * per_different:(fold + 1) * per_different].assign(same=False, fold=fold))
    return pd.concat(blocks, ignore_index=True).astype({"a": "int64", "b": "int64", "same": "bool", "fold": "int64"})


def split_persons(counts: dict[int, int], heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """(train labels, held-out labels): round(heldout x persons) persons, at least 2, drawn with `seed` among the
    persons with at least 2 images (a held-out person must be able to form a same pair)."""
    if not 0.0 < heldout < 1.0:
        raise ValueError(f"data.folders_heldout must be in (0, 1) to hold persons out, got {heldout}")
    eligible = sorted(label for label, n in counts.items() if n >= 2)
    wanted = max(2, round(heldout * len(counts)))
    if wanted > len(eligible) or wanted >= len(counts) - 1:
        raise ValueError(
            f"data.folders_heldout {heldout}: {wanted} persons to hold out, but only {len(eligible)} of "
            f"{len(counts)} persons have 2+ images and at least 2 must remain for training"
        )
    rng = np.random.default_rng(seed)
    held = sorted(int(x) for x in rng.choice(eligible, size=wanted, replace=False))
    return sorted(set(counts) - set(held)), held


def sample_pairs(identities: np.ndarray, pairs_per_fold: int, folds: int, seed: int) -> pd.DataFrame:
    """Seeded same and different pairs of image rows, none repeated, as `balanced_folds`; fewer per fold (equal
    in every fold) where the images allow fewer same pairs than asked."""
    identities = np.asarray(identities)
    rng = np.random.default_rng(seed)
    rows_of = {person: np.flatnonzero(identities == person) for person in np.unique(identities)}
    same = np.array([pair for rows in rows_of.values() for pair in itertools.combinations(rows.tolist(), 2)],
                    dtype=np.int64).reshape(-1, 2)
    per_fold = min(pairs_per_fold, len(same) // folds)
    if per_fold < 1:
        raise ValueError(f"held-out persons give {len(same)} same pairs: too few for {folds} folds (data.folders_folds)")
    same = same[rng.permutation(len(same))[: per_fold * folds]]
    different: set[tuple[int, int]] = set()
    persons = len(np.unique(identities))
    possible = (len(identities) ** 2 - sum(int(c) ** 2 for c in np.unique(identities, return_counts=True)[1])) // 2
    if persons < 2 or possible < per_fold * folds:
        raise ValueError(f"held-out persons allow {possible} different pairs, {per_fold * folds} needed")
    while len(different) < per_fold * folds:
        i, j = sorted(int(x) for x in rng.choice(len(identities), size=2, replace=False))
        if identities[i] != identities[j]:
            different.add((i, j))
    different_rows = np.array(sorted(different), dtype=np.int64)[rng.permutation(len(different))]
    return balanced_folds(
        pd.DataFrame(same, columns=["a", "b"]), pd.DataFrame(different_rows, columns=["a", "b"]), folds
    )


def folders_to_raw(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    heldout: float = 0.0,
    pairs_per_fold: int = 30,
    folds: int = 10,
    seed: int = 0,
    skip_corrupt: bool = False,
) -> dict[str, Any]:
    """`out_dir/train` (records) and, with `heldout` > 0, `out_dir/benchmarks/folders-heldout`: a seeded share of
    the persons, never trained on, as a pair protocol. Training labels are renumbered 0..K-1 in name order."""
    out_dir = Path(out_dir)
    if heldout == 0.0:
        return folders_to_records(root, out_dir / "train", skip_corrupt=skip_corrupt)
    everything = out_dir / ".all-persons"
    report = folders_to_records(root, everything, skip_corrupt=skip_corrupt)
    counts = read_metadata(everything)["label"].value_counts().to_dict()
    train_labels, held = split_persons({int(k): int(v) for k, v in counts.items()}, heldout, seed)
    names = {label: name for name, label in report["labels"].items()}
    relabel = {old: new for new, old in enumerate(train_labels)}

    def train_records() -> Iterator[FaceRecord]:
        for record in iter_records(everything):
            if record.label in relabel:
                record.label = record.identity = relabel[record.label]
                yield record

    report["images"] = write_records(out_dir / "train", train_records())
    bench = [r for r in iter_records(everything) if r.label in set(held)]
    pairs = sample_pairs(np.array([r.label for r in bench]), pairs_per_fold, folds, seed)
    write_benchmark(out_dir / "benchmarks" / HELDOUT_PROTOCOL, bench, pairs)
    shutil.rmtree(everything)
    report["labels"] = {names[old]: new for old, new in relabel.items()}
    report["persons_without_images"] = [names[old] for old in report["empty_labels"]]
    report["empty_labels"] = []  # the renumbering leaves persons without images out
    report[HELDOUT_PROTOCOL] = {
        "persons": [names[label] for label in held], "images": len(bench), "pairs": len(pairs),
        "pairs_per_fold": len(pairs) // folds, "folds": folds, "seed": seed,
    }
    return report
