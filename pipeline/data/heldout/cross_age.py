"""cross_age (CALFW, Zheng, Deng & Hu 2017): every pair, same or different, spans at least `min_age_gap` years, and
every negative pair is two look-alikes of one family."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.heldout.base import register, require
from pipeline.data.heldout.families import FamilyHeldoutSpec
from pipeline.data.synthetic import seeds
from pipeline.data.synthetic.nuisance import YawMode
from pipeline.data.synthetic.protocols import FoldResult, ProtocolPlan, assemble, job
from pipeline.data.synthetic.spec import SyntheticSpec
from pipeline.data.synthetic.traits import Identity


@register("cross_age")
@dataclass(frozen=True)
class CrossAgeSpec(FamilyHeldoutSpec):
    """CALFW-like: families of look-alikes photographed across the age range; every pair spans >= min_age_gap."""

    block: int
    families_per_fold: int = 10
    family_size: int = 3
    family_strength: float = 0.7  # members' latent offset from their root, relative to the spread of identities
    images_per_identity: int = 5
    min_age_gap: float = 20.0
    folds: int = 10
    pairs_per_fold: int = 100

    def check(self, where: str) -> None:
        self.check_block_and_counts(where)
        self.check_families(where)
        require(self.min_age_gap >= 0, f"{where}.min_age_gap must be >= 0, got {self.min_age_gap}")
        self.check_fits_block(where)

    def plan(self, synthetic: SyntheticSpec, name: str) -> ProtocolPlan:
        lo, hi = synthetic.nuisance.age_min, synthetic.nuisance.age_max
        m = self.images_per_identity

        def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
            jobs, rows = [], []
            for person in ids:
                rows.append(list(range(offset + len(jobs), offset + len(jobs) + m)))
                for j in range(m):  # stratified: image j falls in the j-th of m equal age bands
                    u = seeds.stream(synthetic.seed, seeds.AGE, person.split, person.index, j).random()
                    jobs.append(job(synthetic, person, j, fold, YawMode.GENERAL, lo + (hi - lo) * (j + u) / m, name))
            ages = {offset + k: item.nuisance.age for k, item in enumerate(jobs)}
            return jobs, rows, rows, lambda a, b: abs(ages[a] - ages[b]) >= self.min_age_gap, False

        pairs = self.pair_spec(self.families_per_fold * self.family_size, hard=1.0)
        return assemble(synthetic, pairs, f"protocols.{name}", self.block,
                        lambda fold: self.family_identities(synthetic, fold), fold_plan)
