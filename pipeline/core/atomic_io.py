"""Atomic file output: a reader sees either the old file or the complete new one, never half."""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Works for files and for directories (a directory target is replaced whole).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if not staged.exists():
            raise FileNotFoundError(f"nothing was written to {staged} for {target}")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_staging(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging folders a killed writer of `target` left beside it; return them.

    Only `.NAME.PID-XXXXXXXX.tmp` folders of this target whose process is gone (and the older `.NAME.XXXXXXXX.tmp`
    without a PID) are removed: a live writer's staging folder, or anything else, is left alone.
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:(\d+)-)?[a-z0-9_]{{8}}\.tmp")
    swept = []
    with contextlib.suppress(FileNotFoundError):
        for entry in target.parent.iterdir():
            found = pattern.fullmatch(entry.name)
            if found and entry.is_dir() and not entry.is_symlink() and not _alive(found[1]):
                shutil.rmtree(entry, ignore_errors=True)
                swept.append(entry)
    return swept


def _alive(pid: str | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a PID we can check: keep its folder
    return True


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> None:
    """Strict JSON: NaN and infinities (an unreachable TAR@FAR, say) are written as null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    write_text_atomic(target, text + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays appear in metrics; json does not know them.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
