"""`scripts/reproduce-profile` keeps the profile's own lock files across calls (issue 17), on a smoke-sized folders
profile in a temporary copy of the project: an unknown table refused before any clone is made; a first call (the
default run, Table 3) SIGKILLed during a row's training, then a call that resumes that training and runs only the
stages not yet done, a call with nothing changed that runs no stage, a call with `table@cleaning` that builds that
table of extra/dvc.yaml alone, and a call after one row's margin changed that reruns that row, its evaluation, Table
3 and the report only and leaves the profile's extra/dvc.lock as its table@cleaning call wrote it. The photo root is
given relative to the project root (`../photos`), as the lfw profile's is, and must resolve from the clone too."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.core import config
from pipeline.train import checkpoint
from tests.test_resume_pipeline import copy_project, keep_rows, write_params

pytestmark = pytest.mark.slow

PROFILE = "folders"
OVERRIDES = ["data.folders_pairs_per_fold=1"]  # a command-line override, given again on every call as a user would
CHANGED_ROW = "cosface"
EXTRA = "extra/dvc.yaml"
EXTRA_TABLE = "cleaning"  # a table of extra/dvc.yaml: its row without cleaning is trained only when it is asked for
UNCLEANED = "li_arcface_m040_uncleaned"
# main's committed extra/dvc.lock, which says nothing about this profile (the cpu profile's would list its stages)
STAND_IN_LOCK = "schema: '2.0'\nstages: {}\n"


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def reproduce(project: Path, env: dict, call: int, *targets: str) -> str:
    result = subprocess.run(["bash", "scripts/reproduce-profile", PROFILE, *targets, *OVERRIDES], cwd=project, env=env,
                            capture_output=True, text=True)
    (project.parent / f"call{call}.log").write_text(result.stdout + result.stderr)  # the whole output, to read
    assert result.returncode == 0, f"reproduce-profile failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def commit(project: Path, message: str) -> None:
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message]):
        subprocess.run(cmd, cwd=project, check=True, capture_output=True)


def write_photos(root: Path, persons: int = 10, photos: int = 4) -> None:
    """A folder per person of small photos: one colour per person with noise, so the rows have something to learn."""
    rng = np.random.default_rng(0)
    for person in range(persons):
        colour = rng.integers(0, 256, 3)
        for photo in range(photos):
            pixels = np.clip(colour + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            (root / f"p{person:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"p{person:02d}" / f"{photo}.png")


def test_reproduce_profile_reruns_only_what_changed_and_resumes(tmp_path):
    project = tmp_path / "project"
    copy_project(project)
    write_photos(tmp_path / "photos")
    params = yaml.safe_load((project / "params.yaml").read_text())
    smoke = {key: value for key, value in params["profiles"]["smoke"].items() if key not in ("data", "seeds")}
    folders = config.deep_merge(params["profiles"][PROFILE], smoke)  # the smoke sizes (6 iterations a row), 1 seed
    folders["align"]["detector"] = "none"  # no faces to detect in these photos: each is resized whole
    folders["data"]["folders_root"] = "../photos"  # from the project root; the clone lies 3 folders deeper
    params["profiles"][PROFILE] = folders
    keep_rows(params, {CHANGED_ROW, "li_arcface_m040", UNCLEANED})  # a row to change, the student, a row of cleaning
    # the extra table the test builds; facex_heads (cosface) would add held-out protocols to each evaluation of cosface
    params["extra_tables"] = {EXTRA_TABLE: params["extra_tables"][EXTRA_TABLE]}
    write_params(project, params)
    (project / "extra" / "dvc.lock").write_text(STAND_IN_LOCK)
    (project / "scripts" / "setup").write_text("#!/usr/bin/env bash\n")  # the test's interpreter is installed
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    commit(project, "copy")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTHONPATH", None)
    clone = project / "data" / "profiles" / PROFILE
    models = clone / "data" / "models"
    table_md = project / "reports" / PROFILE / "table.md"

    # 0. a table that params does not have: refused by name before a clone is made
    refused = subprocess.run(["bash", "scripts/reproduce-profile", PROFILE, "table@nope", *OVERRIDES], cwd=project,
                             env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "table@nope: no such table" in refused.stderr, refused.stderr
    assert not clone.exists()

    # 1. the first call, SIGKILLed (with dvc and the stage) once a row's training has written its first checkpoint
    process = subprocess.Popen(["bash", "scripts/reproduce-profile", PROFILE, *OVERRIDES], cwd=project, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, ckpt = time.monotonic() + 1800, None
    while ckpt is None and process.poll() is None and time.monotonic() < deadline:
        ckpt = next((models / row / "seed0" / "checkpoint.pt" for row in params["rows"]
                     if (models / row / "seed0" / "checkpoint.pt").is_file()), None)
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    gone = time.monotonic() + 60  # until init has reaped dvc too: DVC's rwlock names it, and a live pid blocks
    while time.monotonic() < gone:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert ckpt is not None and ckpt.is_file(), "the first call ended (or timed out) before a row's checkpoint"
    row, killed_at = ckpt.parent.parent.name, checkpoint.load(ckpt)["step"]
    assert 0 < killed_at < smoke["train"]["iterations"]

    # 2. the same command: the stages done before the kill stay done, the killed row resumes from its checkpoint
    second = reproduce(project, env, 2)
    assert not stages_run(second) & {"synthesize", "align", "clean", "pretrain"}, second
    assert {f"train@{row}", "table@table3", "report"} <= stages_run(second), second
    assert f"{row}: resumed from step {killed_at} of {smoke['train']['iterations']}" in second, second
    assert not {stage for stage in stages_run(second) if stage.startswith(f"{EXTRA}:")}, second  # Table 3 alone
    assert f"Not built in this clone: `{EXTRA_TABLE}`" in table_md.read_text()

    # 3. nothing changed: no stage runs, the lock and every model file stay as they were
    lock = (clone / "dvc.lock").read_bytes()
    mtimes = {path: path.stat().st_mtime_ns for path in models.rglob("model.pt")}
    third = reproduce(project, env, 3)
    assert stages_run(third) == set(), third
    assert (clone / "dvc.lock").read_bytes() == lock
    assert {path: path.stat().st_mtime_ns for path in models.rglob("model.pt")} == mtimes
    assert "ran no stage" in table_md.read_text()

    # 4. the extra table on request: its own row trained and evaluated, then its table stage; nothing of Table 3
    fourth = reproduce(project, env, 4, f"table@{EXTRA_TABLE}")
    assert stages_run(fourth) == {f"{EXTRA}:train@{UNCLEANED}", f"{EXTRA}:evaluate@{UNCLEANED}",
                                  f"{EXTRA}:table@{EXTRA_TABLE}"}, fourth
    assert (project / "reports" / PROFILE / f"{EXTRA_TABLE}.md").is_file()
    assert f"`{EXTRA_TABLE}` (this call); `table3` (from an earlier call" in table_md.read_text()
    extra_lock = (clone / "extra" / "dvc.lock").read_bytes()

    # 5. one row's margin changed in a new commit: that row, its evaluation, Table 3 and the report only
    params["rows"][CHANGED_ROW]["margins"]["m"] = 0.3
    write_params(project, params)
    commit(project, "cosface m=0.3")
    fifth = reproduce(project, env, 5)
    # validate checks the changed params.yaml (a second, writing the same marker), then the row, its evaluation, the report
    tables = {f"table@{table}" for table in params["tables"]}
    assert stages_run(fifth) == {"validate", f"train@{CHANGED_ROW}", f"evaluate@{CHANGED_ROW}", *tables, "report"}, fifth
    assert (clone / "extra" / "dvc.lock").read_bytes() == extra_lock  # the profile's own, not main's stand-in
    assert f"`table3` (this call); `{EXTRA_TABLE}` (from an earlier call" in table_md.read_text()
    clone_params = yaml.safe_load((clone / "params.yaml").read_text())
    assert (clone / clone_params["profiles"][PROFILE]["data"]["folders_root"]).resolve() == (tmp_path / "photos").resolve()
