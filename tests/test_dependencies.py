"""Stage dependencies by construction: each dvc.yaml stage lists exactly the project files its entry module imports."""
import re
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import PROJECT_ROOT
from pipeline.core.dependencies import code_dependencies, code_digest, generated_dvc_yaml, import_closure


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.mark.parametrize("name", sorted(_stages()))
def test_code_dependencies_are_the_import_closure_exactly(name):
    stage = _stages()[name]
    entry = re.search(r"python -m (stages\.\w+)", stage["cmd"]).group(1).replace(".", "/") + ".py"
    declared = [dep for dep in stage["deps"] if dep.split("/")[0] in ("pipeline", "stages")]
    wanted = code_dependencies(entry)
    assert declared == wanted, (
        f"dvc.yaml stage {name}: missing {sorted(set(wanted) - set(declared))}, extra "
        f"{sorted(set(declared) - set(wanted))}; run python -m pipeline.core.dependencies --write"
    )


def test_dvc_yaml_is_what_the_generator_writes():
    text = (PROJECT_ROOT / "dvc.yaml").read_text()
    assert generated_dvc_yaml(text) == text


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


def _outs(name: str) -> list[str]:
    return [next(iter(out)) if isinstance(out, dict) else out for out in _stages()[name]["outs"]]


def test_the_table_and_report_stages_declare_what_they_write():
    from stages import report, table  # each stage's own list of what it writes

    assert [out.replace("${key}", "table9") for out in _outs("table")] == table.outputs("table9")
    assert _outs("report") == report.OUTPUTS
    assert yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["table"]["foreach"] == "${tables}"


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
