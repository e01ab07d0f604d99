"""params.yaml -> one typed, validated configuration: the base sections with the chosen profile merged over them."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    source: Literal["synthetic", "insightface", "folders", "lfw"] = "synthetic"
    synthetic: dict[str, Any] = Field(default_factory=dict)  # fields of pipeline.data.synthetic.SyntheticSpec
    insightface_prefix: str | None = None  # e.g. /data/casia/train (train.rec / train.idx / property)
    folders_root: str | None = None
    benchmarks_bin: dict[str, str] = Field(default_factory=dict)  # name -> path of an InsightFace .bin pair set
    skip_corrupt: bool = False  # skip and count corrupt images instead of stopping
    # folders: a seeded share of the persons is held out as the pair protocol `folders-heldout`
    folders_heldout: float = Field(0.0, ge=0.0, lt=1.0)  # share of persons held out (0: train on everyone)
    folders_pairs_per_fold: int = Field(30, ge=1)  # same pairs per fold (as many different pairs)
    folders_folds: int = Field(10, ge=2)
    split_seed: int = Field(0, ge=0)
    # LFW (lfw/labels.csv, pairs_*.csv): source lfw trains on DevTrain, reports DevTest; any other source with
    # lfw_root set adds View 2 (`lfw-view2`) as an extra benchmark, since it saw no LFW person in training
    lfw_root: str | None = None
    lfw_min_images: int = Field(4, ge=1)  # DevTrain persons with at least this many photos are trained on


class AlignConfig(Section):
    crop_size: int = Field(112, ge=32)
    detector: Literal["none", "mtcnn"] = "none"  # landmarks for records without them (real photos)
    face_selection: Literal["largest", "central"] = "largest"  # which face where a photo shows several
    detect_max_side: int = Field(1024, ge=48)  # longer photos are downscaled for detection
    min_face_size: int = Field(20, ge=12)  # MTCNN's smallest face in pixels (larger: faster)
    fallback_crop: float = Field(1.0, gt=0.0, le=1.0)  # no face in a benchmark image: central square of this share
    device: str = "auto"  # where the detector runs: auto | cpu | cuda | cuda:N


class CleanConfig(Section):
    enabled: bool = True
    method: Literal["absolute", "class_spread", "percentile"] = "class_spread"
    threshold: float = 3.0  # absolute: cosine distance; class_spread: k std above the class mean; percentile: global %
    min_images: int = Field(2, ge=1)  # a class keeps at least this many of its closest images
    bootstrap_iterations: int = Field(300, ge=1)
    bootstrap_checkpoint: str | None = None  # a model the user names instead of the bootstrap run


class BackboneConfig(Section):
    name: str = "mobilefacenet"
    embedding_size: int = Field(128, ge=2)


CompileMode = Literal["none", "activations", "backbone"]


class TrainConfig(Section):
    batch_size: int = Field(64, ge=2)
    iterations: int = Field(30000, ge=1)
    lr: float = Field(0.1, gt=0)
    lr_milestones: list[float] = [18 / 30, 26 / 30, 29 / 30]  # fractions of iterations (AirFace: 18k/26k/29k of 30k)
    lr_gamma: float = 0.1
    warmup_iterations: int = Field(0, ge=0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    embedding_wd_mult: float = 10.0  # Table 2's wdml10
    scale: float = 64.0
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = True
    flip_augment: bool = True
    num_workers: int = Field(0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = Field(20, ge=1)
    curve_every: int = Field(0, ge=0)  # protocol accuracy every N steps for the curves (0: off)
    curve_pairs: int = Field(600, ge=10)  # pairs per protocol used for the curves
    checkpoint_every: int = Field(100, ge=1)
    grad_clip: float | None = None
    # torch.compile (inductor; needs a C++ compiler on CPU): none, the PReLU activations only, or the whole backbone
    compile: CompileMode = "none"
    # under torchrun (docs/scale-out.md): class centres split over the ranks, and the share of each rank's
    # negative centres scored per step (PartialFC-style sampling; 1.0: all)
    shard_head: bool = False
    head_sample_fraction: float = Field(1.0, gt=0.0, le=1.0)

    @field_validator("lr_milestones")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in value) or value != sorted(value):
            raise ValueError(f"train.lr_milestones must be increasing fractions in (0, 1), got {value}")
        return value


class RowConfig(Section):
    label: str
    tables: list[str]
    head: str
    margins: dict[str, float | str] = Field(default_factory=dict)
    init: Literal["scratch", "pretrain"] = "scratch"
    weight_decay: float | None = None  # overrides train.weight_decay
    embedding_wd_mult: float | None = None  # overrides train.embedding_wd_mult
    cleaned: bool = True  # False: trained on every image, cleaning ignored (the "without cleaning" comparison)
    paper: dict[str, float] = Field(default_factory=dict)  # the published figures, benchmark -> %


class PretrainConfig(Section):
    label: str = "N-Softmax"
    tables: list[str] = ["table3"]
    head: str = "nsoftmax"
    margins: dict[str, float | str] = Field(default_factory=dict)
    paper: dict[str, float] = Field(default_factory=dict)


class DistillConfig(Section):
    enabled: bool = True
    teacher_backbone: str = "airface"
    teacher_embedding_size: int = 512
    teacher_head: str = "li_arcface"
    teacher_margins: dict[str, float | str] = Field(default_factory=lambda: {"m": 0.4})
    teacher_iterations: int | None = None  # default: train.iterations
    # linear lr warm-up of the teacher alone (the margin rows keep the paper's schedule; README, distillation)
    teacher_warmup_iterations: int = Field(0, ge=0)
    student_row: str = "li_arcface_m040"  # the plain student this is compared with (same head and margins)
    weight: float = Field(1.0, ge=0)  # feature distillation weight beside the margin loss


class EvaluateConfig(Section):
    flip: bool = True
    batch_size: int = Field(256, ge=1)
    folds: int = Field(10, ge=2)
    fars: list[float] = [1e-2, 1e-3, 1e-4]
    alpha: float = 0.05
    bootstrap: int = Field(2000, ge=100)


class TrackingConfig(Section):
    enabled: bool = True
    uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db


class Config(Section):
    profile: str
    seeds: list[int] = Field(min_length=1)
    data: DataConfig
    align: AlignConfig
    clean: CleanConfig
    backbone: BackboneConfig
    train: TrainConfig
    pretrain: PretrainConfig
    rows: dict[str, RowConfig]
    distill: DistillConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig

    @model_validator(mode="after")
    def _student_row_exists(self) -> Config:
        if self.distill.enabled and self.distill.student_row not in self.rows:
            raise ValueError(f"distill.student_row {self.distill.student_row!r} is not a key of rows")
        return self

    def row(self, name: str) -> RowConfig:
        try:
            return self.rows[name]
        except KeyError:
            raise KeyError(f"row {name!r} is not in params rows; known: {', '.join(self.rows)}") from None

    def digest(self) -> str:
        """A short hash of the resolved config (tags runs and cached artifacts)."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:12]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve(raw: dict[str, Any], profile: str | None = None, source: str = "params") -> Config:
    """Merge `profiles[profile]` over the base sections and validate; errors name the parameter."""
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", {}) or {}
    chosen = profile or raw.get("profile", "cpu")
    if chosen not in profiles:
        raise ValueError(f"{source}: profile {chosen!r} is not defined under profiles (known: {', '.join(profiles)})")
    merged = deep_merge(raw, profiles[chosen] or {})
    merged["profile"] = chosen
    try:
        return Config.model_validate(merged)
    except ValidationError as error:
        raise ValueError(f"{source}: invalid parameters for profile {chosen!r}:\n{error}") from None


def load(path: str | Path | None = None, profile: str | None = None) -> Config:
    path = Path(path) if path else PROJECT_ROOT / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"parameters file {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return resolve(raw, profile, source=str(path))
