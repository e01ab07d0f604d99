"""Face verification for the web demo: a trained checkpoint, the decision threshold of its own evaluation, and two
photos -> detected landmarks, aligned crops, the cosine similarity and the same/different decision.

The threshold is the evaluate stage's: the metrics JSON records the model's 10-fold accuracy but not the per-fold
thresholds, so they are recomputed here with the same code on the same aligned protocol, and the recomputed accuracy
must match the recorded one (else this checkpoint is not the one that was evaluated). The single threshold used for
one pair is the mean of the 10 per-fold thresholds; a pair is "same" when its cosine similarity exceeds it, the
convention of pipeline.evaluate.verification. A pretrained reference model is served by pipeline.demo.reference.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.core.config import AlignConfig, Config
from pipeline.data.align_records import align_photo, detector_from_config
from pipeline.data.images import CorruptImageError, decode_image
from pipeline.data.loader import load_benchmark_arrays
from pipeline.core.devices import resolve_device
from pipeline.data.detect import Detection, LandmarkDetector, detection_size
from pipeline.evaluate.embeddings import extract_embeddings, pair_scores
from pipeline.evaluate.record import ModelEvaluation, PairFigures, SeedEvaluation
from pipeline.evaluate.verification import cosine_scores, fold_mean_std, fold_predictions
from pipeline.core.paths import Paths
from pipeline.experiment.recipes import recipes
from pipeline.experiment.runs import load_backbone, seed_dir
from pipeline.train import checkpoint as checkpoints

# Far above any camera's photo (48 MP phones) and far below PIL's bomb limit (179 MP), where a 440 KB PNG of
# 12000 x 12000 px takes 1.9 GB and seconds to decode.
MAX_PHOTO_PIXELS = 50_000_000
REPRODUCE = "bash scripts/reproduce"  # trains and evaluates every model of the profile
MODELS_OUTSIDE_ROWS = ("pretrain", "teacher", "student")  # dvc.yaml evaluates these in evaluate_models@


class DemoError(ValueError):
    """A problem with a photo or with the set-up, worded for the person using the demo."""


class NoFaceError(DemoError):
    pass


def evaluate_stage(model: str) -> str:
    return f"evaluate_models@{model}" if model in MODELS_OUTSIDE_ROWS else f"evaluate@{model}"


def choose_protocol(available: list[str], requested: str | None, where: Path) -> str:
    """`requested`, else the first protocol named like LFW (the usual verification benchmark), else the first."""
    if not available:
        raise DemoError(f"{where} records no benchmark results (did the model diverge?)")
    if requested is not None:
        if requested not in available:
            raise DemoError(f"{where} has no protocol {requested!r}; it has {', '.join(available)}")
        return requested
    return next((name for name in available if "lfw" in name.lower()), available[0])


def accuracy_key(flip: bool) -> str:
    return "accuracy_flip" if flip else "accuracy"


def pair_protocols(entry: SeedEvaluation) -> dict[str, PairFigures]:
    """The seed's verification protocols: a 1:N identification set has no pair threshold to serve."""
    return {name: figures for name, figures in entry.benchmarks.items() if isinstance(figures, PairFigures)}


def default_checkpoint(paths: Paths, protocol: str | None) -> Path:
    """The evaluated model with the highest recorded 10-fold accuracy on the protocol, among those whose weights
    are on disk. It is picked on its test figure, so that figure is no unbiased estimate: it is shown, not claimed."""
    eval_dir = paths.metrics("eval", "x").parent
    best: tuple[float, str, Path] | None = None
    for metrics_path in sorted(eval_dir.glob("*.json")):
        record = ModelEvaluation.load(metrics_path)
        for seed, entry in record.seeds.items():
            weights = seed_dir(paths, record.model, seed) / "model.pt"
            pairs = pair_protocols(entry)
            if not pairs or not weights.is_file():
                continue
            figures = pairs[choose_protocol(sorted(pairs), protocol, metrics_path)]
            candidate = (getattr(figures, accuracy_key(record.flip)), str(weights), weights)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
    if best is None:
        raise FileNotFoundError(
            f"no trained and evaluated model: no evaluation in {eval_dir} has its weights under "
            f"{paths.root / 'data' / 'models'}; `{REPRODUCE}` trains and evaluates every model "
            f"(or pass --checkpoint data/models/<model>/seed<N>/model.pt)"
        )
    return best[2]


def load_model(cfg: Config, paths: Paths, checkpoint: Path) -> tuple[nn.Module, dict]:
    """The backbone of a checkpoint the pipeline wrote (model.pt), in eval mode, and its metadata."""
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} does not exist; `{REPRODUCE}` trains and evaluates every model of the profile"
        )
    meta = checkpoints.load_weights(checkpoint)["meta"]
    name = meta.get("name")
    if name not in recipes(cfg):
        raise DemoError(f"checkpoint {checkpoint} holds model {name!r}, which profile {cfg.profile!r} does not define")
    if meta.get("crop_size") != cfg.align.crop_size:
        raise DemoError(
            f"checkpoint {checkpoint} was trained on {meta.get('crop_size')} px crops but profile {cfg.profile!r} "
            f"aligns to {cfg.align.crop_size} px (pick the profile it was trained with)"
        )
    if meta.get("diverged_at_step") is not None:
        raise DemoError(f"checkpoint {checkpoint}: training diverged at step {meta['diverged_at_step']}")
    return load_backbone(cfg, paths, name, int(meta["seed"]), checkpoint)


@dataclass(frozen=True)
class Threshold:
    value: float  # mean of the per-fold thresholds; "same" when similarity > value
    fold_thresholds: tuple[float, ...]
    protocol: str
    pairs: int
    flip: bool  # embeddings are normalise(f(x) + f(mirror x)), as in the evaluation
    accuracy: float  # 10-fold accuracy recomputed here
    recorded_accuracy: float  # the same figure as the evaluate stage recorded it
    metrics_path: Path


def calibrate(
    backbone: nn.Module, cfg: Config, paths: Paths, model: str, seed: int, device: torch.device, protocol: str | None
) -> Threshold:
    """The 10-fold thresholds of the evaluate stage for this model, recomputed and checked against its record."""
    metrics_path = paths.metrics("eval", model)
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} does not exist: model {model} has not been evaluated; run `dvc repro {evaluate_stage(model)}`"
        )
    record = ModelEvaluation.load(metrics_path)
    entry = record.seeds.get(seed)
    if entry is None:
        raise DemoError(f"{metrics_path} has no evaluation of seed {seed}; run `dvc repro {evaluate_stage(model)}`")
    pairs = pair_protocols(entry)
    name = choose_protocol(sorted(pairs), protocol, metrics_path)
    flip = record.flip
    recorded = getattr(pairs[name], accuracy_key(flip))
    bench_dir = paths.benchmarks(paths.aligned) / name
    if not bench_dir.is_dir():
        raise FileNotFoundError(f"aligned protocol {bench_dir} does not exist; run `dvc repro align`")
    images, pairs = load_benchmark_arrays(bench_dir)
    embeddings = extract_embeddings(
        backbone, images, cfg.evaluate.batch_size, device, flip=flip, channels_last=cfg.train.channels_last
    )
    same = pairs["same"].to_numpy(bool)
    scores = pair_scores(embeddings, pairs["a"].to_numpy(), pairs["b"].to_numpy())
    folds = int(pairs["fold"].max()) + 1  # as the evaluate stage counts them
    predicted, thresholds = fold_predictions(scores, same, folds)
    accuracy, _ = fold_mean_std(predicted == same, folds)
    # one pair's worth of slack: a different BLAS could move one score across a threshold
    if abs(accuracy - recorded) > 1.0 / len(pairs) + 1e-12:
        raise DemoError(
            f"{metrics_path} records {accuracy_key(flip)} {recorded:.4f} on {name}, but this checkpoint gives "
            f"{accuracy:.4f}: it is not the evaluated one; run `dvc repro {evaluate_stage(model)}`"
        )
    if not np.isfinite(thresholds).all():
        raise DemoError(f"model {model} separates no pairs on {name} (fold thresholds {thresholds.tolist()})")
    return Threshold(
        value=float(thresholds.mean()), fold_thresholds=tuple(float(t) for t in thresholds), protocol=name,
        pairs=len(pairs), flip=flip, accuracy=accuracy, recorded_accuracy=recorded, metrics_path=metrics_path,
    )


def photo_detector(align: AlignConfig) -> LandmarkDetector:
    """The profile's detector settings; MTCNN even where the profile's own data carry landmarks (synthetic)."""
    detector = detector_from_config(align if align.detector != "none" else align.model_copy(update={"detector": "mtcnn"}))
    assert detector is not None  # detector_from_config returns None only for "none"
    return detector


def header_size(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) as the file's header states them. Not images.image_size: its EXIF lookup decodes a whole PNG."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError ... on bad bytes
        raise CorruptImageError(where, f"{type(error).__name__}: {error}") from error


def decode_photo(data: bytes, where: str) -> np.ndarray:
    """The upright RGB photo; its size is checked from the header before any pixel is decoded."""
    try:
        width, height = header_size(data, where)
        if height * width > MAX_PHOTO_PIXELS:
            raise DemoError(f"{where} is {width}x{height} px; the limit is {MAX_PHOTO_PIXELS // 10**6} megapixels")
        return decode_image(data, where)  # grey, RGBA, CMYK -> RGB; EXIF orientation applied
    except CorruptImageError as error:
        raise DemoError(f"{error} (is it a JPEG, PNG or other image file?)") from error


@dataclass(frozen=True)
class Face:
    photo: np.ndarray  # the upright RGB photo
    detection: Detection
    crop: np.ndarray  # crop_size x crop_size RGB, aligned to the ArcFace template


@dataclass(frozen=True)
class Verification:
    faces: tuple[Face, Face]
    similarity: float  # cosine of the two (flip-test) embeddings
    threshold: float

    @property
    def same(self) -> bool:
        return self.similarity > self.threshold


class Verifier:
    """Two photos in, the similarity and the decision out; one request at a time (the model is shared)."""

    kind = "trained"

    def __init__(
        self, backbone: nn.Module, meta: dict, threshold: Threshold, detector: LandmarkDetector,
        device: torch.device, channels_last: bool, align: AlignConfig,
    ) -> None:
        self.backbone, self.meta, self.threshold, self.detector = backbone, meta, threshold, detector
        self.device, self.channels_last, self.align = device, channels_last, align
        self._lock = threading.Lock()

    @staticmethod
    def decode(data: bytes, where: str) -> np.ndarray:
        return decode_photo(data, where)

    def face(self, data: bytes, where: str) -> Face:
        return self.locate(self.decode(data, where), where)

    def locate(self, photo: np.ndarray, where: str) -> Face:
        """Detect and align the face of a decoded photo (uses the shared detector: hold the lock)."""
        height, width = photo.shape[:2]
        # MTCNN has no pyramid level for an image shorter than its smallest face (and fails obscurely)
        if min(detection_size(height, width, self.align.detect_max_side)) < self.align.min_face_size:
            raise NoFaceError(f"{where} is {width}x{height} px, too small for the smallest face the detector looks "
                              f"for ({self.align.min_face_size} px, align.min_face_size)")
        detection = self.detector.detect(photo)
        if detection is None:
            raise NoFaceError(f"no face found in {where}; try a photo where the face is frontal and at least ~40 px wide")
        crop, _ = align_photo(photo, detection.landmarks, int(self.meta["crop_size"]))
        return Face(photo=photo, detection=detection, crop=crop)

    def verify(self, data_a: bytes, where_a: str, data_b: bytes, where_b: str) -> Verification:
        # decoding uses nothing shared, so a large photo does not hold up the other requests' model work
        photos = (self.decode(data_a, where_a), self.decode(data_b, where_b))
        with self._lock:
            faces = (self.locate(photos[0], where_a), self.locate(photos[1], where_b))
            embeddings = extract_embeddings(
                self.backbone, np.stack([face.crop for face in faces]), 2, self.device,
                flip=self.threshold.flip, channels_last=self.channels_last,
            )
        similarity = float(cosine_scores(embeddings[:1], embeddings[1:])[0])
        return Verification(faces=faces, similarity=similarity, threshold=self.threshold.value)


def build_verifier(cfg: Config, paths: Paths, checkpoint: Path | None, protocol: str | None) -> Verifier:
    """Everything the demo needs: the model (default: the best evaluated one), its threshold, the detector."""
    checkpoint = checkpoint or default_checkpoint(paths, protocol)
    device = resolve_device(cfg.train.device)
    backbone, meta = load_model(cfg, paths, checkpoint)
    backbone = backbone.to(device)
    threshold = calibrate(backbone, cfg, paths, meta["name"], int(meta["seed"]), device, protocol)
    meta = {
        **meta, "checkpoint": str(checkpoint), "label": recipes(cfg)[meta["name"]].label,
        "profile": cfg.profile, "trained_on": cfg.data.source,
    }
    return Verifier(backbone, meta, threshold, photo_detector(cfg.align), device, cfg.train.channels_last, cfg.align)
