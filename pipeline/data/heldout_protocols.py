"""The held-out test protocols of stage `protocols` (data/protocols/<name>): rendered by the synthetic generator on
identities of their own and aligned like the benchmarks of stage align. They live apart from data/aligned so that
adding or resizing one reruns the evaluations, never the training (whose curves read data/aligned/benchmarks)."""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.atomic_io import atomic_path
from pipeline.core.config import Config
from pipeline.data import lfw
from pipeline.data.align_records import DetectionTally, align_record, detector_from_config
from pipeline.data.identification_sets import write_identification_set
from pipeline.data.records import FaceRecord, write_benchmark
from pipeline.data.synthetic import SyntheticSpec, render_records
from pipeline.data.synthetic.heldout import (
    HeldoutSpec,
    IdentificationPlan,
    LfwIdentificationSpec,
    is_synthetic,
    kind_of,
    parse,
    plan,
)

log = logging.getLogger("facerepro.protocols")


def _aligned(records, crop_size: int, name: str) -> list[FaceRecord]:
    return [align_record(record, crop_size, f"protocols.{name} image {i} ({record.source})")
            for i, record in enumerate(records)]


def build(cfg: Config, out_dir: Path) -> dict:
    """Write every protocol of params `protocols` into `out_dir` (whole or not at all); returns the summary.

    A synthetic kind needs the synthetic source (its identities come from that generator) and lfw_identification
    needs data.lfw_root; a protocol the data cannot give is listed as skipped, with the reason."""
    specs = parse(cfg.protocols)
    summary: dict = {"crop_size": cfg.align.crop_size, "protocols": {}, "skipped": {}}
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        for name, spec in specs.items():
            reason = _unavailable(cfg, spec)
            if reason:
                summary["skipped"][name] = reason
                continue
            if is_synthetic(spec):
                summary["protocols"][name] = _synthetic(cfg, name, spec, staged / name)
            else:
                summary["protocols"][name] = _lfw_identification(cfg, name, spec, staged / name)
    return summary


def _unavailable(cfg: Config, spec: HeldoutSpec) -> str | None:
    if is_synthetic(spec) and cfg.data.source != "synthetic":
        return f"a synthetic protocol, and data.source is {cfg.data.source!r}"
    if not is_synthetic(spec) and not cfg.data.lfw_root:
        return "an LFW protocol, and data.lfw_root is not set"
    return None


def _synthetic(cfg: Config, name: str, spec: HeldoutSpec, out: Path) -> dict:
    synthetic = SyntheticSpec.from_dict(cfg.data.synthetic)
    planned = plan(synthetic, name, spec)
    log.info("protocol %s (%s): %d images", name, kind_of(spec), len(planned.jobs))
    images = _aligned(render_records(synthetic.canvas, planned.jobs), cfg.align.crop_size, name)
    entry = {"kind": kind_of(spec), "images": len(images), "identities": len({j.identity.id for j in planned.jobs})}
    if isinstance(planned, IdentificationPlan):
        write_identification_set(out, images, planned.roles, spec.distractor_counts, spec.fars)
        counts = planned.roles["role"].value_counts()
        entry.update({"mates": int(counts.get(0, 0)), "probes": int(counts.get(1, 0)),
                      "distractors": int(counts.get(2, 0))})
    else:
        write_benchmark(out, images, planned.pairs)
        entry.update({"pairs": len(planned.pairs), "different_pairs": int((~planned.pairs["same"]).sum()),
                      "lookalike_negatives": planned.hard_negatives})
    return entry


def _lfw_identification(cfg: Config, name: str, spec: LfwIdentificationSpec, out: Path) -> dict:
    """LFW's 1:N set, detected and aligned as the align stage does real photos (a photo without a face: the
    central crop, as for a benchmark photo, since dropping a probe would change the protocol)."""
    trained = set()
    if cfg.data.source == "lfw":
        trained = set(lfw.training_persons(lfw.read_labels(cfg.data.lfw_root), cfg.data.lfw_min_images)["identity"])
    records, roles, entry = lfw.identification_set(cfg.data.lfw_root, trained)
    if spec.distractor_counts[-1] > entry["distractors"]:
        raise ValueError(f"protocols.{name}.distractor_counts {spec.distractor_counts} exceed the "
                         f"{entry['distractors']} distractors LFW gives here")
    detector, tally = detector_from_config(cfg.align), DetectionTally()
    log.info("protocol %s: %d LFW photos", name, len(records))
    aligned = [align_record(r, cfg.align.crop_size, f"protocols.{name} {r.source}", detector, tally,
                            cfg.align.fallback_crop) for r in records]
    write_identification_set(out, aligned, roles, spec.distractor_counts, spec.fars)
    return {"kind": kind_of(spec), "images": len(aligned), **entry, "landmarks": tally.summary()}
