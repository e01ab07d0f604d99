"""Which project source files a stage runs: the import closure of its entry module inside the project.

One answer serves two uses: `dvc.yaml`'s code dependencies are generated from it (`python -m
pipeline.core.dependencies --write`; a test fails when dvc.yaml differs, by a missing file or an extra one), and a
training run's resume identity carries the digest of its closure, so a checkpoint written by other code is never
continued.
"""
from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from pipeline.core import config
from pipeline.core.atomic_io import write_text_atomic
from pipeline.core.config import PROJECT_ROOT

PACKAGES = ("pipeline", "stages")


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(root: Path, path: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1]  # pipeline/train/engine.py and pipeline/train/__init__.py are both in pipeline.train


def _imported_modules(root: Path, path: Path) -> set[str]:
    """Every module an `import` anywhere in `path` may load (function-level imports included: they run too)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise ValueError(f"{path}: cannot parse ({error.msg}, line {error.lineno})") from None
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = _package_of(root, path)
            prefix = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join(prefix + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_closure(entry: str | Path, root: Path = PROJECT_ROOT) -> list[Path]:
    """The project files `entry` (a path relative to `root`) imports, directly or not, itself included; every
    package `__init__` on the way counts, since importing a submodule runs it."""
    root = root.resolve()
    start = (root / entry).resolve()
    if not start.is_file():
        raise FileNotFoundError(f"{entry}: no such file under {root}")
    seen: set[Path] = set()
    package = _package_of(root, start)  # `python -m stages.train` runs stages/__init__.py first
    inits = [_module_file(root, ".".join(package[:depth])) for depth in range(1, len(package) + 1)]
    pending = [start, *[path for path in inits if path is not None]]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(root, path):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):  # pipeline, pipeline.train, pipeline.train.engine
                found = _module_file(root, ".".join(parts[:depth]))
                if found is not None and found not in seen:
                    pending.append(found)
    return sorted(path.relative_to(root) for path in seen)


@functools.cache
def code_digest(entry: str, root: Path = PROJECT_ROOT) -> str:
    """sha256 over the closure's relative paths and contents: the code version of what `entry` runs."""
    digest = hashlib.sha256()
    for relative in import_closure(entry, root):
        digest.update(str(relative).encode() + b"\0" + (root / relative).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _sources_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*.py") if "__pycache__" not in path.parts}


def code_dependencies(entry: str | Path, root: Path = PROJECT_ROOT) -> list[str]:
    """The closure of `entry` as dvc.yaml lists it: a folder where the closure holds every module under it (DVC
    hashes the folder; .dvcignore leaves bytecode out), single files elsewhere; top-level packages first."""
    root = root.resolve()
    closure = {root / path for path in import_closure(entry, root)}

    def compress(folder: Path) -> list[Path]:
        if _sources_under(folder) <= closure:
            return [folder]
        files = sorted(path for path in folder.glob("*.py") if path in closure)
        subfolders = sorted(path for path in folder.iterdir() if (path / "__init__.py").is_file())
        return files + [found for sub in subfolders for found in compress(sub)]

    return [path.relative_to(root).as_posix() for package in PACKAGES[::-1] for path in compress(root / package)]


_STAGE = re.compile(r"^  (\w+):")
_COMMAND = re.compile(r"cmd: python -m (stages\.\w+)")
_CODE_DEP = re.compile(r"^(\s+)- (?:pipeline|stages)(?:/\S*)?\s*(?:#.*)?$")
# a per-model evaluation input of a stage that reads named models' evaluations (not `${key}` ones)
_EVALUATION_DEP = re.compile(r"^(\s+)- (?:reports/metrics/eval/\w+\.json|data/eval/\w+|data/models/\w+)\s*$")
# the stages that read the default run's evaluations: their inputs are listed model by model, since a folder
# (reports/metrics/eval) would make every evaluate stage of extra/dvc.yaml an upstream stage of the default run
EVALUATION_READERS = {"stages.table": ("metrics", "pairs"), "stages.report": ("metrics", "pairs", "models")}
DVC_FILES = ("dvc.yaml", "extra/dvc.yaml")


def evaluation_inputs(models: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """The project-relative files and folders a reader of `models`' evaluations depends on, model by model."""
    where = {"metrics": "reports/metrics/eval/{}.json", "pairs": "data/eval/{}", "models": "data/models/{}"}
    return [where[kind].format(model) for model in models for kind in kinds]


def _replaced(lines: list[str], pattern: re.Pattern[str], wanted: list[str]) -> tuple[list[str], bool]:
    """`lines` with those matching `pattern` replaced by `wanted` (as list items) where the first one was."""
    kept, inserted = [], False
    for line in lines:
        match = pattern.match(line)
        if match is None:
            kept.append(line)
        elif not inserted:
            kept.extend(f"{match.group(1)}- {dep}\n" for dep in wanted)
            inserted = True
    return kept, inserted


def generated_dvc_yaml(text: str, root: Path = PROJECT_ROOT, default_models: Sequence[str] | None = None) -> str:
    """`text` (a dvc.yaml) with each stage's code dependencies replaced by its entry module's closure, in place
    of the first code dependency listed (other dependencies, comments and order kept); with `default_models`
    (dvc.yaml's own), the table and report stages' evaluation inputs too, model by model."""
    blocks = re.split(r"(?m)^(?=  \w+:)", text)
    out = []
    for block in blocks:
        command = _COMMAND.search(block) if _STAGE.match(block) else None
        if command is None:
            out.append(block)
            continue
        name = _STAGE.match(block).group(1)
        entry = command.group(1).replace(".", "/") + ".py"
        lines, inserted = _replaced(block.splitlines(keepends=True), _CODE_DEP, code_dependencies(entry, root))
        if not inserted:
            raise ValueError(f"dvc.yaml stage {name}: no code dependency to replace; list its entry module ({entry}) "
                             "under deps first")
        kinds = EVALUATION_READERS.get(command.group(1))
        if default_models is not None and kinds:
            lines, inserted = _replaced(lines, _EVALUATION_DEP, evaluation_inputs(default_models, kinds))
            if not inserted:
                raise ValueError(f"dvc.yaml stage {name}: no evaluation input to replace; list "
                                 f"{evaluation_inputs(default_models[:1], kinds[:1])[0]} under deps")
        out.append("".join(lines))
    return "".join(out)


def stale_evaluation_inputs(root: Path, default_models: Sequence[str]) -> list[str]:
    """The stages of `root`/dvc.yaml whose evaluation inputs are not `default_models`' (params.yaml changed the
    default run's rows and the generator has not been run since)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    stale = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        command = _COMMAND.search(f"cmd: {body.get('cmd', '')}")
        kinds = EVALUATION_READERS.get(command.group(1)) if command else None
        if kinds:
            declared = [dep for dep in body.get("deps", []) if _EVALUATION_DEP.match(f"  - {dep}")]
            if declared != evaluation_inputs(default_models, kinds):
                stale.append(name)
    return stale


def generated_dvc_files(root: Path = PROJECT_ROOT) -> dict[str, tuple[str, str]]:
    """Each dvc file of the project -> (its text, the text the generator writes): code dependencies everywhere,
    the default run's evaluation inputs from params.yaml in dvc.yaml."""
    default_models = config.load(root / "params.yaml").default_models()
    files = {}
    for name in DVC_FILES:
        current = (root / name).read_text(encoding="utf-8")
        files[name] = current, generated_dvc_yaml(current, root, default_models if name == "dvc.yaml" else None)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.core.dependencies",
        description="dvc.yaml's and extra/dvc.yaml's code dependencies from each stage's import closure, and the "
                    "default run's evaluation inputs from params.yaml")
    parser.add_argument("--write", action="store_true", help="rewrite them (default: report whether they are current)")
    args = parser.parse_args(argv)
    stale = []
    for name, (current, wanted) in generated_dvc_files().items():
        if args.write and wanted != current:
            write_text_atomic(PROJECT_ROOT / name, wanted)
        if args.write:
            print(f"{name}: dependencies {'updated' if wanted != current else 'already current'}")
        elif wanted != current:
            stale.append(name)
            print(f"{name}: dependencies differ from the import closures or params.yaml; run python -m "
                  "pipeline.core.dependencies --write", file=sys.stderr)
        else:
            print(f"{name}: dependencies current")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
