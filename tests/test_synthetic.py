"""The synthetic benchmark: determinism, landmarks under every transform, held-out protocols, label noise, folds."""
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.align import align
from pipeline.data.images import decode_image
from pipeline.data.records import iter_records, read_benchmark, read_metadata
from pipeline.data.synthetic import SyntheticSpec, generate, make_identity, neutral, plan_training, render, render_record
from pipeline.data.synthetic.face import colours
from pipeline.data.synthetic.geometry import Head, facing, section, silhouette, surface_z, yaw_x
from pipeline.data.synthetic.traits import TRAIT_RANGES

SMALL = {
    "seed": 3, "canvas": 64, "train_identities": 8, "train_images_per_identity": 5, "label_noise": 0.2,
    "lookalike_fraction": 0.4,
    "protocols": {
        "synth-lfw": {"folds": 2, "identities_per_fold": 8, "images_per_identity": 4, "pairs_per_fold": 12,
                      "hard_negative_fraction": 0.25},
        "synth-cfp-fp": {"folds": 2, "identities_per_fold": 8, "images_per_identity": 5, "profile_per_identity": 2,
                         "pairs_per_fold": 12},
        "synth-agedb": {"folds": 2, "identities_per_fold": 8, "images_per_identity": 6, "min_age_gap": 15.0,
                        "pairs_per_fold": 12},
    },
}
PROTOCOLS = ("synth-lfw", "synth-cfp-fp", "synth-agedb")


def small_spec(**overrides) -> SyntheticSpec:
    return SyntheticSpec.from_dict({**SMALL, **overrides})


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    summary = generate(small_spec(), out)
    return out, summary


def identity(index: int = 0, seed: int = 11):
    return make_identity(seed, 0, index, 0, 0, 0.0, 0.3, 1.0)


# ---------------------------------------------------------------- determinism and seeding


def test_same_spec_gives_identical_bytes(generated, tmp_path):
    out, summary = generated
    again = generate(small_spec(), tmp_path / "again")
    assert tree_bytes(out) == tree_bytes(tmp_path / "again")
    assert summary == again
    assert len(tree_bytes(out)) == 1 + 2 * len(PROTOCOLS)  # one train shard, images + pairs per protocol


def test_another_seed_gives_other_images(generated, tmp_path):
    out, _ = generated
    generate(small_spec(seed=4), tmp_path / "other")
    first = [r.image for r in iter_records(out / "train")]
    other = [r.image for r in iter_records(tmp_path / "other" / "train")]
    assert len(first) == len(other) and sum(a == b for a, b in zip(first, other)) == 0


def test_worker_count_does_not_change_the_output(generated, tmp_path):
    out, _ = generated
    generate(small_spec(), tmp_path / "parallel", workers=2)
    assert tree_bytes(out) == tree_bytes(tmp_path / "parallel")


def test_more_identities_leave_existing_images_alone():
    base, bigger = plan_training(small_spec()), plan_training(small_spec(train_identities=11))
    per = SMALL["train_images_per_identity"]
    for job in base[::3]:
        twin = bigger[job.identity.index * per + job.image]
        assert twin.nuisance == job.nuisance
        assert render_record(64, twin).image == render_record(64, job).image


# ---------------------------------------------------------------- the head model


@pytest.mark.parametrize("yaw_deg", [-80.0, -30.0, 0.0, 45.0, 89.0])
def test_outline_and_visibility_match_a_brute_force_turn(yaw_deg):
    """Turn dense points of each row's ellipse by hand: the extremes are the silhouette, and a front point faces the
    camera exactly where its turned x still increases along the row (past that it folds back out of sight)."""
    head = Head.from_traits(identity(9).traits)
    yaw = math.radians(yaw_deg)
    rows = np.array([-40.0, -10.0, 0.0, 15.0, 30.0, 45.0])
    w, d, z0 = section(head, rows)
    t = np.linspace(0, 2 * np.pi, 20001)
    turned = (w[:, None] * np.cos(t)) * math.cos(yaw) + (z0[:, None] + d[:, None] * np.sin(t)) * math.sin(yaw)
    centre, extent = silhouette(head, rows, yaw)
    assert np.allclose(turned.max(1), centre + extent, atol=1e-3)
    assert np.allclose(turned.min(1), centre - extent, atol=1e-3)
    for row, width in zip(rows, w):
        x = np.linspace(-0.999 * width, 0.999 * width, 4001)
        xp = yaw_x(x, surface_z(head, x, np.full_like(x, row)), yaw)
        increasing = np.gradient(xp, x) > 0
        seen = facing(head, x, np.full_like(x, row), yaw)
        assert (seen == increasing)[5:-5].mean() > 0.998  # all but the grid points at the fold itself


# ---------------------------------------------------------------- landmarks follow the geometry


def rotation(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


@pytest.mark.parametrize("yaw", [0.0, 25.0, -60.0])
def test_landmarks_follow_roll_scale_and_shift_exactly(yaw):
    traits = identity(1).traits
    before = neutral(128, yaw_deg=yaw)
    after = dataclasses.replace(before, roll_deg=17.0, scale=before.scale * 1.3, cx=before.cx - 9.0, cy=before.cy + 6.5)
    _, a = render(traits, before, 128)
    _, b = render(traits, after, 128)
    centre_a, centre_b = np.array([before.cx, before.cy]), np.array([after.cx, after.cy])
    expected = centre_b + 1.3 * (a - centre_a) @ rotation(17.0).T  # the canvas similarity, applied by hand
    assert np.abs(b - expected).max() < 1e-3


def test_image_content_moves_with_the_landmarks():
    """Aligning with the landmarks undoes roll/scale/shift: the two crops agree, unlike another person's crop."""
    traits = identity(2).traits
    plain = neutral(128)
    moved = dataclasses.replace(plain, roll_deg=-20.0, scale=plain.scale * 0.85, cx=plain.cx + 8.0, cy=plain.cy - 5.0)
    crops = [align(*render(t, n, 128), 56)[0].astype(float) for t, n in
             ((traits, plain), (traits, moved), (identity(3).traits, plain))]
    inner = (slice(8, 48), slice(8, 48))
    same = np.abs(crops[0][inner] - crops[1][inner]).mean()
    other = np.abs(crops[0][inner] - crops[2][inner]).mean()
    assert same < 6.0 and other > 3 * same


def test_landmarks_turn_rigidly_with_yaw():
    """With roll 0, a yaw maps x to x cos + z sin and keeps y: two yaws fix (x, z) per landmark, a third must fit."""
    traits = identity(4).traits
    base = neutral(128)
    points = {}
    for yaw in (-40.0, 10.0, 55.0, 70.0):
        _, lm = render(traits, dataclasses.replace(base, yaw_deg=yaw), 128)
        points[yaw] = (lm - [base.cx, base.cy]) / base.scale
    for yaw in (10.0, 55.0, 70.0):
        assert np.allclose(points[yaw][:, 1], points[-40.0][:, 1], atol=1e-4)
    t1, t2 = math.radians(-40.0), math.radians(10.0)
    solve = np.linalg.inv(np.array([[math.cos(t1), math.sin(t1)], [math.cos(t2), math.sin(t2)]]))
    x, z = solve @ np.stack([points[-40.0][:, 0], points[10.0][:, 0]])
    for yaw in (55.0, 70.0):
        t = math.radians(yaw)
        assert np.allclose(x * math.cos(t) + z * math.sin(t), points[yaw][:, 0], atol=1e-4)
    assert z[2] > z[[0, 1, 3, 4]].max() + 5  # the nose tip stands out from the face


def eye_distance(pixel: np.ndarray, iris: np.ndarray) -> float:
    """Distance from a pixel colour to the iris-pupil segment (the landmark pixel may blend the two)."""
    pupil = np.array([14.0, 12.0, 12.0])
    d = iris - pupil
    t = np.clip(np.dot(pixel - pupil, d) / max(np.dot(d, d), 1e-9), 0, 1)
    return float(np.linalg.norm(pixel - (pupil + t * d)))


@pytest.mark.parametrize("index", range(8))
def test_eye_landmarks_sit_on_the_irises(index):
    """The landmark pixel is iris-coloured, and the iris-coloured blob around it is centred on it (in x; the lids
    cut the iris unevenly in y)."""
    traits = identity(index).traits
    tones = colours(traits, 30.0)
    radius = int(math.ceil(traits.iris * traits.eye_w * 1.2))
    for yaw, eyes in ((0.0, (0, 1)), (35.0, (0,)), (-35.0, (1,))):  # turned: the near eye only
        image, lm = render(traits, neutral(160, age=30.0, yaw_deg=yaw, scale=1.2), 160)
        for eye in eyes:
            x, y = np.round(lm[eye]).astype(int)
            pixel = image[y, x].astype(float)
            assert eye_distance(pixel, tones.iris) < 25, (yaw, eye, pixel, tones.iris)
            assert np.linalg.norm(pixel - tones.skin) > 40
            ys, xs = np.mgrid[y - radius:y + radius + 1, x - radius:x + radius + 1]
            window = image[y - radius:y + radius + 1, x - radius:x + radius + 1].reshape(-1, 3).astype(float)
            iris = np.array([eye_distance(p, tones.iris) < 25 for p in window])
            assert abs(xs.ravel()[iris].mean() - lm[eye, 0]) < 0.6
            assert abs(ys.ravel()[iris].mean() - lm[eye, 1]) < 1.5


def test_a_turned_away_eye_is_hidden():
    traits = identity(5).traits
    image, lm = render(traits, neutral(160, age=30.0, yaw_deg=75.0, scale=1.2), 160)
    x, y = np.round(lm[1]).astype(int)  # the right eye turns away for a positive yaw
    iris = colours(traits, 30.0).iris
    window = image[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).astype(float)
    assert min(eye_distance(p, iris) for p in window) > 20


@pytest.mark.parametrize("smile,mouth_open", [(0.0, 0.0), (0.6, 0.0), (0.3, 0.8)])
def test_mouth_landmarks_follow_the_expression(smile, mouth_open):
    traits = identity(6).traits
    plain = neutral(160, age=30.0, scale=1.2)
    image, lm = render(traits, dataclasses.replace(plain, smile=smile, mouth_open=mouth_open), 160)
    _, rest = render(traits, plain, 160)
    assert np.allclose(lm[:3], rest[:3])  # eyes and nose stay put
    assert (lm[3:, 1] < rest[3:, 1] - 1.5 * smile).all() or smile == 0  # a smile lifts the corners
    skin = colours(traits, 30.0).skin
    for corner, other in ((3, 4), (4, 3)):
        x, y = np.round(lm[corner] + 0.25 * (lm[other] - lm[corner])).astype(int)
        assert np.linalg.norm(image[y, x].astype(float) - skin) > 15  # on the lips (or in the open mouth)


def test_ageing_keeps_the_geometry_close():
    traits = identity(7).traits
    _, young = render(traits, neutral(128, age=20.0), 128)
    _, old = render(traits, neutral(128, age=75.0), 128)
    assert 0 < np.abs(young - old).max() < 3.0


def test_lookalikes_are_near_neighbours_in_trait_space():
    spec = small_spec(lookalike_fraction=0.9, train_identities=60)
    people = {j.identity.index: j.identity for j in plan_training(spec)}
    span = np.array([hi - lo for lo, hi in TRAIT_RANGES.values()])

    def gap(a, b):
        return np.abs((np.array(list(a.traits.values.values())) - np.array(list(b.traits.values.values()))) / span).mean()

    lookalike = [gap(p, people[p.root]) for p in people.values() if p.root != p.id]
    unrelated = [gap(p, q) for p in people.values() for q in people.values() if p.root != q.root]
    assert len(lookalike) > 20 and np.mean(lookalike) < 0.5 * np.mean(unrelated)


# ---------------------------------------------------------------- splits, label noise, folds


def benchmark(out: Path, name: str):
    images, pairs = read_benchmark(out / "benchmarks" / name)
    return images, pairs


def test_no_identity_in_training_and_protocols(generated):
    out, _ = generated
    seen = {"train": set(read_metadata(out / "train")["identity"])}
    for name in PROTOCOLS:
        seen[name] = {r.identity for r in benchmark(out, name)[0]}
    names = list(seen)
    for i, a in enumerate(names):
        assert seen[a]
        for b in names[i + 1:]:
            assert not seen[a] & seen[b], (a, b)


def test_label_noise_ground_truth(generated):
    out, summary = generated
    meta = read_metadata(out / "train")
    total = SMALL["train_identities"] * SMALL["train_images_per_identity"]
    assert len(meta) == total
    assert meta["noisy"].sum() == round(SMALL["label_noise"] * total) == summary["train"]["noisy_images"]
    noisy = meta[meta["noisy"]]
    assert (noisy["label"] != noisy["identity"]).all()
    assert noisy["label"].isin(meta["identity"]).all()  # a real training identity, just the wrong one
    clean = meta[~meta["noisy"]]
    assert (clean["label"] == clean["identity"]).all()


@pytest.mark.parametrize("name", PROTOCOLS)
def test_folds_are_consecutive_balanced_blocks_on_disjoint_people(generated, name):
    out, summary = generated
    images, pairs = benchmark(out, name)
    per_fold = SMALL["protocols"][name]["pairs_per_fold"]
    folds = SMALL["protocols"][name]["folds"]
    assert len(pairs) == 2 * per_fold * folds == summary["protocols"][name]["pairs"]
    assert pairs["fold"].tolist() == [f for f in range(folds) for _ in range(2 * per_fold)]
    people = []
    for f in range(folds):
        block = pairs[pairs["fold"] == f]
        assert block["same"].sum() == per_fold and (~block["same"]).sum() == per_fold
        ids_a = np.array([images[a].identity for a in block["a"]])
        ids_b = np.array([images[b].identity for b in block["b"]])
        assert ((ids_a == ids_b) == block["same"].to_numpy()).all()
        assert len(set(zip(block["a"], block["b"]))) == len(block)  # no pair twice
        people.append(set(ids_a) | set(ids_b))
    for f in range(folds):
        for g in range(f + 1, folds):
            assert not people[f] & people[g]


def test_different_pairs_include_lookalikes(generated):
    out, summary = generated
    images, pairs = benchmark(out, "synth-lfw")
    roots = np.array([r.extras["lookalike_root"] for r in images])
    ids = np.array([r.identity for r in images])
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    hard = (~pairs["same"].to_numpy()) & (roots[a] == roots[b]) & (ids[a] != ids[b])
    assert hard.sum() == summary["protocols"]["synth-lfw"]["hard_negatives"] > 0


def test_cfp_pairs_are_frontal_against_profile(generated):
    out, _ = generated
    images, pairs = benchmark(out, "synth-cfp-fp")
    spec = small_spec().nuisance
    yaw = np.array([abs(r.extras["yaw"]) for r in images])
    assert (yaw[pairs["a"]] <= spec.frontal_max_deg + 1e-4).all()
    assert ((yaw[pairs["b"]] >= spec.profile_min_deg - 1e-4) & (yaw[pairs["b"]] <= spec.profile_max_deg + 1e-4)).all()


def test_agedb_pairs_span_the_age_gap(generated):
    out, _ = generated
    images, pairs = benchmark(out, "synth-agedb")
    age = np.array([r.extras["age"] for r in images])
    gap = np.abs(age[pairs["a"]] - age[pairs["b"]])
    assert (gap >= SMALL["protocols"]["synth-agedb"]["min_age_gap"] - 1e-3).all()
    same = pairs["same"].to_numpy()
    assert abs(gap[same].mean() - gap[~same].mean()) < 15  # age gap is no shortcut to the answer


def test_records_carry_images_landmarks_and_metadata(generated):
    out, _ = generated
    records = list(iter_records(out / "train"))
    for r in records[:5]:
        image = decode_image(r.image, r.source)
        assert image.shape == (64, 64, 3)
        assert np.isfinite(r.landmarks).all() and r.landmarks.shape == (5, 2)
        assert {"yaw", "age", "roll", "occluded", "lookalike_root"} <= set(r.extras)
    assert len({r.source for r in records}) == len(records)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("values,match", [
    ({"train_identites": 3}, r"unknown parameter\(s\) \['train_identites'\]"),
    ({"label_noise": 1.5}, "label_noise must be in"),
    ({"nuisance": {"yaw_max_deg": 95}}, "nuisance.yaw_max_deg"),
    ({"nuisance": {"blur": 1}}, r"data.synthetic.nuisance: unknown parameter\(s\) \['blur'\]"),
    ({"protocols": {"synth-lfw": {"pairs": 3}}}, r"protocols.synth-lfw: unknown parameter"),
    ({"protocols": {"synth-ytf": {}}}, "unknown protocol 'synth-ytf'"),
    ({"protocols": {"synth-lfw": 3}}, "synth-lfw must be a mapping or null"),
    ({"seed": -2}, "seed must be a non-negative integer"),
    ({"protocols": {"synth-cfp-fp": {"profile_per_identity": 7}}}, r"synth-cfp-fp.profile_per_identity must be in"),
])
def test_bad_spec_values_are_named(values, match):
    with pytest.raises(ValueError, match=match):
        SyntheticSpec.from_dict(values)


def test_a_protocol_can_be_dropped():
    assert list(SyntheticSpec.from_dict({"protocols": {"synth-agedb": None}}).protocols) == ["synth-lfw", "synth-cfp-fp"]


def test_too_small_a_protocol_is_refused_before_rendering(tmp_path):
    agedb = {**SMALL["protocols"]["synth-agedb"], "min_age_gap": 50.0}
    spec = small_spec(protocols={**SMALL["protocols"], "synth-agedb": agedb})
    with pytest.raises(ValueError, match=r"protocols.synth-agedb fold 0: only \d+ same-pair candidates"):
        generate(spec, tmp_path / "never")
    assert not (tmp_path / "never").exists()
