"""Which project source files a stage runs: the import closure of its entry module inside the project.

One answer serves two checks: `dvc.yaml` must list every file of a stage's closure as a dependency (a test fails
when it misses one), and a training run's resume identity carries the digest of its closure, so a checkpoint
written by other code is never continued.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from pipeline.config import PROJECT_ROOT

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
