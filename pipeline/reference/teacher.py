"""A reference model as the distillation teacher: its descriptors of the training photos, computed once.

The reference model has its own preprocessing (dlib: its detector, 5 landmarks and 150 px chip of the ORIGINAL
photo), not the student's aligned crop, so it cannot run on the student's batches: every training photo is described
once, from its original bytes in data/raw/train (matched to the aligned training records by `source`), and the table
is stage distill's output, data/reference_targets/<model>.parquet (DVC `persist`), so that a rerun describes only the
photos it has not described with the same settings. The student is then hinted toward these fixed targets
(pipeline.train.engine.masked_distillation_loss); a photo where the model found no face gets no hint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.config import Config
from pipeline.core.paths import Paths
from pipeline.data.records import read_metadata, shard_paths
from pipeline.experiment.runs import ReferenceHints
from pipeline.reference.descriptors import (
    Descriptors, Photo, describe, describer_settings, digest, stored_descriptors,
    write_descriptors,
)

log = logging.getLogger("facerepro.reference")

SUMMARY = "summary.json"


@dataclass(frozen=True)
class TargetsSummary:
    """What stage distill's last run used as a reference teacher (data/reference_targets/summary.json)."""

    reference_teacher: str | None  # None: the trained teacher, no reference model
    photos: int = 0  # training photos described (their table's rows)
    described: int = 0  # of them described by this run; the others were reused from the stored table
    detected: int = 0  # with a face found (the others get no hint)
    seconds: float = 0.0  # this run's describing, wall time
    workers: int = 0
    digest: str | None = None  # descriptors_digest of the table


def targets_path(paths: Paths, model: str) -> Path:
    return paths.reference_targets / f"{model}.parquet"


def training_photos(paths: Paths) -> list[Photo]:
    """The original photo of every aligned training record, found by `source` in data/raw/train: all of them, not
    just the cleaning manifest's kept ones, so a new manifest needs no new descriptors."""
    aligned, raw = paths.train_records(paths.aligned), paths.train_records(paths.raw)
    wanted = set(read_metadata(aligned)["source"])
    photos: dict[str, Photo] = {}
    for shard in shard_paths(raw):
        table = pq.read_table(shard, columns=["image", "source"])
        for data, source in zip(table.column("image").to_pylist(), table.column("source").to_pylist()):
            if source not in wanted:
                continue
            if source in photos:
                raise ValueError(f"{shard}: source {source!r} is in {raw} twice: a photo's source must be unique")
            photos[source] = Photo(source, data)
    missing = sorted(wanted - photos.keys())
    if missing:
        raise ValueError(f"{aligned}: {len(missing)} training records have no original photo of the same source in "
                         f"{raw} (e.g. {missing[0]!r}): rerun the stages that write them")
    return list(photos.values())


def descriptors_digest(descriptors: Descriptors) -> str:
    """sha256 over the settings and every row (source, photo digest, vector, detected): the teacher's identity in a
    student's training identity, so that a run is never resumed or reused across other descriptors."""
    h = hashlib.sha256(json.dumps(asdict(descriptors.settings), sort_keys=True).encode())
    for source, photo in zip(descriptors.sources, descriptors.digests):
        h.update(source.encode() + b"\0" + photo.encode() + b"\0")
    h.update(np.ascontiguousarray(descriptors.vectors, dtype="<f4").tobytes())
    h.update(descriptors.detected.astype(np.uint8).tobytes())
    return h.hexdigest()[:16]


def cached_descriptors(cfg: Config, paths: Paths, model: str) -> tuple[Descriptors, TargetsSummary]:
    """Reference model `model`'s descriptors of the training photos: those stored with the same bytes and settings
    reused, the others described (cfg.reference.workers processes); the table and summary.json written."""
    path = targets_path(paths, model)
    previous = stored_descriptors(path)
    photos = training_photos(paths)
    settings = describer_settings(cfg.reference, cfg.reference.models[model])
    known = set()
    if previous is not None and previous.settings == settings:
        known = set(zip(previous.sources, previous.digests))
    new = sum((photo.source, digest(photo.data)) not in known for photo in photos)
    log.info("%s: %d training photos, %d to describe (%d stored)", model, len(photos), new, len(photos) - new)
    started = time.perf_counter()
    descriptors = describe(photos, settings, cfg.reference.workers, previous)
    seconds = time.perf_counter() - started
    write_descriptors(path, descriptors)
    summary = TargetsSummary(model, len(photos), new, int(descriptors.detected.sum()), seconds,
                             cfg.reference.workers, descriptors_digest(descriptors))
    write_json_atomic(paths.reference_targets / SUMMARY, asdict(summary))
    log.info("%s: %d of %d photos with a face found; %.1f s describing", model, summary.detected, len(photos), seconds)
    return descriptors, summary


def no_reference_teacher(paths: Paths) -> None:
    """summary.json saying that no reference teacher is used (the folder is a DVC output either way); stored
    tables are kept, so switching back reuses them."""
    write_json_atomic(paths.reference_targets / SUMMARY, asdict(TargetsSummary(None)))


def reference_hints(model: str, descriptors: Descriptors) -> ReferenceHints:
    """The hints a student of reference teacher `model` trains toward, with their identity."""
    identity = {"model": model, "settings": asdict(descriptors.settings), "descriptors": descriptors_digest(descriptors)}
    return ReferenceHints(identity, descriptors.lookup)
