"""Stage dependencies by construction: each stage of dvc.yaml and extra/dvc.yaml lists exactly the project files its
entry module imports, and dvc.yaml's table and report stages the evaluations of the default run's models, one by one,
so that the default run (a bare `dvc repro`) needs no stage of extra/dvc.yaml."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core import config
from pipeline.core.config import PROJECT_ROOT
from pipeline.core.dependencies import (
    DVC_FILES,
    code_dependencies,
    code_digest,
    generated_dvc_files,
    generated_dvc_yaml,
    import_closure,
    stale_evaluation_inputs,
)
from pipeline.core.paths import Paths
from pipeline.orchestration.graph import plan, read_pipeline
from stages import validate
from tests.test_resume_pipeline import copy_project

EXTRA = "extra/dvc.yaml"


def _stages(dvc_file: str = "dvc.yaml", root: Path = PROJECT_ROOT) -> dict[str, dict]:
    stages = yaml.safe_load((root / dvc_file).read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.fixture(scope="module")
def generated() -> dict[str, tuple[str, str]]:
    """Each dvc file -> (its text, what `python -m pipeline.core.dependencies --write` writes)."""
    return generated_dvc_files()


def test_the_dvc_files_are_every_dvc_yaml_of_the_project(generated):
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert sorted(DVC_FILES) == sorted(name for name in listed if Path(name).name == "dvc.yaml") == sorted(
        ["dvc.yaml", EXTRA])
    assert set(generated) == set(DVC_FILES)


@pytest.mark.parametrize("dvc_file, name", [(f, n) for f in DVC_FILES for n in sorted(_stages(f))],
                         ids=lambda value: value)
def test_code_dependencies_are_the_import_closure_exactly(dvc_file, name):
    stage = _stages(dvc_file)[name]
    entry = re.search(r"python -m (stages\.\w+)", stage["cmd"]).group(1).replace(".", "/") + ".py"
    declared = [dep for dep in stage["deps"] if dep.split("/")[0] in ("pipeline", "stages")]
    wanted = code_dependencies(entry)
    assert declared == wanted, (
        f"{dvc_file} stage {name}: missing {sorted(set(wanted) - set(declared))}, extra "
        f"{sorted(set(declared) - set(wanted))}; run python -m pipeline.core.dependencies --write"
    )


@pytest.mark.parametrize("dvc_file", DVC_FILES)
def test_each_dvc_file_is_what_the_generator_writes(generated, dvc_file):
    current, wanted = generated[dvc_file]
    assert current == (PROJECT_ROOT / dvc_file).read_text()
    assert wanted == current, f"{dvc_file} is stale: run python -m pipeline.core.dependencies --write"


def test_generator_adds_the_missing_drops_the_extra_and_keeps_the_rest(tmp_path):
    _write(tmp_path, {
        "stages/__init__.py": "", "stages/s.py": "import pipeline.pkg.a\nimport pipeline.m\n",
        "pipeline/__init__.py": "", "pipeline/m.py": "", "pipeline/unused.py": "",
        "pipeline/pkg/__init__.py": "", "pipeline/pkg/a.py": "from pipeline.pkg import b\n", "pipeline/pkg/b.py": "",
    })
    text = (
        "stages:\n"
        "  s:\n"
        "    cmd: python -m stages.s\n"
        "    deps:\n"
        "      - data/raw\n"
        "      - stages/s.py\n"
        "      - pipeline/unused.py   # extra\n"
        "      - params.yaml\n"
        "    outs:\n"
        "      - out\n"
    )
    got = generated_dvc_yaml(text, tmp_path)
    assert yaml.safe_load(got)["stages"]["s"]["deps"] == [
        "data/raw", "stages", "pipeline/__init__.py", "pipeline/m.py", "pipeline/pkg", "params.yaml",
    ]
    assert generated_dvc_yaml(got, tmp_path) == got
    (tmp_path / "pipeline/pkg/c.py").write_text("")  # a module the stage does not import: the folder no longer fits
    assert yaml.safe_load(generated_dvc_yaml(text, tmp_path))["stages"]["s"]["deps"][3:6] == [
        "pipeline/m.py", "pipeline/pkg/__init__.py", "pipeline/pkg/a.py",
    ]


def _outs(stage: dict) -> list[str]:
    return [next(iter(out)) if isinstance(out, dict) else out for out in stage["outs"]]


def test_the_table_and_report_stages_declare_what_they_write():
    from stages import report, table  # each stage's own list of what it writes

    for dvc_file, tables, scope in (("dvc.yaml", "tables", "default"), (EXTRA, "extra_tables", "extra")):
        stages = _stages(dvc_file)
        assert [out.replace("${key}", "table9") for out in _outs(stages["table"])] == table.outputs("table9")
        assert _outs(stages["report"]) == report.outputs(scope)
        assert stages["report"]["cmd"] == f"python -m stages.report --scope {scope}"
        assert yaml.safe_load((PROJECT_ROOT / dvc_file).read_text())["stages"]["table"]["foreach"] == f"${{{tables}}}"


# --- the default run: dvc.yaml reads the default models' evaluations alone ------------------------------------------

EVALUATION_ROOTS = ("reports/metrics/eval", "data/eval", "data/models")


def _evaluation_deps(stage: dict) -> list[str]:
    return [dep for dep in stage["deps"] if dep.startswith(EVALUATION_ROOTS) and "$" not in dep]


def test_dvc_yaml_s_table_and_report_stages_list_the_default_models_evaluations_exactly():
    models = config.load().default_models()
    stages = _stages()
    metrics_and_pairs = [dep for m in models for dep in (f"reports/metrics/eval/{m}.json", f"data/eval/{m}")]
    assert _evaluation_deps(stages["table"]) == metrics_and_pairs
    assert _evaluation_deps(stages["report"]) == [
        dep for m in models for dep in (f"reports/metrics/eval/{m}.json", f"data/eval/{m}", f"data/models/{m}")]
    assert not [dep for stage in stages.values() for dep in stage["deps"] if dep in EVALUATION_ROOTS]  # no folder


def test_no_stage_of_the_default_run_needs_a_stage_of_extra_dvc_yaml():
    """THE property of the default run: a bare `dvc repro` runs dvc.yaml's stages and every stage they need, by DVC's
    own graph of both files; none of those is a stage of extra/dvc.yaml (a folder dependency such as
    reports/metrics/eval would make every evaluation of extra/dvc.yaml part of Table 3's run)."""
    pipeline = read_pipeline(PROJECT_ROOT)
    default = [name for name in pipeline if not name.startswith(f"{EXTRA}:")]
    assert set(default) == {name for name in pipeline if ":" not in name}
    assert {"table@table3", "report", "evaluate_models@pretrain"} <= set(default)
    pulled = {name: [up for up in plan(pipeline, [name]) if up.startswith(f"{EXTRA}:")] for name in default}
    assert pulled == dict.fromkeys(default, []), {name: ups for name, ups in pulled.items() if ups}
    # the graph is DVC's whole one: extra/dvc.yaml's stages are in it and need dvc.yaml's
    assert {f"{EXTRA}:table@table2", f"{EXTRA}:report", f"{EXTRA}:distill"} <= set(pipeline)
    assert "evaluate@arcface_m050_ns" in plan(pipeline, [f"{EXTRA}:table@table2"])


def test_a_row_added_to_params_is_refused_by_validate_until_the_dvc_files_are_regenerated(tmp_path):
    copy_project(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["rows"]["cosface_m030"] = {**params["rows"]["cosface"], "label": "CosFace (m=0.3)", "margins": {"m": 0.3}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = config.load(tmp_path / "params.yaml")
    assert cfg.default_models()[-1] == "cosface_m030"
    assert stale_evaluation_inputs(tmp_path, cfg.default_models()) == ["table", "report"]
    with pytest.raises(ValueError) as refused:
        validate.run(cfg, Paths(tmp_path))
    assert str(refused.value) == (
        f"dvc.yaml: stage table, report does not read the evaluations of params rows "
        f"({', '.join(cfg.default_models())}) model by model: run python -m pipeline.core.dependencies --write")
    assert not (tmp_path / "reports" / "params_valid.txt").exists()

    files = generated_dvc_files(tmp_path)  # what `--write` writes in the copy
    assert files[EXTRA][0] == files[EXTRA][1]  # extra/dvc.yaml lists no model of its own
    (tmp_path / "dvc.yaml").write_text(files["dvc.yaml"][1])
    assert stale_evaluation_inputs(tmp_path, cfg.default_models()) == []
    assert "reports/metrics/eval/cosface_m030.json" in _stages(root=tmp_path)["table"]["deps"]
    assert "data/models/cosface_m030" in _stages(root=tmp_path)["report"]["deps"]
    validate.run(cfg, Paths(tmp_path))
    assert (tmp_path / "reports" / "params_valid.txt").read_text() == "params.yaml valid\n"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_closure_follows_relative_lazy_and_package_imports(tmp_path):
    _write(tmp_path, {
        "stages/__init__.py": "",
        "stages/entry.py": "from pipeline.a import f\n",
        "pipeline/__init__.py": "",
        "pipeline/a.py": "from . import b\ndef f():\n    import pipeline.sub.c\n",
        "pipeline/b.py": "import os\n",
        "pipeline/sub/__init__.py": "",
        "pipeline/sub/c.py": "from ..b import x\n",
        "pipeline/unused.py": "",
    })
    got = {str(p) for p in import_closure("stages/entry.py", tmp_path)}
    assert got == {
        "stages/__init__.py", "stages/entry.py", "pipeline/__init__.py", "pipeline/a.py", "pipeline/b.py",
        "pipeline/sub/__init__.py", "pipeline/sub/c.py",
    }


def test_code_digest_changes_with_any_file_of_the_closure(tmp_path):
    _write(tmp_path, {"stages/__init__.py": "", "stages/e.py": "import pipeline.m\n",
                      "pipeline/__init__.py": "", "pipeline/m.py": "x = 1\n", "pipeline/other.py": ""})
    before = code_digest("stages/e.py", tmp_path)
    (tmp_path / "pipeline/other.py").write_text("y = 2\n")  # outside the closure
    code_digest.cache_clear()
    assert code_digest("stages/e.py", tmp_path) == before
    (tmp_path / "pipeline/m.py").write_text("x = 2\n")
    code_digest.cache_clear()
    assert code_digest("stages/e.py", tmp_path) != before


def test_an_unparsable_module_is_named(tmp_path):
    _write(tmp_path, {"stages/e.py": "import pipeline.bad\n", "pipeline/__init__.py": "", "pipeline/bad.py": "def (:\n"})
    with pytest.raises(ValueError, match="bad.py"):
        import_closure("stages/e.py", tmp_path)


def test_no_project_module_shadows_the_standard_library():
    # Prefect loads a flow from its file with that file's folder first on sys.path: a pipeline/statistics.py was
    # imported in place of the standard library's statistics there and failed every deployment run. Any folder
    # may come to hold a flow, so none may hold a module named like one of the standard library.
    own = {path.stem for folder in ("pipeline", "stages") for path in (PROJECT_ROOT / folder).rglob("*")
           if (path.suffix == ".py" or (path / "__init__.py").exists()) and not path.stem.startswith("__")}
    assert not own & set(sys.stdlib_module_names)
