"""`bash scripts/reproduce` (pipeline.orchestration.reproduce): which `dvc repro` calls build what was asked, on the
project's own dvc.yaml, extra/dvc.yaml and params.yaml (DVC's graph, read only; nothing is run)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.core import config
from pipeline.core.config import PRETRAIN, PROJECT_ROOT
from pipeline.core.paths import Paths
from pipeline.orchestration import reproduce
from pipeline.orchestration.graph import model_stages, read_pipeline, table_plan

EXTRA = "extra/dvc.yaml"


@pytest.fixture(scope="module")
def project():
    """(config, DVC's graph of both dvc files, paths) of this project."""
    return config.load(), read_pipeline(PROJECT_ROOT), Paths(PROJECT_ROOT)


def commands(project, targets=(), every_table=False) -> list[list[str]]:
    cfg, pipeline, paths = project
    return reproduce.dvc_commands(cfg, pipeline, paths, list(targets), every_table)


def test_no_target_is_the_default_run(project):
    assert commands(project) == [["repro"]]


def test_all_is_the_default_run_then_every_other_table(project):
    assert commands(project, every_table=True) == [["repro"], ["repro", EXTRA]]


def test_a_default_table_is_its_own_dvc_target(project):
    """dvc.yaml's table stage lists its evaluations model by model: DVC's own upstream is exact."""
    assert commands(project, ["table@table3"]) == [["repro", "table@table3"]]
    cfg, pipeline, paths = project
    planned = table_plan(pipeline, paths, cfg, "table3")
    assert planned[-2:] == ["table@table3", "report"] and not [s for s in planned if s.startswith(f"{EXTRA}:")]


def extra_tables(cfg: config.Config) -> list[str]:
    return [table for table in cfg.tables if table not in cfg.default_tables]


@pytest.mark.parametrize("table", ["facex_heads", "table2", "distill", "cleaning"])
def test_an_extra_table_is_its_models_stages_then_its_table_stage_alone(project, table):
    """Its table stage reads folders of evaluations, so DVC's upstream of it is every row of extra/dvc.yaml: the
    plan trains and evaluates the table's own models, then runs the table stage with --single-item."""
    cfg, pipeline, paths = project
    assert table in extra_tables(cfg)
    first, second = commands(project, [f"table@{table}"])
    assert second == ["repro", "--single-item", f"{EXTRA}:table@{table}"]
    assert first[0] == "repro"
    upstream = first[1:]
    for model in cfg.tables[table].rows:
        trains, evaluates = model_stages(pipeline, paths, model)
        assert upstream.index(trains) < upstream.index(evaluates), model
    shown = set(cfg.tables[table].rows)
    # N-Softmax aside: it initialises the NS rows, so its training is upstream of theirs
    others = {m for t in extra_tables(cfg) if t != table for m in cfg.tables[t].rows} - shown - {PRETRAIN}
    assert others  # the other extra tables' own rows, none of which is trained or evaluated here
    unwanted = {stage for model in others for stage in model_stages(pipeline, paths, model)}
    assert not unwanted & set(upstream), sorted(unwanted & set(upstream))
    assert not [s for s in upstream if s.startswith((f"{EXTRA}:table@", f"{EXTRA}:report", "table@", "report"))]
    assert set(upstream) == set(table_plan(pipeline, paths, cfg, table)[:-1])


def test_the_facex_table_trains_the_facex_heads_and_no_other_extra_row(project):
    cfg, _, _ = project
    upstream = commands(project, ["table@facex_heads"])[0][1:]
    extra_trained = sorted(s.removeprefix(f"{EXTRA}:train@") for s in upstream if s.startswith(f"{EXTRA}:train@"))
    assert extra_trained == sorted(m for m in cfg.tables["facex_heads"].rows if m not in cfg.default_models())
    assert all(m.startswith("facex_") for m in extra_trained)
    assert f"{EXTRA}:distill" not in upstream


def test_an_unknown_table_is_named_in_one_line(project, capsys, monkeypatch):
    calls = _recorded_dvc_calls(monkeypatch)
    with pytest.raises(KeyError, match="table 'nope' is not in params tables or extra_tables"):
        commands(project, ["table@nope"])
    with pytest.raises(SystemExit) as exited:
        reproduce.main(["table@nope"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    cfg = project[0]
    assert err == (f"bash scripts/reproduce: table 'nope' is not in params tables or extra_tables; known: "
                   f"{', '.join(cfg.tables)}\n")
    assert calls == []


def test_a_stage_is_its_own_dvc_target_and_an_unknown_one_is_named(project, capsys, monkeypatch):
    """`stage@NAME` (scripts/reproduce-profile lfw stage@reference): that stage and what DVC finds it needs, no table."""
    assert commands(project, ["stage@reference"]) == [["repro", "reference"]]
    assert commands(project, ["stage@train@cosface", f"stage@{EXTRA}:distill"]) == [
        ["repro", "train@cosface"], ["repro", f"{EXTRA}:distill"]]
    calls = _recorded_dvc_calls(monkeypatch)
    with pytest.raises(SystemExit) as exited:
        reproduce.main(["stage@nope"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("bash scripts/reproduce: stage@nope: no such stage in dvc.yaml")
    assert "reference" in err and calls == []


def test_all_with_targets_is_refused(capsys, monkeypatch):
    calls = _recorded_dvc_calls(monkeypatch)
    with pytest.raises(SystemExit) as exited:
        reproduce.main(["--all", "table@table2"])
    assert exited.value.code == 2
    assert "error: --all builds every table: give it no targets" in capsys.readouterr().err
    assert calls == []


def test_the_commands_run_in_order_and_the_first_failure_stops_them(capsys, monkeypatch):
    calls = _recorded_dvc_calls(monkeypatch)
    assert reproduce.main(["--all"]) == 0
    assert calls == [["repro"], ["repro", EXTRA]]
    assert capsys.readouterr().out == f"+ dvc repro\n+ dvc repro {EXTRA}\n"
    failing = _recorded_dvc_calls(monkeypatch, returncode=3)
    assert reproduce.main(["--all"]) == 3 and failing == [["repro"]]


def _recorded_dvc_calls(monkeypatch, returncode: int = 0) -> list[list[str]]:
    """`python -m dvc ...` calls of reproduce.main recorded (arguments after `dvc`) and answered with `returncode`
    instead of run; any other subprocess runs as it would."""
    calls: list[list[str]] = []
    real = subprocess.run

    def run(command, *args, **kwargs):
        if list(command[:3]) != [sys.executable, "-m", "dvc"]:
            return real(command, *args, **kwargs)
        calls.append(list(command[3:]))
        return subprocess.CompletedProcess(command, returncode)

    monkeypatch.setattr(reproduce.subprocess, "run", run)
    return calls
