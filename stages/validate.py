"""Stage validate: load params.yaml for the active profile and fail with one line if it is invalid.

Every other stage depends on it, so a parameter a later stage would refuse must be refused here: once `dvc repro`
runs a stage, DVC has removed that stage's outputs. Beyond the typed config (pipeline.core.config) it checks what only the
stages read (pipeline.experiment.preflight): the synthetic spec and held-out protocols, devices against this machine, and every
model a run will build, on the meta device; and that dvc.yaml's table and report stages read the evaluations of the
default run's rows (params `rows`), listed model by model by `python -m pipeline.core.dependencies --write`.

Its outputs change only with what they say: reports/params_valid.txt has constant content, so stages that depend on
it rerun when the code does, never because a parameter changed (they depend on their own parameters for that); and
reports/evaluation_plan/<model>.json names the held-out protocols each model is evaluated on (those the tables
showing it list), so a table edit reruns a model's evaluation only when it changes that list."""
from __future__ import annotations

import json

from pipeline.core import stage
from pipeline.core.atomic_io import atomic_path, write_text_atomic
from pipeline.core.config import TEACHER, Config
from pipeline.core.dependencies import stale_evaluation_inputs
from pipeline.core.paths import Paths
from pipeline.experiment.preflight import check, this_machine

MARKER = "params.yaml valid\n"


def run(cfg: Config, paths: Paths) -> None:
    """Validate the parameters (stage.main loads them; an error exits 1 before this runs) and what only the stages
    read (`check`)."""
    check(cfg, this_machine())
    stale = stale_evaluation_inputs(paths.root, cfg.default_models())
    if stale:
        raise ValueError(f"dvc.yaml: stage {', '.join(stale)} does not read the evaluations of params rows "
                         f"({', '.join(cfg.default_models())}) model by model: run python -m pipeline.core.dependencies "
                         "--write")
    with atomic_path(paths.evaluation_plan_dir) as staged:
        staged.mkdir()
        # extra/dvc.yaml evaluates the teacher even where a reference model replaces it (stage evaluate says so)
        for model in dict.fromkeys([*cfg.evaluated_models(), *([TEACHER] if cfg.distill.enabled else [])]):
            (staged / f"{model}.json").write_text(json.dumps({"protocols": cfg.protocols_for(model)}) + "\n")
    write_text_atomic(paths.reports / "params_valid.txt", MARKER)


def main() -> None:
    stage.main("validate", run)


if __name__ == "__main__":
    main()
