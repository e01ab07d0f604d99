"""group (RFW, Wang et al. 2019): LFW-like pairs among identities of one population, whose latent centre is shifted
along named traits (skin tone, hair, eye colour, proportions); the training set is drawn from the unshifted one."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data.heldout.base import register, require
from pipeline.data.heldout.synthetic import PairHeldoutSpec
from pipeline.data.synthetic.nuisance import YawMode
from pipeline.data.synthetic.protocols import FoldResult, ProtocolPlan, assemble, jittered_age, job, protocol_identity
from pipeline.data.synthetic.spec import SyntheticSpec
from pipeline.data.synthetic.traits import Identity, Population


@register("group")
@dataclass(frozen=True)
class GroupSpec(PairHeldoutSpec):
    """RFW-like: LFW-style pairs among identities of one population (latent centre shifted by `shift`, in latent
    standard deviations per trait; `spread` scales the latent around that centre)."""

    block: int
    shift: dict[str, float] = field(default_factory=dict)
    spread: float = 1.0
    identities_per_fold: int = 20
    images_per_identity: int = 4
    hard_negative_fraction: float = 0.1
    folds: int = 10
    pairs_per_fold: int = 100

    def check(self, where: str) -> None:
        self.check_block_and_counts(where)
        require(self.spread > 0, f"{where}.spread must be > 0, got {self.spread}")
        require(0.0 <= self.hard_negative_fraction <= 1.0, f"{where}.hard_negative_fraction must be in [0, 1]")
        require(self.identities_per_fold >= 2 and self.images_per_identity >= 2,
                f"{where}: identities_per_fold and images_per_identity must be >= 2")
        try:
            Population.shifted(self.shift, self.spread)
        except ValueError as error:
            raise ValueError(f"{where}.shift: {error}") from None
        self.check_fits_block(where)

    def identities(self) -> int:
        return self.folds * self.identities_per_fold

    def plan(self, synthetic: SyntheticSpec, name: str) -> ProtocolPlan:
        population = Population.shifted(self.shift, self.spread)
        k = self.identities_per_fold

        def identities(fold: int) -> list[Identity]:
            return [protocol_identity(synthetic, self.block, fold * k + i, fold * k, population=population)
                    for i in range(k)]

        def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
            jobs, rows = [], []
            for person in ids:
                rows.append(list(range(offset + len(jobs), offset + len(jobs) + self.images_per_identity)))
                jobs += [job(synthetic, person, j, fold, YawMode.GENERAL, jittered_age(synthetic, person, j), name)
                         for j in range(self.images_per_identity)]
            return jobs, rows, rows, lambda a, b: True, False

        return assemble(synthetic, self.pair_spec(k, self.hard_negative_fraction), f"protocols.{name}", self.block,
                        identities, fold_plan)
