"""One smoke reproduction of every table for the whole session, which the end-to-end modules copy (a second or two)
instead of reproducing it each (minutes each: docs/testing.md): `dvc repro` (the default run, Table 3) and then
`dvc repro extra/dvc.yaml` (the other tables)."""
from __future__ import annotations

import shutil
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.test_resume_pipeline import copy_project, git_repository, keep_rows, project_env, run, write_params

# Every stage of both dvc files and every table, with one row of each kind. Table 3's (dvc.yaml): from scratch and
# the FaceX-Zoo baseline, evaluated on the held-out protocols (cosface); after N-Softmax (arcface_m050_ns); the
# distillation's student (li_arcface_m040, which keep_rows keeps). The other tables' (extra/dvc.yaml): a weight-decay
# override (wd5e4: Table 2); without cleaning; a FaceX-Zoo head with a learnt scale (facex_adacos). Every head trains
# in tests/test_heads.py, and validate builds every row of params.yaml (tests/test_validate.py), so the other rows
# would add minutes and prove nothing new here.
SMOKE_ROWS = {"cosface", "arcface_m050_ns", "wd5e4", "li_arcface_m040_uncleaned", "facex_adacos"}


@dataclass(frozen=True)
class ReproducedProject:
    """A git-initialised copy of the project (profile smoke, rows SMOKE_ROWS) on which `dvc repro` and then
    `dvc repro extra/dvc.yaml` ran."""

    root: Path
    output: str  # what `dvc repro` printed
    extra_output: str  # what `dvc repro extra/dvc.yaml` printed after it

    @property
    def env(self) -> dict[str, str]:
        return project_env(self.root)

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def copy(self, dest: Path) -> ReproducedProject:
        """A copy at `dest` (an empty folder) with everything the runs wrote: outputs, DVC cache and locks, git,
        MLflow store. MLflow keeps absolute artifact paths, which are pointed at the copy's own mlruns/."""
        shutil.copytree(self.root, dest, symlinks=True, dirs_exist_ok=True)
        old, new = (self.root / "mlruns").as_posix(), (dest / "mlruns").as_posix()
        db = sqlite3.connect(dest / "mlflow.db")
        with db:  # one transaction, committed
            db.execute("update experiments set artifact_location = replace(artifact_location, ?, ?)", (old, new))
            db.execute("update runs set artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        db.close()
        return ReproducedProject(dest, self.output, self.extra_output)


@pytest.fixture(scope="session")
def smoke_repro(tmp_path_factory: pytest.TempPathFactory) -> ReproducedProject:
    """`dvc repro` and `dvc repro extra/dvc.yaml` of the smoke profile on SMOKE_ROWS, once: use `.copy()`, never
    this project itself."""
    root = tmp_path_factory.mktemp("smoke-repro")
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "smoke"
    keep_rows(params, SMOKE_ROWS)
    write_params(root, params)
    git_repository(root)
    env = project_env(root)
    default = run([sys.executable, "-m", "dvc", "repro"], root, env)
    return ReproducedProject(root, default, run([sys.executable, "-m", "dvc", "repro", "extra/dvc.yaml"], root, env))
