"""Families of look-alikes, the identities of cross_pose and cross_age: a root identity and `family_size - 1`
neighbours of it in latent space, offset by `family_strength` of the identities' spread (alike, not twins). At the
training set's look-alike strength 0.3, the cpu profile's CosFace scored 54% on both cross protocols, at chance;
at 0.7, 57-63%."""
from __future__ import annotations

from pipeline.data.heldout.base import require
from pipeline.data.heldout.synthetic import PairHeldoutSpec
from pipeline.data.synthetic.protocols import protocol_identity
from pipeline.data.synthetic.spec import SyntheticSpec
from pipeline.data.synthetic.traits import Identity


class FamilyHeldoutSpec(PairHeldoutSpec):
    """A pair kind whose folds are `families_per_fold` families and whose every negative pair is two members of one
    family; its dataclass has the fields `families_per_fold`, `family_size` and `family_strength`."""

    families_per_fold: int
    family_size: int
    family_strength: float

    def check_families(self, where: str) -> None:
        require(self.family_size >= 2,
                f"{where}.family_size must be >= 2 (look-alike negatives), got {self.family_size}")
        require(isinstance(self.family_strength, (int, float)) and not isinstance(self.family_strength, bool)
                and self.family_strength > 0, f"{where}.family_strength must be > 0, got {self.family_strength!r}")
        require(self.images_per_identity >= 2, f"{where}.images_per_identity must be >= 2")

    def identities(self) -> int:
        return self.folds * self.families_per_fold * self.family_size

    def family_identities(self, synthetic: SyntheticSpec, fold: int) -> list[Identity]:
        """A fold's families: identity 0 of each is its root, the others look-alikes of it (look-alike share 1 within
        the family's own block, so every parent chain ends at the root)."""
        size = self.families_per_fold * self.family_size
        return [
            protocol_identity(synthetic, self.block, fold * size + f * self.family_size + m,
                              fold * size + f * self.family_size, lookalike_fraction=1.0,
                              lookalike_strength=self.family_strength)
            for f in range(self.families_per_fold) for m in range(self.family_size)
        ]
