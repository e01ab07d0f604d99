"""Running DVC stages side by side: each as soon as what it needs is done, at most `workers` at once, with a
thread budget each; a failed stage's own error, and whether a retry could help."""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# Failures worth a retry: lock contention and a process killed from outside (the OOM killer's SIGKILL).
# A stage's own error (bad params, a missing file) would only repeat, so it fails at once.
TRANSIENT_MARKERS = ("Unable to acquire lock", "is being blocked by", "database is locked", "exited with -9")
_OWN_ERROR = re.compile(r"^stage \S+ failed: ")

F = TypeVar("F", bound=Hashable)


def stage_threads(workers: int, cpus: int | None) -> int:
    """CPU threads for each of `workers` concurrent stages, so together they do not oversubscribe the cores."""
    return max(1, (cpus or 1) // workers)


def stage_env(base: Mapping[str, str], threads: int) -> dict[str, str]:
    """The environment of a `dvc repro`: this interpreter's `python` first on PATH (dvc.yaml calls `python`,
    and a served flow may start from a shell without the venv), and a thread budget unless the user set one."""
    env = dict(base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, str(threads))
    return env


@dataclass(frozen=True)
class Outcome:
    done: list[str]
    failed: list[str]
    skipped: list[str]  # not run because a stage they need failed


def schedule(
    order: Sequence[str],
    needs: Mapping[str, frozenset[str]],
    start: Callable[[str], F],
    first_done: Callable[[list[F]], F],
    succeeded: Callable[[F], bool],
    workers: int,
) -> Outcome:
    """Run the stages of `order` (upstream first) with at most `workers` at once, each as soon as what it needs
    is done; a failure skips what depends on it while independent stages go on (like `dvc repro --keep-going`)."""
    planned = set(order)
    pending = list(order)
    running: dict[F, str] = {}
    done: list[str] = []
    failed: list[str] = []
    skipped: list[str] = []
    while pending or running:
        for name in list(pending):  # upstream first, so one pass also skips what a skipped stage feeds
            if needs[name] & planned & {*failed, *skipped}:
                pending.remove(name)
                skipped.append(name)
        ready = [name for name in pending if (needs[name] & planned) <= set(done)]
        for name in ready[: workers - len(running)]:
            pending.remove(name)
            running[start(name)] = name
        if not running:
            break
        finished = first_done(list(running))
        (done if succeeded(finished) else failed).append(running.pop(finished))
    return Outcome(done, failed, skipped)


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int, output: str) -> None:
        self.stage = stage
        self.returncode = returncode
        self.transient = is_transient(returncode, output)
        super().__init__(stage_error(stage, returncode, output))


def is_transient(returncode: int, output: str) -> bool:
    """Whether a failed `dvc repro` is worth a retry (see TRANSIENT_MARKERS); a signal killed dvc itself too."""
    return returncode < 0 or any(marker in output for marker in TRANSIENT_MARKERS)


def stage_error(stage: str, returncode: int, output: str) -> str:
    """The stage's own error (from its `stage <name> failed:` line on) and DVC's verdict; else the output's tail."""
    lines = output.rstrip().splitlines()
    verdict = [line for line in lines if line.startswith("ERROR:")][-1:]
    own = next((i for i, line in enumerate(lines) if _OWN_ERROR.match(line)), None)
    if own is not None:
        body = [line for line in lines[own:] if not line.startswith("ERROR:")]
    else:
        body = [line for line in lines if not line.startswith("ERROR:")][-30:]
    return "\n".join([f"dvc repro {stage} failed (exit {returncode}):", *body, *verdict])
