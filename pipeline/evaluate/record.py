"""One model's evaluation as stage evaluate records it (reports/metrics/eval/<model>.json, which `dvc metrics`
reads): typed, and read and written in that file's JSON layout, byte for byte.

Reading refuses a field the layout does not name (saving would drop it without a word) and names the file and
the field of anything missing or malformed."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.json_fields import JsonField

PAIR_FIGURES = (
    "accuracy", "accuracy_std", "accuracy_flip", "accuracy_flip_std",
    "insightface_accuracy", "insightface_accuracy_std",
)
TAR_KEY = re.compile(r"tar_at_far_(.+)")
RANK1_KEY = re.compile(r"rank1_at_(\d+)")


@dataclass(frozen=True)
class PairFigures:
    """A pair protocol's figures (pipeline.evaluate.embeddings.PairEvaluation): 10-fold accuracy and its std over
    the folds without and with the flip test, the insightface-tools protocol's, and TAR at each FAR."""
    accuracy: float
    accuracy_std: float
    accuracy_flip: float
    accuracy_flip_std: float
    insightface_accuracy: float
    insightface_accuracy_std: float
    tar_at_far: dict[float, float]  # FAR -> TAR; NaN (null in the file) where too few impostor pairs reach it

    def fold_std(self, metric: str) -> float:
        """The std over the folds of `metric`: accuracy, accuracy_flip or insightface_accuracy."""
        return {"accuracy": self.accuracy_std, "accuracy_flip": self.accuracy_flip_std,
                "insightface_accuracy": self.insightface_accuracy_std}[metric]

    def to_metrics(self) -> dict[str, float]:
        """Flat, as the file holds them and MLflow logs them: `tar_at_far_0.001` etc."""
        return {**{key: getattr(self, key) for key in PAIR_FIGURES},
                **{f"tar_at_far_{far:g}": tar for far, tar in self.tar_at_far.items()}}


@dataclass(frozen=True)
class IdentificationFigures:
    """A 1:N identification set's figures (pipeline.evaluate.identify.SetIdentification)."""
    rank1: float  # with every distractor
    rank1_at: dict[int, float]  # distractor count -> rank-1 identification rate
    tar_at_far: dict[float, float]  # FAR -> TAR; NaN (null in the file) where too few impostor pairs reach it

    def to_metrics(self) -> dict[str, float]:
        """Flat, as the file holds them and MLflow logs them: `rank1`, `rank1_at_100`, `tar_at_far_1e-06` etc."""
        return {"rank1": self.rank1, **{f"rank1_at_{count}": rank1 for count, rank1 in self.rank1_at.items()},
                **{f"tar_at_far_{far:g}": tar for far, tar in self.tar_at_far.items()}}


BenchmarkFigures = PairFigures | IdentificationFigures


@dataclass(frozen=True)
class EvaluationTiming:
    """What embedding and scoring every protocol took for one seed (bench/pipeline_time.py reads it)."""
    seconds: float
    images: int
    forward_passes: int  # the images, twice with the flip test


@dataclass(frozen=True)
class EvaluationKey:
    """Everything that determines one seed's evaluation, as digests (pipeline.evaluate.reuse computes them): an entry
    whose key equals the one its seed would be evaluated under now is taken as it is instead of evaluated again."""
    weights: str  # the seed's model.pt
    settings: str  # the parameters evaluate reads
    protocols: dict[str, str]  # each protocol scored -> its files' digest
    code: str  # stage evaluate's import closure

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights, "settings": self.settings, "protocols": self.protocols, "code": self.code}


@dataclass(frozen=True)
class SeedEvaluation:
    diverged_at_step: int | None  # None: training finished
    train: dict[str, Any]  # the seed's train.json, copied as it is: its layout is pipeline.train.engine's
    benchmarks: dict[str, BenchmarkFigures]  # protocol -> its figures; empty when training diverged
    timing: EvaluationTiming | None  # None when nothing was scored, and in files written before it was recorded
    # None in files written before it was recorded: such an entry is evaluated again, never reused
    key: EvaluationKey | None = None
    pairs_digest: str | None = None  # of the seed's rows of data/eval/<model>/pairs.parquet as written beside it

    def to_json(self) -> dict[str, Any]:
        entry = {"diverged_at_step": self.diverged_at_step, "train": self.train,
                 "benchmarks": {name: figures.to_metrics() for name, figures in self.benchmarks.items()}}
        if self.timing is not None:
            entry["timing"] = {"seconds": self.timing.seconds, "images": self.timing.images,
                               "forward_passes": self.timing.forward_passes}
        if self.key is not None:
            entry["key"] = self.key.to_json()
        if self.pairs_digest is not None:
            entry["pairs_digest"] = self.pairs_digest
        return entry


@dataclass(frozen=True)
class ModelEvaluation:
    """The FINAL weights of one model, every seed, on every protocol its evaluation plan names."""
    model: str
    label: str
    flip: bool  # evaluate.flip: whether the tables show the flip test's figures
    seeds: dict[int, SeedEvaluation]  # in the file's order

    def scored_benchmarks(self) -> set[str]:
        """Every protocol some seed has figures for."""
        return {name for entry in self.seeds.values() for name in entry.benchmarks}

    def diverged_steps(self) -> tuple[int, ...]:
        """The steps at which seeds diverged, seed by seed."""
        return tuple(e.diverged_at_step for e in self.seeds.values() if e.diverged_at_step is not None)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "label": self.label, "flip": self.flip,
                "seeds": {str(seed): entry.to_json() for seed, entry in self.seeds.items()}}

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, raw: Any, source: str) -> ModelEvaluation:
        """The record of a parsed file; `source` (the file) names where a missing or bad field was found."""
        top = JsonField(source, "the evaluation")
        fields = top.fields(raw, ("model", "label", "flip", "seeds"))
        at_seeds = top.child("seeds")
        seeds = {}
        for key, entry in at_seeds.object(fields["seeds"]).items():
            if not key.isdigit():
                raise at_seeds.child(key).error("is not a seed number")
            seeds[int(key)] = _seed(at_seeds.child(key), entry)
        return cls(model=top.child("model").text(fields["model"]), label=top.child("label").text(fields["label"]),
                   flip=top.child("flip").flag(fields["flip"]), seeds=seeds)

    @classmethod
    def load(cls, path: Path) -> ModelEvaluation:
        try:
            raw = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON ({error})") from error
        return cls.from_json(raw, str(path))


def benchmark_figures(metrics: Mapping[str, Any], source: str) -> BenchmarkFigures:
    """A protocol's flat figures (its scorer's `to_metrics()`, or the file's): identification when they hold `rank1`."""
    return _benchmark(JsonField(source, "the evaluation"), metrics)


def _seed(at: JsonField, raw: Any) -> SeedEvaluation:
    fields = at.fields(raw, ("diverged_at_step", "train", "benchmarks"), optional=("timing", "key", "pairs_digest"))
    diverged, at_benchmarks = fields["diverged_at_step"], at.child("benchmarks")
    return SeedEvaluation(
        diverged_at_step=None if diverged is None else at.child("diverged_at_step").integer(diverged),
        train=at.child("train").object(fields["train"]),
        benchmarks={name: _benchmark(at_benchmarks.child(name), metrics)
                    for name, metrics in at_benchmarks.object(fields["benchmarks"]).items()},
        timing=_timing(at.child("timing"), fields["timing"]) if "timing" in fields else None,
        key=_key(at.child("key"), fields["key"]) if "key" in fields else None,
        pairs_digest=at.child("pairs_digest").text(fields["pairs_digest"]) if "pairs_digest" in fields else None,
    )


def _key(at: JsonField, raw: Any) -> EvaluationKey:
    fields = at.fields(raw, ("weights", "settings", "protocols", "code"))
    at_protocols = at.child("protocols")
    return EvaluationKey(
        weights=at.child("weights").text(fields["weights"]), settings=at.child("settings").text(fields["settings"]),
        protocols={name: at_protocols.child(name).text(digest)
                   for name, digest in at_protocols.object(fields["protocols"]).items()},
        code=at.child("code").text(fields["code"]),
    )


def _timing(at: JsonField, raw: Any) -> EvaluationTiming:
    fields = at.fields(raw, ("seconds", "images", "forward_passes"))
    return EvaluationTiming(seconds=at.child("seconds").number(fields["seconds"]),
                            images=at.child("images").integer(fields["images"]),
                            forward_passes=at.child("forward_passes").integer(fields["forward_passes"]))


def _benchmark(at: JsonField, raw: Any) -> BenchmarkFigures:
    metrics = at.object(raw)
    identification = "rank1" in metrics
    tar, rank1_at, named = {}, {}, {}
    for key, value in metrics.items():
        far, count = _far(key), RANK1_KEY.fullmatch(key)
        if far is not None:
            tar[far] = at.child(key).number(value)
        elif identification and count:
            rank1_at[int(count[1])] = at.child(key).number(value)
        else:
            named[key] = value
    if identification:
        at.fields(named, ("rank1",), also="rank1_at_<distractors>, tar_at_far_<FAR>")
        return IdentificationFigures(rank1=at.child("rank1").number(named["rank1"]), rank1_at=rank1_at, tar_at_far=tar)
    at.fields(named, PAIR_FIGURES, also="tar_at_far_<FAR>")
    return PairFigures(**{key: at.child(key).number(named[key]) for key in PAIR_FIGURES}, tar_at_far=tar)


def _far(key: str) -> float | None:
    """The FAR of a `tar_at_far_<FAR>` key, else None."""
    found = TAR_KEY.fullmatch(key)
    try:
        return float(found[1]) if found else None
    except ValueError:
        return None
