"""One `dvc repro` of the smoke profile for the whole session, which the end-to-end modules copy (a second or two)
instead of reproducing it each (minutes each: docs/testing.md)."""
from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.test_resume_pipeline import copy_project, keep_rows, run

# Every stage and every table, with one row of each kind: from scratch and the FaceX-Zoo baseline, evaluated on the
# held-out protocols (cosface); after N-Softmax, with a weight-decay override (arcface_m050_ns, wd5e4: Table 2);
# without cleaning; a FaceX-Zoo head with a learnt scale (facex_adacos); and the distillation's student
# (li_arcface_m040, which keep_rows keeps). Every head trains in tests/test_heads.py, and validate builds every row
# of params.yaml (tests/test_validate.py), so the other rows would add minutes and prove nothing new here.
SMOKE_ROWS = {"cosface", "arcface_m050_ns", "wd5e4", "li_arcface_m040_uncleaned", "facex_adacos"}


def project_env(root: Path) -> dict[str, str]:
    """The environment the stages run in: this interpreter's tools first, the copy importable, MLflow's default
    store (the copy's own mlflow.db)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@dataclass(frozen=True)
class ReproducedProject:
    """A git-initialised copy of the project (profile smoke, rows SMOKE_ROWS) on which `dvc repro` ran."""

    root: Path
    output: str  # what that `dvc repro` printed

    @property
    def env(self) -> dict[str, str]:
        return project_env(self.root)

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def copy(self, dest: Path) -> ReproducedProject:
        """A copy at `dest` (an empty folder) with everything the run wrote: outputs, DVC cache and lock, git,
        MLflow store. MLflow keeps absolute artifact paths, which are pointed at the copy's own mlruns/."""
        shutil.copytree(self.root, dest, symlinks=True, dirs_exist_ok=True)
        old, new = (self.root / "mlruns").as_posix(), (dest / "mlruns").as_posix()
        db = sqlite3.connect(dest / "mlflow.db")
        with db:  # one transaction, committed
            db.execute("update experiments set artifact_location = replace(artifact_location, ?, ?)", (old, new))
            db.execute("update runs set artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        db.close()
        return ReproducedProject(dest, self.output)


@pytest.fixture(scope="session")
def smoke_repro(tmp_path_factory: pytest.TempPathFactory) -> ReproducedProject:
    """`dvc repro` of the smoke profile on SMOKE_ROWS, once: use `.copy()`, never this project itself."""
    root = tmp_path_factory.mktemp("smoke-repro")
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "smoke"
    keep_rows(params, SMOKE_ROWS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(root)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        run(cmd, root, env)
    return ReproducedProject(root, run([sys.executable, "-m", "dvc", "repro"], root, env))
