"""What every kind drawn by the synthetic generator shares: an identity block of its own, count params, rendering and
aligning its plan's images like the benchmarks of stage align, and (for pair kinds) the pair layout."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from pipeline.core.config import Config
from pipeline.data.align_records import align_record
from pipeline.data.heldout.base import HeldoutSpec, require
from pipeline.data.heldout.scoring import Scoring
from pipeline.data.records import FaceRecord, write_benchmark
from pipeline.data.synthetic import SyntheticSpec, render_records
from pipeline.data.synthetic.protocols import CODES, ProtocolPlan
from pipeline.data.synthetic.spec import IDENTITY_BLOCK, ProtocolSpec

log = logging.getLogger("facerepro.protocols")

FIRST_FREE_BLOCK = max(CODES.values()) + 1  # blocks below belong to the training-time protocols


class SyntheticHeldoutSpec(HeldoutSpec):
    """A kind drawn by the synthetic generator from identity block `block` (ids `block * IDENTITY_BLOCK + i`, seed
    streams keyed by it). Its dataclass has a `block` field; every other int field counts something, so it must be
    >= 1."""

    block: int

    def plan(self, synthetic: SyntheticSpec, name: str) -> Any:
        """What to render (the plan's `jobs`), with the pairs or roles `write` needs."""
        raise NotImplementedError

    def identities(self) -> int:
        """How many identities of its block the protocol draws."""
        raise NotImplementedError

    def write(self, out: Path, images: list[FaceRecord], planned: Any) -> dict:
        """Write the aligned images with the plan's pairs or roles; returns the summary's own figures."""
        raise NotImplementedError

    def identity_block(self) -> int:
        return self.block

    def check_block_and_counts(self, where: str) -> None:
        require(isinstance(self.block, int) and not isinstance(self.block, bool)
                and FIRST_FREE_BLOCK <= self.block < 9_000,
                f"{where}.block must be an integer in [{FIRST_FREE_BLOCK}, 9000) (1-{FIRST_FREE_BLOCK - 1} are the "
                f"training-time protocols'), got {self.block!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "block" or f.type not in (int, "int"):
                continue
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"{where}.{f.name} must be an integer >= 1, got {value!r}")

    def check_fits_block(self, where: str) -> None:
        size = self.identities()
        require(size < IDENTITY_BLOCK, f"{where}: {size} identities do not fit a block of {IDENTITY_BLOCK}")

    def unavailable(self, cfg: Config) -> str | None:
        if cfg.data.source != "synthetic":
            return f"a synthetic protocol, and data.source is {cfg.data.source!r}"
        return None

    def build(self, cfg: Config, name: str, out: Path) -> dict:
        synthetic = SyntheticSpec.from_dict(cfg.data.synthetic)
        planned = self.plan(synthetic, name)
        log.info("protocol %s (%s): %d images", name, self.kind, len(planned.jobs))
        images = _aligned(render_records(synthetic.canvas, planned.jobs), cfg.align.crop_size, name)
        entry = {"kind": self.kind, "images": len(images), "identities": len({j.identity.id for j in planned.jobs})}
        entry.update(self.write(out, images, planned))
        return entry


class PairHeldoutSpec(SyntheticHeldoutSpec):
    """A synthetic kind of same and different pairs in folds, scored by verification; its dataclass has the fields
    `images_per_identity`, `folds` and `pairs_per_fold`."""

    scoring: ClassVar[Scoring] = Scoring.VERIFICATION
    images_per_identity: int
    folds: int
    pairs_per_fold: int

    def pair_folds(self) -> int:
        return self.folds

    def pair_spec(self, identities_per_fold: int, hard: float) -> ProtocolSpec:
        """The pair sampler's settings: `identities_per_fold` per fold, a share `hard` of look-alike negatives."""
        return ProtocolSpec(identities_per_fold=identities_per_fold, images_per_identity=self.images_per_identity,
                            folds=self.folds, pairs_per_fold=self.pairs_per_fold, hard_negative_fraction=hard)

    def write(self, out: Path, images: list[FaceRecord], planned: ProtocolPlan) -> dict:
        write_benchmark(out, images, planned.pairs)
        return {"pairs": len(planned.pairs), "different_pairs": int((~planned.pairs["same"]).sum()),
                "lookalike_negatives": planned.hard_negatives}


def _aligned(records: Iterable[FaceRecord], crop_size: int, name: str) -> list[FaceRecord]:
    return [align_record(record, crop_size, f"protocols.{name} image {i} ({record.source})")
            for i, record in enumerate(records)]
