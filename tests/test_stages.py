"""Stage entry points: bad input gets an error naming the parameter, file or record, and leaves no half output."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import config, stage
from pipeline.data.images import encode_png
from pipeline.data.records import FaceRecord, write_records
from pipeline.core.paths import Paths
from stages import align, synthesize, validate


@pytest.fixture()
def smoke_params(tmp_path):
    """The smoke profile's params.yaml beside the project's dvc.yaml (stage validate reads its evaluation inputs), in
    params order (the default run's rows are dvc.yaml's, in that order)."""
    raw = yaml.safe_load((config.PROJECT_ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy(config.PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    return path, raw


def test_bad_synthetic_parameter_names_it_and_writes_nothing(tmp_path, smoke_params):
    path, raw = smoke_params
    raw["profiles"]["smoke"]["data"]["synthetic"]["train_identitiez"] = 3
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "stages.synthesize", "--params", str(path)],
        capture_output=True, text=True, cwd=config.PROJECT_ROOT,
    )
    assert result.returncode == 1
    assert "train_identitiez" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "raw").exists()


def test_corrupt_image_names_the_record_and_leaves_no_aligned_data(tmp_path, smoke_params):
    path, _ = smoke_params
    paths = Paths(tmp_path)
    good = encode_png(np.zeros((40, 40, 3), np.uint8))
    landmarks = np.array([[14, 16], [26, 16], [20, 22], [15, 28], [25, 28]], np.float32)
    records = [FaceRecord(good, 0, landmarks, "ok.png"), FaceRecord(good[: len(good) // 2], 0, landmarks, "broken.png")]
    write_records(paths.raw / "train", records)
    with pytest.raises(ValueError, match="broken.png"):
        align.run(config.load(path), paths)
    assert not paths.aligned.exists()


def test_skip_corrupt_counts_instead_of_failing(tmp_path, smoke_params):
    path, raw = smoke_params
    raw["data"]["skip_corrupt"] = True
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    paths = Paths(tmp_path)
    good = encode_png(np.zeros((40, 40, 3), np.uint8))
    landmarks = np.array([[14, 16], [26, 16], [20, 22], [15, 28], [25, 28]], np.float32)
    write_records(paths.raw / "train", [FaceRecord(good, 0, landmarks, "ok.png"), FaceRecord(b"junk", 0, landmarks, "bad.png")])
    summary = align.run(config.load(path), paths)
    assert summary["train_images"] == 1 and summary["skipped"] == 1 and "bad.png" in summary["skipped_detail"][0]


def test_synthesize_is_deterministic(tmp_path, smoke_params):
    path, _ = smoke_params
    cfg = config.load(path)
    first, second = Paths(tmp_path / "a"), Paths(tmp_path / "b")
    synthesize.run(cfg, first)
    synthesize.run(cfg, second)
    for part in sorted((first.raw).rglob("*.parquet")):
        twin = second.raw / part.relative_to(first.raw)
        assert part.read_bytes() == twin.read_bytes(), part


# --- issue 14, finding 5: params are checked by a fast stage that writes a constant marker --------------------------


def run_validate(path):
    """The stage as DVC runs it: for what the process prints and exits with."""
    return subprocess.run(
        [sys.executable, "-m", "stages.validate", "--params", str(path)],
        capture_output=True, text=True, cwd=config.PROJECT_ROOT, timeout=60,
    )


def validate_in_process(path: Path) -> str | None:
    """What `python -m stages.validate --params path` ends with, in this process (a subprocess spends 3-5 s
    importing torch): None where it succeeds, else the one line stage.main prints; a code fault, for which
    stage.main keeps the traceback, raises here."""
    try:
        validate.run(config.load(path), Paths(path.parent))
    except Exception as error:
        message = stage.failure("validate", error, path.parent)
        if message is None:
            raise
        return message
    return None


def test_validate_fails_with_one_line_and_writes_nothing(tmp_path, smoke_params):
    path, raw = smoke_params
    raw["train"]["lr_gamma"] = -0.1
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_validate(path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("stage validate failed: ")
    assert "train.lr_gamma" in result.stderr
    path.write_text("profile: smoke\ntrain: [unclosed\n")
    result = run_validate(path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "YAML syntax error" in result.stderr
    assert set(tmp_path.iterdir()) == {path, tmp_path / "dvc.yaml"}


def test_validate_writes_a_constant_marker(tmp_path, smoke_params):
    path, raw = smoke_params
    marker = tmp_path / "reports" / "params_valid.txt"
    assert validate_in_process(path) is None
    first = marker.read_bytes()
    raw["train"]["lr"] = 0.05
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert validate_in_process(path) is None
    assert marker.read_bytes() == first == b"params.yaml valid\n"
    assert sorted(p.name for p in marker.parent.iterdir()) == ["evaluation_plan", "params_valid.txt"]


def test_the_evaluation_plan_follows_the_tables_benchmarks(tmp_path, smoke_params):
    """A model is evaluated on a held-out protocol when a table showing it lists that protocol; a table edit that
    leaves a model's list as it was leaves its plan file byte-identical (so DVC reruns no evaluation)."""
    path, raw = smoke_params
    plan = tmp_path / "reports" / "evaluation_plan"
    assert validate_in_process(path) is None
    facex = raw["extra_tables"]["facex_heads"]
    read = lambda model: json.loads((plan / f"{model}.json").read_text())["protocols"]  # noqa: E731
    assert sorted(read("cosface")) == sorted(b for b in raw["protocols"] if b in facex["benchmarks"])
    assert read("pretrain") == [] and read("li_arcface_m040_ns") == []
    before = {p.name: p.read_bytes() for p in plan.iterdir()}
    raw["tables"]["margins"] = {"title": "t", "rows": {"cosface": {}, "pretrain": {}}, "baseline": "pretrain"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert validate_in_process(path) is None
    assert {p.name: p.read_bytes() for p in plan.iterdir()} == before
    raw["tables"]["margins"]["benchmarks"] = ["synth-lfw", "synth-megaface"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert validate_in_process(path) is None
    assert read("pretrain") == ["synth-megaface"]
    assert (plan / "cosface.json").read_bytes() == before["cosface.json"]  # facex_heads already lists both


def test_a_bad_held_out_protocol_is_named_by_validate(tmp_path, smoke_params):
    path, raw = smoke_params
    for bad, named in [
        ({"kind": "cross_pose", "block": 4, "family_size": 1}, "protocols.synth-cplfw.family_size"),
        ({"kind": "cross_pose", "block": 2}, "protocols.synth-cplfw.block"),
        ({"kind": "cross_pose", "block": 5}, "block 5 is also"),  # synth-calfw's block: both are named
        ({"kind": "sideways", "block": 4}, "protocols.synth-cplfw.kind"),
        ({"kind": "cross_pose", "block": 4, "yaw": 3}, "protocols.synth-cplfw: unknown parameter"),
    ]:
        raw["protocols"]["synth-cplfw"] = bad
        raw["profiles"]["smoke"]["protocols"].pop("synth-cplfw", None)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        message = validate_in_process(path)
        assert message is not None and named in message and "protocols.synth-cplfw" in message, (bad, message)


# --- validate builds what a run will build, so a typo stops `dvc repro` before any stage -----------


def test_validate_refuses_what_only_a_later_stage_read_with_one_line_and_writes_nothing(tmp_path, smoke_params):
    """One process for a refusal by the preflight checks (a YAML hint in-process): the checks themselves are
    tests/test_validate.py's."""
    path, raw = smoke_params
    raw["backbone"]["name"] = "mobilefacenett"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_validate(path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "backbone.name: unknown backbone 'mobilefacenett'" in result.stderr
    assert set(tmp_path.iterdir()) == {path, tmp_path / "dvc.yaml"}
    raw["backbone"]["name"] = "mobilefacenet"
    path.write_text(yaml.safe_dump(raw, sort_keys=False).replace("lr: 0.1\n", "lr: 1e-3\n"))
    message = validate_in_process(path)
    assert message is not None and "train.lr" in message, message
    assert "write 1.0e-3 (YAML 1.1 reads 1e-3 as text)" in message
