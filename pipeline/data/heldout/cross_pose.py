"""cross_pose (CPLFW, Zheng & Deng 2018): every pair is a frontal image against a profile-like one, and every
negative pair is two look-alikes of one family."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.heldout.base import register, require
from pipeline.data.heldout.families import FamilyHeldoutSpec
from pipeline.data.synthetic.nuisance import YawMode
from pipeline.data.synthetic.protocols import FoldResult, ProtocolPlan, assemble, jittered_age, job
from pipeline.data.synthetic.spec import SyntheticSpec
from pipeline.data.synthetic.traits import Identity


@register("cross_pose")
@dataclass(frozen=True)
class CrossPoseSpec(FamilyHeldoutSpec):
    """CPLFW-like: families of look-alikes; pairs frontal (a) against profile-like (b); negatives within families."""

    block: int
    families_per_fold: int = 10
    family_size: int = 3  # a root identity and family_size - 1 look-alikes of it
    family_strength: float = 0.7  # members' latent offset from their root, relative to the spread of identities
    images_per_identity: int = 4
    profile_per_identity: int = 2
    folds: int = 10
    pairs_per_fold: int = 100

    def check(self, where: str) -> None:
        self.check_block_and_counts(where)
        self.check_families(where)
        require(1 <= self.profile_per_identity < self.images_per_identity,
                f"{where}.profile_per_identity must be in [1, images_per_identity), got {self.profile_per_identity}")
        self.check_fits_block(where)

    def plan(self, synthetic: SyntheticSpec, name: str) -> ProtocolPlan:
        n_frontal = self.images_per_identity - self.profile_per_identity

        def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
            jobs, frontal, profile = [], [], []
            for person in ids:
                start = offset + len(jobs)
                frontal.append(list(range(start, start + n_frontal)))
                profile.append(list(range(start + n_frontal, start + self.images_per_identity)))
                jobs += [job(synthetic, person, j, fold, YawMode.FRONTAL if j < n_frontal else YawMode.PROFILE,
                             jittered_age(synthetic, person, j), name) for j in range(self.images_per_identity)]
            return jobs, frontal, profile, lambda a, b: True, True

        pairs = self.pair_spec(self.families_per_fold * self.family_size, hard=1.0)
        return assemble(synthetic, pairs, f"protocols.{name}", self.block,
                        lambda fold: self.family_identities(synthetic, fold), fold_plan)
