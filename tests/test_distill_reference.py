"""A pretrained reference model as the distillation teacher: its descriptors of the training photos are computed once
(stage distill caches them), reach the hint loss as each training item's fixed target, leave out the photos without a
face, and are part of the student's training identity."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline import heads, models
from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT, STUDENT, TEACHER
from pipeline.core.paths import Paths
from pipeline.data.images import encode_png
from pipeline.data.lfw import lfw_root_from_env
from pipeline.data.loader import FaceDataset
from pipeline.data.records import NO_LANDMARKS, FaceRecord, write_records
from pipeline.experiment.recipes import recipes
from pipeline.experiment.runs import seed_dir, training_identity
from pipeline.reference import descriptors as describer
from pipeline.reference import teacher
from pipeline.reference.dlib_resnet import EMBEDDING_SIZE, ReferenceEmbedding, distance_scores
from pipeline.train import checkpoint, engine
from pipeline.train.engine import FixedTargets, TrainJob, distillation_loss, masked_distillation_loss, train
from pipeline.train.order import StepBatchSampler
from tests.test_engine import train_config

SIZE = 32  # the smoke profile's crop


def shade_record(i: int, classes: int = 4) -> FaceRecord:
    """A flat crop of grey level i (a flip leaves it as it is): the image itself says which item it is."""
    return FaceRecord(image=encode_png(np.full((SIZE, SIZE, 3), i, dtype=np.uint8)), label=i % classes,
                      landmarks=NO_LANDMARKS.copy(), source=f"person{i % classes}/photo{i}.jpg")


def shade_of(images: torch.Tensor) -> list[int]:
    """The grey level of each normalised image ((x/255 - 0.5)/0.5): its item number."""
    return [round(float((image[0, 0, 0] * 0.5 + 0.5) * 255)) for image in images]


def job(targets: FixedTargets | None, iterations: int = 6, weight: float = 1.0, **train_fields) -> TrainJob:
    torch.manual_seed(5)
    backbone = models.build("mobilefacenet", embedding_size=16, input_size=SIZE)
    head = heads.build("li_arcface", 16, 4, s=16.0)
    cfg = train_config(batch_size=8, iterations=iterations, lr=0.05, checkpoint_every=3, log_every=1, device="cpu",
                       **train_fields)
    return TrainJob("hinted", backbone, head, cfg, seed=5, weight_decay=5e-4, embedding_wd_mult=10.0,
                    distill_weight=weight, targets=targets, description={"test": "hinted"})


def numbered_targets(n: int, width: int = 6, masked: tuple[int, ...] = ()) -> FixedTargets:
    """Item i's target carries i in its first component; `masked` items have none."""
    vectors = torch.randn(n, width, generator=torch.Generator().manual_seed(1))
    vectors[:, 0] = torch.arange(n, dtype=torch.float32)
    mask = torch.ones(n, dtype=torch.bool)
    mask[list(masked)] = False
    return FixedTargets(vectors, mask)


# --- the loss -----------------------------------------------------------------------------------------------------


def test_masked_loss_is_the_hint_loss_of_the_items_that_have_a_target():
    generator = torch.Generator().manual_seed(0)
    student, target = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    mask = torch.tensor([True, False, True, True, False, True])
    expected = distillation_loss(student[mask], target[mask])
    assert torch.allclose(masked_distillation_loss(student, target, mask), expected)
    assert torch.allclose(masked_distillation_loss(student, target, torch.ones(6, dtype=torch.bool)),
                          distillation_loss(student, target))


def test_an_item_without_a_target_adds_nothing_to_the_loss_or_its_gradient():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 5, generator=generator, requires_grad=True)
    target = torch.randn(4, 5, generator=generator)
    mask = torch.tensor([True, False, True, False])
    loss = masked_distillation_loss(student, target, mask)
    loss.backward()
    assert torch.count_nonzero(student.grad[~mask]) == 0
    other = target.clone()
    other[~mask] = torch.randn(2, 5, generator=generator) * 10
    assert torch.equal(masked_distillation_loss(student, other, mask), loss)
    nothing = masked_distillation_loss(student, target, torch.zeros(4, dtype=torch.bool))
    assert float(nothing.detach()) == 0.0


# --- the engine: each item's own target ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 1])  # batches from memory (Preloaded) and from a DataLoader's worker
def test_each_item_is_hinted_toward_its_own_target(tmp_path, monkeypatch, num_workers):
    n = 24
    write_records(tmp_path / "train", [shade_record(i) for i in range(n)], shard_size=10)
    dataset = FaceDataset(tmp_path / "train")
    targets = numbered_targets(n, masked=(3, 17))
    seen_images, seen_targets, seen_masks = [], [], []

    def spy(student, target, mask):
        seen_targets.append(target.detach().clone())
        seen_masks.append(mask.detach().clone())
        return masked_distillation_loss(student, target, mask)

    monkeypatch.setattr(engine, "masked_distillation_loss", spy)
    hinted = job(targets, num_workers=num_workers)
    hinted.backbone.register_forward_pre_hook(
        lambda module, args: seen_images.append(args[0].detach().clone()) if args[0].shape[0] > 1 else None)
    train(hinted, dataset, tmp_path / "run")
    order = list(StepBatchSampler(n, 8, 5, 0, 6))
    assert len(seen_targets) == len(order) == 6
    for images, target, mask, items in zip(seen_images, seen_targets, seen_masks, order):
        assert shade_of(images) == items  # the images the step trained on ...
        assert [int(t) for t in target[:, 0]] == items  # ... and their own targets, in the same order
        assert torch.equal(target, targets.vectors[items])
        assert mask.tolist() == [i not in (3, 17) for i in items]


def test_a_run_whose_items_have_no_target_trains_as_one_without_hints(tmp_path):
    n = 24
    write_records(tmp_path / "train", [shade_record(i) for i in range(n)], shard_size=10)
    dataset = FaceDataset(tmp_path / "train")
    train(job(None), dataset, tmp_path / "plain")
    train(job(numbered_targets(n, masked=tuple(range(n)))), dataset, tmp_path / "masked")
    train(job(numbered_targets(n)), dataset, tmp_path / "hinted")
    plain, masked, hinted = (checkpoint.load_weights(tmp_path / name / "model.pt")["backbone"]
                             for name in ("plain", "masked", "hinted"))
    assert all(torch.equal(plain[key], masked[key]) for key in plain)
    assert not all(torch.equal(plain[key], hinted[key]) for key in plain)


def test_fixed_targets_must_be_one_per_item(tmp_path):
    write_records(tmp_path / "train", [shade_record(i) for i in range(16)])
    with pytest.raises(ValueError, match="15 fixed targets for a training set of 16 items"):
        train(job(numbered_targets(15)), FaceDataset(tmp_path / "train"), tmp_path / "run")


# --- the stage: descriptors cached, reused, in the identity -------------------------------------------------------


class FakeDescriber:
    """Stands in for dlib (forked workers inherit it): a photo's vector from its bytes; 'noface' photos undetected."""

    def __init__(self, selection, upsample, fallback_crop) -> None:
        pass

    def embed_encoded(self, data: bytes, where: str) -> ReferenceEmbedding:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:4], "little")
        vector = np.random.default_rng(seed).standard_normal(EMBEDDING_SIZE).astype(np.float32)
        return ReferenceEmbedding(vector, detected="noface" not in where)


def smoke_config(reference: str | None = "dlib_resnet") -> config.Config:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["distill"]["reference_teacher"] = reference
    raw["reference"]["workers"] = 1
    raw["tracking"]["enabled"] = False
    raw["profiles"]["smoke"]["train"].update(curve_every=0, batch_size=8, iterations=4, compile="none")
    return config.resolve(raw, "smoke")


def project(root: Path, n: int = 16, photo_bytes=None) -> Paths:
    """data/raw/train (the 'original photos', one of them no aligned record has), data/aligned/train (their crops,
    in another order) and a cleaning manifest keeping all."""
    paths = Paths(root)
    photo_bytes = photo_bytes or {}
    raw = [replace(shade_record(i), image=photo_bytes.get(i, encode_png(np.full((48, 48, 3), i, np.uint8))),
                   source=shade_record(i).source + ("-noface" if i % 5 == 0 else "")) for i in range(n + 1)]
    write_records(paths.train_records(paths.raw), raw, shard_size=7)
    aligned = [replace(shade_record(i), source=raw[i].source) for i in reversed(range(n))]
    write_records(paths.train_records(paths.aligned), aligned, shard_size=7)
    paths.clean.mkdir(parents=True)
    pd.DataFrame({"kept": [True] * n}).to_parquet(paths.manifest)
    return paths


def test_the_stage_describes_the_training_photos_once_and_reuses_them(tmp_path, monkeypatch):
    from stages import distill

    monkeypatch.setattr(describer, "DlibResnet", FakeDescriber)
    cfg, paths = smoke_config(), project(tmp_path)
    distill.run(cfg, paths)
    stored = describer.read_descriptors(teacher.targets_path(paths, "dlib_resnet"))
    summary = pd.read_json(paths.reference_targets / teacher.SUMMARY, typ="series")
    sources = FaceDataset(paths.train_records(paths.aligned)).sources()
    assert sorted(stored.sources) == sorted(sources)  # the aligned records' photos; not the one never aligned
    assert (summary["photos"], summary["described"]) == (16, 16)
    assert summary["detected"] == sum("noface" not in s for s in sources)
    vectors, found = stored.lookup(sources)
    assert found.tolist() == ["noface" not in s for s in sources]
    student = seed_dir(paths, STUDENT, cfg.seeds[0]) / "model.pt"
    first = checkpoint.load_weights(student)["meta"]
    assert first["reference_teacher_targets"]["descriptors"] == teacher.descriptors_digest(stored)
    assert not (seed_dir(paths, TEACHER, cfg.seeds[0]) / "model.pt").exists()  # no teacher is trained

    before = student.stat().st_mtime_ns
    distill.run(cfg, paths)  # a rerun: nothing new to describe, the students already trained on these descriptors
    summary = pd.read_json(paths.reference_targets / teacher.SUMMARY, typ="series")
    assert summary["described"] == 0
    assert student.stat().st_mtime_ns == before


def test_changed_descriptors_change_the_students_identity(tmp_path, monkeypatch):
    from stages import distill

    monkeypatch.setattr(describer, "DlibResnet", FakeDescriber)
    cfg = smoke_config()
    paths = project(tmp_path)
    descriptors, _ = teacher.cached_descriptors(cfg, paths, "dlib_resnet")
    recipe = recipes(cfg)[STUDENT]
    train_cfg = cfg.train.model_copy(update={"iterations": recipe.iterations})

    def identity(found):
        return training_identity(cfg, paths, recipe, 0, train_cfg, torch.device("cpu"),
                                 teacher.reference_hints("dlib_resnet", found))

    changed = replace(descriptors, vectors=descriptors.vectors.copy())
    changed.vectors[3, 0] += 1e-3
    undetected = replace(descriptors, detected=np.zeros_like(descriptors.detected))
    other_settings = replace(descriptors, settings=replace(descriptors.settings, upsample=0))
    identities = [identity(d) for d in (descriptors, changed, undetected, other_settings)]
    assert len({repr(i) for i in identities}) == 4
    assert identity(descriptors) == identities[0]
    with pytest.raises(ValueError, match="distils from reference model 'dlib_resnet'"):
        training_identity(cfg, paths, recipe, 0, train_cfg, torch.device("cpu"))

    # end to end: a training photo whose bytes change is described again, and the student trains anew
    distill.run(cfg, paths)
    model = seed_dir(paths, STUDENT, cfg.seeds[0]) / "model.pt"
    first = checkpoint.load_weights(model)["meta"]["reference_teacher_targets"]
    changed_paths = project(tmp_path / "changed", photo_bytes={2: encode_png(np.full((48, 48, 3), 200, np.uint8))})
    for folder in ("data/reference_targets", "data/models"):  # the first run's outputs, as DVC persists them
        target = changed_paths.root / folder
        target.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).rename(target)
    distill.run(cfg, changed_paths)
    summary = pd.read_json(changed_paths.reference_targets / teacher.SUMMARY, typ="series")
    assert summary["described"] == 1
    second = checkpoint.load_weights(changed_paths.model_dir(STUDENT) / "seed0" / "model.pt")["meta"]
    assert second["reference_teacher_targets"]["descriptors"] != first["descriptors"]


def test_a_reference_teacher_replaces_the_teacher_row_and_recipe():
    cfg = smoke_config()
    assert TEACHER not in recipes(cfg) and TEACHER not in cfg.evaluated_models()
    assert list(cfg.tables["distill"].rows) == ["li_arcface_m040", STUDENT]
    assert recipes(cfg)[STUDENT].reference_teacher == "dlib_resnet"
    assert "dlib ResNet" in recipes(cfg)[STUDENT].label
    plain = smoke_config(None)
    assert TEACHER in recipes(plain) and list(plain.tables["distill"].rows) == ["li_arcface_m040", TEACHER, STUDENT]
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["distill"]["reference_teacher"] = "dlib_resnet"
    raw["extra_tables"]["distill"]["baseline"] = TEACHER
    with pytest.raises(ValueError, match="extra_tables.distill compares with 'teacher'"):
        config.resolve(raw, "smoke")


# --- the real model -----------------------------------------------------------------------------------------------


def test_dlib_describes_lfw_training_photos_for_the_student(tmp_path):
    lfw = lfw_root_from_env()
    if not (lfw / "pairs_view2.csv").is_file():
        pytest.skip(f"LFW is not at {lfw}")
    pytest.importorskip("dlib")
    pairs = pd.read_csv(lfw / "pairs_view2.csv")
    same, different = pairs[pairs["same"] == 1].iloc[0], pairs[pairs["same"] == 0].iloc[0]
    images = [same["img_a"], same["img_b"], different["img_b"]]
    paths = Paths(tmp_path)
    records = [FaceRecord(image=(lfw / image).read_bytes(), label=i, landmarks=NO_LANDMARKS.copy(), source=image)
               for i, image in enumerate(images)]
    write_records(paths.train_records(paths.raw), records)
    write_records(paths.train_records(paths.aligned), records)
    descriptors, summary = teacher.cached_descriptors(smoke_config(), paths, "dlib_resnet")
    vectors, found = descriptors.lookup(images)
    assert found.all() and summary.detected == 3
    alike, unlike = distance_scores(vectors[[0]], vectors[[1]]), distance_scores(vectors[[0]], vectors[[2]])
    assert alike[0] > unlike[0]  # scores are minus distances: the same person's photos are nearer


def test_the_teacher_evaluation_says_no_teacher_was_trained(tmp_path):
    from pipeline.evaluate.record import ModelEvaluation
    from stages import evaluate

    paths = Paths(tmp_path)
    evaluate.run(smoke_config(), paths, TEACHER)  # extra/dvc.yaml's evaluate_models@teacher, with nothing trained
    saved = ModelEvaluation.load(paths.metrics("eval", TEACHER))
    assert saved.seeds == {} and "reference_teacher is dlib_resnet" in saved.label
    assert pd.read_parquet(paths.eval_dir(TEACHER) / "pairs.parquet").empty
