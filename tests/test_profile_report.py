"""pipeline/profiles/report.py: a profile's run collected into reports/<profile>/ with its summary table."""
import json
import shutil

import pytest

from pipeline.core import config

from pipeline.profiles import params
from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.config import PROJECT_ROOT
from pipeline.evaluate.record import ModelEvaluation, PairFigures, SeedEvaluation
from pipeline.profiles.report import collect

RUN = {"commit": "abc1234", "seconds": 1234, "cpus": 2, "load_before": "1.0 1.0 1.0", "load_after": "2.0 2.0 2.0"}


def tally(detected: int, no_face: list[str]) -> dict:
    looked = detected + len(no_face)
    return {"given": 0, "detected": detected, "no_face": len(no_face), "no_face_sources": no_face,
            "resized_whole": 0, "detection_rate": detected / looked}


@pytest.fixture()
def work(tmp_path):
    reports = tmp_path / "work" / "reports"
    write_json_atomic(reports / "data.json", {
        "source": "lfw", "train": {"persons": 3, "images": 12, "skipped": []},
        "evaluated_on": "lfw-devtest: DevTest pairs", "not_evaluated": "lfw-view2: shares persons with DevTrain"})
    write_json_atomic(reports / "align.json", {
        "train_landmarks": tally(9, ["lfw-deepfunneled/Ann/Ann_0003.jpg"]),
        "benchmarks": {"lfw-devtest": {"images": 4, "pairs": 2, "landmarks": tally(4, [])}}})
    figures = PairFigures(accuracy=0.8, accuracy_std=0.04, accuracy_flip=0.825, accuracy_flip_std=0.05,
                         insightface_accuracy=0.8, insightface_accuracy_std=0.04, tar_at_far={0.01: 0.4})
    seed = SeedEvaluation(diverged_at_step=None, train={}, benchmarks={"lfw-devtest": figures}, timing=None)
    ModelEvaluation("cosface", "CosFace", True, {0: seed}).save(reports / "metrics" / "eval" / "cosface.json")
    (reports / "table3.md").write_text("| Row |\n")
    (reports / "cleaning_tests.csv").write_text("a,b\n")
    shutil.copyfile(PROJECT_ROOT / "params.yaml", tmp_path / "work" / "params.yaml")  # the run's own tables
    return tmp_path / "work"


def test_collect_writes_the_summary_and_copies_the_tables(work, tmp_path):
    out = tmp_path / "reports" / "lfw"
    summary = collect(work, out, "lfw", RUN)
    table = (out / "table.md").read_text()
    assert "| train | 10 | 9 | 1 | 90.00% |" in table and "| lfw-devtest | 4 | 4 | 0 | 100.00% |" in table
    assert "`Ann_0003.jpg`" in table
    assert "| CosFace (`cosface`, seed 0) | 82.50 (±5.00) | 80.00 | 40.00 |" in table
    assert "not scored on: lfw-view2: shares persons with DevTrain" in table and "1,234 s" in table
    assert (out / "table3.md").read_text() == "| Row |\n" and (out / "eval" / "cosface.json").is_file()
    assert (out / "cleaning_tests.csv").is_file() and not (out / "table2.md").exists()  # what the run wrote
    assert json.loads((out / "summary.json").read_text())["detection"] == summary["detection"]


def test_the_tables_of_earlier_calls_and_those_no_call_built_are_named(work, tmp_path):
    (work / "reports" / "facex_heads.md").write_text("| Head |\n")
    (work / "reports" / "extra").mkdir()
    (work / "reports" / "extra" / "seed_noise.md").write_text("# Seed noise\n")  # the other tables' report
    run = {**RUN, "arguments": "table@facex_heads data.lfw_min_images=8", "targets": ["table@facex_heads"]}
    summary = collect(work, tmp_path / "out", "lfw", run)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "`bash scripts/reproduce-profile lfw table@facex_heads data.lfw_min_images=8` at commit `abc1234` built " \
           "facex_heads," in table
    assert "`facex_heads` (this call); `table3`, `cleaning` (from an earlier call in the clone, not checked by this one)" in table
    assert "Not built in this clone: `table2`, `distill`: `bash scripts/reproduce-profile lfw table@NAME " \
           "data.lfw_min_images=8` builds one, `--all` every table." in table
    assert summary["tables"] == {"built": ["facex_heads"], "earlier": ["table3", "cleaning"], "missing": ["table2", "distill"]}
    assert (tmp_path / "out" / "facex_heads.md").is_file() and (tmp_path / "out" / "extra" / "seed_noise.md").is_file()


def test_a_folders_run_names_its_trained_and_held_out_persons(work, tmp_path):
    write_json_atomic(work / "reports" / "data.json", {
        "source": "folders", "root": "/photos", "images": 12, "labels": {"Ann": 0, "Bob": 1, "Cy": 2},
        "folders-heldout": {"persons": ["Di", "Ed"], "seed": 0, "images": 8, "pairs": 20, "folds": 10}})
    collect(work, tmp_path / "out", "folders", RUN)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "- trained on 3 persons, 12 photos (source `folders`, `/photos`)" in table
    assert "- scored on: folders-heldout: 2 persons held out of training (seed 0), 8 photos, 20 pairs in 10 folds" in table


def test_an_unfinished_run_is_named_and_leaves_no_output(work, tmp_path):
    (work / "reports" / "align.json").unlink()
    with pytest.raises(FileNotFoundError, match="align.json"):
        collect(work, tmp_path / "out", "lfw", RUN)
    assert not (tmp_path / "out").exists()


def test_profile_params_sets_the_profile_and_overrides_and_validates(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((config.PROJECT_ROOT / "params.yaml").read_text())
    cfg = params.apply(path, "lfw", ["data.lfw_min_images=8", "align.min_face_size=40"])
    assert cfg.profile == "lfw" and cfg.data.lfw_min_images == 8 and cfg.align.min_face_size == 40
    assert config.load(path) == cfg  # what was written is what was validated
    before = path.read_text()
    for bad, message in ((["align.min_face_sise=40"], "min_face_sise"), (["data"], "KEY=VALUE"),
                         (["data.source.x=1"], "not a section"), (["align.min_face_size=4"], "min_face_size")):
        with pytest.raises(ValueError, match=message):
            params.apply(path, "lfw", bad)
    with pytest.raises(ValueError, match="'nope' is not defined"):
        params.apply(path, "nope", [])
    assert path.read_text() == before  # a refused override writes nothing
    mine = params.apply(path, "folders", ["data.folders_root=/home/me/photos"])
    assert mine.data.source == "folders" and mine.data.folders_root == "/home/me/photos" and mine.align.detector == "mtcnn"
