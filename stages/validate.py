"""Stage validate: load params.yaml for the active profile and fail with one line if it is invalid.

Its outputs change only with what they say: reports/params_valid.txt has constant content, so stages that depend on
it rerun when the code does, never because a parameter changed (they depend on their own parameters for that); and
reports/evaluation_plan/<model>.json names the held-out protocols each model is evaluated on (those the tables
showing it list), so a table edit reruns a model's evaluation only when it changes that list."""
from __future__ import annotations

import json

from pipeline import stage
from pipeline.config import Config
from pipeline.atomic_io import atomic_path, write_text_atomic
from pipeline.data.synthetic.heldout import parse
from pipeline.paths import Paths

MARKER = "params.yaml valid\n"


def run(cfg: Config, paths: Paths) -> None:
    """Validate the parameters (stage.main loads them; an error exits 1 before this runs), and the held-out
    protocols' specs, which only their own stage reads."""
    parse(cfg.protocols)
    with atomic_path(paths.evaluation_plan_dir) as staged:
        staged.mkdir()
        for model in cfg.evaluated_models():
            (staged / f"{model}.json").write_text(json.dumps({"protocols": cfg.protocols_for(model)}) + "\n")
    write_text_atomic(paths.reports / "params_valid.txt", MARKER)


def main() -> None:
    stage.main("validate", run)


if __name__ == "__main__":
    main()
