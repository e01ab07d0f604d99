import copy

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
