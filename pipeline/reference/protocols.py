"""The real-photo pair protocols a reference model is scored on, with the photos as encoded originals.

A reference model brings its own detector, landmarks and crop, so it reads the ORIGINAL photos: the raw benchmarks
(stage synthesize's data/raw/benchmarks, before the project's alignment) and LFW View 2 straight from data.lfw_root.
Synthetic renderings are left out (their landmarks are drawn with them: a model trained on real faces says nothing
about them), each with the reason. View 2 is scored whatever the run trained on: the reference model never saw LFW.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.data import lfw
from pipeline.data.records import read_benchmark
from pipeline.reference.descriptors import Photo

SYNTHETIC = ("synthetic renderings (their landmarks are drawn with them, not found): a reference model is scored on "
             "real photos only")
NO_LFW_ROOT = "data.lfw_root is not set (it names the LFW root whose View 2 pairs are scored)"


@dataclass(frozen=True)
class PhotoProtocol:
    """A pair protocol on original photos: `pairs` (a, b, same, fold) index `photos`; folds are consecutive equal
    blocks in pair order, numbered 0..folds-1."""

    name: str
    photos: tuple[Photo, ...]
    pairs: pd.DataFrame

    def __post_init__(self) -> None:
        missing = {"a", "b", "same", "fold"} - set(self.pairs.columns)
        if missing:
            raise ValueError(f"protocol {self.name}: pairs lack columns {sorted(missing)}")
        if len(self.pairs) == 0:
            raise ValueError(f"protocol {self.name} has no pairs")
        ends = self.pairs[["a", "b"]].to_numpy()
        if ends.min() < 0 or ends.max() >= len(self.photos):
            raise ValueError(f"protocol {self.name}: pairs index photos outside 0..{len(self.photos) - 1}")
        folds = self.pairs["fold"].to_numpy()
        count = int(folds.max()) + 1
        if len(folds) % count or not np.array_equal(folds, np.repeat(np.arange(count), len(folds) // count)):
            raise ValueError(f"protocol {self.name}: folds must be consecutive equal blocks numbered 0..{count - 1} "
                             "in pair order")

    @property
    def folds(self) -> int:
        return int(self.pairs["fold"].max()) + 1


def is_rendering(bench_dir: Path) -> bool:
    """Whether a raw benchmark holds synthetic renderings: every image carries its 5 landmarks (a real photo's are
    found later, by stage align; raw real photos carry NaN)."""
    table = pq.read_table(bench_dir / "images.parquet", columns=["landmarks"])
    landmarks = np.asarray(table.column("landmarks").to_pylist(), dtype=np.float32)
    return len(landmarks) > 0 and bool(np.isfinite(landmarks).all())


def raw_protocol(bench_dir: Path) -> PhotoProtocol:
    records, pairs = read_benchmark(bench_dir)
    photos = tuple(Photo(record.source, record.image) for record in records)
    return PhotoProtocol(bench_dir.name, photos, pairs.astype({"a": "int64", "b": "int64", "same": bool,
                                                               "fold": "int64"}))


def lfw_view2(root: str | Path) -> PhotoProtocol:
    """LFW View 2 (10 folds of 300 same + 300 different pairs), its photos read from the root by their path under it
    (which is their `source`, as in the raw benchmarks of an LFW run)."""
    root = lfw.resolve_root(root)
    images, pairs = lfw.protocol_pairs(lfw.read_pairs(root, lfw.VIEW2), lfw.VIEW2)
    photos = []
    for image in images:
        path = root / image
        if not path.is_file():
            raise FileNotFoundError(f"LFW photo {path} (listed in {lfw.PAIR_FILES[lfw.VIEW2]}) does not exist")
        photos.append(Photo(image, path.read_bytes()))
    return PhotoProtocol(lfw.VIEW2, tuple(photos), pairs)


def real_photo_protocols(benchmarks: Path, lfw_root: str | None) -> tuple[list[PhotoProtocol], dict[str, str]]:
    """(the protocols to score, in name order; protocol -> why it is not scored): every raw benchmark under
    `benchmarks` whose images are real photos, and View 2 read from `lfw_root` when it is set (in place of a raw copy
    of it)."""
    scored: dict[str, PhotoProtocol] = {}
    not_scored: dict[str, str] = {}
    directories = sorted(path for path in benchmarks.iterdir() if path.is_dir()) if benchmarks.is_dir() else []
    for directory in directories:
        if lfw_root and directory.name == lfw.VIEW2:
            continue  # read from the root below
        if not (directory / "pairs.parquet").is_file():
            not_scored[directory.name] = "not a pair protocol (no pairs.parquet)"
        elif is_rendering(directory):
            not_scored[directory.name] = SYNTHETIC
        else:
            scored[directory.name] = raw_protocol(directory)
    if lfw_root:
        scored[lfw.VIEW2] = lfw_view2(lfw_root)
    elif lfw.VIEW2 not in not_scored and lfw.VIEW2 not in scored:
        not_scored[lfw.VIEW2] = NO_LFW_ROOT
    return [scored[name] for name in sorted(scored)], not_scored


def distinct_photos(protocols: list[PhotoProtocol]) -> tuple[list[Photo], dict[str, list[int]]]:
    """The photos of every protocol, each content once (the same file in DevTest and View 2 is described once):
    (the photos, protocol -> each of its photos' row in that list). A source that names different contents in two
    protocols is kept apart as `<protocol>:<source>`."""
    unique: list[Photo] = []
    by_content: dict[bytes, int] = {}
    sources: set[str] = set()
    rows: dict[str, list[int]] = {}
    for protocol in protocols:
        rows[protocol.name] = []
        for photo in protocol.photos:
            key = photo.data
            if key not in by_content:
                source = photo.source if photo.source not in sources else f"{protocol.name}:{photo.source}"
                sources.add(source)
                by_content[key] = len(unique)
                unique.append(Photo(source, photo.data))
            rows[protocol.name].append(by_content[key])
    return unique, rows
