"""identification (MegaFace, Kemelmacher-Shlizerman et al. 2016): probe identities with one gallery image (the mate)
and several probe images each, and distractor identities of one image each, some of them look-alikes of probes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from pipeline.data.heldout.base import check_search, register, require
from pipeline.data.heldout.scoring import Scoring
from pipeline.data.heldout.synthetic import SyntheticHeldoutSpec
from pipeline.data.identification_sets import ROLES, write_identification_set
from pipeline.data.records import FaceRecord
from pipeline.data.synthetic.nuisance import YawMode
from pipeline.data.synthetic.protocols import ImageJob, jittered_age, job, protocol_identity
from pipeline.data.synthetic.spec import SyntheticSpec


@dataclass(frozen=True)
class IdentificationPlan:
    jobs: list[ImageJob]
    roles: pd.DataFrame  # one row per job: role (index into identification_sets.ROLES), identity


@register("identification")
@dataclass(frozen=True)
class IdentificationSpec(SyntheticHeldoutSpec):
    """MegaFace-like: `probe_identities` with one mate and `probes_per_identity` probes each, `distractors` identities
    of one image each; rank-1 is measured at each of `distractor_counts` (nested) and TAR at each of `fars`."""

    scoring: ClassVar[Scoring] = Scoring.IDENTIFICATION

    block: int
    probe_identities: int = 100
    probes_per_identity: int = 3
    distractors: int = 10_000
    distractor_counts: list[int] = field(default_factory=lambda: [10, 100, 1_000, 10_000])
    fars: list[float] = field(default_factory=lambda: [1e-6])

    def check(self, where: str) -> None:
        check_search(self.distractor_counts, self.fars, where)
        self.check_block_and_counts(where)
        require(self.distractor_counts[-1] <= self.distractors, f"{where}.distractor_counts must not exceed "
                f"distractors={self.distractors}, got {self.distractor_counts}")
        self.check_fits_block(where)

    def identities(self) -> int:
        return self.probe_identities + self.distractors

    def plan(self, synthetic: SyntheticSpec, name: str) -> IdentificationPlan:
        """Probe identities 0..P-1 (image 0 the mate, the rest probes), then distractors P..P+D-1 of one image each;
        look-alike parents come from the whole block, so some distractors resemble a probe identity."""
        jobs, roles, owners = [], [], []
        for index in range(self.probe_identities + self.distractors):
            person = protocol_identity(synthetic, self.block, index, 0)
            images = 1 + self.probes_per_identity if index < self.probe_identities else 1
            for j in range(images):
                jobs.append(job(synthetic, person, j, -1, YawMode.GENERAL, jittered_age(synthetic, person, j), name))
                role = ("mate" if j == 0 else "probe") if index < self.probe_identities else "distractor"
                roles.append(ROLES.index(role))
                owners.append(person.id)
        frame = pd.DataFrame({"role": np.asarray(roles, np.int8), "identity": np.asarray(owners, np.int64)})
        return IdentificationPlan(jobs=jobs, roles=frame)

    def write(self, out: Path, images: list[FaceRecord], planned: IdentificationPlan) -> dict:
        write_identification_set(out, images, planned.roles, self.distractor_counts, self.fars)
        counts = planned.roles["role"].value_counts()
        return {"mates": int(counts.get(0, 0)), "probes": int(counts.get(1, 0)), "distractors": int(counts.get(2, 0))}
