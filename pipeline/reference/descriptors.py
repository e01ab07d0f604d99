"""Reference descriptors of many photos: described in parallel processes, stored as one Parquet table (a row per
photo: its record `source`, the SHA-256 of its bytes, the 128-d vector, whether a face was detected), and reused for
photos already described with the same settings, so a stage that reruns describes only new or changed photos."""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.atomic_io import atomic_path
from pipeline.core.config import ReferenceConfig, ReferenceModelConfig
from pipeline.reference.dlib_resnet import EMBEDDING_SIZE, DlibResnet

_SCHEMA = pa.schema([("source", pa.string()), ("digest", pa.string()),
                     ("vector", pa.list_(pa.float32(), EMBEDDING_SIZE)), ("detected", pa.bool_())])
_SETTINGS_KEY = b"facerepro.reference_settings"
log = logging.getLogger("facerepro.reference")


@dataclass(frozen=True)
class Photo:
    """An original photo: its record `source` (stable id, e.g. the path under the LFW root) and its encoded bytes."""

    source: str
    data: bytes


@dataclass(frozen=True)
class DescriberSettings:
    """Everything that changes a descriptor: a stored table made with other settings is not reused."""

    kind: str
    face_selection: str
    upsample: int
    fallback_crop: float
    dlib: str = version("dlib-bin")


def describer_settings(reference: ReferenceConfig, model: ReferenceModelConfig) -> DescriberSettings:
    """A reference model's settings from params `reference` (validated by pipeline.core.config)."""
    return DescriberSettings(kind=model.kind, face_selection=reference.face_selection, upsample=reference.upsample,
                             fallback_crop=reference.fallback_crop)


@dataclass(frozen=True)
class Descriptors:
    sources: tuple[str, ...]
    digests: tuple[str, ...]
    vectors: np.ndarray  # (n, 128) float32
    detected: np.ndarray  # (n,) bool: False where the fallback box was described
    settings: DescriberSettings

    def __post_init__(self) -> None:
        n = len(self.sources)
        if len(self.digests) != n or self.vectors.shape != (n, EMBEDDING_SIZE) or self.detected.shape != (n,):
            raise ValueError(f"descriptors of {n} photos need {n} digests, ({n}, {EMBEDDING_SIZE}) vectors and {n} "
                             f"flags; got {len(self.digests)}, {self.vectors.shape}, {self.detected.shape}")

    def lookup(self, sources: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of `sources` in that order (zeros where absent) and a mask: present and its face detected."""
        index = {source: i for i, source in enumerate(self.sources)}
        rows = np.array([index.get(source, -1) for source in sources], dtype=np.int64)
        present = rows >= 0
        vectors = np.zeros((len(rows), EMBEDDING_SIZE), dtype=np.float32)
        vectors[present] = self.vectors[rows[present]]
        found = np.zeros(len(rows), dtype=bool)
        found[present] = self.detected[rows[present]]
        return vectors, found


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_worker_model: DlibResnet | None = None


def _load(settings: DescriberSettings) -> None:
    global _worker_model
    _worker_model = DlibResnet(settings.face_selection, settings.upsample, settings.fallback_crop)


def _describe_one(photo: Photo) -> tuple[np.ndarray, bool]:
    assert _worker_model is not None, "worker not initialised"
    found = _worker_model.embed_encoded(photo.data, photo.source)
    return found.vector, found.detected


def describe(photos: Sequence[Photo], settings: DescriberSettings, workers: int,
             previous: Descriptors | None = None) -> Descriptors:
    """Descriptors of `photos` in their order; a photo `previous` holds with the same bytes and settings is reused."""
    if len({photo.source for photo in photos}) != len(photos):
        raise ValueError("photos to describe must have distinct sources")
    digests = [digest(photo.data) for photo in photos]
    known: dict[tuple[str, str], int] = {}
    if previous is not None and previous.settings == settings:
        known = {(s, d): i for i, (s, d) in enumerate(zip(previous.sources, previous.digests))}
    vectors = np.zeros((len(photos), EMBEDDING_SIZE), dtype=np.float32)
    detected = np.zeros(len(photos), dtype=bool)
    todo = []
    for i, (photo, key) in enumerate(zip(photos, digests)):
        j = known.get((photo.source, key))
        if j is None:
            todo.append(i)
        else:
            vectors[i], detected[i] = previous.vectors[j], previous.detected[j]
    if todo:
        # fork, as torch's DataLoader workers: the workers run dlib only, never the parent's torch thread pools
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("fork"),
                                 initializer=_load, initargs=(settings,)) as pool:
            for i, (vector, found) in zip(todo, pool.map(_describe_one, [photos[i] for i in todo], chunksize=8)):
                vectors[i], detected[i] = vector, found
    return Descriptors(tuple(p.source for p in photos), tuple(digests), vectors, detected, settings)


def write_descriptors(path: str | Path, descriptors: Descriptors) -> None:
    table = pa.Table.from_pydict({
        "source": list(descriptors.sources), "digest": list(descriptors.digests),
        "vector": list(descriptors.vectors), "detected": descriptors.detected.tolist(),
    }, schema=_SCHEMA.with_metadata({_SETTINGS_KEY: json.dumps(asdict(descriptors.settings)).encode()}))
    with atomic_path(path) as staged:
        pq.write_table(table, staged)


def read_descriptors(path: str | Path) -> Descriptors:
    """A table written by write_descriptors; an error naming the file when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference descriptors {path} do not exist (the stage that describes photos writes them)")
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    if _SETTINGS_KEY not in metadata or set(table.column_names) != set(_SCHEMA.names):
        raise ValueError(f"{path} is not a reference descriptor table (columns {table.column_names})")
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32).reshape(-1, EMBEDDING_SIZE)
    return Descriptors(tuple(table.column("source").to_pylist()), tuple(table.column("digest").to_pylist()),
                       vectors, np.asarray(table.column("detected").to_pylist(), dtype=bool),
                       DescriberSettings(**json.loads(metadata[_SETTINGS_KEY])))


def stored_descriptors(path: str | Path) -> Descriptors | None:
    """The table an earlier run left, or None (none yet, or unreadable: then every photo is described again)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_descriptors(path)
    except (OSError, ValueError) as error:
        log.warning("%s cannot be reused (%s): every photo is described again", path, error)
        return None
