"""End to end, on a copy of the session's smoke reproduction (tests/conftest.py: `dvc repro`, the default run, then
`dvc repro extra/dvc.yaml`, the other tables; a row of each kind): every stage of both dvc files ran and every table
and report is written; a second run of each does nothing; a bad parameter stops at validate; changing one row's
margin reruns that row, its evaluation and the tables and reports only; a table added in params alone is reported.

And the split itself, on a fresh copy where nothing has run: a bare `dvc repro` would run every stage of Table 3's
models and none of extra/dvc.yaml, and `python -m pipeline.orchestration.reproduce table@table2` plans Table 2's
models only."""
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core import config
from pipeline.core.paths import Paths
from pipeline.orchestration.graph import model_stages, read_pipeline
from pipeline.orchestration.reproduce import dvc_commands
from tests.test_resume_pipeline import copy_project, git_repository, project_env, run, write_params

pytestmark = pytest.mark.slow

EXTRA = "extra/dvc.yaml"  # the other tables' dvc file; DVC addresses its stages `extra/dvc.yaml:<stage>`
DVC = [sys.executable, "-m", "dvc"]


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def stale(root: Path, env: dict, *targets: str, with_deps: bool = False) -> set[str]:
    """The stages DVC's own `dvc status` reports as changed: of `targets` (dvc files or stages; none: every stage),
    and with `with_deps` of every stage upstream of them too."""
    result = subprocess.run([*DVC, "status", "--json", *(["--with-deps"] if with_deps else []), *targets],
                            cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc status failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return set(json.loads(result.stdout))


@pytest.fixture(scope="module")
def project(smoke_repro, tmp_path_factory):
    return smoke_repro.copy(tmp_path_factory.mktemp("facerepro"))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A copy of the project where nothing has run: no outputs, no lock file."""
    root = tmp_path_factory.mktemp("fresh")
    copy_project(root)
    for lock in ("dvc.lock", "extra/dvc.lock"):
        (root / lock).unlink(missing_ok=True)
    git_repository(root)
    return root


def test_a_bare_repro_would_build_table3_and_nothing_of_extra(fresh):
    # `dvc repro` runs dvc.yaml's stages and every stage upstream of them: what `dvc status --with-deps dvc.yaml` lists
    would_run = stale(fresh, project_env(fresh), "dvc.yaml", with_deps=True)
    pipeline, paths, cfg = read_pipeline(fresh), Paths(fresh), config.load(fresh / "params.yaml")
    assert not {stage for stage in would_run if stage.startswith(f"{EXTRA}:")}, sorted(would_run)
    assert would_run == {stage for stage in pipeline if not stage.startswith(f"{EXTRA}:")}
    for model in cfg.tables["table3"].rows:
        assert set(model_stages(pipeline, paths, model)) <= would_run, model
    assert {"table@table3", "report"} <= would_run


def test_reproduce_table2_plans_table2s_models_only(fresh):
    pipeline, paths, cfg = read_pipeline(fresh), Paths(fresh), config.load(fresh / "params.yaml")
    commands = dvc_commands(cfg, pipeline, paths, ["table@table2"], every_table=False)
    assert commands[-1] == ["repro", "--single-item", f"{EXTRA}:table@table2"], commands
    planned = {arg for command in commands for arg in command[1:] if not arg.startswith("-")}
    trained = {model for model in cfg.evaluated_models() if model_stages(pipeline, paths, model)[0] in planned}
    evaluated = {model for model in cfg.evaluated_models() if model_stages(pipeline, paths, model)[1] in planned}
    rows = set(cfg.tables["table2"].rows)
    assert evaluated == rows and trained == rows | {"pretrain"}, commands  # the NS rows start from N-Softmax
    assert not {stage for stage in planned if "table@" in stage or "report" in stage} - {f"{EXTRA}:table@table2"}


def test_repro_builds_every_stage_of_both_dvc_files(project):
    root, params = project.root, project.params()
    stages = set(read_pipeline(root))
    extra = {stage for stage in stages if stage.startswith(f"{EXTRA}:")}
    assert extra and stages_run(project.output) == stages - extra, project.output  # every stage of dvc.yaml
    assert stages_run(project.extra_output) == extra, project.extra_output  # dvc.yaml's were up to date
    table3 = (root / "reports" / "table3.md").read_text()
    for name in params["tables"]["table3"]["rows"]:
        if name != "pretrain":
            assert params["rows"][name]["label"] in table3, name
    assert "N-Softmax" in table3
    assert "n/a" not in table3.split("Paired comparisons")[0] or "diverged" in table3
    for name in [*params["tables"], *params["extra_tables"]]:
        assert (root / "reports" / f"{name}.md").is_file(), name
    for folder, own, other in (("reports", "tables", "extra_tables"), ("reports/extra", "extra_tables", "tables")):
        noise = (root / folder / "seed_noise.md").read_text()  # the report of its own scope's tables
        assert all(f"## {table['title']}" in noise for table in params[own].values()), folder
        assert not any(f"## {table['title']}" in noise for table in params[other].values()), folder
        assert (root / folder / "figures" / "curves.png").stat().st_size > 1000


def test_mlflow_holds_a_run_per_model(project):
    root, params = project.root, project.params()
    with sqlite3.connect(root / "mlflow.db") as db:
        names = {r[0] for r in db.execute("select value from tags where key = 'row'")}
        experiments = {r[0] for r in db.execute("select name from experiments")}
    assert set(params["rows"]) | set(params["extra_rows"]) | {"pretrain", "teacher", "student"} <= names
    assert {"table3", "table2", "distill", "facex_heads", "cleaning"} <= experiments


def test_second_repro_does_nothing(project):
    for target in ([], [EXTRA]):
        again = run([*DVC, "repro", *target], project.root, project.env)
        assert stages_run(again) == set(), again


def test_every_written_file_is_a_declared_output(project):
    root = project.root
    declared = [Path(out) for stage in read_pipeline(root).values() for out in stage.outs]  # both dvc files'
    written = [p.relative_to(root) for top in ("data", "reports") for p in (root / top).rglob("*") if p.is_file()]
    undeclared = [str(p) for p in written if not any(p == out or out in p.parents for out in declared)]
    assert written and not undeclared, undeclared


def test_tables_have_seed_intervals_and_run_level_verdicts(project):
    root = project.root
    table3 = (root / "reports" / "table3.md").read_text()
    assert re.search(r"\| N-Softmax \| \d+\.\d\d \[-?\d+\.\d\d, \d+\.\d\d\]", table3), table3  # 20 pairs: wide
    assert "p (Holm)" in table3 and ("A better" in table3 or "not resolved with 2 seeds" in table3)
    for noise in ("seed_noise.md", "extra/seed_noise.md"):
        text = (root / "reports" / noise).read_text()
        assert "Run-to-run SD" in text and "Pairing by seed" in text, noise


def test_the_tables_do_not_depend_on_the_tracking_store(project):
    root, env = project.root, project.env
    names = ("table3.md", "table3.csv", "seed_noise.md", "facex_heads.md", "facex_heads.csv")  # held-out protocols too
    before = {name: (root / "reports" / name).read_text() for name in names}
    (root / "mlflow.db").unlink()  # emptied, moved, or another machine: MLflow only mirrors
    shutil.rmtree(root / "mlruns", ignore_errors=True)
    for stage in ("evaluate@cosface", "table@table3", "report", f"{EXTRA}:table@facex_heads"):
        run([*DVC, "repro", "--force", "--single-item", stage], root, env)
    assert {name: (root / "reports" / name).read_text() for name in names} == before
    with sqlite3.connect(root / "mlflow.db") as db:  # the evaluation re-created its seed runs in a new store
        rows = {r[0] for r in db.execute("select value from tags where key = 'row'")}
    assert "cosface" in rows


def test_a_bad_parameter_stops_before_any_output_is_removed(project):
    root, env = project.root, project.env
    good = (root / "params.yaml").read_text()
    bad = yaml.safe_load(good)
    bad["train"]["lr"] = -1.0
    (root / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))  # same rows: the dvc files stand
    try:
        results = [subprocess.run([*DVC, "repro", *target], cwd=root, env=env, capture_output=True, text=True)
                   for target in ([], [EXTRA])]
    finally:
        (root / "params.yaml").write_text(good)
    for result in results:  # extra/dvc.yaml's stages read validate's marker too
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "train.lr" in output, output
        assert stages_run(output) == {"validate"}, output
    assert (root / "reports" / "data.json").is_file() and (root / "reports" / "cleaning.json").is_file()
    assert any((root / "data" / "raw").iterdir())


def test_changing_one_margin_reruns_that_row_its_tables_and_reports_only(project):
    root, env, params = project.root, project.env, project.params()
    params["rows"]["cosface"]["margins"]["m"] = 0.3  # cosface: in Table 3 (dvc.yaml) and facex_heads (extra/dvc.yaml)
    write_params(root, params)
    again = run([*DVC, "repro"], root, env)
    tables = {f"table@{table}" for table in params["tables"]}
    assert stages_run(again) == {"validate", "train@cosface", "evaluate@cosface", *tables, "report"}, again
    assert stale(root, env, "dvc.yaml") == set()
    readers = {f"{EXTRA}:table@{table}" for table in params["extra_tables"]} | {f"{EXTRA}:report"}
    left = stale(root, env, EXTRA)  # what the default run left stale: the other tables and their report, no row
    assert {f"{EXTRA}:table@facex_heads", f"{EXTRA}:report"} <= left <= readers, left
    extra = run([*DVC, "repro", EXTRA], root, env)
    # each table of extra/dvc.yaml reads the folders of evaluations and params `rows` whole: all rerun, seconds each
    assert stages_run(extra) == readers, extra
    assert stale(root, env) == set()


def test_a_table_added_to_extra_tables_alone_is_reported_by_the_extra_run(project):
    root, env, params = project.root, project.env, project.params()
    params["extra_tables"]["margins"] = {
        "title": "Margins — Li-ArcFace (m=0.4) against CosFace",
        "rows": {"cosface": {"label": "AM-Softmax"}, "li_arcface_m040": {}},
        "baseline": "cosface",
    }
    write_params(root, params)
    default = run([*DVC, "repro"], root, env)
    assert stages_run(default) <= {"validate"}, default  # the default run neither shows nor reports it
    extra = run([*DVC, "repro", EXTRA], root, env)
    assert stages_run(extra) == {f"{EXTRA}:table@margins", f"{EXTRA}:report"}, extra  # no other table, no training
    text = (root / "reports" / "margins.md").read_text()
    assert text.startswith("# Margins — Li-ArcFace (m=0.4) against CosFace")
    assert "| Li-ArcFace (m=0.4) | AM-Softmax | synth-lfw |" in text  # the planned test, with the table's label
    assert "## Margins — Li-ArcFace (m=0.4) against CosFace" in (root / "reports" / "extra" / "seed_noise.md").read_text()
    assert "## Margins" not in (root / "reports" / "seed_noise.md").read_text()
    assert stages_run(run([*DVC, "repro", EXTRA], root, env)) == set()


def test_a_table_of_default_rows_added_to_tables_is_reported_by_the_default_run(project):
    root, env, params = project.root, project.env, project.params()
    params["tables"]["heads"] = {
        "title": "Heads — Li-ArcFace (m=0.4) against ArcFace after N-Softmax",
        "rows": {"arcface_m050_ns": {"label": "ArcFace after N-Softmax"}, "li_arcface_m040": {}},
        "baseline": "arcface_m050_ns",
    }
    write_params(root, params)
    again = run([*DVC, "repro"], root, env)
    assert stages_run(again) == {"validate", "table@heads", "report"}, again  # no other table, nothing trained
    text = (root / "reports" / "heads.md").read_text()
    assert text.startswith("# Heads — Li-ArcFace (m=0.4) against ArcFace after N-Softmax")
    assert "| Li-ArcFace (m=0.4) | ArcFace after N-Softmax | synth-lfw |" in text
    assert "## Heads — Li-ArcFace" in (root / "reports" / "seed_noise.md").read_text()
    assert stages_run(run([*DVC, "repro"], root, env)) == set()
    extra = run([*DVC, "repro", EXTRA], root, env)  # its report names the default tables (to leave them out)
    assert stages_run(extra) <= {f"{EXTRA}:report"}, extra
    assert "## Heads" not in (root / "reports" / "extra" / "seed_noise.md").read_text()
