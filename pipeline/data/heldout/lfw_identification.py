"""lfw_identification: the 1:N search of kind identification on real photos (data.lfw_root) instead of synthetic
identities."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pipeline.core.config import Config
from pipeline.data import lfw
from pipeline.data.align_records import DetectionTally, align_record, detector_from_config
from pipeline.data.heldout.base import HeldoutSpec, check_search, register
from pipeline.data.heldout.scoring import Scoring
from pipeline.data.identification_sets import write_identification_set

log = logging.getLogger("facerepro.protocols")


@register("lfw_identification")
@dataclass(frozen=True)
class LfwIdentificationSpec(HeldoutSpec):
    """The same 1:N search on real photos (data.lfw_root): DevTest persons with two or more photos give the mates
    (their first photo) and probes (the rest); the distractors are one photo of every LFW person that is neither a
    probe identity nor trained on (pipeline.data.lfw.identification_set)."""

    scoring: ClassVar[Scoring] = Scoring.IDENTIFICATION

    distractor_counts: list[int] = field(default_factory=lambda: [10, 100, 1_000, 4_000])
    fars: list[float] = field(default_factory=lambda: [1e-4])

    def check(self, where: str) -> None:
        check_search(self.distractor_counts, self.fars, where)

    def unavailable(self, cfg: Config) -> str | None:
        if not cfg.data.lfw_root:
            return "an LFW protocol, and data.lfw_root is not set"
        return None

    def build(self, cfg: Config, name: str, out: Path) -> dict:
        """LFW's 1:N set, detected and aligned as the align stage does real photos (a photo without a face: the
        central crop, as for a benchmark photo, since dropping a probe would change the protocol)."""
        trained = set()
        if cfg.data.source == "lfw":
            trained = set(lfw.training_persons(lfw.read_labels(cfg.data.lfw_root), cfg.data.lfw_min_images)["identity"])
        records, roles, entry = lfw.identification_set(cfg.data.lfw_root, trained)
        if self.distractor_counts[-1] > entry["distractors"]:
            raise ValueError(f"protocols.{name}.distractor_counts {self.distractor_counts} exceed the "
                             f"{entry['distractors']} distractors LFW gives here")
        detector, tally = detector_from_config(cfg.align), DetectionTally()
        log.info("protocol %s: %d LFW photos", name, len(records))
        aligned = [align_record(r, cfg.align.crop_size, f"protocols.{name} {r.source}", detector, tally,
                                cfg.align.fallback_crop) for r in records]
        write_identification_set(out, aligned, roles, self.distractor_counts, self.fars)
        return {"kind": self.kind, "images": len(aligned), **entry, "landmarks": tally.summary()}
