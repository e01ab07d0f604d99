"""What each trained model of a profile is: the table rows, the N-Softmax pre-training, the cleaning bootstrap,
the distillation teacher and student. One place turns params into these recipes; stages only look them up."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.core.config import BOOTSTRAP, PRETRAIN, STUDENT, TEACHER, Config

__all__ = ["BOOTSTRAP", "PRETRAIN", "STUDENT", "TEACHER", "Recipe", "recipes", "trained_models"]


@dataclass(frozen=True)
class Recipe:
    name: str
    label: str
    backbone: str
    embedding_size: int
    head: str
    margins: dict[str, float | str]
    init: Literal["scratch", "pretrain"]
    weight_decay: float
    embedding_wd_mult: float
    iterations: int
    warmup_iterations: int = 0  # linear learning-rate warm-up (train.warmup_iterations, or the teacher's own)
    cleaned: bool = True  # trained on the cleaning manifest's kept images
    teacher: str | None = None
    distill_weight: float = 0.0
    # a key of params reference.models: hints toward that pretrained model's cached descriptors (no trained teacher)
    reference_teacher: str | None = None

    def description(self, seed: int, crop_size: int, batch_size: int, scale: float) -> dict:
        """Everything that identifies the trained weights; a checkpoint of another description is refused. (Which
        descriptors a reference teacher gave is added by pipeline.experiment.runs.training_identity.)"""
        reference = {"reference_teacher": self.reference_teacher} if self.reference_teacher is not None else {}
        return {
            "recipe": self.name,
            "backbone": self.backbone,
            "embedding_size": self.embedding_size,
            "head": self.head,
            "margins": dict(self.margins),
            "init": self.init,
            "weight_decay": self.weight_decay,
            "embedding_wd_mult": self.embedding_wd_mult,
            "iterations": self.iterations,
            "warmup_iterations": self.warmup_iterations,
            "cleaned": self.cleaned,
            "teacher": self.teacher,
            "distill_weight": self.distill_weight,
            "seed": seed,
            "crop_size": crop_size,
            "batch_size": batch_size,
            "scale": scale,
            **reference,
        }


def recipes(cfg: Config) -> dict[str, Recipe]:
    train = cfg.train
    common = dict(
        backbone=cfg.backbone.name,
        embedding_size=cfg.backbone.embedding_size,
        iterations=train.iterations,
        warmup_iterations=train.warmup_iterations,
    )
    found: dict[str, Recipe] = {
        PRETRAIN: Recipe(
            name=PRETRAIN,
            label=cfg.pretrain.label,
            head=cfg.pretrain.head,
            margins=dict(cfg.pretrain.margins),
            init="scratch",
            weight_decay=train.weight_decay,
            embedding_wd_mult=train.embedding_wd_mult,
            **common,
        ),
        BOOTSTRAP: Recipe(
            name=BOOTSTRAP,
            label="cleaning bootstrap (N-Softmax, uncleaned data)",
            head="nsoftmax",
            margins={},
            init="scratch",
            weight_decay=train.weight_decay,
            embedding_wd_mult=train.embedding_wd_mult,
            cleaned=False,
            backbone=cfg.backbone.name,
            embedding_size=cfg.backbone.embedding_size,
            iterations=cfg.clean.bootstrap_iterations,
            warmup_iterations=train.warmup_iterations,
        ),
    }
    for name, row in cfg.rows.items():
        if name in found or name in (TEACHER, STUDENT):
            raise ValueError(f"{cfg.params_key('rows', name)}: {name!r} is a reserved model name")
        found[name] = Recipe(
            name=name,
            label=row.label,
            head=row.head,
            margins=dict(row.margins),
            init=row.init,
            weight_decay=train.weight_decay if row.weight_decay is None else row.weight_decay,
            embedding_wd_mult=train.embedding_wd_mult if row.embedding_wd_mult is None else row.embedding_wd_mult,
            cleaned=row.cleaned,
            **common,
        )
    if cfg.distill.enabled:
        distill = cfg.distill
        student_of = found[distill.student_row]
        if distill.reference_teacher is not None:  # a pretrained teacher: nothing to train but the student
            reference = cfg.reference.models[distill.reference_teacher]
            found[STUDENT] = Recipe(**{**student_of.__dict__, "name": STUDENT,
                                       "label": f"{student_of.label} + distillation from {reference.label}",
                                       "reference_teacher": distill.reference_teacher,
                                       "distill_weight": distill.weight})
            return found
        found[TEACHER] = Recipe(
            name=TEACHER,
            label=f"teacher: {distill.teacher_backbone} {distill.teacher_embedding_size}-d + {distill.teacher_head}",
            backbone=distill.teacher_backbone,
            embedding_size=distill.teacher_embedding_size,
            head=distill.teacher_head,
            margins=dict(distill.teacher_margins),
            init="scratch",
            weight_decay=train.weight_decay,
            embedding_wd_mult=train.embedding_wd_mult,
            iterations=distill.teacher_iterations or train.iterations,
            warmup_iterations=distill.teacher_warmup_iterations,
        )
        found[STUDENT] = Recipe(
            **{
                **student_of.__dict__,
                "name": STUDENT,
                "label": f"{student_of.label} + distillation",
                "teacher": TEACHER,
                "distill_weight": distill.weight,
            }
        )
    return found


def trained_models(cfg: Config) -> list[str]:
    """The models that are evaluated and reported (every recipe but the cleaning bootstrap)."""
    return [name for name in recipes(cfg) if name != BOOTSTRAP]
