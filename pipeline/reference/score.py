"""One reference model on the real-photo protocols: its descriptors (reused for photos already described with the same
settings), each pair's distance and the protocol figures, written under data/reference/<model>/:

- descriptors.parquet: one row per distinct photo (pipeline.reference.descriptors);
- pairs/<protocol>.parquet: a, b (rows of the protocol's photos), same, fold, distance, and the photos' sources.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.atomic_io import atomic_path
from pipeline.core.config import ReferenceConfig, ReferenceModelConfig
from pipeline.reference.descriptors import (
    Descriptors, describe, describer_settings, stored_descriptors, write_descriptors,
)
from pipeline.reference.dlib_resnet import distance_scores
from pipeline.reference.evaluation import ProtocolFigures, ReferenceEvaluation, score_protocol
from pipeline.reference.protocols import PhotoProtocol, distinct_photos

log = logging.getLogger("facerepro")

DESCRIPTORS = "descriptors.parquet"
PAIRS = "pairs"


def pair_distances(descriptors: Descriptors, rows: list[int], pairs: pd.DataFrame) -> np.ndarray:
    """Each pair's descriptor distance; `rows` maps the protocol's photo numbers to rows of `descriptors`."""
    index = np.asarray(rows, dtype=np.int64)
    first = descriptors.vectors[index[pairs["a"].to_numpy()]]
    second = descriptors.vectors[index[pairs["b"].to_numpy()]]
    return -distance_scores(first, second)


def evaluate_model(
    name: str, model: ReferenceModelConfig, reference: ReferenceConfig, protocols: list[PhotoProtocol],
    not_scored: dict[str, str], out_dir: Path, fars: list[float],
) -> ReferenceEvaluation:
    """Describe every photo of `protocols` once, score each protocol, write the descriptor and pair tables into
    `out_dir`; returns the record (the caller saves it)."""
    settings = describer_settings(reference, model)
    photos, rows = distinct_photos(protocols)
    table = out_dir / DESCRIPTORS
    previous = stored_descriptors(table)
    started = time.perf_counter()
    described = describe(photos, settings, reference.workers, previous)
    reused = 0 if previous is None or previous.settings != settings else len(
        set(zip(described.sources, described.digests)) & set(zip(previous.sources, previous.digests)))
    log.info("%s: %d photos, %d described now in %.0f s (%d workers), %d reused", name, len(photos),
             len(photos) - reused, time.perf_counter() - started, reference.workers, reused)
    write_descriptors(table, described)
    figures: dict[str, ProtocolFigures] = {}
    with atomic_path(out_dir / PAIRS) as staged:
        staged.mkdir()
        for protocol in protocols:
            distance = pair_distances(described, rows[protocol.name], protocol.pairs)
            own = np.asarray(rows[protocol.name], dtype=np.int64)
            figures[protocol.name] = score_protocol(
                distance, protocol.pairs["same"].to_numpy(), protocol.folds, photos=len(own),
                photos_detected=int(described.detected[own].sum()), fars=fars)
            sources = np.array([photo.source for photo in protocol.photos], dtype=object)
            pd.DataFrame({
                "a": protocol.pairs["a"].to_numpy(np.int64), "b": protocol.pairs["b"].to_numpy(np.int64),
                "same": protocol.pairs["same"].to_numpy(bool), "fold": protocol.pairs["fold"].to_numpy(np.int64),
                "distance": distance, "source_a": sources[protocol.pairs["a"].to_numpy()],
                "source_b": sources[protocol.pairs["b"].to_numpy()],
            }).to_parquet(staged / f"{protocol.name}.parquet", index=False)
            shown = figures[protocol.name]
            log.info("%s on %s: %.2f%% +- %.2f (95%% interval %.2f-%.2f), %.2f%% at distance 0.6, %d of %d photos "
                     "without a detection", name, protocol.name, shown.accuracy, shown.accuracy_std, shown.ci_low,
                     shown.ci_high, shown.accuracy_at_published_threshold, shown.photos - shown.photos_detected,
                     shown.photos)
    return ReferenceEvaluation(
        model=name, label=model.label, kind=model.kind, settings=asdict(settings), published=dict(model.published),
        published_source=model.published_source, protocols=figures, not_scored=dict(not_scored))
