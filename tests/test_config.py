import copy
from pathlib import Path

import pytest
import yaml

from pipeline import config
from pipeline.recipes import PRETRAIN, STUDENT, TEACHER, recipes


@pytest.fixture(scope="module")
def raw():
    with open(config.PROJECT_ROOT / "params.yaml") as handle:
        return yaml.safe_load(handle)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_profile_validates(raw, profile):
    cfg = config.resolve(raw, profile)
    assert cfg.profile == profile
    assert set(recipes(cfg)) >= {PRETRAIN, TEACHER, STUDENT, *cfg.rows}


def test_profile_overrides_only_what_it_names(raw):
    base = config.resolve(raw, "paper")
    smoke = config.resolve(raw, "smoke")
    assert smoke.train.iterations < base.train.iterations
    assert smoke.train.momentum == base.train.momentum == 0.9
    assert smoke.rows == base.rows


def test_table3_rows_match_the_paper(raw):
    cfg = config.resolve(raw, "cpu")
    table3 = [name for name, row in cfg.rows.items() if "table3" in row.tables]
    assert len(table3) == 11  # 10 published rows besides N-Softmax, plus ArcFace from scratch
    assert cfg.pretrain.paper == {"lfw": 97.867, "cfp_fp": 90.457, "agedb": 86.55}
    ns_rows = {n for n in table3 if cfg.rows[n].init == "pretrain"}
    assert ns_rows == {"li_arcface_m040_ns", "li_arcface_m045_ns", "arcface_m040_ns", "arcface_m045_ns", "arcface_m050_ns"}


def test_paper_schedule_fractions(raw):
    cfg = config.resolve(raw, "paper")
    steps = [round(f * cfg.train.iterations) for f in cfg.train.lr_milestones]
    assert steps == [18000, 26000, 29000]


def test_errors_name_the_parameter(raw):
    bad = copy.deepcopy(raw)
    bad["train"]["momentum"] = "fast"
    with pytest.raises(ValueError, match="train.momentum"):
        config.resolve(bad, "cpu")
    with pytest.raises(ValueError, match="profile 'nope'"):
        config.resolve(raw, "nope")
    bad = copy.deepcopy(raw)
    bad["rows"]["cosface"]["typo"] = 1
    with pytest.raises(ValueError, match="typo"):
        config.resolve(bad, "cpu")
    bad = copy.deepcopy(raw)
    bad["distill"]["student_row"] = "missing"
    with pytest.raises(ValueError, match="student_row"):
        config.resolve(bad, "cpu")


def test_student_copies_its_row_and_adds_the_teacher(raw):
    cfg = config.resolve(raw, "cpu")
    found = recipes(cfg)
    student, plain = found[STUDENT], found[cfg.distill.student_row]
    assert (student.head, student.margins, student.backbone) == (plain.head, plain.margins, plain.backbone)
    assert student.teacher == TEACHER and student.distill_weight == cfg.distill.weight


def test_teacher_has_its_own_warmup_and_rows_keep_the_train_sections(raw):
    raw = copy.deepcopy(raw)
    raw["train"]["warmup_iterations"] = 7
    raw["distill"]["teacher_warmup_iterations"] = 40
    found = recipes(config.resolve(raw, "cpu"))
    assert found[TEACHER].warmup_iterations == 40
    assert {name: r.warmup_iterations for name, r in found.items() if name != TEACHER} == dict.fromkeys(
        (name for name in found if name != TEACHER), 7
    )
    assert found[TEACHER].description(0, 48, 64, 64.0)["warmup_iterations"] == 40


def test_train_recipe_hands_the_recipe_warmup_to_the_engine(monkeypatch, raw):
    from pipeline import runs

    raw = copy.deepcopy(raw)
    raw["distill"]["teacher_warmup_iterations"] = 40
    cfg = config.resolve(raw, "cpu")
    cfg = cfg.model_copy(
        update={"tracking": config.TrackingConfig(enabled=False), "train": cfg.train.model_copy(update={"curve_every": 0})}
    )
    seen = {}

    def fake_train(job, dataset, out_dir, **_):
        seen["train"] = job.train
        raise RuntimeError("stop here")

    monkeypatch.setattr(runs, "FaceDataset", lambda *a, **k: type("D", (), {"labels": [0, 1]})())
    monkeypatch.setattr(runs, "training_indices", lambda *a: None)
    monkeypatch.setattr(runs, "train", fake_train)
    with pytest.raises(RuntimeError, match="stop here"):
        runs.train_recipe(cfg, runs.Paths(root=Path("/nonexistent")), TEACHER, 0)
    assert seen["train"].warmup_iterations == 40 and seen["train"].iterations == cfg.train.iterations
