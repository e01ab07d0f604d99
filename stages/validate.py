"""Stage validate: load params.yaml for the active profile and fail with one line if it is invalid.

Its only output, reports/params_valid.txt, has constant content: stages that depend on it rerun when the code
does, never because a parameter changed (they depend on their own parameters for that)."""
from __future__ import annotations

from pipeline import stage
from pipeline.config import Config
from pipeline.atomic_io import write_text_atomic
from pipeline.paths import Paths

MARKER = "params.yaml valid\n"


def run(cfg: Config, paths: Paths) -> None:
    """Validate the parameters (stage.main loads them; an error exits 1 before this runs)."""
    write_text_atomic(paths.reports / "params_valid.txt", MARKER)


def main() -> None:
    stage.main("validate", run)


if __name__ == "__main__":
    main()
