"""How stage evaluate scores a protocol, which fixes how the protocol lies on disk. A kind names its scoring; stage
evaluate tells it from the protocol's directory, so it reads protocols without importing the kinds (and with them
the synthetic generator, whose every edit would otherwise rerun every evaluation)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path

from pipeline.data.identification_sets import is_identification_set


class Scoring(Enum):
    VERIFICATION = "verification"  # pairs in the benchmark layout (records.write_benchmark): 10-fold accuracy, TAR@FAR
    IDENTIFICATION = "identification"  # mates, probes, distractors (identification_sets): rank-1 curve, TAR@FAR

    @staticmethod
    def of(directory: Path) -> Scoring:
        """The scoring of the protocol written in `directory`, told by its layout."""
        return Scoring.IDENTIFICATION if is_identification_set(directory) else Scoring.VERIFICATION
