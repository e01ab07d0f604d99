"""LFW (Huang et al. 2007; deep-funneled 2012) from its root: training records and pair protocols.

The root holds the photos and the protocol CSVs (paths relative to the root): `labels.csv` (image, identity,
view1_split in {devtrain, devtest}) and `pairs_devtest.csv` / `pairs_view2.csv` (img_a, img_b, same, fold).
Which pairs a model may be scored on depends on whom it was trained on:
- `lfw-devtest` (View 1 DevTest, 1,000 pairs): its persons are disjoint from DevTrain's, so a model trained on
  DevTrain persons is scored here. The CSV has one fold; the pairs are split into 10 consecutive blocks of
  50 same + 50 different pairs in file order (name order), so a person rarely spans two folds.
- `lfw-view2` (View 2, 10 folds of 600): 2,985 of its 4,281 persons are DevTrain persons, so it is only for a
  model that saw no LFW person in training (the synthetic or a CASIA-trained model), never after DevTrain.
- `lfw_identification` (stage protocols): 1:N search, built by `identification_set`.
LFW photos are never copied into the project: the records hold the encoded bytes read from the root.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core import config
from pipeline.data.folders import balanced_folds
from pipeline.data.images import CorruptImageError, normalise_encoded
from pipeline.data.records import NO_LANDMARKS, FaceRecord, write_benchmark, write_records

LFW_ENV = "FACEREPRO_LFW"  # where tests and benchmarks look for LFW; else the lfw profile's data.lfw_root
DEVTEST = "lfw-devtest"
VIEW2 = "lfw-view2"
PAIR_FILES = {DEVTEST: "pairs_devtest.csv", VIEW2: "pairs_view2.csv"}
DEVTEST_FOLDS = 10
SPLITS = ("devtrain", "devtest")


def resolve_root(root: str | os.PathLike[str]) -> Path:
    """A relative LFW root is relative to the project root, as every path in params.yaml is, not to the working
    directory, so `../shared/data/lfw` means the same folder wherever a stage or a test is started."""
    path = Path(root).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(config.PROJECT_ROOT / path))


def lfw_root_from_env() -> Path:
    """$FACEREPRO_LFW, else the lfw profile's data.lfw_root in params.yaml; relative to the project root (tests
    skip when the one returned lacks labels.csv)."""
    if os.environ.get(LFW_ENV):
        return resolve_root(os.environ[LFW_ENV])
    root = config.load(profile="lfw").data.lfw_root
    if not root:
        raise ValueError(f"params.yaml: profiles.lfw.data.lfw_root is empty; set it or ${LFW_ENV} to the LFW root")
    return resolve_root(root)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"LFW protocol file {path} does not exist (data.lfw_root names the LFW root)")
    frame = pd.read_csv(path)
    missing = sorted(set(columns) - set(frame.columns))
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing}; expected {', '.join(columns)}")
    if frame[columns].isna().any().any():
        row = int(np.flatnonzero(frame[columns].isna().any(axis=1).to_numpy())[0])
        raise ValueError(f"{path}: data row {row + 1} has an empty field")
    return frame[columns]


def read_labels(root: str | os.PathLike[str]) -> pd.DataFrame:
    """labels.csv: one row per photo (image, identity, view1_split)."""
    path = resolve_root(root) / "labels.csv"
    labels = _read_csv(path, ["image", "identity", "view1_split"])
    unknown = sorted(set(labels["view1_split"]) - set(SPLITS))
    if unknown:
        raise ValueError(f"{path}: view1_split must be one of {SPLITS}, found {unknown}")
    duplicated = labels["image"][labels["image"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: image {duplicated.iloc[0]!r} is listed twice")
    return labels


def read_pairs(root: str | os.PathLike[str], protocol: str) -> pd.DataFrame:
    """A pair protocol's CSV (img_a, img_b, same as bool, fold)."""
    if protocol not in PAIR_FILES:
        raise ValueError(f"unknown LFW protocol {protocol!r}; known: {', '.join(PAIR_FILES)}")
    path = resolve_root(root) / PAIR_FILES[protocol]
    pairs = _read_csv(path, ["img_a", "img_b", "same", "fold"])
    if not set(pairs["same"].unique()) <= {0, 1}:
        raise ValueError(f"{path}: column 'same' must hold 0 or 1")
    return pairs.astype({"same": bool, "fold": "int64"})


def training_persons(labels: pd.DataFrame, min_images: int) -> pd.DataFrame:
    """DevTrain photos of the persons with at least `min_images` of them, labelled 0..K-1 in name order."""
    train = labels[labels["view1_split"] == "devtrain"]
    counts = train["identity"].value_counts()
    kept = sorted(counts[counts >= min_images].index)
    if len(kept) < 2:
        raise ValueError(f"data.lfw_min_images {min_images}: only {len(kept)} DevTrain persons have that many photos")
    chosen = train[train["identity"].isin(kept)].sort_values(["identity", "image"], kind="stable")
    return chosen.assign(label=chosen["identity"].map({name: i for i, name in enumerate(kept)}))


def protocol_pairs(pairs: pd.DataFrame, protocol: str, folds: int = DEVTEST_FOLDS) -> tuple[list[str], pd.DataFrame]:
    """(image paths in first-use order, pairs a/b/same/fold as rows of that list in consecutive equal folds)."""
    images = list(dict.fromkeys(pairs[["img_a", "img_b"]].to_numpy().ravel().tolist()))
    index = {name: i for i, name in enumerate(images)}
    rows = pd.DataFrame({"a": pairs["img_a"].map(index), "b": pairs["img_b"].map(index), "same": pairs["same"],
                         "fold": pairs["fold"]})
    if protocol == DEVTEST:  # one fold in the file: cut it into `folds` blocks of same + different pairs
        return images, balanced_folds(rows[rows["same"]], rows[~rows["same"]], folds)
    ordered = rows.sort_values("fold", kind="stable").reset_index(drop=True)
    sizes = ordered["fold"].value_counts().sort_index()
    if list(sizes.index) != list(range(len(sizes))) or sizes.nunique() != 1:
        raise ValueError(f"{PAIR_FILES[protocol]}: folds must be numbered 0..n-1 and equal in size, got {sizes.to_dict()}")
    return images, ordered.astype({"a": "int64", "b": "int64", "same": "bool", "fold": "int64"})


def _record(root: Path, image: str, label: int) -> FaceRecord:
    path = root / image
    if not path.is_file():
        raise FileNotFoundError(f"LFW photo {path} (listed in the protocol files) does not exist")
    data, _ = normalise_encoded(path.read_bytes(), str(path))
    return FaceRecord(image=data, label=label, identity=label, landmarks=NO_LANDMARKS.copy(), source=image)


def person_of(image: str) -> str:
    """lfw-deepfunneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg -> Aaron_Eckhart (the folder names the person)."""
    return Path(image).parent.name


def write_protocol(root: str | os.PathLike[str], protocol: str, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write one pair protocol as a benchmark (`images.parquet`, `pairs.parquet`); returns its summary."""
    root = resolve_root(root)
    images, pairs = protocol_pairs(read_pairs(root, protocol), protocol)
    persons = {name: i for i, name in enumerate(sorted({person_of(image) for image in images}))}
    write_benchmark(out_dir, [_record(root, image, persons[person_of(image)]) for image in images], pairs)
    return {
        "images": len(images), "persons": len(persons), "pairs": len(pairs), "same_pairs": int(pairs["same"].sum()),
        "folds": int(pairs["fold"].max()) + 1,
    }


def lfw_to_raw(root: str | os.PathLike[str], out_dir: str | os.PathLike[str], min_images: int = 4,
               skip_corrupt: bool = False) -> dict[str, Any]:
    """`out_dir/train` (DevTrain persons with >= min_images photos) and `out_dir/benchmarks/lfw-devtest`."""
    given, root, out_dir = str(root), resolve_root(root), Path(out_dir)
    if not root.is_dir():
        where = given if given == str(root) else f"{given} ({root})"
        raise FileNotFoundError(f"data.lfw_root {where} does not exist or is not a directory")
    train = training_persons(read_labels(root), min_images)
    devtest_persons = {person_of(p) for p in read_pairs(root, DEVTEST)[["img_a", "img_b"]].to_numpy().ravel()}
    shared = sorted(devtest_persons & set(train["identity"]))
    if shared:  # DevTest is only a fair test if nobody in it was trained on
        raise ValueError(f"{root}: DevTest pairs use DevTrain persons {shared[:5]}: labels.csv or the pairs are wrong")
    skipped: list[dict[str, str]] = []

    def records() -> Iterator[FaceRecord]:
        for image, label in zip(train["image"], train["label"]):
            try:
                yield _record(root, image, int(label))
            except CorruptImageError as error:
                if not skip_corrupt:
                    raise
                skipped.append({"source": image, "error": str(error)})

    written = write_records(out_dir / "train", records())
    devtest = write_protocol(root, DEVTEST, out_dir / "benchmarks" / DEVTEST)
    return {
        "root": given, "min_images": min_images, "train": {"persons": int(train["label"].nunique()),
        "images": written, "skipped": skipped}, "protocols": {DEVTEST: devtest},
        "evaluated_on": f"{DEVTEST}: View 1 DevTest pairs, persons disjoint from the DevTrain persons trained on",
        "not_evaluated": f"{VIEW2}: View 2 shares persons with DevTrain, so it would score faces seen in training",
    }


def identification_set(root: str | os.PathLike[str], trained: set[str]) -> tuple[list[FaceRecord], pd.DataFrame, dict]:
    """LFW as a MegaFace-style set: each DevTest person with two or more photos has its first photo (name order) as
    the mate and the others as probes; every other person not in `trained` gives one photo (its first) as a
    distractor. Returns the records, their roles (role code: 0 mate, 1 probe, 2 distractor; identity) and a summary."""
    labels = read_labels(root).sort_values(["identity", "image"], kind="stable")
    root = resolve_root(root)
    devtest = labels[labels["view1_split"] == "devtest"]
    counts = devtest["identity"].value_counts()
    gallery_persons = set(counts[counts >= 2].index)
    if not gallery_persons:
        raise ValueError(f"{root}/labels.csv: no DevTest person has two photos, so no probe has a mate")
    persons = {name: i for i, name in enumerate(sorted(labels["identity"].unique()))}
    records, roles = [], []
    for name, photos in labels.groupby("identity", sort=True):
        if name in gallery_persons:
            chosen = [(image, 0 if k == 0 else 1) for k, image in enumerate(photos["image"])]
        elif name in trained:
            continue  # a person the model was trained on is no fair distractor
        else:
            chosen = [(photos["image"].iloc[0], 2)]
        for image, role in chosen:
            records.append(_record(root, image, persons[name]))
            roles.append((role, persons[name]))
    frame = pd.DataFrame(roles, columns=["role", "identity"]).astype({"role": "int8", "identity": "int64"})
    summary = {"mates": int((frame["role"] == 0).sum()), "probes": int((frame["role"] == 1).sum()),
               "distractors": int((frame["role"] == 2).sum()), "trained_persons_left_out": len(trained & set(persons))}
    return records, frame, summary
