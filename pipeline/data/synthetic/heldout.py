"""Held-out test protocols of FaceX-Zoo's table beyond the three training-time ones: cross-pose and cross-age
verification with look-alike negatives (CPLFW / CALFW-like), per-group verification (RFW-like) and 1:N
identification with distractors (MegaFace-like).

Each protocol draws its identities from its own `block` (identity ids `block * IDENTITY_BLOCK + i`, seed streams keyed
by it), so they are disjoint from training, from the three pair protocols (blocks 1-3) and from each other. They use the
generator of the training set (same seed, nuisance and look-alike strength); only the sampling of identities and
pairs differs, as the published protocols differ from LFW:
- cross_pose (CPLFW, Zheng & Deng 2018): every pair is a frontal image against a profile-like one; every negative pair
  is two look-alikes (members of one family: a root identity and its neighbours in latent space, offset by
  `family_strength` = 0.7 of the identities' spread: alike, not twins. At the training set's look-alike strength
  0.3, the cpu profile's CosFace scored 54% on both cross protocols, at chance; at 0.7, 57-63%);
- cross_age (CALFW, Zheng, Deng & Hu 2017): every pair, same or different, spans at least `min_age_gap` years; every
  negative pair is two look-alikes;
- group (RFW, Wang et al. 2019): LFW-like pairs among identities of one population, whose latent centre is shifted
  along named traits (skin tone, hair, eye colour, proportions); the training set is drawn from the unshifted one;
- identification (MegaFace, Kemelmacher-Shlizerman et al. 2016): probe identities with one gallery image (the mate)
  and several probe images each, and distractor identities of one image each, some of them look-alikes of probes.
One kind reads real photos instead: lfw_identification, the same search on LFW (LfwIdentificationSpec).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.identification_sets import ROLES
from pipeline.data.synthetic import seeds
from pipeline.data.synthetic.nuisance import YawMode
from pipeline.data.synthetic.protocols import (
    CODES,
    FoldResult,
    ImageJob,
    ProtocolPlan,
    assemble,
    jittered_age,
    job,
    protocol_identity,
)
from pipeline.data.synthetic.spec import IDENTITY_BLOCK, ProtocolSpec, SyntheticSpec, build_spec
from pipeline.data.synthetic.traits import Identity, Population



@dataclass(frozen=True)
class CrossPoseSpec:
    """CPLFW-like: families of look-alikes; pairs frontal (a) against profile-like (b); negatives within families."""

    block: int
    families_per_fold: int = 10
    family_size: int = 3  # a root identity and family_size - 1 look-alikes of it
    family_strength: float = 0.7  # members' latent offset from their root, relative to the spread of identities
    images_per_identity: int = 4
    profile_per_identity: int = 2
    folds: int = 10
    pairs_per_fold: int = 100


@dataclass(frozen=True)
class CrossAgeSpec:
    """CALFW-like: families of look-alikes photographed across the age range; every pair spans >= min_age_gap."""

    block: int
    families_per_fold: int = 10
    family_size: int = 3
    family_strength: float = 0.7  # members' latent offset from their root, relative to the spread of identities
    images_per_identity: int = 5
    min_age_gap: float = 20.0
    folds: int = 10
    pairs_per_fold: int = 100


@dataclass(frozen=True)
class GroupSpec:
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


@dataclass(frozen=True)
class IdentificationSpec:
    """MegaFace-like: `probe_identities` with one mate and `probes_per_identity` probes each, `distractors` identities
    of one image each; rank-1 is measured at each of `distractor_counts` (nested) and TAR at each of `fars`."""

    block: int
    probe_identities: int = 100
    probes_per_identity: int = 3
    distractors: int = 10_000
    distractor_counts: list[int] = field(default_factory=lambda: [10, 100, 1_000, 10_000])
    fars: list[float] = field(default_factory=lambda: [1e-6])


@dataclass(frozen=True)
class LfwIdentificationSpec:
    """The same 1:N search on real photos (data.lfw_root): DevTest persons with two or more photos give the mates
    (their first photo) and probes (the rest); the distractors are one photo of every LFW person that is neither a
    probe identity nor trained on (pipeline.data.lfw.identification_set)."""

    distractor_counts: list[int] = field(default_factory=lambda: [10, 100, 1_000, 4_000])
    fars: list[float] = field(default_factory=lambda: [1e-4])


SyntheticHeldoutSpec = CrossPoseSpec | CrossAgeSpec | GroupSpec | IdentificationSpec
HeldoutSpec = SyntheticHeldoutSpec | LfwIdentificationSpec
KINDS: dict[str, type] = {
    "cross_pose": CrossPoseSpec, "cross_age": CrossAgeSpec, "group": GroupSpec, "identification": IdentificationSpec,
    "lfw_identification": LfwIdentificationSpec,
}
FIRST_FREE_BLOCK = max(CODES.values()) + 1  # blocks below belong to the training-time protocols


@dataclass(frozen=True)
class IdentificationPlan:
    jobs: list[ImageJob]
    roles: pd.DataFrame  # one row per job: role (index into identification_sets.ROLES), identity


def parse(protocols: dict[str, Any], source: str = "protocols") -> dict[str, HeldoutSpec]:
    """The specs of params `protocols` (name -> {kind, block, ...}); errors name the protocol and field."""
    if not isinstance(protocols, dict):
        raise ValueError(f"{source} must be a mapping of name -> protocol, got {type(protocols).__name__}")
    specs: dict[str, HeldoutSpec] = {}
    blocks: dict[int, str] = {}
    for name, values in protocols.items():
        where = f"{source}.{name}"
        if not isinstance(values, dict):
            raise ValueError(f"{where} must be a mapping with a kind, got {type(values).__name__}")
        values = dict(values)
        kind = values.pop("kind", None)
        if kind not in KINDS:
            raise ValueError(f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        spec = build_spec(KINDS[kind], values, where)
        _validate(spec, where)
        if isinstance(spec, LfwIdentificationSpec):
            specs[name] = spec
            continue
        if spec.block in blocks:
            raise ValueError(f"{where}.block {spec.block} is also {source}.{blocks[spec.block]}'s: each protocol needs its own")
        blocks[spec.block] = name
        specs[name] = spec
    return specs


def is_synthetic(spec: HeldoutSpec) -> bool:
    """Whether the protocol is drawn by the synthetic generator (else it reads real photos)."""
    return not isinstance(spec, LfwIdentificationSpec)


def kind_of(spec: HeldoutSpec) -> str:
    return next(kind for kind, cls in KINDS.items() if isinstance(spec, cls))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _validate(spec: HeldoutSpec, where: str) -> None:
    if isinstance(spec, (IdentificationSpec, LfwIdentificationSpec)):
        counts = spec.distractor_counts
        _require(bool(counts) and counts == sorted(set(counts)) and all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts),
            f"{where}.distractor_counts must be increasing integers >= 1, got {counts}")
        _require(bool(spec.fars) and all(0.0 < far < 1.0 for far in spec.fars), f"{where}.fars must lie in (0, 1)")
    if isinstance(spec, LfwIdentificationSpec):
        return
    _require(isinstance(spec.block, int) and not isinstance(spec.block, bool) and FIRST_FREE_BLOCK <= spec.block < 9_000,
             f"{where}.block must be an integer in [{FIRST_FREE_BLOCK}, 9000) (1-{FIRST_FREE_BLOCK - 1} are the "
             f"training-time protocols'), got {spec.block!r}")
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name in ("block", "shift", "spread", "distractor_counts", "fars", "hard_negative_fraction", "min_age_gap",
                      "family_strength"):
            continue
        _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{where}.{f.name} must be an integer >= 1, got {value!r}")
    if isinstance(spec, (CrossPoseSpec, CrossAgeSpec)):
        _require(spec.family_size >= 2, f"{where}.family_size must be >= 2 (look-alike negatives), got {spec.family_size}")
        _require(isinstance(spec.family_strength, (int, float)) and not isinstance(spec.family_strength, bool)
                 and spec.family_strength > 0, f"{where}.family_strength must be > 0, got {spec.family_strength!r}")
        _require(spec.images_per_identity >= 2, f"{where}.images_per_identity must be >= 2")
    if isinstance(spec, CrossPoseSpec):
        _require(1 <= spec.profile_per_identity < spec.images_per_identity,
                 f"{where}.profile_per_identity must be in [1, images_per_identity), got {spec.profile_per_identity}")
    if isinstance(spec, CrossAgeSpec):
        _require(spec.min_age_gap >= 0, f"{where}.min_age_gap must be >= 0, got {spec.min_age_gap}")
    if isinstance(spec, GroupSpec):
        _require(spec.spread > 0, f"{where}.spread must be > 0, got {spec.spread}")
        _require(0.0 <= spec.hard_negative_fraction <= 1.0, f"{where}.hard_negative_fraction must be in [0, 1]")
        _require(spec.identities_per_fold >= 2 and spec.images_per_identity >= 2,
                 f"{where}: identities_per_fold and images_per_identity must be >= 2")
        try:
            Population.shifted(spec.shift, spec.spread)
        except ValueError as error:
            raise ValueError(f"{where}.shift: {error}") from None
    if isinstance(spec, IdentificationSpec):
        _require(spec.distractor_counts[-1] <= spec.distractors,
                 f"{where}.distractor_counts must not exceed distractors={spec.distractors}, got {spec.distractor_counts}")
    size = _identities(spec)
    _require(size < IDENTITY_BLOCK, f"{where}: {size} identities do not fit a block of {IDENTITY_BLOCK}")


def _identities(spec: HeldoutSpec) -> int:
    if isinstance(spec, (CrossPoseSpec, CrossAgeSpec)):
        return spec.folds * spec.families_per_fold * spec.family_size
    if isinstance(spec, GroupSpec):
        return spec.folds * spec.identities_per_fold
    return spec.probe_identities + spec.distractors


def plan(synthetic: SyntheticSpec, name: str, spec: SyntheticHeldoutSpec) -> ProtocolPlan | IdentificationPlan:
    """What to render for one held-out protocol, and its pairs or identification roles."""
    if isinstance(spec, CrossPoseSpec):
        return _cross_pose(synthetic, name, spec)
    if isinstance(spec, CrossAgeSpec):
        return _cross_age(synthetic, name, spec)
    if isinstance(spec, GroupSpec):
        return _group(synthetic, name, spec)
    return _identification(synthetic, name, spec)


def _family_identities(synthetic: SyntheticSpec, spec: CrossPoseSpec | CrossAgeSpec, fold: int) -> list[Identity]:
    """A fold's families: identity 0 of each is its root, the others look-alikes of it (look-alike share 1 within
    the family's own block, so every parent chain ends at the root)."""
    size = spec.families_per_fold * spec.family_size
    return [
        protocol_identity(synthetic, spec.block, fold * size + f * spec.family_size + m,
                          fold * size + f * spec.family_size, lookalike_fraction=1.0,
                          lookalike_strength=spec.family_strength)
        for f in range(spec.families_per_fold) for m in range(spec.family_size)
    ]


def _pair_spec(spec: HeldoutSpec, identities_per_fold: int, hard: float) -> ProtocolSpec:
    return ProtocolSpec(identities_per_fold=identities_per_fold, images_per_identity=spec.images_per_identity,
                        folds=spec.folds, pairs_per_fold=spec.pairs_per_fold, hard_negative_fraction=hard)


def _cross_pose(synthetic: SyntheticSpec, name: str, spec: CrossPoseSpec) -> ProtocolPlan:
    n_frontal = spec.images_per_identity - spec.profile_per_identity

    def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
        jobs, frontal, profile = [], [], []
        for person in ids:
            start = offset + len(jobs)
            frontal.append(list(range(start, start + n_frontal)))
            profile.append(list(range(start + n_frontal, start + spec.images_per_identity)))
            jobs += [job(synthetic, person, j, fold, YawMode.FRONTAL if j < n_frontal else YawMode.PROFILE,
                         jittered_age(synthetic, person, j), name) for j in range(spec.images_per_identity)]
        return jobs, frontal, profile, lambda a, b: True, True

    pairs = _pair_spec(spec, spec.families_per_fold * spec.family_size, hard=1.0)
    return assemble(synthetic, pairs, f"protocols.{name}", spec.block,
                    lambda fold: _family_identities(synthetic, spec, fold), fold_plan)


def _cross_age(synthetic: SyntheticSpec, name: str, spec: CrossAgeSpec) -> ProtocolPlan:
    lo, hi = synthetic.nuisance.age_min, synthetic.nuisance.age_max
    m = spec.images_per_identity

    def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
        jobs, rows = [], []
        for person in ids:
            rows.append(list(range(offset + len(jobs), offset + len(jobs) + m)))
            for j in range(m):  # stratified: image j falls in the j-th of m equal age bands
                u = seeds.stream(synthetic.seed, seeds.AGE, person.split, person.index, j).random()
                jobs.append(job(synthetic, person, j, fold, YawMode.GENERAL, lo + (hi - lo) * (j + u) / m, name))
        ages = {offset + k: item.nuisance.age for k, item in enumerate(jobs)}
        return jobs, rows, rows, lambda a, b: abs(ages[a] - ages[b]) >= spec.min_age_gap, False

    pairs = _pair_spec(spec, spec.families_per_fold * spec.family_size, hard=1.0)
    return assemble(synthetic, pairs, f"protocols.{name}", spec.block,
                    lambda fold: _family_identities(synthetic, spec, fold), fold_plan)


def _group(synthetic: SyntheticSpec, name: str, spec: GroupSpec) -> ProtocolPlan:
    population = Population.shifted(spec.shift, spec.spread)
    k = spec.identities_per_fold

    def identities(fold: int) -> list[Identity]:
        return [protocol_identity(synthetic, spec.block, fold * k + i, fold * k, population=population) for i in range(k)]

    def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
        jobs, rows = [], []
        for person in ids:
            rows.append(list(range(offset + len(jobs), offset + len(jobs) + spec.images_per_identity)))
            jobs += [job(synthetic, person, j, fold, YawMode.GENERAL, jittered_age(synthetic, person, j), name)
                     for j in range(spec.images_per_identity)]
        return jobs, rows, rows, lambda a, b: True, False

    return assemble(synthetic, _pair_spec(spec, k, spec.hard_negative_fraction), f"protocols.{name}", spec.block,
                    identities, fold_plan)


def _identification(synthetic: SyntheticSpec, name: str, spec: IdentificationSpec) -> IdentificationPlan:
    """Probe identities 0..P-1 (image 0 the mate, the rest probes), then distractors P..P+D-1 of one image each;
    look-alike parents come from the whole block, so some distractors resemble a probe identity."""
    jobs, roles, owners = [], [], []
    for index in range(spec.probe_identities + spec.distractors):
        person = protocol_identity(synthetic, spec.block, index, 0)
        images = 1 + spec.probes_per_identity if index < spec.probe_identities else 1
        for j in range(images):
            jobs.append(job(synthetic, person, j, -1, YawMode.GENERAL, jittered_age(synthetic, person, j), name))
            role = ("mate" if j == 0 else "probe") if index < spec.probe_identities else "distractor"
            roles.append(ROLES.index(role))
            owners.append(person.id)
    frame = pd.DataFrame({"role": np.asarray(roles, np.int8), "identity": np.asarray(owners, np.int64)})
    return IdentificationPlan(jobs=jobs, roles=frame)
