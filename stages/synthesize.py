"""Stage synthesize: write data/raw — the embedded synthetic benchmark, or the user's dataset converted to records."""
from __future__ import annotations

from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.data import ingest
from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.paths import Paths


def run(cfg: Config, paths: Paths) -> dict:
    summary = ingest.prepare_raw(cfg.data, paths.raw)
    write_json_atomic(paths.reports / "data.json", summary)
    return summary


def main() -> None:
    stage.main("synthesize", run)


if __name__ == "__main__":
    main()
