"""params.yaml -> one typed, validated configuration: the base sections with the chosen profile merged over them."""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# the models besides the rows (pipeline.experiment.recipes builds them): N-Softmax pre-training, the cleaning bootstrap, and
# the distillation teacher and student
PRETRAIN = "pretrain"
BOOTSTRAP = "bootstrap"
TEACHER = "teacher"
STUDENT = "student"

# params.yaml is the one source of defaults: a field it sets has no default here; the defaults below are for
# fields it deliberately leaves out (per-row overrides, rarely changed switches).


class Section(BaseModel):
    # strict: no bool for an int or float, no "1" for 1; floats finite
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _device(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"device must be auto | cpu | cuda | cuda:N, got {name!r}")
    return name


Device = Annotated[str, AfterValidator(_device)]
Share = Annotated[float, Field(gt=0.0, lt=1.0)]  # a probability strictly between 0 and 1
ROW_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# YAML 1.1 (PyYAML, DVC) reads a float only with a dot and a signed exponent: 1e-3 and 1.0e3 are text, 1.0e-3 a number
_TEXT_NUMBER = re.compile(r"([-+]?[0-9]+)(?:\.([0-9]*))?([eE])([-+]?)([0-9]+)")


class DataConfig(Section):
    source: Literal["synthetic", "insightface", "folders", "lfw"]
    synthetic: dict[str, Any]  # fields of pipeline.data.synthetic.SyntheticSpec (validated there)
    insightface_prefix: str | None  # e.g. /data/casia/train (train.rec / train.idx / property)
    folders_root: str | None
    benchmarks_bin: dict[str, str]  # name -> path of an InsightFace .bin pair set
    skip_corrupt: bool  # skip and count corrupt images instead of stopping
    # folders: a seeded share of the persons is held out as the pair protocol `folders-heldout`
    folders_heldout: float = Field(ge=0.0, lt=1.0)  # share of persons held out (0: train on everyone)
    folders_pairs_per_fold: int = Field(ge=1)  # same pairs per fold (as many different pairs)
    folders_folds: int = Field(ge=2)
    split_seed: int = Field(ge=0)
    # LFW (lfw/labels.csv, pairs_*.csv): source lfw trains on DevTrain, reports DevTest; any other source with
    # lfw_root set adds View 2 (`lfw-view2`) as an extra benchmark, since it saw no LFW person in training
    lfw_root: str | None
    lfw_min_images: int = Field(ge=1)  # DevTrain persons with at least this many photos are trained on


class AlignConfig(Section):
    crop_size: int = Field(ge=32)
    detector: Literal["none", "mtcnn"]  # landmarks for records without them (real photos)
    face_selection: Literal["largest", "central"]  # which face where a photo shows several
    detect_max_side: int = Field(ge=48)  # longer photos are downscaled for detection
    min_face_size: int = Field(ge=12)  # MTCNN's smallest face in pixels (larger: faster)
    fallback_crop: float = Field(gt=0.0, le=1.0)  # no face in a benchmark image: central square of this share
    device: Device  # where the detector runs


class CleanConfig(Section):
    enabled: bool
    method: Literal["absolute", "class_spread", "percentile"]
    threshold: float  # absolute: cosine distance; class_spread: k std above the class mean; percentile: global %
    min_images: int = Field(ge=1)  # a class keeps at least this many of its closest images
    bootstrap_iterations: int = Field(ge=1)
    bootstrap_checkpoint: str | None  # a model the user names instead of the bootstrap run

    @model_validator(mode="after")
    def _threshold_in_range(self) -> CleanConfig:
        t = self.threshold
        ok, bounds = {
            "absolute": (0 <= t <= 2, "[0, 2]"),  # a cosine distance
            "class_spread": (t >= 0, ">= 0"),  # class stds above the class mean
            "percentile": (0 < t <= 100, "(0, 100]"),
        }[self.method]
        if not ok:
            raise ValueError(f"clean.threshold must be in {bounds} for method {self.method!r}, got {t}")
        return self


class BackboneConfig(Section):
    name: str
    embedding_size: int = Field(ge=2)


CompileMode = Literal["none", "auto", "activations", "backbone"]  # auto: activations where a C++ compiler works


class TrainConfig(Section):
    batch_size: int = Field(ge=2)
    iterations: int = Field(ge=1)
    lr: float = Field(gt=0)
    lr_milestones: list[float]  # fractions of iterations (AirFace: 18k/26k/29k of 30k)
    lr_gamma: float = Field(gt=0, le=1)  # lr factor at each milestone
    warmup_iterations: int = Field(0, ge=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    embedding_wd_mult: float = Field(ge=0)  # Table 2's wdml10
    scale: float = Field(gt=0)
    amp: Literal["none", "bf16", "fp16"]
    channels_last: bool
    flip_augment: bool
    num_workers: int = Field(ge=0)
    device: Device
    log_every: int = Field(ge=1)
    curve_every: int = Field(ge=0)  # protocol accuracy every N steps for the curves (0: off)
    curve_pairs: int = Field(ge=10)  # pairs per protocol used for the curves
    checkpoint_every: int = Field(ge=1)
    grad_clip: float | None = Field(None, gt=0)
    # torch.compile (inductor; needs a C++ compiler on CPU): none, the PReLU activations only, or the whole backbone
    compile: CompileMode
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
    label: str  # the recipe's name in the tables (a table may show it under its own label) and in MLflow
    head: str
    margins: dict[str, float | str] = Field(default_factory=dict)
    init: Literal["scratch", "pretrain"] = "scratch"
    weight_decay: float | None = Field(None, ge=0)  # overrides train.weight_decay
    embedding_wd_mult: float | None = Field(None, ge=0)  # overrides train.embedding_wd_mult
    cleaned: bool = True  # False: trained on every image, cleaning ignored (the "without cleaning" comparison)


class PretrainConfig(Section):
    label: str
    head: str
    margins: dict[str, float | str] = Field(default_factory=dict)


class DistillConfig(Section):
    enabled: bool
    teacher_backbone: str
    teacher_embedding_size: int = Field(ge=2)
    teacher_head: str
    teacher_margins: dict[str, float | str]
    teacher_iterations: int | None = Field(ge=1)  # null: train.iterations
    # linear lr warm-up of the teacher alone (the margin rows keep the paper's schedule; docs/findings.md, "Distillation")
    teacher_warmup_iterations: int = Field(ge=0)
    student_row: str  # the plain student this is compared with (same head and margins)
    weight: float = Field(ge=0)  # feature distillation weight beside the margin loss
    # a key of reference.models: the student is also distilled from that pretrained model's cached descriptors
    reference_teacher: str | None = None


class ReferenceModelConfig(Section):
    label: str  # its name in the reports
    kind: Literal["dlib_resnet"]  # which of pipeline.reference's models
    published: dict[str, float] = Field(default_factory=dict)  # protocol -> its authors' accuracy there, %
    published_source: str | None = None  # where that figure comes from, in words

    @model_validator(mode="after")
    def _source_given(self) -> ReferenceModelConfig:
        if self.published and not self.published_source:
            raise ValueError("published needs published_source: say where the figure comes from")
        return self


class ReferenceConfig(Section):
    """Pretrained reference models (pipeline.reference) that stage `reference` scores on the real-photo protocols,
    each with its own detector, landmarks and crop from the original photos."""
    models: dict[str, ReferenceModelConfig]
    face_selection: Literal["largest", "central"]  # which detected face where a photo shows several
    upsample: int = Field(ge=0)  # the detector's upsampling passes (1 finds faces down to ~40 px)
    fallback_crop: float = Field(gt=0.0, le=1.0)  # no face found: described from the central square of this share
    workers: int = Field(ge=1)  # processes describing photos in parallel


class EvaluateConfig(Section):
    flip: bool
    batch_size: int = Field(ge=1)
    folds: int = Field(ge=2)
    fars: list[Share] = Field(min_length=1)  # false accept rates of the TAR@FAR columns
    alpha: Share  # significance level


class TableRowConfig(Section):
    label: str | None = None  # null: the model's own label
    paper: dict[str, float] = Field(default_factory=dict)  # published figures, paper column key -> %


class TableConfig(Section):
    """One report table (reports/<name>.md|.csv, <name>_tests.csv): which models, beside which published figures,
    and which differences to test."""
    title: str
    paper_source: str | None = None  # where the published figures come from, in words (null: none shown)
    paper_columns: dict[str, str] = Field(default_factory=dict)  # paper column key -> heading, in column order
    rows: dict[str, TableRowConfig] = Field(min_length=1)  # model name -> its entry, in table order
    # the benchmarks it shows, in column order (null: every benchmark of stage align, none of params `protocols`)
    benchmarks: list[str] | None = Field(None, min_length=1)
    group_gap: list[str] = Field(default_factory=list)  # benchmarks of one population each: their spread is reported
    baseline: str | None = None  # every other row is compared with it
    compare: list[Annotated[list[str], Field(min_length=2, max_length=2)]] = Field(default_factory=list)  # [A, B]

    @model_validator(mode="after")
    def _consistent(self) -> TableConfig:
        named = [self.baseline] if self.baseline else []
        for name in [*named, *(n for pair in self.compare for n in pair)]:
            if name not in self.rows:
                raise ValueError(f"{name!r} is compared but is not one of the table's rows ({', '.join(self.rows)})")
        for name, row in self.rows.items():
            unknown = set(row.paper) - set(self.paper_columns)
            if unknown:
                raise ValueError(f"rows.{name}.paper: {sorted(unknown)} are not paper_columns "
                                 f"({', '.join(self.paper_columns) or 'none'})")
        outside = [b for b in self.group_gap if self.benchmarks is None or b not in self.benchmarks]
        if outside:
            raise ValueError(f"group_gap: {outside} are not among the table's benchmarks")
        if self.group_gap and len(self.group_gap) < 2:
            raise ValueError("group_gap needs at least two benchmarks (a spread between groups)")
        if self.paper_columns and not self.paper_source:
            raise ValueError("paper_columns needs paper_source: say where the published figures come from")
        return self


class TrackingConfig(Section):
    enabled: bool
    uri: str | None  # null: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db


class Config(Section):
    profile: str
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    data: DataConfig
    align: AlignConfig
    clean: CleanConfig
    backbone: BackboneConfig
    train: TrainConfig
    pretrain: PretrainConfig
    rows: dict[str, RowConfig]
    distill: DistillConfig
    reference: ReferenceConfig
    evaluate: EvaluateConfig
    # held-out test protocols of stage `protocols`: name -> {kind, block, sizes} (checked by
    # pipeline.data.heldout.kinds.parse in stage validate, so the generator stays off every other stage's path)
    protocols: dict[str, dict[str, Any]]
    tables: dict[str, TableConfig]
    tracking: TrackingConfig
    # which rows and tables the default run (dvc.yaml) builds: params `rows` and `tables`; `rows` and `tables` above
    # hold those and params `extra_rows` and `extra_tables` (extra/dvc.yaml) together (set by `resolve`)
    default_rows: list[str]
    default_tables: list[str]

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        # a repeated seed trains the same run twice and counts it twice in every mean and test
        repeated = sorted({seed for seed in value if value.count(seed) > 1})
        if repeated:
            raise ValueError(f"listed more than once: {', '.join(map(str, repeated))}; each seed is one training run")
        return value

    @model_validator(mode="after")
    def _row_names_are_identifiers(self) -> Config:
        # a row's name is an argument (`python -m stages.train --row NAME`, dvc.yaml) and names its folders and runs
        for name in self.rows:
            if not ROW_NAME.fullmatch(name):
                raise ValueError(f"{self.params_key('rows', name)}: {name!r} is not a valid row name: it is passed on "
                                 "the command line and names the model's folders, so it must be an identifier (ASCII "
                                 "letters, digits and _, not starting with a digit)")
        return self

    @model_validator(mode="after")
    def _student_row_exists(self) -> Config:
        # extra/dvc.yaml's distill stage declares its parameters as rows.<student_row>: DVC finds no extra_rows entry
        student = self.distill.student_row
        if self.distill.enabled and student not in self.default_rows:
            moved = f": the distill stage reads rows.{student}; move it from extra_rows" if student in self.rows else ""
            raise ValueError(f"distill.student_row {student!r} is not a key of rows{moved}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _reference_replaces_teacher(cls, data: Any) -> Any:
        # With distill.reference_teacher the student's teacher is a pretrained model, not the `teacher` recipe: no
        # teacher is trained, so a table's `teacher` row is left out (the student's label names the reference) and
        # the table shows the students alone; a table that compares with the teacher cannot be built, and says so
        if not isinstance(data, dict) or not (data.get("distill") or {}).get("reference_teacher"):
            return data
        tables = dict(data.get("tables") or {})
        for name, spec in tables.items():
            if not isinstance(spec, dict) or TEACHER not in (spec.get("rows") or {}):
                continue
            compared = [spec.get("baseline"), *(n for pair in spec.get("compare") or [] for n in pair)]
            if TEACHER in compared:
                key = "tables" if name in (data.get("default_tables") or []) else "extra_tables"
                raise ValueError(f"{key}.{name} compares with {TEACHER!r}, but distill.reference_teacher "
                                 f"{data['distill']['reference_teacher']!r} replaces the trained teacher")
            tables[name] = {**spec, "rows": {k: v for k, v in spec["rows"].items() if k != TEACHER}}
        return {**data, "tables": tables}

    @model_validator(mode="after")
    def _reference_teacher_exists(self) -> Config:
        teacher = self.distill.reference_teacher
        if teacher is not None and teacher not in self.reference.models:
            raise ValueError(f"distill.reference_teacher {teacher!r} is not a key of reference.models "
                             f"({', '.join(self.reference.models) or 'none'})")
        return self

    @model_validator(mode="after")
    def _tables_show_trained_models(self) -> Config:
        trained = self.evaluated_models()
        for table, spec in self.tables.items():
            where = f"{self.params_key('tables', table)}.{table}"
            if not re.fullmatch(r"[a-z0-9_]+", table):
                raise ValueError(f"{where}: a table's name is a file name: lowercase letters, digits, _")
            for name in spec.rows:
                if name not in trained:
                    raise ValueError(f"{where}.rows: {name!r} is not a trained model "
                                     f"(trained: {', '.join(trained)})")
        return self

    @model_validator(mode="after")
    def _default_tables_show_default_models(self) -> Config:
        # dvc.yaml builds the default tables from its own stages alone: N-Softmax and params `rows`
        default = {PRETRAIN, *self.default_rows}
        for table in self.default_tables:
            outside = [name for name in self.tables[table].rows if name not in default]
            if outside:
                raise ValueError(f"tables.{table} shows {', '.join(outside)}, which the default run does not train: "
                                 f"move the table to extra_tables, or those rows from extra_rows to rows")
        return self

    def params_key(self, section: str, name: str) -> str:
        """The key of params.yaml that holds row or table `name` (`section` is rows or tables): `section` for the
        default run's, `extra_<section>` for the others."""
        default = self.default_rows if section == "rows" else self.default_tables
        return section if name in default else f"extra_{section}"

    def default_models(self) -> list[str]:
        """The models the default run (dvc.yaml) trains and evaluates: N-Softmax and params `rows`."""
        return [PRETRAIN, *self.default_rows]

    def evaluated_models(self) -> list[str]:
        """Every model that is evaluated and may stand in a table: pre-training, the rows, teacher and student (no
        teacher where distill.reference_teacher names a pretrained one: it is not trained here)."""
        distilled = [*self.trained_teacher(), STUDENT] if self.distill.enabled else []
        return [PRETRAIN, *self.rows, *distilled]

    def trained_teacher(self) -> list[str]:
        """[TEACHER] where the distillation trains its teacher; [] where distill.reference_teacher replaces it."""
        return [TEACHER] if self.distill.enabled and self.distill.reference_teacher is None else []

    def tables_showing(self, model: str) -> list[str]:
        """The tables that show `model`, in params order."""
        return [table for table, spec in self.tables.items() if model in spec.rows]

    def protocols_for(self, model: str) -> list[str]:
        """The held-out protocols `model` is evaluated on: those a table showing it lists among its benchmarks."""
        shown = {b for table in self.tables_showing(model) for b in (self.tables[table].benchmarks or [])}
        return [name for name in self.protocols if name in shown]

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
    if not isinstance(profiles, dict):
        raise ValueError(f"{source}: profiles must be a mapping of name -> sections, got {type(profiles).__name__}")
    chosen = profile or raw.get("profile", "cpu")
    if not isinstance(chosen, str):
        raise ValueError(f"{source}: profile must be a profile name (a string), got {chosen!r}")
    if chosen not in profiles:
        raise ValueError(f"{source}: profile {chosen!r} is not defined under profiles (known: {', '.join(profiles)})")
    overrides = profiles[chosen] or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{source}: profiles.{chosen} must be a mapping of sections, got {type(overrides).__name__}")
    merged = _scopes_joined(deep_merge(raw, overrides), source)
    merged["profile"] = chosen
    try:
        return Config.model_validate(merged)
    except ValidationError as error:
        extra = {key: set(merged[key]) - set(merged[f"default_{key}"]) for key in ("rows", "tables")}
        problems = "; ".join(_problem(e, extra) for e in error.errors(include_url=False))
        raise ValueError(f"{source}: invalid parameters for profile {chosen!r}: {problems}") from None


def _scopes_joined(merged: dict[str, Any], source: str) -> dict[str, Any]:
    """`rows` + `extra_rows` and `tables` + `extra_tables` as one `rows` and one `tables` (a name in both is refused),
    with the default run's names kept apart as `default_rows` and `default_tables`."""
    for key in ("default_rows", "default_tables"):
        if key in merged:
            raise ValueError(f"{source}: {key} is not a parameter: the default run's rows and tables are those of "
                             f"`{key.removeprefix('default_')}`")
    for key in ("rows", "tables"):
        default, extra = merged.get(key) or {}, merged.pop(f"extra_{key}", None) or {}
        for name, section in ((key, default), (f"extra_{key}", extra)):
            if not isinstance(section, dict):
                raise ValueError(f"{source}: {name} must be a mapping of name -> entry, got {type(section).__name__}")
        both = sorted(set(default) & set(extra))
        if both:
            raise ValueError(f"{source}: {', '.join(both)} in both {key} and extra_{key}: a name is in one of them")
        merged[key] = {**default, **extra}
        merged[f"default_{key}"] = list(default)
    return merged


def text_number_hint(value: object, integer: bool = False) -> str:
    """How to write a number that YAML read as text (`write 1.0e-3 (YAML 1.1 reads 1e-3 as text)`), or ''."""
    match = _TEXT_NUMBER.fullmatch(value) if isinstance(value, str) else None
    if not match:
        return ""
    whole, fraction, e, sign, exponent = match.groups()
    if integer:
        number = float(value)
        return f"write {int(number)} (YAML 1.1 reads {value} as text)" if number.is_integer() else ""
    return f"write {whole}.{fraction or 0}{e}{sign or '+'}{exponent} (YAML 1.1 reads {value} as text)"


def _problem(error: Any, extra: dict[str, set[str]]) -> str:
    """One pydantic error as `section.field: message (got value)`, the value cut to keep the line short."""
    got = repr(error["input"])
    got = got if len(got) <= 60 else got[:57] + "..."
    if not error["loc"]:
        return error["msg"]
    hint = text_number_hint(error["input"], integer=error["type"] == "int_type") if error["type"] in (
        "float_type", "int_type") else ""
    loc = list(error["loc"])
    if len(loc) > 1 and loc[0] in extra and loc[1] in extra[loc[0]]:  # as params.yaml spells it
        loc[0] = f"extra_{loc[0]}"
    return f"{'.'.join(map(str, loc))}: {error['msg']} (got {got})" + (f": {hint}" if hint else "")


def load(path: str | Path | None = None, profile: str | None = None) -> Config:
    path = Path(path) if path else PROJECT_ROOT / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"parameters file {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        try:
            raw = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return resolve(raw, profile, source=str(path))
