"""Issue 25, item 3: what a new user met. A stage that fails for a reason the user can fix (memory, a full disk,
Ctrl-C, a missing or damaged input) ends with one line that says what to do, not a traceback; a resume says which
parameters changed, once; `scripts/reproduce-profile` refuses an unknown profile without leaving a clone."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.core import config, stage
from pipeline.core.config import PROJECT_ROOT
from pipeline.data import records
from pipeline.data.images import encode_png
from pipeline.data.records import NO_LANDMARKS, FaceRecord, write_records
from pipeline.core.paths import Paths
from pipeline.evaluate.record import ModelEvaluation
from pipeline.experiment.recipes import trained_models
from pipeline.experiment.runs import train_recipe
from stages import align, clean, distill, evaluate, pretrain, report, synthesize, table, train
from tests.test_resume_pipeline import copy_project


@pytest.fixture()
def smoke(tmp_path):
    """The smoke profile's params.yaml in an empty project folder, in params order (a table reads its rows in
    order): (its path, the raw parameters)."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


@pytest.fixture()
def entry_point(monkeypatch, capsys):
    """Run `stage.main(name, run, ...)` in this process as `python -m stages.<name> ARGS` would: (exit code, stderr)."""
    previous = signal.getsignal(signal.SIGTERM)  # stage.main turns SIGTERM into SystemExit; give pytest its own back

    def call(name, run, args, add_arguments=None):
        monkeypatch.setattr(sys, "argv", [f"stages.{name}", *map(str, args)])
        try:
            with pytest.raises(SystemExit) as exited:
                stage.main(name, run, add_arguments)
        except KeyboardInterrupt:  # escaping, it would end the test session as a Ctrl-C does
            pytest.fail("KeyboardInterrupt escaped stage.main")
        return exited.value.code, capsys.readouterr().err

    yield call
    signal.signal(signal.SIGTERM, previous)


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.endswith("\n") and "Traceback" not in stderr, stderr
    return stderr.rstrip("\n")


# --- run-time failures end with one line -----------------------------------------------------------------------


def allocate_with_pil(cfg, paths):
    raise MemoryError()  # what PIL's Image.new raised at align.crop_size 100000: no message at all


def allocate_with_numpy(cfg, paths):
    np.empty(1 << 60, np.uint8)  # an exabyte: more than any address space, so it fails on every machine


def allocate_with_torch(cfg, paths):
    torch.empty(1 << 60, dtype=torch.uint8)  # torch reports it as a RuntimeError (backbone.embedding_size 10^9)


@pytest.mark.parametrize("run, size", [
    (allocate_with_pil, None), (allocate_with_numpy, "1.00 EiB"), (allocate_with_torch, "1.2 EB"),
])
def test_running_out_of_memory_is_one_line_naming_the_sizes_to_check(smoke, entry_point, run, size):
    path, _ = smoke
    code, stderr = entry_point("align", run, ["--params", path])
    line = one_line(stderr)
    assert code == 1 and line.startswith("stage align failed: out of memory"), line
    assert "align.crop_size" in line and "backbone.embedding_size" in line
    assert size is None or f"it tried to allocate {size}" in line, line


def test_a_full_disk_during_synthesize_is_one_line_and_leaves_nothing(smoke, entry_point, monkeypatch):
    path, _ = smoke
    write_table = records.pq.write_table

    def disk_fills(table, where, **kwargs):  # the second shard finds the disk full, half written, as pyarrow does
        if disk_fills.calls:
            Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        disk_fills.calls += 1
        write_table(table, where, **kwargs)

    disk_fills.calls = 0
    monkeypatch.setattr(records.pq, "write_table", disk_fills)
    code, stderr = entry_point("synthesize", synthesize.run, ["--params", path])
    line = one_line(stderr)
    assert code == 1 and line.startswith(f"stage synthesize failed: disk full writing under {path.parent} ("), line
    assert disk_fills.calls == 1
    assert not (path.parent / "data").exists() or not any((path.parent / "data").iterdir())  # nothing partial


def test_a_full_disk_names_the_file_when_the_error_does(smoke, entry_point):
    path, _ = smoke
    target = path.parent / "reports" / "data.json"

    def run(cfg, paths):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    code, stderr = entry_point("synthesize", run, ["--params", path])
    assert code == 1 and one_line(stderr).startswith(f"stage synthesize failed: disk full writing {target} (")


def test_ctrl_c_is_one_line_and_exit_code_130(smoke, entry_point):
    path, _ = smoke

    def run(cfg, paths, row):
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; Python raises KeyboardInterrupt where it lands
        time.sleep(30)

    # Ctrl-C reaches a stage's own interpreter under Python's default handler; a library an earlier test loaded into
    # this process may have left another handler (the whole suite's order met that), so the test sets Python's own.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, stderr = entry_point("train", run, ["--params", path, "--row", "cosface"], train._arguments)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert one_line(stderr) == "interrupted: stage train stopped; `dvc repro` resumes it"


def test_a_fault_in_the_code_keeps_its_traceback(smoke, entry_point):
    path, _ = smoke

    def run(cfg, paths):
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        entry_point("align", run, ["--params", path])


# --- an earlier stage's output: missing, or damaged ---------------------------------------------------------------


def make_dirs(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


MISSING = {  # stage: (its run's keyword arguments, what exists already, the path it misses, the stage writing it)
    "align": ({}, lambda p: None, "data/raw/train", "synthesize"),
    "clean": ({}, lambda p: None, "data/aligned/train", "align"),
    "pretrain": ({}, lambda p: make_dirs(p.aligned / "train"), "data/clean/manifest.parquet", "clean"),
    "train": ({"row": "li_arcface_m040_ns"}, lambda p: (make_dirs(p.aligned / "train"), touch(p.manifest)),
              "data/models/pretrain/seed0/model.pt", "pretrain"),
    "distill": ({}, lambda p: None, "data/aligned/train", "align"),
    "evaluate": ({"model": "cosface"}, lambda p: make_dirs(p.aligned / "benchmarks"),
                 "data/models/cosface/seed0/model.pt", "train@cosface"),
    "table": ({"table": "table3"}, lambda p: None, "reports/metrics/eval/pretrain.json", "evaluate_models@pretrain"),
    "report": ({"scope": "default"}, lambda p: None, "reports/metrics/eval/pretrain.json", "evaluate_models@pretrain"),
}
STAGES = {"align": align, "clean": clean, "pretrain": pretrain, "train": train, "distill": distill,
          "evaluate": evaluate, "table": table, "report": report}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_a_missing_input_names_the_stage_that_writes_it(smoke, name):
    path, _ = smoke
    paths = Paths(path.parent)
    arguments, present, missing, writer = MISSING[name]
    present(paths)
    with pytest.raises(FileNotFoundError) as found:
        STAGES[name].run(config.load(path), paths, **arguments)
    assert str(found.value) == f"{paths.root / missing} is missing; stage {writer} writes it: run `dvc repro {writer}`"


def test_the_entry_point_prints_the_missing_input_in_one_line(smoke, entry_point):
    path, _ = smoke
    code, stderr = entry_point("pretrain", pretrain.run, ["--params", path])
    assert code == 1 and one_line(stderr) == (
        f"stage pretrain failed: {path.parent / 'data/aligned/train'} is missing; stage align writes it: "
        "run `dvc repro align`"
    )


def dvc_stages(raw: dict) -> dict[str, dict]:
    """dvc.yaml's stages with each foreach expanded as DVC names them (`train@cosface`)."""
    expanded = {}
    for name, spec in yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in spec:
            expanded[name] = spec
            continue
        items = spec["foreach"] if isinstance(spec["foreach"], list) else list(raw[spec["foreach"].strip("${}")])
        for item in items:
            text = json.dumps(spec["do"]).replace("${key}", item).replace("${item}", item)
            expanded[f"{name}@{item}"] = json.loads(text)
    return expanded


def test_the_writer_of_every_output_a_stage_reads_is_the_one_dvc_yaml_names():
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    stages = dvc_stages(raw)
    deps = {Path(dep) for spec in stages.values() for dep in spec.get("deps", [])}
    paths = Paths(Path("/project"))
    checked = 0
    for name, spec in stages.items():
        for out in spec.get("outs", []):
            out = Path(next(iter(out)) if isinstance(out, dict) else out)
            if any(dep == out or dep in out.parents or out in dep.parents for dep in deps):
                assert stage.writer(paths, paths.root / out / "file") == name, out
                checked += 1
    assert checked > 2 * len(raw["rows"])  # every model and evaluation among them
    assert stage.writer(paths, Path("/elsewhere/file")) is None


def fake_evaluations(cfg, paths) -> None:
    """What load_evaluations reads, for every trained model: its metrics JSON and its per-pair table."""
    frame = pd.DataFrame({"seed": [0], "benchmark": ["synth-lfw"], "pair": [0], "correct": [True]})
    for name in trained_models(cfg):
        ModelEvaluation(model=name, label=name, flip=True, seeds={}).save(paths.metrics("eval", name))
        paths.eval_dir(name).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(paths.eval_dir(name) / "pairs.parquet", index=False)


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwritten_inside(path: Path) -> None:
    data = bytearray(path.read_bytes())  # the footer's schema garbled: pyarrow raised OSError and a 37-line trace
    data[200:-300] = bytes(b ^ 0x5A for b in data[200:-300])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("file, damage", [("pairs", cut_short), ("pairs", overwritten_inside), ("metrics", cut_short)])
def test_a_damaged_evaluation_names_the_file_and_the_stage_to_rerun(smoke, entry_point, file, damage):
    path, _ = smoke
    paths = Paths(path.parent)
    fake_evaluations(config.load(path), paths)
    damaged = paths.eval_dir("cosface") / "pairs.parquet" if file == "pairs" else paths.metrics("eval", "cosface")
    damage(damaged)
    code, stderr = entry_point("table", table.run, ["--params", path, "--table", "table3"], table._arguments)
    line = one_line(stderr)
    assert code == 1 and line.startswith(f"stage table failed: {damaged} cannot be read ("), line
    assert line.endswith("; stage evaluate@cosface writes it: rerun `dvc repro evaluate@cosface`"), line


# --- resume messages ------------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_project(smoke):
    """Aligned training records and a manifest keeping them all: enough for runs.train_recipe at 32 px."""
    path, raw = smoke
    raw["profiles"]["smoke"]["train"].update(
        iterations=4, checkpoint_every=2, curve_every=0, compile="none", num_workers=0, batch_size=8
    )
    raw["tracking"]["enabled"] = False
    path.write_text(yaml.safe_dump(raw))
    paths = Paths(path.parent)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    write_records(paths.train_records(paths.aligned), [
        FaceRecord(encode_png(image), i % 4, NO_LANDMARKS.copy(), f"{i}.png") for i, image in enumerate(images)
    ])
    paths.manifest.parent.mkdir(parents=True)
    pd.DataFrame({"kept": [True] * 16}).to_parquet(paths.manifest, index=False)
    return path, raw, paths


def test_a_changed_parameter_is_named_with_its_values_once(tiny_project, caplog):
    path, raw, paths = tiny_project
    cfg = config.load(path)
    train_recipe(cfg, paths, "cosface", 0, stop_after=3)  # stops with the step-2 checkpoint
    raw["profiles"]["smoke"]["train"]["lr"] = 0.0123
    path.write_text(yaml.safe_dump(raw))
    with caplog.at_level(logging.INFO, logger="facerepro.train"):
        train_recipe(config.load(path), paths, "cosface", 0, stop_after=1)
    lines = [r.getMessage() for r in caplog.records if "written by another job" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"train.lr: {cfg.train.lr!r} -> 0.0123" in lines[0] and "starts over" in lines[0], lines[0]


# --- scripts/reproduce-profile ---------------------------------------------------------------------------------------


def test_reproduce_profile_refuses_an_unknown_profile_before_cloning(tmp_path):
    project = tmp_path / "project"
    copy_project(project)
    (project / "scripts" / "setup").write_text("#!/usr/bin/env bash\n")  # the test's interpreter is installed
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=project, check=True, capture_output=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "scripts/reproduce-profile", "smoak"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert one_line(result.stderr) == (
        "reproduce-profile: params.yaml: profile 'smoak' is not defined under profiles "
        f"(known: {', '.join(yaml.safe_load((project / 'params.yaml').read_text())['profiles'])})"
    )
    assert not (project / "data" / "profiles").exists() or not any((project / "data" / "profiles").iterdir())
