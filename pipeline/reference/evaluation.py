"""A reference model's figures on the real-photo pair protocols: the pure scoring of descriptor distances and the
typed record stage `reference` writes (reports/metrics/reference/<model>.json).

The scoring is the project's own LFW procedure (pipeline.evaluate.verification, Huang et al. 2007, View 2) applied to
dlib's pair scores, minus the Euclidean distance (pipeline.reference.dlib_resnet.distance_scores): each fold is
scored with the threshold chosen on the other folds. The record states thresholds in DISTANCE units, as dlib's
authors do (a pair is "same" when its distance is below the threshold), so the demo and a reader can set them beside
dlib's usual 0.6.

Reading refuses a field the layout does not name and names the file and the field of anything missing or malformed.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pipeline.core.atomic_io import write_json_atomic
from pipeline.core.json_fields import JsonField
from pipeline.evaluate.verification import fold_bounds, fold_predictions, tar_at_far
from pipeline.reference.descriptors import DescriberSettings
from pipeline.reference.dlib_resnet import PUBLISHED_THRESHOLD

CONFIDENCE = 0.95  # of the interval of the mean over folds


@dataclass(frozen=True)
class ProtocolFigures:
    """One pair protocol scored by a reference model. Accuracies are in %.

    accuracy: mean over the folds of held-out accuracy, each fold's threshold chosen on the other folds (exact search,
    pipeline.evaluate.verification.fold_predictions); accuracy_std: their population std (ddof=0), as the project and
    the LFW tools print it; ci_low/ci_high: the 95% interval of that mean (fold_interval: t over the folds, at least the
    pairs' binomial floor, on the logit scale so it stays within 0-100); fold_thresholds:
    fold k's threshold in distance units (same when distance < threshold; inf: every pair "same", -inf: none);
    accuracy_at_published_threshold: every pair judged "same" when its distance is below dlib's 0.6; tar_at_far: FAR
    (as `f"{far:g}"`) -> TAR in [0, 1], NaN where too few different pairs reach that FAR."""

    pairs: int
    photos: int
    photos_detected: int  # photos where the detector found a face (the others: the fallback box was described)
    folds: int
    accuracy: float
    accuracy_std: float
    ci_low: float
    ci_high: float
    fold_thresholds: tuple[float, ...]
    accuracy_at_published_threshold: float
    tar_at_far: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["fold_thresholds"] = [_threshold_json(value) for value in self.fold_thresholds]
        return raw


@dataclass(frozen=True)
class ReferenceEvaluation:
    """A reference model on every real-photo pair protocol of the run, and the protocols it was not scored on."""

    model: str  # its key in params reference.models
    label: str
    kind: str
    settings: dict[str, Any]  # its describer's settings: dataclasses.asdict(DescriberSettings)
    published: dict[str, float]  # protocol -> its authors' accuracy there, %
    published_source: str | None
    protocols: dict[str, ProtocolFigures]
    not_scored: dict[str, str]  # protocol -> why it was not scored

    def describer_settings(self) -> DescriberSettings:
        return DescriberSettings(**self.settings)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "label": self.label, "kind": self.kind, "settings": self.settings,
                "published": self.published, "published_source": self.published_source,
                "protocols": {name: figures.to_json() for name, figures in self.protocols.items()},
                "not_scored": self.not_scored}

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ReferenceEvaluation:
        """The record in `path`; an error naming the file (and the field) when it is missing or malformed."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference evaluation {path} does not exist (stage reference writes it: "
                                    "`dvc repro reference`)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not JSON ({error})") from error
        return from_json(raw, str(path))


def from_json(raw: Any, source: str) -> ReferenceEvaluation:
    """The record of a parsed file; `source` (the file) names where a missing or bad field was found."""
    top = JsonField(source, "the reference evaluation")
    found = top.fields(raw, [f.name for f in fields(ReferenceEvaluation)])
    settings = top.child("settings").object(found["settings"])
    names = [f.name for f in fields(DescriberSettings)]
    top.child("settings").fields(settings, names)
    at_published, at_protocols, at_not = top.child("published"), top.child("protocols"), top.child("not_scored")
    source_text = found["published_source"]
    return ReferenceEvaluation(
        model=top.child("model").text(found["model"]), label=top.child("label").text(found["label"]),
        kind=top.child("kind").text(found["kind"]), settings=dict(settings),
        published={name: at_published.child(name).number(value)
                   for name, value in at_published.object(found["published"]).items()},
        published_source=None if source_text is None else top.child("published_source").text(source_text),
        protocols={name: _protocol(at_protocols.child(name), value)
                   for name, value in at_protocols.object(found["protocols"]).items()},
        not_scored={name: at_not.child(name).text(value) for name, value in at_not.object(found["not_scored"]).items()},
    )


def _protocol(at: JsonField, raw: Any) -> ProtocolFigures:
    found = at.fields(raw, [f.name for f in fields(ProtocolFigures)])
    integers = {name: at.child(name).integer(found[name]) for name in ("pairs", "photos", "photos_detected", "folds")}
    numbers = {name: at.child(name).number(found[name]) for name in
               ("accuracy", "accuracy_std", "ci_low", "ci_high", "accuracy_at_published_threshold")}
    at_thresholds, at_tar = at.child("fold_thresholds"), at.child("tar_at_far")
    thresholds = at_thresholds.array(found["fold_thresholds"])
    return ProtocolFigures(
        **integers, **numbers,
        fold_thresholds=tuple(_threshold(at_thresholds.child(str(k)), value) for k, value in enumerate(thresholds)),
        tar_at_far={far: at_tar.child(far).number(value) for far, value in at_tar.object(found["tar_at_far"]).items()},
    )


# --- scoring ---------------------------------------------------------------------------------------------------


def fold_interval(per_fold: ArrayLike, pairs: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The two-sided `confidence` interval (%) of the mean of `per_fold` (%): half width t(1 - a/2; n - 1) * s /
    sqrt(n), s the sample std (ddof=1) (Student 1908; the folds taken as independent draws), at least the binomial
    floor of `pairs` judgements, mapped through the logit scale so that it stays within 0-100 (the table cells' rule:
    pipeline.reporting.run_statistics.rate_interval and binomial_floor)."""
    from scipy.stats import t  # here: scipy costs a second at import, and only the stage scores

    from pipeline.reporting.run_statistics import binomial_floor, rate_interval

    values = np.asarray(per_fold, dtype=np.float64) / 100.0
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"an interval over folds needs at least 2 folds, got {values.size}")
    mean = float(values.mean())
    half = float(t.ppf(0.5 + confidence / 2.0, values.size - 1)) * float(values.std(ddof=1)) / math.sqrt(values.size)
    low, high = rate_interval(mean, max(half, binomial_floor(mean, pairs, 1.0 - confidence)), pairs)
    return 100.0 * low, 100.0 * high


def score_protocol(
    distances: ArrayLike, same: ArrayLike, folds: int, photos: int, photos_detected: int, fars: Sequence[float],
    published_threshold: float = PUBLISHED_THRESHOLD,
) -> ProtocolFigures:
    """A protocol's figures from each pair's descriptor distance and label; folds are consecutive equal blocks in
    pair order (LFW View 2's layout)."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same)
    if d.ndim != 1 or y.shape != d.shape:
        raise ValueError(f"distances and same must be 1-D of one length, got {d.shape} and {y.shape}")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"same must be booleans (or 0/1), got values {np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("distances must be finite and non-negative")
    if not 0 <= photos_detected <= photos:
        raise ValueError(f"photos_detected must lie in 0..{photos}, got {photos_detected}")
    predicted, score_thresholds = fold_predictions(-d, y, folds)  # scores: higher = more alike
    right = predicted == y
    per_fold = 100.0 * np.array([right[start:stop].mean() for start, stop in fold_bounds(d.size, folds)])
    low, high = fold_interval(per_fold, int(d.size))
    if y.any():
        tar = {f"{far:g}": value for far, value in tar_at_far(-d, y, fars).items()}
    else:  # TAR is undefined without a "same" pair
        tar = {f"{far:g}": math.nan for far in fars}
    return ProtocolFigures(
        pairs=int(d.size), photos=int(photos), photos_detected=int(photos_detected), folds=int(folds),
        accuracy=float(per_fold.mean()), accuracy_std=float(per_fold.std()), ci_low=low, ci_high=high,
        # score > t  <=>  -distance > t  <=>  distance < -t
        fold_thresholds=tuple(float(-value) for value in score_thresholds),
        accuracy_at_published_threshold=float(100.0 * np.mean((d < published_threshold) == y)),
        tar_at_far=tar,
    )


# --- the file's layout -----------------------------------------------------------------------------------------


def _threshold_json(value: float) -> float | str:
    """Strict JSON has no infinity, and null would not say which: "inf" / "-inf"."""
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _threshold(at: JsonField, raw: Any) -> float:
    if raw in ("inf", "-inf"):
        return float(raw)
    value = at.number(raw)
    if math.isnan(value):
        raise at.error("is null, not a threshold (a number, \"inf\" or \"-inf\")")
    return value
