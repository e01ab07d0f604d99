"""Stage protocols: write data/protocols — the held-out test protocols of params `protocols` (cross-pose, cross-age,
per-group verification, 1:N identification), aligned, on identities no other set uses."""
from __future__ import annotations

from pipeline.data import heldout_protocols

from pipeline.core import stage
from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.config import Config
from pipeline.core.paths import Paths


def run(cfg: Config, paths: Paths) -> dict:
    # one process: rendering workers are forked, and this stage has torch (and its thread pools) loaded, where a fork
    # can deadlock (it did, on the cpu profile); synthesize renders in one process too
    summary = heldout_protocols.build(cfg, paths.protocols)
    write_json_atomic(paths.reports / "protocols.json", summary)
    return summary


def main() -> None:
    stage.main("protocols", run)


if __name__ == "__main__":
    main()
