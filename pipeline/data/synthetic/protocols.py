"""Plans: which images to render (identity, nuisance, label) for training and for each pair protocol, and the pairs.

Protocol identities are held out: each protocol has its own identity streams and id block, disjoint from training
and from each other. Folds are consecutive blocks of `2 * pairs_per_fold` pairs (same first, then different) and
use disjoint identities, as in LFW View 2.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.data.synthetic import seeds
from pipeline.data.synthetic.nuisance import Nuisance, YawMode, sample
from pipeline.data.synthetic.spec import IDENTITY_BLOCK, ProtocolSpec, SyntheticSpec
from pipeline.data.synthetic.traits import Identity, Population, make_identity
from pipeline.core.registry import Registry


@dataclass(frozen=True)
class ImageJob:
    identity: Identity
    image: int  # index of the image within its identity
    label: int
    noisy: bool  # label != identity on purpose
    fold: int  # -1 for training
    nuisance: Nuisance
    split: str  # "train" or the protocol name


@dataclass(frozen=True)
class ProtocolPlan:
    jobs: list[ImageJob]
    pairs: pd.DataFrame  # a, b (rows of jobs), same, fold
    hard_negatives: int  # different pairs between look-alikes


ProtocolBuilder = Callable[[SyntheticSpec, ProtocolSpec, str], ProtocolPlan]
PROTOCOLS: Registry[ProtocolPlan] = Registry("synthetic protocol")
CODES: dict[str, int] = {}  # protocol -> seed stream / identity block (stable when others are added or dropped)


def _protocol(name: str, code: int) -> Callable[[ProtocolBuilder], ProtocolBuilder]:
    def decorate(builder: ProtocolBuilder) -> ProtocolBuilder:
        CODES[name] = code
        return PROTOCOLS.register(name)(builder)

    return decorate


def protocol_identity(spec: SyntheticSpec, split: int, index: int, block_start: int,
                      lookalike_fraction: float | None = None, lookalike_strength: float | None = None,
                      population: Population | None = None) -> Identity:
    """Identity `index` of split (protocol code) `split`; look-alike share and strength default to the spec's,
    the population to the training one."""
    fraction = spec.lookalike_fraction if lookalike_fraction is None else lookalike_fraction
    strength = spec.lookalike_strength if lookalike_strength is None else lookalike_strength
    return make_identity(
        spec.seed, split, index, block_start, split * IDENTITY_BLOCK,
        fraction, strength, spec.identity_strength, population,
    )


def _base_age(spec: SyntheticSpec, identity: Identity) -> float:
    return spec.nuisance.age_min + (spec.nuisance.age_max - spec.nuisance.age_min) * identity.traits.age_u


def jittered_age(spec: SyntheticSpec, identity: Identity, image: int) -> float:
    """The identity's age plus a per-image jitter, kept inside the age range."""
    jitter = seeds.stream(spec.seed, seeds.AGE, identity.split, identity.index, image).normal(0.0, spec.nuisance.age_jitter)
    return float(np.clip(_base_age(spec, identity) + jitter, spec.nuisance.age_min, spec.nuisance.age_max))


def job(spec: SyntheticSpec, identity: Identity, image: int, fold: int, mode: YawMode, age: float, split: str,
         label: int | None = None, noisy: bool = False) -> ImageJob:
    rng = seeds.stream(spec.seed, seeds.NUISANCE, identity.split, identity.index, image)
    return ImageJob(
        identity=identity, image=image, label=identity.id if label is None else label, noisy=noisy, fold=fold,
        nuisance=sample(rng, spec.nuisance, spec.canvas, mode, age), split=split,
    )


def plan_training(spec: SyntheticSpec) -> list[ImageJob]:
    """Training images; exactly round(label_noise * total) of them get another identity's label.

    An image's noise rank is its own uniform draw, so adding identities changes few existing labels.
    """
    n_ids, per = spec.train_identities, spec.train_images_per_identity
    identities = [protocol_identity(spec, seeds.TRAIN, i, 0) for i in range(n_ids)]
    draws = np.array([seeds.stream(spec.seed, seeds.LABEL, seeds.TRAIN, i, j).random(2)
                      for i in range(n_ids) for j in range(per)]).reshape(n_ids * per, 2)
    n_noisy = int(round(spec.label_noise * n_ids * per))
    noisy = np.zeros(n_ids * per, dtype=bool)
    noisy[np.argsort(draws[:, 0], kind="stable")[:n_noisy]] = True
    jobs = []
    for i, identity in enumerate(identities):
        for j in range(per):
            k = i * per + j
            label = (i + 1 + int(draws[k, 1] * (n_ids - 1))) % n_ids if noisy[k] else i
            jobs.append(job(spec, identity, j, -1, YawMode.TRAINING, jittered_age(spec, identity, j), "train",
                             label=label, noisy=bool(noisy[k])))
    return jobs


def _fold_identities(spec: SyntheticSpec, protocol: ProtocolSpec, name: str, fold: int) -> list[Identity]:
    k = protocol.identities_per_fold
    return [protocol_identity(spec, CODES[name], fold * k + i, fold * k) for i in range(k)]


def sample_pairs(
    rng: np.random.Generator, protocol: ProtocolSpec, where: str, ids: list[Identity],
    side_a: list[list[int]], side_b: list[list[int]], ok: Callable[[int, int], bool], ordered: bool,
) -> tuple[list[tuple[int, int, bool]], int]:
    """`pairs_per_fold` same and as many different pairs of job rows; side_a[i] / side_b[i] are identity i's
    candidate rows for each side of a pair. Different pairs between look-alikes make `hard_negative_fraction`."""
    n = protocol.pairs_per_fold
    same = [(a, b) for i in range(len(ids)) for a in side_a[i] for b in side_b[i]
            if a != b and (ordered or a < b) and ok(a, b)]
    if len(same) < n:
        raise ValueError(f"{where}: only {len(same)} same-pair candidates for pairs_per_fold={n}; "
                         "raise identities_per_fold or images_per_identity (or lower min_age_gap)")
    chosen = [same[k] for k in rng.choice(len(same), size=n, replace=False)]
    lookalike = [(i, j) for i in range(len(ids)) for j in range(len(ids)) if i != j and ids[i].root == ids[j].root]
    n_hard = int(round(protocol.hard_negative_fraction * n)) if lookalike else 0
    different: set[tuple[int, int]] = set()
    hard = 0
    for want_hard, quota in ((True, n_hard), (False, n)):
        attempts = 0
        while len(different) < quota and attempts < 200 * n:
            attempts += 1
            if want_hard:
                i, j = lookalike[int(rng.integers(len(lookalike)))]
            else:
                i, j = (int(v) for v in rng.choice(len(ids), size=2, replace=False))
                if ids[i].root == ids[j].root:
                    continue  # plain negatives stay plain; look-alikes come only from the hard quota
            a, b = side_a[i][int(rng.integers(len(side_a[i])))], side_b[j][int(rng.integers(len(side_b[j])))]
            key = (a, b) if ordered else (min(a, b), max(a, b))
            if key not in different and ok(a, b):
                different.add(key)
                hard += want_hard
    if len(different) < n:
        raise ValueError(f"{where}: could draw only {len(different)} different pairs for pairs_per_fold={n}; "
                         "raise identities_per_fold or images_per_identity (or lower min_age_gap)")
    negatives = sorted(different)  # a deterministic order for the set, then shuffled
    rng.shuffle(negatives)
    pairs = [(a, b, True) for a, b in chosen] + [(a, b, False) for a, b in negatives]
    if not ordered:
        pairs = [(b, a, s) if rng.random() < 0.5 else (a, b, s) for a, b, s in pairs]
    return pairs, hard


# a fold's (jobs, side-a rows per identity, side-b rows per identity, pair filter, ordered pairs?)
FoldResult = tuple[list[ImageJob], list[list[int]], list[list[int]], Callable[[int, int], bool], bool]
FoldPlan = Callable[[int, list[Identity], int], FoldResult]  # (fold, its identities, first job row) -> FoldResult


def assemble(spec: SyntheticSpec, protocol: ProtocolSpec, where: str, code: int,
             fold_identities: Callable[[int], list[Identity]], fold_plan: FoldPlan) -> ProtocolPlan:
    """A pair protocol fold by fold: its identities, their images (`fold_plan`) and pairs drawn on the stream of
    (seed, PAIRS, code, fold); `where` names the protocol in errors."""
    jobs: list[ImageJob] = []
    rows: list[tuple[int, int, bool, int]] = []
    hard_total = 0
    for fold in range(protocol.folds):
        ids = fold_identities(fold)
        fold_jobs, side_a, side_b, ok, ordered = fold_plan(fold, ids, len(jobs))
        jobs.extend(fold_jobs)
        rng = seeds.stream(spec.seed, seeds.PAIRS, code, fold)
        pairs, hard = sample_pairs(rng, protocol, f"{where} fold {fold}", ids, side_a, side_b, ok, ordered)
        rows.extend((a, b, s, fold) for a, b, s in pairs)
        hard_total += hard
    frame = pd.DataFrame(rows, columns=["a", "b", "same", "fold"])
    frame = frame.astype({"a": "int64", "b": "int64", "same": bool, "fold": "int64"})
    return ProtocolPlan(jobs=jobs, pairs=frame, hard_negatives=hard_total)


def _assemble_registered(spec: SyntheticSpec, protocol: ProtocolSpec, name: str, fold_plan: FoldPlan) -> ProtocolPlan:
    return assemble(spec, protocol, f"protocols.{name}", CODES[name],
                    lambda fold: _fold_identities(spec, protocol, name, fold), fold_plan)


@_protocol("synth-lfw", code=1)
def plan_lfw(spec: SyntheticSpec, protocol: ProtocolSpec, name: str) -> ProtocolPlan:
    """General nuisance, like LFW View 2."""

    def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
        jobs, rows = [], []
        for identity in ids:
            rows.append(list(range(offset + len(jobs), offset + len(jobs) + protocol.images_per_identity)))
            jobs += [job(spec, identity, j, fold, YawMode.GENERAL, jittered_age(spec, identity, j), name)
                     for j in range(protocol.images_per_identity)]
        return jobs, rows, rows, lambda a, b: True, False

    return _assemble_registered(spec, protocol, name, fold_plan)


@_protocol("synth-cfp-fp", code=2)
def plan_cfp_fp(spec: SyntheticSpec, protocol: ProtocolSpec, name: str) -> ProtocolPlan:
    """Every pair is a frontal image (a) against a profile-like one (b), like CFP-FP."""
    if protocol.profile_per_identity < 1:
        raise ValueError(f"protocols.{name}.profile_per_identity must be >= 1 for a frontal-profile protocol")

    def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
        jobs, frontal, profile = [], [], []
        n_frontal = protocol.images_per_identity - protocol.profile_per_identity
        for identity in ids:
            start = offset + len(jobs)
            frontal.append(list(range(start, start + n_frontal)))
            profile.append(list(range(start + n_frontal, start + protocol.images_per_identity)))
            jobs += [job(spec, identity, j, fold, YawMode.FRONTAL if j < n_frontal else YawMode.PROFILE,
                          jittered_age(spec, identity, j), name) for j in range(protocol.images_per_identity)]
        return jobs, frontal, profile, lambda a, b: True, True

    return _assemble_registered(spec, protocol, name, fold_plan)


@_protocol("synth-agedb", code=3)
def plan_agedb(spec: SyntheticSpec, protocol: ProtocolSpec, name: str) -> ProtocolPlan:
    """Each identity photographed across the age range; every pair, same or different, spans >= min_age_gap years."""
    lo, hi = spec.nuisance.age_min, spec.nuisance.age_max
    m = protocol.images_per_identity

    def fold_plan(fold: int, ids: list[Identity], offset: int) -> FoldResult:
        jobs = []
        rows = []
        for identity in ids:
            rows.append(list(range(offset + len(jobs), offset + len(jobs) + m)))
            for j in range(m):  # stratified: image j falls in the j-th of m equal age bands
                u = seeds.stream(spec.seed, seeds.AGE, identity.split, identity.index, j).random()
                jobs.append(job(spec, identity, j, fold, YawMode.GENERAL, lo + (hi - lo) * (j + u) / m, name))
        ages = {offset + k: job.nuisance.age for k, job in enumerate(jobs)}
        return jobs, rows, rows, lambda a, b: abs(ages[a] - ages[b]) >= protocol.min_age_gap, False

    return _assemble_registered(spec, protocol, name, fold_plan)
