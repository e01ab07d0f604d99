"""End to end: `dvc repro` of the smoke profile in a temporary copy of the repository (every stage and table, a row
of each kind: tests/conftest.py), then the promises of dvc.yaml: a second run does nothing, and changing one row's
margin reruns that row and the report only."""
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.orchestration.graph import read_pipeline

pytestmark = pytest.mark.slow


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(smoke_repro, tmp_path_factory):
    reproduced = smoke_repro.copy(tmp_path_factory.mktemp("facerepro"))
    return reproduced.root, reproduced.env, reproduced.params(), reproduced.output


def test_repro_writes_every_row(project):
    root, env, params, first = project
    assert stages_run(first) == set(read_pipeline(root)), first  # every stage of dvc.yaml ran
    table3 = (root / "reports" / "table3.md").read_text()
    for name in params["tables"]["table3"]["rows"]:
        if name != "pretrain":
            assert params["rows"][name]["label"] in table3, name
    assert "N-Softmax" in table3
    assert "n/a" not in table3.split("Paired comparisons")[0] or "diverged" in table3
    for name in ("table2", "distill", "facex_heads", "cleaning"):
        assert (root / "reports" / f"{name}.md").is_file()
    assert (root / "reports" / "figures" / "curves.png").stat().st_size > 1000


def test_mlflow_holds_a_run_per_model(project):
    root, env, params, first = project
    with sqlite3.connect(root / "mlflow.db") as db:
        names = {r[0] for r in db.execute("select value from tags where key = 'row'")}
        experiments = {r[0] for r in db.execute("select name from experiments")}
    assert set(params["rows"]) | {"pretrain", "teacher", "student"} <= names
    assert {"table3", "table2"} <= experiments


def test_second_repro_does_nothing(project):
    root, env, params, first = project
    again = run([sys.executable, "-m", "dvc", "repro"], root, env)
    assert stages_run(again) == set(), again


def test_every_written_file_is_a_declared_output(project):
    root, env, params, first = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    declared = [Path(out["path"]) for stage in lock.values() for out in stage.get("outs", [])]
    written = [p.relative_to(root) for top in ("data", "reports") for p in (root / top).rglob("*") if p.is_file()]
    undeclared = [str(p) for p in written if not any(p == out or out in p.parents for out in declared)]
    assert written and not undeclared, undeclared


def test_tables_have_seed_intervals_and_run_level_verdicts(project):
    root, env, params, first = project
    table3 = (root / "reports" / "table3.md").read_text()
    assert re.search(r"\| N-Softmax \| \d+\.\d\d \[-?\d+\.\d\d, \d+\.\d\d\]", table3), table3  # 20 pairs: wide
    assert "p (Holm)" in table3 and ("A better" in table3 or "not resolved with 2 seeds" in table3)
    noise = (root / "reports" / "seed_noise.md").read_text()
    assert "Run-to-run SD" in noise and "Pairing by seed" in noise


def test_the_tables_do_not_depend_on_the_tracking_store(project):
    root, env, params, first = project
    before = {name: (root / "reports" / name).read_text() for name in ("table3.md", "table3.csv", "seed_noise.md")}
    (root / "mlflow.db").unlink()  # emptied, moved, or another machine: MLflow only mirrors
    shutil.rmtree(root / "mlruns", ignore_errors=True)
    run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "evaluate@cosface"], root, env)
    for stage in ("table@table3", "report"):
        run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage], root, env)
    assert {name: (root / "reports" / name).read_text() for name in before} == before
    with sqlite3.connect(root / "mlflow.db") as db:  # the evaluation re-created its seed runs in a new store
        rows = {r[0] for r in db.execute("select value from tags where key = 'row'")}
    assert "cosface" in rows


def test_a_bad_parameter_stops_before_any_output_is_removed(project):
    root, env, params, first = project
    good = (root / "params.yaml").read_text()
    bad = yaml.safe_load(good)
    bad["train"]["lr"] = -1.0
    (root / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    try:
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    finally:
        (root / "params.yaml").write_text(good)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "train.lr" in output, output
    assert stages_run(output) == {"validate"}, output
    assert (root / "reports" / "data.json").is_file() and (root / "reports" / "cleaning.json").is_file()
    assert any((root / "data" / "raw").iterdir())


def test_changing_one_margin_reruns_that_row_only(project):
    root, env, params, first = project
    params["rows"]["cosface"]["margins"]["m"] = 0.3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = run([sys.executable, "-m", "dvc", "repro"], root, env)
    tables = {f"table@{table}" for table in params["tables"]}  # each reads every evaluation (a few seconds)
    assert stages_run(again) == {"validate", "train@cosface", "evaluate@cosface", *tables, "report"}, again


def test_a_table_added_in_params_alone_is_reported(project):
    root, env, params, first = project
    params["tables"]["margins"] = {
        "title": "Margins — Li-ArcFace (m=0.4) against CosFace",
        "rows": {"cosface": {"label": "AM-Softmax"}, "li_arcface_m040": {}},
        "baseline": "cosface",
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = run([sys.executable, "-m", "dvc", "repro"], root, env)
    assert stages_run(again) == {"validate", "table@margins", "report"}, again  # no other table, nothing trained
    text = (root / "reports" / "margins.md").read_text()
    assert text.startswith("# Margins — Li-ArcFace (m=0.4) against CosFace")
    assert "| Li-ArcFace (m=0.4) | AM-Softmax | synth-lfw |" in text  # the planned test, with the table's label
    assert "## Margins — Li-ArcFace (m=0.4) against CosFace" in (root / "reports" / "seed_noise.md").read_text()
    assert stages_run(run([sys.executable, "-m", "dvc", "repro"], root, env)) == set()
