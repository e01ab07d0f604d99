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


def generated_dvc_yaml(text: str, root: Path = PROJECT_ROOT) -> str:
    """`text` (a dvc.yaml) with each stage's code dependencies replaced by its entry module's closure, in place
    of the first code dependency listed (other dependencies, comments and order kept)."""
    blocks = re.split(r"(?m)^(?=  \w+:)", text)
    out = []
    for block in blocks:
        command = _COMMAND.search(block) if _STAGE.match(block) else None
        if command is None:
            out.append(block)
            continue
        entry = command.group(1).replace(".", "/") + ".py"
        lines = block.splitlines(keepends=True)
        kept, inserted = [], False
        for line in lines:
            match = _CODE_DEP.match(line)
            if match is None:
                kept.append(line)
            elif not inserted:
                kept.extend(f"{match.group(1)}- {dep}\n" for dep in code_dependencies(entry, root))
                inserted = True
        if not inserted:
            raise ValueError(f"dvc.yaml stage {_STAGE.match(block).group(1)}: no code dependency to replace; list "
                             f"its entry module ({entry}) under deps first")
        out.append("".join(kept))
    return "".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.core.dependencies",
                                     description="dvc.yaml's code dependencies from each stage's import closure")
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml (default: report whether it is current)")
    args = parser.parse_args(argv)
    path = PROJECT_ROOT / "dvc.yaml"
    current = path.read_text(encoding="utf-8")
    wanted = generated_dvc_yaml(current)
    if args.write:
        if wanted != current:
            write_text_atomic(path, wanted)
        print(f"{path.name}: code dependencies {'updated' if wanted != current else 'already current'}")
        return 0
    if wanted != current:
        print(f"{path.name}: code dependencies differ from the import closures; run python -m "
              "pipeline.core.dependencies --write", file=sys.stderr)
        return 1
    print(f"{path.name}: code dependencies current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
