"""LFW ingestion (pipeline/data/lfw.py) on a small fake LFW tree, the source switch (pipeline/data/ingest.py),
held-out persons for the folders job (pipeline/data/folders.py), and the lfw profile. Tests on the real LFW CSVs
skip when the LFW root ($FACEREPRO_LFW, else the lfw profile's ../shared/data/lfw) is absent."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.core import config
from pipeline.core.config import AlignConfig, DataConfig
from pipeline.data import lfw
from pipeline.data.align_records import align_dataset, detector_from_config
from pipeline.data.folders import HELDOUT_PROTOCOL, balanced_folds, folders_to_raw, sample_pairs, split_persons
from pipeline.data.identification_sets import read_identification_set, write_identification_set
from pipeline.data.ingest import prepare_raw
from pipeline.data.records import iter_records, read_benchmark, read_metadata

# persons and photo counts of the fake tree: Ann, Bob, Cy and Dee train; Eve, Fay, Gus only in DevTest
DEVTRAIN = {"Ann": 5, "Bob": 4, "Cy": 2, "Dee": 4}
DEVTEST = {"Eve": 3, "Fay": 3, "Gus": 2}


def photo_path(person: str, number: int) -> str:
    return f"lfw-deepfunneled/{person}/{person}_{number:04d}.jpg"


def write_photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


@pytest.fixture()
def fake_lfw(tmp_path) -> Path:
    root = tmp_path / "lfw"
    rows = []
    for split, persons in (("devtrain", DEVTRAIN), ("devtest", DEVTEST)):
        for person, count in persons.items():
            for number in range(1, count + 1):
                rows.append((photo_path(person, number), person, split))
                write_photo(root / photo_path(person, number), len(rows))
    pd.DataFrame(rows, columns=["image", "identity", "view1_split"]).to_csv(root / "labels.csv", index=False)
    # DevTest: 10 same + 10 different pairs, one fold, in name order as LFW lists them
    same = [(photo_path(p, i), photo_path(p, j)) for p, n in DEVTEST.items() for i, j in itertools.combinations(range(1, n + 1), 2)]
    same = (same * 2)[:10]
    people = list(DEVTEST)
    different = [(photo_path(a, 1 + k % 2), photo_path(b, 1 + k % 2)) for k, (a, b) in enumerate(itertools.combinations(people, 2))]
    different = (different * 4)[:10]
    devtest = pd.DataFrame(same + different, columns=["img_a", "img_b"]).assign(same=[1] * 10 + [0] * 10, fold=0)
    devtest.to_csv(root / "pairs_devtest.csv", index=False)
    # View 2: two folds of 2 same + 2 different; it mixes DevTrain and DevTest persons, as the real one does
    view2 = pd.DataFrame(
        [(photo_path("Ann", 1), photo_path("Ann", 2), 1, 0), (photo_path("Eve", 1), photo_path("Eve", 2), 1, 0),
         (photo_path("Ann", 1), photo_path("Bob", 1), 0, 0), (photo_path("Cy", 1), photo_path("Eve", 3), 0, 0),
         (photo_path("Bob", 1), photo_path("Bob", 2), 1, 1), (photo_path("Fay", 1), photo_path("Fay", 3), 1, 1),
         (photo_path("Dee", 1), photo_path("Gus", 1), 0, 1), (photo_path("Cy", 2), photo_path("Fay", 2), 0, 1)],
        columns=["img_a", "img_b", "same", "fold"],
    )
    view2.to_csv(root / "pairs_view2.csv", index=False)
    return root


def assert_consecutive_balanced_folds(pairs: pd.DataFrame, folds: int) -> None:
    size = len(pairs) // folds
    assert len(pairs) == size * folds
    np.testing.assert_array_equal(pairs["fold"].to_numpy(), np.repeat(np.arange(folds), size))
    for _, block in pairs.groupby("fold"):
        assert block["same"].sum() == size // 2


# --- LFW ----------------------------------------------------------------------------------------------------------


def test_training_persons_keep_devtrain_persons_with_enough_photos(fake_lfw):
    train = lfw.training_persons(lfw.read_labels(fake_lfw), min_images=4)
    assert sorted(set(train["identity"])) == ["Ann", "Bob", "Dee"]
    assert dict(zip(train["identity"], train["label"])) == {"Ann": 0, "Bob": 1, "Dee": 2}
    assert len(train) == 5 + 4 + 4
    with pytest.raises(ValueError, match="lfw_min_images 6"):
        lfw.training_persons(lfw.read_labels(fake_lfw), min_images=6)


def test_lfw_to_raw_writes_devtrain_and_devtest_folds(fake_lfw, tmp_path):
    summary = lfw.lfw_to_raw(fake_lfw, tmp_path / "raw", min_images=4)
    records = list(iter_records(tmp_path / "raw" / "train"))
    assert [r.source for r in records] == [photo_path(p, i) for p in ("Ann", "Bob", "Dee") for i in range(1, DEVTRAIN[p] + 1)]
    assert [r.label for r in records] == [0] * 5 + [1] * 4 + [2] * 4
    assert all(np.isnan(r.landmarks).all() for r in records)
    assert records[0].image == (fake_lfw / photo_path("Ann", 1)).read_bytes()  # plain RGB JPEG: stored as it is
    images, pairs = read_benchmark(tmp_path / "raw" / "benchmarks" / lfw.DEVTEST)
    csv = pd.read_csv(fake_lfw / "pairs_devtest.csv")
    sources = [r.source for r in images]
    # every CSV pair is there once, with its label, as rows of images.parquet
    got = sorted((sources[a], sources[b], bool(s)) for a, b, s in pairs[["a", "b", "same"]].itertuples(index=False))
    assert got == sorted((a, b, bool(s)) for a, b, s in csv[["img_a", "img_b", "same"]].itertuples(index=False))
    assert_consecutive_balanced_folds(pairs, lfw.DEVTEST_FOLDS)
    assert summary["protocols"][lfw.DEVTEST]["folds"] == 10 and summary["train"]["persons"] == 3
    assert lfw.VIEW2 in summary["not_evaluated"]
    assert not (tmp_path / "raw" / "benchmarks" / lfw.VIEW2).exists()


def test_devtest_sharing_a_trained_person_is_refused(fake_lfw, tmp_path):
    labels = pd.read_csv(fake_lfw / "labels.csv")
    labels.loc[labels["identity"] == "Eve", "view1_split"] = "devtrain"
    labels.to_csv(fake_lfw / "labels.csv", index=False)
    with pytest.raises(ValueError, match="Eve"):
        lfw.lfw_to_raw(fake_lfw, tmp_path / "raw", min_images=2)


def test_view2_keeps_its_folds(fake_lfw, tmp_path):
    summary = lfw.write_protocol(fake_lfw, lfw.VIEW2, tmp_path / "v2")
    images, pairs = read_benchmark(tmp_path / "v2")
    csv = pd.read_csv(fake_lfw / "pairs_view2.csv")
    sources = [r.source for r in images]
    assert [(sources[a], sources[b]) for a, b in zip(pairs["a"], pairs["b"])] == list(zip(csv["img_a"], csv["img_b"]))
    assert pairs["fold"].tolist() == csv["fold"].tolist() and summary["folds"] == 2
    # the person number is the same for every photo of a person
    persons = {lfw.person_of(r.source): r.identity for r in images}
    assert all(persons[lfw.person_of(r.source)] == r.identity for r in images)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "labels.csv").unlink(), "labels.csv.*does not exist"),
        (lambda root: pd.read_csv(root / "labels.csv").drop(columns="view1_split").to_csv(root / "labels.csv", index=False),
         "labels.csv.*view1_split"),
        (lambda root: (root / photo_path("Bob", 2)).unlink(), "Bob_0002.jpg.*does not exist"),
        (lambda root: (root / photo_path("Eve", 1)).write_bytes(b"not a jpeg"), "Eve_0001.jpg"),
        (lambda root: pd.read_csv(root / "pairs_devtest.csv").assign(same=2).to_csv(root / "pairs_devtest.csv", index=False),
         "pairs_devtest.csv.*same"),
    ],
)
def test_bad_lfw_trees_name_the_file(fake_lfw, tmp_path, damage, message):
    damage(fake_lfw)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        lfw.lfw_to_raw(fake_lfw, tmp_path / "raw", min_images=4)


def test_skip_corrupt_lists_a_broken_training_photo(fake_lfw, tmp_path):
    (fake_lfw / photo_path("Bob", 2)).write_bytes(b"broken")
    summary = lfw.lfw_to_raw(fake_lfw, tmp_path / "raw", min_images=4, skip_corrupt=True)
    assert summary["train"]["images"] == 12 and summary["train"]["skipped"][0]["source"] == photo_path("Bob", 2)


# --- the source switch ----------------------------------------------------------------------------------------------


def test_prepare_raw_lfw_source(fake_lfw, tmp_path):
    summary = prepare_raw(data_config(source="lfw", lfw_root=str(fake_lfw), lfw_min_images=4), tmp_path / "raw")
    assert summary["source"] == "lfw"
    assert sorted(p.name for p in (tmp_path / "raw" / "benchmarks").iterdir()) == [lfw.DEVTEST]
    with pytest.raises(ValueError, match="data.lfw_root"):
        prepare_raw(data_config(source="lfw", lfw_root=None), tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def test_a_synthetic_model_also_gets_view2(fake_lfw, tmp_path):
    raw = yaml_profile_data("smoke")
    data = DataConfig(**{**raw, "lfw_root": str(fake_lfw)})
    summary = prepare_raw(data, tmp_path / "raw")
    names = sorted(p.name for p in (tmp_path / "raw" / "benchmarks").iterdir())
    assert lfw.VIEW2 in names and lfw.DEVTEST not in names and summary[lfw.VIEW2]["pairs"] == 8


def test_a_relative_lfw_root_resolves_against_the_project_root(fake_lfw, tmp_path, monkeypatch):
    # params.yaml's paths are project-relative: a stage or test started from another folder reads the same LFW
    relative = os.path.relpath(fake_lfw, config.PROJECT_ROOT)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert lfw.resolve_root(relative) == fake_lfw
    summary = prepare_raw(data_config(source="lfw", lfw_root=relative, lfw_min_images=4), tmp_path / "raw")
    assert summary["root"] == relative and summary["train"]["persons"] == 3  # the summary keeps no machine path
    monkeypatch.setenv(lfw.LFW_ENV, relative)
    assert lfw.lfw_root_from_env() == fake_lfw
    with pytest.raises(FileNotFoundError, match=r"data.lfw_root nowhere \(.*nowhere\)"):
        lfw.lfw_to_raw("nowhere", tmp_path / "raw2")


def test_the_lfw_profile_reads_lfw_beside_the_project(monkeypatch):
    # no machine path in params.yaml: the lfw profile's root is ../shared/data/lfw from the project root
    assert config.load(profile="lfw").data.lfw_root == "../shared/data/lfw"
    monkeypatch.delenv(lfw.LFW_ENV, raising=False)
    assert lfw.lfw_root_from_env() == config.PROJECT_ROOT.parent / "shared" / "data" / "lfw"


def yaml_profile_data(profile: str) -> dict:
    return config.load(profile=profile).data.model_dump()


def data_config(**fields) -> DataConfig:
    """params.yaml's smoke data section (the one source of defaults) with the test's fields."""
    return DataConfig(**{**yaml_profile_data("smoke"), **fields})


# --- held-out persons for the folders job --------------------------------------------------------------------------


def test_balanced_folds_layout_and_errors():
    same = pd.DataFrame({"a": range(6), "b": range(10, 16)})
    different = pd.DataFrame({"a": range(20, 26), "b": range(30, 36)})
    pairs = balanced_folds(same, different, 3)
    assert_consecutive_balanced_folds(pairs, 3)
    assert pairs["a"].tolist() == [0, 1, 20, 21, 2, 3, 22, 23, 4, 5, 24, 25]
    with pytest.raises(ValueError, match="5 same pairs do not split into 3"):
        balanced_folds(same.iloc[:5], different, 3)


def test_split_persons_is_seeded_and_holds_out_only_pairable_persons():
    counts = {0: 3, 1: 1, 2: 4, 3: 2, 4: 5, 5: 1, 6: 2, 7: 3, 8: 2, 9: 6}
    train, held = split_persons(counts, 0.3, seed=7)
    assert len(held) == 3 and all(counts[p] >= 2 for p in held)
    assert sorted(train + held) == sorted(counts) and not set(train) & set(held)
    assert split_persons(counts, 0.3, seed=7) == (train, held)
    assert len({tuple(split_persons(counts, 0.3, seed=s)[1]) for s in range(10)}) > 1
    with pytest.raises(ValueError, match="folders_heldout"):
        split_persons({0: 2, 1: 2, 2: 1}, 0.5, seed=0)


def test_sample_pairs_are_valid_unique_and_seeded():
    identities = np.repeat(np.arange(5), [3, 4, 2, 3, 3])
    pairs = sample_pairs(identities, pairs_per_fold=2, folds=3, seed=1)
    assert_consecutive_balanced_folds(pairs, 3)
    np.testing.assert_array_equal(identities[pairs["a"]] == identities[pairs["b"]], pairs["same"].to_numpy())
    assert (pairs["a"] < pairs["b"]).all() and not pairs[["a", "b"]].duplicated().any()
    pd.testing.assert_frame_equal(pairs, sample_pairs(identities, 2, 3, seed=1))
    # 3+6+1+3+3 = 16 same pairs exist: asking 10 per fold over 3 folds gets 5 per fold
    assert len(sample_pairs(identities, pairs_per_fold=10, folds=3, seed=1)) == 3 * 2 * 5
    with pytest.raises(ValueError, match="too few for 4 folds"):
        sample_pairs(np.array([0, 0, 1, 1, 2]), pairs_per_fold=1, folds=4, seed=0)


def test_folders_to_raw_holds_persons_out(tmp_path):
    root = tmp_path / "people"
    counts = {"p0": 3, "p1": 4, "p2": 3, "p3": 2, "p4": 5, "p5": 3, "p6": 1, "p7": 3, "p8": 4, "p9": 3}
    for k, (person, count) in enumerate(counts.items()):
        for i in range(count):
            write_photo(root / person / f"{i}.jpg", 100 * k + i)
    report = folders_to_raw(root, tmp_path / "raw", heldout=0.3, pairs_per_fold=2, folds=2, seed=3)
    held = report[HELDOUT_PROTOCOL]["persons"]
    assert len(held) == 3 and "p6" not in held
    meta = read_metadata(tmp_path / "raw" / "train")
    trained = sorted({Path(s).parent.name for s in meta["source"]})
    assert trained == sorted(set(counts) - set(held))
    assert sorted(meta["label"].unique()) == list(range(7))  # renumbered 0..K-1
    assert report["labels"] == {name: i for i, name in enumerate(trained)}
    images, pairs = read_benchmark(tmp_path / "raw" / "benchmarks" / HELDOUT_PROTOCOL)
    assert sorted({Path(r.source).parent.name for r in images}) == sorted(held)
    assert_consecutive_balanced_folds(pairs, 2)
    persons = np.array([Path(r.source).parent.name for r in images])
    np.testing.assert_array_equal(persons[pairs["a"]] == persons[pairs["b"]], pairs["same"].to_numpy())
    assert not (tmp_path / "raw" / ".all-persons").exists()
    again = folders_to_raw(root, tmp_path / "raw2", heldout=0.3, pairs_per_fold=2, folds=2, seed=3)
    assert again[HELDOUT_PROTOCOL] == report[HELDOUT_PROTOCOL]


# --- the lfw profile and the real LFW protocol files ---------------------------------------------------------------


def test_lfw_profile_resolves():
    cfg = config.load(profile="lfw")
    assert cfg.data.source == "lfw" and cfg.data.lfw_root and cfg.align.detector == "mtcnn"
    assert cfg.train.device == "cpu"


needs_lfw = pytest.mark.skipif(not (lfw.lfw_root_from_env() / "labels.csv").is_file(),
                               reason=f"LFW not found at {lfw.lfw_root_from_env()} (set $FACEREPRO_LFW)")


@needs_lfw
def test_real_lfw_protocols():
    root = lfw.lfw_root_from_env()
    labels = lfw.read_labels(root)
    assert len(labels) == 13233 and labels["identity"].nunique() == 5749
    images, devtest = lfw.protocol_pairs(lfw.read_pairs(root, lfw.DEVTEST), lfw.DEVTEST)
    assert len(devtest) == 1000
    assert_consecutive_balanced_folds(devtest, 10)
    trained = set(lfw.training_persons(labels, 1)["identity"])
    assert not trained & {lfw.person_of(i) for i in images}  # DevTest persons are never DevTrain persons
    images, view2 = lfw.protocol_pairs(lfw.read_pairs(root, lfw.VIEW2), lfw.VIEW2)
    assert len(view2) == 6000
    assert_consecutive_balanced_folds(view2, 10)
    assert trained & {lfw.person_of(i) for i in images}  # why View 2 is not for DevTrain-trained models


@needs_lfw
def test_folders_job_on_lfw_photos_ingests_detects_aligns_and_holds_out(tmp_path):
    # the folders one-command job up to training: a folder per person (6 LFW persons, 4 photos each, copied
    # into the test's temporary directory), MTCNN landmarks, a held-out pair protocol
    torch.set_num_threads(1)
    root = lfw.lfw_root_from_env()
    labels = lfw.read_labels(root)
    counts = labels["identity"].value_counts()
    persons = sorted(counts[counts >= 4].index)[:6]
    for person in persons:
        for image in sorted(labels.loc[labels["identity"] == person, "image"])[:4]:
            (tmp_path / "photos" / person).mkdir(parents=True, exist_ok=True)
            (tmp_path / "photos" / person / Path(image).name).write_bytes((root / image).read_bytes())
    data = data_config(source="folders", folders_root=str(tmp_path / "photos"), folders_heldout=0.34,
                      folders_pairs_per_fold=2, folders_folds=2, split_seed=0)
    report = prepare_raw(data, tmp_path / "raw")
    assert len(report[HELDOUT_PROTOCOL]["persons"]) == 2 and report["images"] == 16
    cfg = AlignConfig(**{**config.load(profile="cpu").align.model_dump(), "crop_size": 48, "detector": "mtcnn",
                         "face_selection": "central", "min_face_size": 40, "fallback_crop": 0.6, "device": "cpu"})
    summary = align_dataset(tmp_path / "raw", tmp_path / "aligned", 48, detector=detector_from_config(cfg),
                            fallback_crop=cfg.fallback_crop)
    bench = summary["benchmarks"][HELDOUT_PROTOCOL]
    assert bench["images"] == 8 and bench["pairs"] == 8
    assert summary["train_landmarks"]["detected"] + summary["train_landmarks"]["no_face"] == 16
    assert summary["train_landmarks"]["detection_rate"] >= 0.9 and summary["train_images"] >= 15


def test_lfw_identification_set_mates_probes_and_untrained_distractors(fake_lfw, tmp_path):
    """DevTest persons with 2+ photos: the first photo the mate, the rest probes; every other person not trained on
    gives its first photo as a distractor; a trained person is never a distractor."""
    trained = set(lfw.training_persons(lfw.read_labels(fake_lfw), 4)["identity"])
    assert trained == {"Ann", "Bob", "Dee"}
    records, roles, summary = lfw.identification_set(fake_lfw, trained)
    persons = sorted({*DEVTRAIN, *DEVTEST})
    named = [(persons[i], r, rec.source) for (r, i), rec in zip(roles.itertuples(index=False), records)]
    assert [(p, r) for p, r, _ in named if r == 0] == [("Eve", 0), ("Fay", 0), ("Gus", 0)]
    assert all(source.endswith("_0001.jpg") for _, r, source in named if r != 1)
    assert sorted(p for p, r, _ in named if r == 1) == ["Eve", "Eve", "Fay", "Fay", "Gus"]
    assert [p for p, r, _ in named if r == 2] == ["Cy"]
    assert summary == {"mates": 3, "probes": 5, "distractors": 1, "trained_persons_left_out": 3}
    write_identification_set(tmp_path / "set", records, roles, [1], [0.1])
    assert read_identification_set(tmp_path / "set").images.shape == (9, 24, 24, 3)
