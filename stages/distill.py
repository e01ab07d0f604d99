"""Stage distill: the MobileFaceNet student with a teacher's embeddings as hints. The teacher is trained here (params
distill.teacher_*), or, with distill.reference_teacher, is a pretrained reference model whose descriptors of every
training photo are computed once and kept (data/reference_targets; pipeline.reference.teacher)."""
from __future__ import annotations

from pipeline.core import stage
from pipeline.core.config import Config
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import STUDENT, TEACHER
from pipeline.experiment.runs import train_recipe
from pipeline.reference import teacher


def run(cfg: Config, paths: Paths) -> None:
    if not cfg.distill.enabled:
        raise ValueError("distill.enabled is false: remove the distill stage or enable it")
    stage.require(paths, paths.train_records(paths.aligned), paths.manifest)
    reference = cfg.distill.reference_teacher
    if reference is None:
        teacher.no_reference_teacher(paths)
        for seed in cfg.seeds:
            train_recipe(cfg, paths, TEACHER, seed)
            train_recipe(cfg, paths, STUDENT, seed)
        return
    stage.require(paths, paths.train_records(paths.raw))
    paths.model_dir(TEACHER).mkdir(parents=True, exist_ok=True)  # a DVC output: a teacher trained before is kept
    descriptors, _ = teacher.cached_descriptors(cfg, paths, reference)
    hints = teacher.reference_hints(reference, descriptors)
    for seed in cfg.seeds:
        train_recipe(cfg, paths, STUDENT, seed, hints=hints)


def main() -> None:
    stage.main("distill", run)


if __name__ == "__main__":
    main()
