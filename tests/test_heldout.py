"""The held-out protocols (cross-pose, cross-age, per-group, identification): every registered kind parsed, checked
and built on a tiny block, what each pair or image must be, the identities they draw, the set on disk, and a model's
identification checked against a brute-force search."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core import config
from pipeline.data import heldout_protocols
from pipeline.data.heldout.base import KINDS
from pipeline.data.heldout.cross_age import CrossAgeSpec
from pipeline.data.heldout.cross_pose import CrossPoseSpec
from pipeline.data.heldout.group import GroupSpec
from pipeline.data.heldout.identification import IdentificationSpec
from pipeline.data.heldout.kinds import parse
from pipeline.data.heldout.scoring import Scoring
from pipeline.data.identification_sets import ROLES, read_identification_set, write_identification_set
from pipeline.data.loader import load_benchmark_arrays
from pipeline.data.records import FaceRecord
from pipeline.data.images import encode_png
from pipeline.data.synthetic import SyntheticSpec
from pipeline.data.synthetic.protocols import PROTOCOLS, plan_training
from pipeline.data.synthetic.spec import IDENTITY_BLOCK
from pipeline.data.synthetic.traits import Population, make_identity
from pipeline.evaluate.identify import identify
from tests.test_lfw import DEVTEST, DEVTRAIN, photo_path, write_photo

SPEC = SyntheticSpec(train_identities=20)

# A tiny params block of every registered kind (a synthetic one on a block of its own), for the tests that go over
# the registry; a new kind needs one here.
TINY = {
    "cross_pose": {"block": 4, "families_per_fold": 2, "family_size": 2, "images_per_identity": 2,
                   "profile_per_identity": 1, "folds": 2, "pairs_per_fold": 2},
    "cross_age": {"block": 5, "families_per_fold": 2, "family_size": 2, "images_per_identity": 3, "folds": 2,
                  "pairs_per_fold": 2},
    "group": {"block": 6, "identities_per_fold": 3, "images_per_identity": 2, "folds": 2, "pairs_per_fold": 2},
    "identification": {"block": 7, "probe_identities": 3, "probes_per_identity": 2, "distractors": 5,
                       "distractor_counts": [2, 5], "fars": [0.1]},
    "lfw_identification": {"distractor_counts": [1, 2], "fars": [0.1]},
}


def _tiny(kind: str) -> dict:
    assert kind in TINY, f"held-out kind {kind!r} is registered but tests/test_heldout.py has no TINY block for it"
    return {"kind": kind, **TINY[kind]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[dict, Path]:
    """Every registered kind built by stage protocols' builder from its tiny block, on the smoke profile's synthetic
    source and a fake LFW tree."""
    tmp = tmp_path_factory.mktemp("heldout")
    rows = []
    for split, persons in (("devtrain", DEVTRAIN), ("devtest", DEVTEST)):
        for person, count in persons.items():
            for number in range(1, count + 1):
                rows.append((photo_path(person, number), person, split))
                write_photo(tmp / "lfw" / photo_path(person, number), len(rows))
    pd.DataFrame(rows, columns=["image", "identity", "view1_split"]).to_csv(tmp / "lfw" / "labels.csv", index=False)
    cfg = config.load(profile="smoke")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"lfw_root": str(tmp / "lfw")}),
                                 "protocols": {kind: _tiny(kind) for kind in KINDS.names()}})
    return heldout_protocols.build(cfg, tmp / "protocols"), tmp / "protocols"


@pytest.mark.parametrize("kind", KINDS.names())
def test_every_kind_parses_its_tiny_block_and_refuses_an_unknown_parameter(kind):
    spec = parse({"p": _tiny(kind)})["p"]
    assert type(spec) is KINDS.get(kind) and spec.kind == kind
    with pytest.raises(ValueError, match="protocols.p: unknown parameter"):
        parse({"p": {**_tiny(kind), "sideways": 1}})


@pytest.mark.parametrize("kind", KINDS.names())
def test_every_count_of_every_kind_is_refused_below_one_by_name(kind):
    counts = [f.name for f in dataclasses.fields(KINDS.get(kind)) if f.type in (int, "int") and f.name != "block"]
    for name in counts:
        with pytest.raises(ValueError, match=f"protocols.p.{name} must be an integer >= 1, got 0"):
            parse({"p": {**_tiny(kind), name: 0}})


@pytest.mark.parametrize("kind", KINDS.names())
def test_every_kind_builds_the_layout_its_scoring_reads(built, kind):
    summary, out = built
    spec = parse({kind: _tiny(kind)})[kind]
    assert summary["protocols"][kind]["kind"] == kind and not summary["skipped"]
    assert Scoring.of(out / kind) is spec.scoring
    if spec.scoring is Scoring.VERIFICATION:
        images, pairs = load_benchmark_arrays(out / kind)
        assert len(images) == summary["protocols"][kind]["images"]
        assert pairs["fold"].nunique() == spec.pair_folds() and len(pairs) == summary["protocols"][kind]["pairs"]
    else:
        data = read_identification_set(out / kind)
        assert spec.pair_folds() is None and data.distractor_counts == spec.distractor_counts
        assert len(data.images) == summary["protocols"][kind]["images"]


@pytest.mark.parametrize("kind", KINDS.names())
def test_a_kind_the_data_source_cannot_give_is_skipped_with_the_reason(kind):
    cfg = config.load(profile="smoke")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": "folders", "lfw_root": None})})
    reason = parse({"p": _tiny(kind)})["p"].unavailable(cfg)
    assert reason and ("data.source is 'folders'" in reason or "data.lfw_root is not set" in reason)


def _yaw(plan_, row: int) -> float:
    return abs(plan_.jobs[row].nuisance.yaw_deg)


def test_cross_pose_pairs_are_frontal_against_profile_and_negatives_are_lookalikes():
    spec = CrossPoseSpec(block=4, families_per_fold=4, family_size=3, images_per_identity=4, profile_per_identity=2,
                         folds=3, pairs_per_fold=12)
    p = spec.plan(SPEC, "x")
    assert len(p.pairs) == 3 * 24 and p.hard_negatives == 3 * 12
    nuisance = SPEC.nuisance
    for a, b, same in p.pairs[["a", "b", "same"]].itertuples(index=False):
        assert _yaw(p, a) <= nuisance.frontal_max_deg and _yaw(p, b) >= nuisance.profile_min_deg
        ia, ib = p.jobs[a].identity, p.jobs[b].identity
        assert (ia.id == ib.id) == same
        if not same:
            assert ia.root == ib.root  # two members of one family


def test_cross_age_pairs_span_the_gap_and_negatives_are_lookalikes():
    spec = CrossAgeSpec(block=5, families_per_fold=4, family_size=3, images_per_identity=5, min_age_gap=20.0, folds=2,
                        pairs_per_fold=12)
    p = spec.plan(SPEC, "x")
    for a, b, same in p.pairs[["a", "b", "same"]].itertuples(index=False):
        assert abs(p.jobs[a].nuisance.age - p.jobs[b].nuisance.age) >= 20.0
        ia, ib = p.jobs[a].identity, p.jobs[b].identity
        assert (ia.id == ib.id) == same
        if not same:
            assert ia.root == ib.root


def test_family_strength_sets_how_alike_a_family_is():
    def spread(strength: float) -> float:
        p = CrossPoseSpec(block=4, families_per_fold=30, family_size=2, folds=1, pairs_per_fold=10,
                          family_strength=strength).plan(SPEC, "x")
        members = {j.identity.id: j.identity for j in p.jobs}
        gaps = [abs(a.traits.values["skin_tone"] - b.traits.values["skin_tone"])
                for a in members.values() for b in members.values() if a.root == b.root and a.id < b.id]
        return float(np.mean(gaps))

    assert spread(0.2) < spread(0.7) < spread(2.0)


def test_families_are_a_root_and_its_lookalikes():
    p = CrossPoseSpec(block=4, families_per_fold=3, family_size=4, folds=1, pairs_per_fold=6).plan(SPEC, "x")
    roots = pd.Series({j.identity.id: j.identity.root for j in p.jobs})
    assert roots.value_counts().tolist() == [4, 4, 4]  # three families of four
    assert all(root in roots.index and roots[root] == root for root in roots)  # each root is itself a member


def test_a_shifted_population_moves_its_traits_and_the_unshifted_one_is_the_training_population():
    shift = Population.shifted({"skin_tone": -1.5, "hair_tone": 1.5}, 1.0)
    base = [make_identity(0, 6, i, i, 0, 0.0, 0.3, 1.0) for i in range(300)]
    moved = [make_identity(0, 6, i, i, 0, 0.0, 0.3, 1.0, shift) for i in range(300)]
    same = [make_identity(0, 6, i, i, 0, 0.0, 0.3, 1.0, Population.shifted({}, 1.0)) for i in range(5)]
    assert all(a.traits.values == b.traits.values for a, b in zip(base, same))
    tone = lambda ids, t: np.mean([i.traits.values[t] for i in ids])  # noqa: E731
    assert tone(moved, "skin_tone") < tone(base, "skin_tone") - 0.3  # Phi(-1.5) ~ 0.07 of the range against ~0.5
    assert tone(moved, "hair_tone") > tone(base, "hair_tone") + 0.3
    assert abs(tone(moved, "eye_sep") - tone(base, "eye_sep")) < 0.5  # an unshifted trait stays put
    with pytest.raises(ValueError, match="unknown trait"):
        Population.shifted({"tail": 1.0}, 1.0)


def test_group_protocol_draws_from_its_population():
    a = GroupSpec(block=6, identities_per_fold=20, images_per_identity=2, folds=2, pairs_per_fold=10).plan(SPEC, "a")
    b = GroupSpec(block=7, shift={"skin_tone": -2.0}, identities_per_fold=20, images_per_identity=2, folds=2,
                  pairs_per_fold=10).plan(SPEC, "b")
    tone = lambda p: np.mean([j.identity.traits.values["skin_tone"] for j in p.jobs])  # noqa: E731
    assert tone(b) < tone(a) - 0.3


def test_identification_roles_and_identities():
    spec = IdentificationSpec(block=10, probe_identities=5, probes_per_identity=3, distractors=30,
                              distractor_counts=[10, 30])
    p = spec.plan(SPEC, "m")
    roles = p.roles
    assert len(roles) == len(p.jobs) == 5 * 4 + 30
    mates, probes, distractors = (roles[roles["role"] == ROLES.index(r)] for r in ROLES)
    assert len(mates) == 5 and mates["identity"].is_unique
    assert probes["identity"].value_counts().tolist() == [3] * 5 and set(probes["identity"]) == set(mates["identity"])
    assert len(distractors) == 30 and distractors["identity"].is_unique
    assert not set(distractors["identity"]) & set(mates["identity"])
    assert all(j.identity.id // IDENTITY_BLOCK == 10 for j in p.jobs)


def test_held_out_identities_are_disjoint_from_training_the_pair_protocols_and_each_other():
    specs = parse({kind: _tiny(kind) for kind in KINDS.names()})
    seen = {"train": {j.identity.id for j in plan_training(SPEC)}}
    for name, protocol in SPEC.protocols.items():
        seen[name] = {j.identity.id for j in PROTOCOLS.get(name)(SPEC, protocol, name).jobs}
    for name, spec in specs.items():
        if spec.identity_block() is not None:  # drawn by the generator
            seen[name] = {j.identity.id for j in spec.plan(SPEC, name).jobs}
    names = list(seen)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not seen[a] & seen[b], (a, b)


@pytest.mark.parametrize("values, named", [
    ({"kind": "identification", "block": 10, "distractors": 50, "distractor_counts": [10, 100]}, "distractor_counts"),
    ({"kind": "identification", "block": 10, "distractor_counts": [100, 10]}, "distractor_counts"),
    ({"kind": "group", "block": 6, "spread": 0.0}, "spread"),
    ({"kind": "group", "block": 6, "shift": {"fins": 1.0}}, "shift"),
    ({"kind": "cross_pose", "block": 4, "profile_per_identity": 4}, "profile_per_identity"),
    ({"kind": "cross_age", "block": 4, "folds": True}, "folds"),
    ({"kind": "cross_age", "block": 4, "family_strength": 0}, "family_strength"),
])
def test_bad_protocol_values_are_named(values, named):
    with pytest.raises(ValueError, match=f"protocols.p.{named}"):
        parse({"p": values})


def test_too_small_a_protocol_is_refused_with_its_name():
    spec = CrossPoseSpec(block=4, families_per_fold=2, family_size=2, images_per_identity=2, profile_per_identity=1,
                         folds=1, pairs_per_fold=50)
    with pytest.raises(ValueError, match="protocols.tiny fold 0"):
        spec.plan(SPEC, "tiny")


def _record(pixels: np.ndarray, identity: int) -> FaceRecord:
    return FaceRecord(image=encode_png(pixels), label=identity, identity=identity,
                      landmarks=np.full((5, 2), np.nan, np.float32), source=f"s/{identity}")


class _MeanColour(torch.nn.Module):
    """An 'embedding' of each image's mean RGB plus a constant, so the search is easy to check by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), torch.ones(len(x), 1)], dim=1)


def test_identify_a_written_set_matches_a_brute_force_search(tmp_path):
    rng = np.random.default_rng(0)
    colours = rng.uniform(0, 255, size=(30, 3))
    rows, records = [], []
    for identity in range(30):  # 0-5 probe identities (a mate and 2 probes), 6-29 distractors
        for k in range(3 if identity < 6 else 1):
            jitter = rng.normal(0, 25, 3) if k else 0.0
            pixels = np.clip(colours[identity] + jitter, 0, 255).astype(np.uint8)[None, None].repeat(8, 0).repeat(8, 1)
            records.append(_record(pixels, identity))
            rows.append((0 if k == 0 and identity < 6 else 1 if identity < 6 else 2, identity))
    roles = pd.DataFrame(rows, columns=["role", "identity"]).astype({"role": "int8", "identity": "int64"})
    write_identification_set(tmp_path / "set", records, roles, [5, 24], [0.01])
    data = read_identification_set(tmp_path / "set")
    found = identify(_MeanColour(), data, flip=False, device=torch.device("cpu"), batch_size=7, channels_last=False)

    x = data.images.astype(np.float64).mean(axis=(1, 2)) / 255.0 * 2 - 1  # the model's input normalisation
    emb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = roles["identity"].to_numpy()
    mate_rows, probe_rows, distractor_rows = (np.flatnonzero(roles["role"] == c) for c in range(3))
    order = np.random.default_rng(0).permutation(len(distractor_rows))
    for count, point in zip([5, 24], found.result.curve):
        competitors_all = list(mate_rows) + list(distractor_rows[order[:count]])
        expected = []
        for p in probe_rows:
            mate = mate_rows[labels[mate_rows] == labels[p]][0]
            genuine = emb[p] @ emb[mate]
            ahead = sum(1 for c in competitors_all if c != mate and emb[p] @ emb[c] >= genuine)
            expected.append(ahead + 1)
        assert point.probe_ranks.tolist() == expected
        assert point.rank1 == pytest.approx(np.mean(np.array(expected) == 1))
    assert found.hits.tolist() == (found.result.curve[-1].probe_ranks == 1).tolist()
    metrics = found.to_metrics()
    assert set(metrics) >= {"rank1", "rank1_at_5", "rank1_at_24", "tar_at_far_0.01"}


def test_an_identification_set_without_a_mate_for_a_probe_is_refused(tmp_path):
    pixels = np.zeros((8, 8, 3), np.uint8)
    roles = pd.DataFrame({"role": np.array([1, 2], np.int8), "identity": np.array([0, 1], np.int64)})
    with pytest.raises(ValueError, match="without a mate"):
        write_identification_set(tmp_path / "bad", [_record(pixels, 0), _record(pixels, 1)], roles, [1], [0.1])
    assert not (tmp_path / "bad").exists()


def test_a_new_kind_is_one_registered_class_and_its_params_block(tmp_path, monkeypatch):
    """What the README promises: a kind registered by its decorator alone is parsed, checked by its own rules and
    built by stage protocols' builder, and stage evaluate reads it by the scoring it names."""
    from pipeline.data.heldout.base import HeldoutSpec, register, require
    from pipeline.data.records import write_benchmark

    monkeypatch.setattr(KINDS, "_entries", dict(KINDS._entries))  # the toy kind leaves the registry as it was

    @register("toy_pairs")
    @dataclasses.dataclass(frozen=True)
    class ToyPairs(HeldoutSpec):
        scoring = Scoring.VERIFICATION
        pairs_per_fold: int = 2
        folds: int = 2

        def check(self, where: str) -> None:
            require(self.pairs_per_fold % 2 == 0, f"{where}.pairs_per_fold must be even")

        def identity_block(self) -> None:
            return None

        def pair_folds(self) -> int:
            return self.folds

        def unavailable(self, cfg) -> None:
            return None

        def build(self, cfg, name: str, out: Path) -> dict:
            n = self.folds * self.pairs_per_fold
            records = [_record(np.full((8, 8, 3), 10 * i, np.uint8), i) for i in range(2 * n)]
            pairs = pd.DataFrame({"a": range(0, 2 * n, 2), "b": range(1, 2 * n, 2),
                                  "same": [i % 2 == 0 for i in range(n)],
                                  "fold": [i // self.pairs_per_fold for i in range(n)]})
            write_benchmark(out, records, pairs)
            return {"pairs": n}

    with pytest.raises(ValueError, match=r"protocols\.toy\.pairs_per_fold must be even"):
        parse({"toy": {"kind": "toy_pairs", "pairs_per_fold": 3}})
    with pytest.raises(ValueError, match=r"protocols\.toy"):
        parse({"toy": {"kind": "toy_pairs", "shots": 3}})
    cfg = config.load(profile="smoke")
    cfg = cfg.model_copy(update={"protocols": {"toy": {"kind": "toy_pairs", "pairs_per_fold": 4, "folds": 3}}})
    summary = heldout_protocols.build(cfg, tmp_path / "protocols")
    assert summary["protocols"] == {"toy": {"pairs": 12}} and not summary["skipped"]
    assert Scoring.of(tmp_path / "protocols" / "toy") is Scoring.VERIFICATION
    images, pairs = load_benchmark_arrays(tmp_path / "protocols" / "toy")
    assert len(images) == 24 and pairs["fold"].nunique() == 3
