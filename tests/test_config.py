import copy
from pathlib import Path

import pytest
import yaml

from pipeline.core import config
from pipeline.experiment.recipes import PRETRAIN, STUDENT, TEACHER, recipes


with open(config.PROJECT_ROOT / "params.yaml") as handle:
    PARAMS = yaml.safe_load(handle)


@pytest.fixture(scope="module")
def raw():
    return copy.deepcopy(PARAMS)


@pytest.mark.parametrize("profile", sorted(PARAMS["profiles"]))
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
    table3 = [name for name in cfg.tables["table3"].rows if name != "pretrain"]
    assert len(table3) == 11  # 10 published rows besides N-Softmax, plus ArcFace from scratch
    assert cfg.tables["table3"].rows["pretrain"].paper == {"lfw": 97.867, "cfp_fp": 90.457, "agedb": 86.55}
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
    from pipeline.experiment import runs

    raw = copy.deepcopy(raw)
    raw["distill"]["teacher_warmup_iterations"] = 40
    cfg = config.resolve(raw, "cpu")
    cfg = cfg.model_copy(
        update={
            "tracking": cfg.tracking.model_copy(update={"enabled": False}),
            "train": cfg.train.model_copy(update={"curve_every": 0}),
        }
    )
    seen = {}

    def fake_train(job, dataset, out_dir, **_):
        seen["train"] = job.train
        raise RuntimeError("stop here")

    monkeypatch.setattr(runs, "FaceDataset", lambda *a, **k: type("D", (), {"labels": [0, 1]})())
    monkeypatch.setattr(runs, "training_indices", lambda *a: None)
    monkeypatch.setattr(runs, "training_identity", lambda *a: {"stub": True})  # no data to hash here
    monkeypatch.setattr(runs, "train", fake_train)
    with pytest.raises(RuntimeError, match="stop here"):
        runs.train_recipe(cfg, runs.Paths(root=Path("/nonexistent")), TEACHER, 0)
    assert seen["train"].warmup_iterations == 40 and seen["train"].iterations == cfg.train.iterations


# --- issue 14, finding 7: bounds, strict types, device names, one-line errors ---------------------------------------


@pytest.mark.parametrize(
    "section, field, value",
    [
        ("train", "lr", float("inf")),
        ("train", "lr", float("nan")),
        ("train", "iterations", True),
        ("train", "batch_size", "64"),
        ("train", "lr", True),
        ("train", "lr_gamma", -0.1),
        ("train", "lr_gamma", 0.0),
        ("train", "lr_gamma", 1.5),
        ("train", "momentum", 1.0),
        ("train", "momentum", -0.1),
        ("train", "weight_decay", -1e-4),
        ("train", "embedding_wd_mult", -1.0),
        ("train", "scale", 0.0),
        ("train", "grad_clip", -1.0),
        ("evaluate", "alpha", 0.0),
        ("evaluate", "alpha", 1.0),
        ("evaluate", "fars", [0.01, 1.5]),
        ("evaluate", "fars", [0.0]),
        ("evaluate", "fars", []),
        ("evaluate", "folds", 1),
        ("distill", "weight", float("nan")),
        ("distill", "teacher_embedding_size", 0),
        ("distill", "teacher_iterations", 0),
        ("clean", "threshold", -1.0),
        ("align", "crop_size", 48.0),
        ("data", "skip_corrupt", "yes"),
    ],
)
def test_numeric_parameters_are_bounded_finite_and_strictly_typed(raw, section, field, value):
    bad = copy.deepcopy(raw)
    bad["profiles"]["cpu"].setdefault(section, {})[field] = value  # the profile's value wins
    with pytest.raises(ValueError, match=rf"{section}\.{field}"):
        config.resolve(bad, "cpu")


def test_seeds_and_row_overrides_are_bounded(raw):
    for path, value in ((("seeds",), [-1]), (("rows", "cosface", "weight_decay"), -1e-4)):
        bad = copy.deepcopy(raw)
        bad["profiles"]["cpu"].pop("seeds")
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ValueError, match=path[0]):
            config.resolve(bad, "cpu")


def test_clean_threshold_is_checked_per_method(raw):
    for method, threshold in (("absolute", 2.5), ("percentile", 0.0), ("percentile", 101.0)):
        bad = copy.deepcopy(raw)
        bad["clean"].update(method=method, threshold=threshold)
        with pytest.raises(ValueError, match="clean.threshold"):
            config.resolve(bad, "cpu")


@pytest.mark.parametrize("section", ["train", "align"])
def test_device_names_are_checked(raw, section):
    for name in ("gpu", "cuda0", "cuda:x", "CPU", ""):
        bad = copy.deepcopy(raw)
        bad["profiles"]["cpu"].setdefault(section, {})["device"] = name
        with pytest.raises(ValueError, match=rf"{section}\.device"):
            config.resolve(bad, "cpu")
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        good = copy.deepcopy(raw)
        good["profiles"]["cpu"].setdefault(section, {})["device"] = name
        assert getattr(config.resolve(good, "cpu"), section).device == name


def test_a_bad_profile_structure_is_one_value_error(raw):
    cases = []
    bad = copy.deepcopy(raw)
    bad["profile"] = 3
    cases.append((bad, "profile must be a profile name"))
    bad = copy.deepcopy(raw)
    bad["profile"] = ["cpu"]
    cases.append((bad, "profile must be a profile name"))
    bad = copy.deepcopy(raw)
    bad["profiles"]["cpu"] = ["train"]
    cases.append((bad, "profiles.cpu must be a mapping"))
    bad = copy.deepcopy(raw)
    bad["profiles"] = ["cpu"]
    cases.append((bad, "profiles must be a mapping"))
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            config.resolve(params, source="params.yaml")


def test_validation_errors_are_one_line(raw):
    bad = copy.deepcopy(raw)
    bad["train"].update(lr=-1.0, momentum=2.0)
    with pytest.raises(ValueError) as caught:
        config.resolve(bad, "cpu")
    message = str(caught.value)
    assert "\n" not in message and "train.lr" in message and "train.momentum" in message


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: cpu\ntrain:\n  lr: [0.1\n  momentum: 0.9\n")
    with pytest.raises(ValueError, match=rf"{tmp_path}.*params\.yaml:\d+:\d+: YAML syntax error") as caught:
        config.load(path)
    assert "\n" not in str(caught.value)


# --- issue 14: one source of truth for defaults, no unused parameters -----------------------------------------------


def test_params_yaml_is_the_one_source_of_defaults(raw):
    """A field params.yaml sets in a base section has no second default in config.py."""
    for section, value in raw.items():
        if section in ("profile", "profiles", "rows", "extra_rows", "tables", "extra_tables", "protocols") or not \
                isinstance(value, dict):
            continue
        model = config.Config.model_fields[section].annotation
        assert set(value) <= set(model.model_fields), section
        with_default = sorted(name for name in value if not model.model_fields[name].is_required())
        assert not with_default, f"{section}: {with_default} also have a default in config.py"


def test_unused_parameters_are_gone():
    assert "bootstrap" not in config.EvaluateConfig.model_fields


@pytest.mark.parametrize("change, message", [
    (lambda t: t["table2"]["rows"].update({"nope": {}}), r"extra_tables.table2.rows: 'nope' is not a trained model"),
    (lambda t: t["table2"].update({"baseline": "cosface"}), r"'cosface' is compared but is not one of the table's rows"),
    (lambda t: t["table2"].update({"compare": [["wd5e4", "wd5e4", "wd5e4"]]}), r"extra_tables.table2.compare.0"),
    (lambda t: t["table2"]["rows"]["wd5e4"].update({"paper": {"megaface": 1.0}}),
     r"extra_tables.table2: .*rows.wd5e4.paper: \['megaface'\] are not paper_columns"),
    (lambda t: t.update({"Table 9": t["table2"]}), r"extra_tables.Table 9: a table's name is a file name"),
    (lambda t: t["table2"].pop("paper_source"), r"extra_tables.table2: .*paper_columns needs paper_source"),
    (lambda t: t["table2"].update({"rows": {}}), r"extra_tables.table2.rows: .*at least 1 item"),
])
def test_a_bad_table_is_named(raw, change, message):
    """Named as params.yaml spells it: table2 is under extra_tables."""
    raw = copy.deepcopy(raw)
    change(raw["extra_tables"])
    with pytest.raises(ValueError, match=message):
        config.resolve(raw, "cpu")


@pytest.mark.parametrize("section, table", [("tables", "table3"), ("extra_tables", "table2")])
def test_a_table_is_named_under_the_section_that_holds_it(raw, section, table):
    bad = copy.deepcopy(raw)
    bad[section][table]["rows"]["nope"] = {}
    with pytest.raises(ValueError, match=rf"\b{section}\.{table}\.rows: 'nope' is not a trained model"):
        config.resolve(bad, "cpu")
    bad = copy.deepcopy(raw)
    bad[section]["Table 9"] = bad[section][table]
    with pytest.raises(ValueError, match=rf"\b{section}\.Table 9: a table's name is a file name"):
        config.resolve(bad, "cpu")


def test_a_table_cannot_show_the_distillation_when_it_is_off(raw):
    raw = copy.deepcopy(raw)
    raw["distill"]["enabled"] = False
    with pytest.raises(ValueError, match=r"extra_tables.distill.rows: 'teacher' is not a trained model"):
        config.resolve(raw, "cpu")
    del raw["extra_tables"]["distill"]
    assert "distill" not in config.resolve(raw, "cpu").tables


# --- the default run (params rows, tables: dvc.yaml) and the other tables (extra_rows, extra_tables) ------------------


def test_extra_rows_and_tables_join_the_default_ones_in_params_order(raw):
    cfg = config.resolve(raw, "cpu")
    assert list(cfg.rows) == [*raw["rows"], *raw["extra_rows"]]
    assert list(cfg.tables) == [*raw["tables"], *raw["extra_tables"]]
    assert cfg.default_rows == list(raw["rows"]) and cfg.default_tables == list(raw["tables"]) == ["table3"]
    assert cfg.default_models() == [PRETRAIN, *raw["rows"]]
    assert cfg.rows["wd5e4"].embedding_wd_mult == raw["extra_rows"]["wd5e4"]["embedding_wd_mult"]
    assert cfg.tables["facex_heads"].title == raw["extra_tables"]["facex_heads"]["title"]
    assert {cfg.params_key("rows", n) for n in raw["extra_rows"]} == {"extra_rows"}
    assert {cfg.params_key("rows", n) for n in raw["rows"]} == {"rows"}


@pytest.mark.parametrize("key, name", [("rows", "cosface"), ("rows", "wd5e4"), ("tables", "table3"),
                                       ("tables", "table2")])
def test_a_name_in_both_sections_is_refused_naming_it(raw, key, name):
    bad = copy.deepcopy(raw)
    default, extra = bad[key], bad[f"extra_{key}"]
    (default if name in extra else extra)[name] = copy.deepcopy({**default, **extra}[name])
    with pytest.raises(ValueError, match=rf"params.yaml: {name} in both {key} and extra_{key}: a name is in one"):
        config.resolve(bad, "cpu", source="params.yaml")


@pytest.mark.parametrize("shown", ["wd5e4", "facex_adacos", "teacher", "student"])
def test_a_default_table_that_shows_a_model_the_default_run_lacks_is_refused(raw, shown):
    bad = copy.deepcopy(raw)
    bad["tables"]["table3"]["rows"][shown] = {}
    with pytest.raises(ValueError, match=rf"tables.table3 shows {shown}, which the default run does not train: "
                                         "move the table to extra_tables"):
        config.resolve(bad, "cpu")
    bad["extra_tables"]["table3"] = bad["tables"].pop("table3")  # the same table among the others is fine
    assert config.resolve(bad, "cpu").default_tables == []


@pytest.mark.parametrize("key", ["default_rows", "default_tables"])
def test_the_default_run_lists_are_not_parameters(raw, key):
    bad = copy.deepcopy(raw)
    bad[key] = list(raw[key.removeprefix("default_")])
    with pytest.raises(ValueError, match=rf"params.yaml: {key} is not a parameter: the default run's rows and tables "
                                         rf"are those of `{key.removeprefix('default_')}`"):
        config.resolve(bad, "cpu", source="params.yaml")


@pytest.mark.parametrize("field, value, message", [
    ("weight_decay", -1e-4, r"extra_rows\.wd5e4\.weight_decay: Input should be greater than or equal to 0"),
    ("typo", 1, r"extra_rows\.wd5e4\.typo: Extra inputs are not permitted"),
    ("margins", "big", r"extra_rows\.wd5e4\.margins: "),
])
def test_an_error_inside_an_extra_row_is_named_as_params_spells_it(raw, field, value, message):
    bad = copy.deepcopy(raw)
    bad["extra_rows"]["wd5e4"][field] = value
    with pytest.raises(ValueError, match=message) as caught:
        config.resolve(bad, "cpu")
    assert " rows.wd5e4" not in str(caught.value)
    bad = copy.deepcopy(raw)
    bad["rows"]["cosface"][field] = value  # a default row keeps its own section's name
    with pytest.raises(ValueError, match=message.replace("extra_rows", "rows").replace("wd5e4", "cosface")) as caught:
        config.resolve(bad, "cpu")
    assert "extra_rows" not in str(caught.value)


def test_the_distillation_student_row_is_a_default_row(raw):
    """extra/dvc.yaml's distill stage declares rows.<student_row> as a parameter: DVC would fail it after the teacher
    trained, on a student row kept under extra_rows."""
    bad = copy.deepcopy(raw)
    student = bad["distill"]["student_row"]
    bad["extra_rows"][student] = bad["rows"].pop(student)
    for table in bad["tables"].values():
        table["rows"].pop(student, None)
        table["compare"] = [pair for pair in table.get("compare", []) if student not in pair]
    with pytest.raises(ValueError, match=rf"distill.student_row '{student}' is not a key of rows: the distill stage "
                                         rf"reads rows.{student}; move it from extra_rows"):
        config.resolve(bad, "cpu")
    bad["distill"]["enabled"] = False
    for table in [t for t, spec in bad["extra_tables"].items() if {"teacher", "student"} & set(spec["rows"])]:
        del bad["extra_tables"][table]
    assert student in config.resolve(bad, "cpu").rows


# --- what the typed config accepted and a later stage refused or misread -----------------------------


def test_a_seed_listed_twice_is_refused(raw):
    bad = copy.deepcopy(raw)
    bad["profiles"]["cpu"]["seeds"] = [0, 0, 1]
    with pytest.raises(ValueError, match=r"seeds: Value error, listed more than once: 0;"):
        config.resolve(bad, "cpu")


@pytest.mark.parametrize("section", ["rows", "extra_rows"])
@pytest.mark.parametrize("name", ["my row", "cosface-2", "2cosface", "coś", ""])
def test_a_row_name_that_is_not_an_identifier_is_refused(raw, name, section):
    bad = copy.deepcopy(raw)
    bad[section][name] = dict(bad["rows"]["cosface"])
    with pytest.raises(ValueError, match=rf"error, {section}: {name!r} is not a valid row name"):
        config.resolve(bad, "cpu")


@pytest.mark.parametrize("text, suggestion", [
    ("1e-3", "1.0e-3"), ("5E4", "5.0E+4"), ("-2e+5", "-2.0e+5"), ("1.5e3", "1.5e+3"),
])
def test_a_number_yaml_reads_as_text_says_how_to_write_it(tmp_path, text, suggestion):
    path = tmp_path / "params.yaml"
    path.write_text((config.PROJECT_ROOT / "params.yaml").read_text().replace("  lr: 0.1\n", f"  lr: {text}\n"))
    with pytest.raises(ValueError, match=r"train\.lr: ") as caught:
        config.load(path)
    assert f"write {suggestion} (YAML 1.1 reads {text} as text)" in str(caught.value)
    assert isinstance(yaml.safe_load(f"x: {suggestion}")["x"], float)  # the suggestion is a number to YAML 1.1


def test_an_integer_yaml_reads_as_text_says_how_to_write_it(raw):
    bad = copy.deepcopy(raw)
    bad["profiles"]["cpu"]["train"]["iterations"] = "3e2"
    with pytest.raises(ValueError, match=r"train.iterations: .*write 300 \(YAML 1.1 reads 3e2 as text\)"):
        config.resolve(bad, "cpu")
