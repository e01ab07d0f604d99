"""What every stage entry point shares: arguments, config loading, logging, and a clear one-line failure."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import re
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import TypeVar

import yaml

from pipeline.core import config
from pipeline.core.config import BOOTSTRAP, PRETRAIN, STUDENT, TEACHER, Config
from pipeline.core.paths import Paths

log = logging.getLogger("facerepro")

T = TypeVar("T")

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (128 + 2)

# Which dvc.yaml stage writes a project path: fixed outputs by their first parts, models and evaluations by name.
_WRITERS = {
    ("data", "raw"): "synthesize",
    ("data", "aligned"): "align",
    ("data", "protocols"): "protocols",
    ("data", "clean"): "clean",
    ("reports", "cleaning.json"): "clean",
    ("reports", "params_valid.txt"): "validate",
    ("reports", "evaluation_plan"): "validate",
    ("data", "reference"): "reference",
    ("reports", "metrics", "reference"): "reference",
}
_MODEL_WRITERS = {BOOTSTRAP: "clean", PRETRAIN: "pretrain", TEACHER: "distill", STUDENT: "distill"}
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory|out of memory", re.IGNORECASE)
_ALLOCATION = re.compile(r"allocate (\d+) bytes|allocate ([\d.]+ [KMGTPE]i?B)", re.IGNORECASE)


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM (a scheduler, `kill`, Prefect cancelling) unwinds like Ctrl-C: tracking ends the run as KILLED and
    # staging folders are left for the next write to sweep; the last checkpoint is where a rerun resumes
    raise SystemExit(128 + signum)


def main(
    name: str,
    run: Callable[..., object],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=run.__doc__)
    parser.add_argument("--params", type=Path, default=None, help="parameters file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="profile to use (default: `profile` in the parameters)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(message)s", datefmt="%H:%M:%S")
    extra = {k: v for k, v in vars(args).items() if k not in ("params", "profile")}
    signal.signal(signal.SIGTERM, _terminated)
    root = args.params.resolve().parent if args.params else config.PROJECT_ROOT
    try:
        cfg: Config = config.load(args.params, args.profile)
        run(cfg, Paths(root), **extra)
    except KeyboardInterrupt:
        # Ctrl-C is the user's own doing: outputs are written whole or not at all and training resumes from its
        # last checkpoint, so the stack of wherever the signal landed says nothing they need
        print(f"interrupted: stage {name} stopped; `dvc repro` resumes it", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as error:
        message = failure(name, error, root)
        if message is None:  # a fault in the code, not in the parameters, the data or the machine: the stack helps
            raise
        print(message, file=sys.stderr)
        sys.exit(1)


def failure(name: str, error: Exception, root: Path) -> str | None:
    """The one line that stage `name` ends with for `error`, or None for an error whose traceback is the message.

    Parameters, files, records, memory and disk are the user's to fix, and the line names what to fix; a traceback
    would bury it."""
    if _out_of_memory(error):
        return f"stage {name} failed: {_memory_message(error)}"
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = error.filename or f"under {root}"
        return f"stage {name} failed: disk full writing {where} ({_free_space(root)}); free space and rerun it"
    if isinstance(error, (ValueError, OSError, KeyError)):
        return f"stage {name} failed: {_one_line(str(error))}"
    return None


def _out_of_memory(error: Exception) -> bool:
    # torch reports a failed CPU allocation as a plain RuntimeError, a CUDA one as torch.OutOfMemoryError (not
    # imported here: validate and synthesize load no torch)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and _OUT_OF_MEMORY.search(str(error)) is not None


def _memory_message(error: Exception) -> str:
    found = _ALLOCATION.search(str(error))
    size = "" if found is None else f" (it tried to allocate {found[2] or _size(int(found[1]))})"
    return (
        f"out of memory{size}; a size in the parameters (align.crop_size, backbone.embedding_size, "
        "train.batch_size, evaluate.batch_size, ...) is too large for this machine"
    )


def _size(count: int) -> str:
    value, unit = float(count), "bytes"
    for larger in ("kB", "MB", "GB", "TB", "PB", "EB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def _free_space(root: Path) -> str:
    try:
        return f"{_size(shutil.disk_usage(root).free)} free now that the partial output is removed"
    except OSError:
        return "free space unknown"


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def writer(paths: Paths, path: Path) -> str | None:
    """The dvc.yaml stage whose output holds `path`, or None for a path no stage writes."""
    try:
        parts = path.relative_to(paths.root).parts
    except ValueError:
        return None
    if parts[:2] == ("data", "models") and len(parts) > 2:
        return _in_its_file(paths, parts[2], _MODEL_WRITERS.get(parts[2], f"train@{parts[2]}"))
    model = _evaluated_model(parts)
    if model is not None:
        stage = f"evaluate_models@{model}" if model in (PRETRAIN, TEACHER, STUDENT) else f"evaluate@{model}"
        return _in_its_file(paths, model, stage)
    return next((stage for prefix, stage in _WRITERS.items() if parts[: len(prefix)] == prefix), None)


def _in_its_file(paths: Paths, model: str, stage: str) -> str:
    """`stage` as `dvc repro` takes it: prefixed with extra/dvc.yaml: for a model of the other tables (params
    `extra_rows`, the distillation's teacher and student)."""
    try:
        raw = yaml.safe_load((paths.root / "params.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):  # an error message is being written: the stage name alone will do
        raw = {}
    extra = raw.get("extra_rows") if isinstance(raw, dict) else None
    return f"extra/dvc.yaml:{stage}" if model in {*(extra or {}), TEACHER, STUDENT} else stage


def _evaluated_model(parts: tuple[str, ...]) -> str | None:
    if parts[:2] == ("data", "eval") and len(parts) > 2:
        return parts[2]
    if parts[:3] == ("reports", "metrics", "eval") and len(parts) > 3:
        return PurePath(parts[3]).stem
    return None


def _rerun(paths: Paths, path: Path, verb: str) -> str:
    stage = writer(paths, path)
    return "" if stage is None else f"; stage {stage} writes it: {verb} `dvc repro {stage}`"


def require(paths: Paths, *needed: Path) -> None:
    """Stop on the first missing input with the stage that writes it: a stage run before the ones it reads from
    would otherwise stop on a bare path."""
    for path in needed:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing{_rerun(paths, path, 'run')}")


def read_inputs(paths: Paths, files: Sequence[Path], load: Callable[[], T]) -> T:
    """`load()`, which reads `files` (earlier stages' outputs); one missing, or unreadable (cut short, overwritten),
    is named with the stage that writes it. Each file is read again only after `load` failed, to find the culprit."""
    require(paths, *files)
    try:
        return load()
    except (OSError, ValueError) as error:
        for path in files:
            reason = _read_error(path)
            if reason is not None:
                raise ValueError(f"{path} cannot be read ({reason}){_rerun(paths, path, 'rerun')}") from error
        raise


def _read_error(path: Path) -> str | None:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            import pyarrow.parquet  # only when a load has failed: most stages never read a table

            pyarrow.parquet.read_table(path)
        else:
            path.read_bytes()
    except (OSError, ValueError) as error:
        return _one_line(str(error))
    return None
