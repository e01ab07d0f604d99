"""Stage distill: train the teacher, then the MobileFaceNet student with the teacher's embeddings as hints."""
from __future__ import annotations

from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import STUDENT, TEACHER
from pipeline.experiment.runs import train_recipe


def run(cfg: Config, paths: Paths) -> None:
    if not cfg.distill.enabled:
        raise ValueError("distill.enabled is false: remove the distill stage or enable it")
    stage.require(paths, paths.train_records(paths.aligned), paths.manifest)
    for seed in cfg.seeds:
        train_recipe(cfg, paths, TEACHER, seed)
        train_recipe(cfg, paths, STUDENT, seed)


def main() -> None:
    stage.main("distill", run)


if __name__ == "__main__":
    main()
