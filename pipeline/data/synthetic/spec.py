"""Every knob of the synthetic face benchmark, with defaults, validation and construction from params."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NuisanceSpec:
    """Per-image variation. Angles in degrees; distances as fractions of the canvas."""

    roll_std_deg: float = 6.0  # in-plane rotation (normal, clipped at 3 std)
    face_scale: float = 0.62  # head size: one 112-crop unit of the face frame is canvas/112 * face_scale pixels
    scale_jitter: float = 0.08  # log-normal std of the head size
    shift_std: float = 0.035  # translation std of the head centre, fraction of the canvas
    yaw_std_deg: float = 18.0  # general yaw: normal, clipped to +-yaw_max_deg
    yaw_max_deg: float = 60.0
    profile_fraction: float = 0.08  # training images drawn with a profile-like yaw
    profile_min_deg: float = 55.0  # profile-like yaw range (synth-cfp-fp profile side)
    profile_max_deg: float = 80.0
    frontal_max_deg: float = 10.0  # synth-cfp-fp frontal side
    illumination: float = 0.25  # amplitude of the linear light gradient (0: flat light)
    brightness_jitter: float = 0.15  # log-normal std of the global gain
    colour_cast: float = 0.06  # std of the per-channel white-balance error
    expression: float = 0.6  # 0: always neutral; 1: full smiles, open mouths, raised brows
    blur_prob: float = 0.25
    blur_max: float = 1.2  # Gaussian radius in canvas pixels
    noise_prob: float = 0.5
    noise_max: float = 5.0  # sensor noise std in 8-bit levels
    occlusion_prob: float = 0.05  # sunglasses, mask, hand or patch
    age_min: float = 18.0
    age_max: float = 75.0
    age_jitter: float = 8.0  # std (years) of an image's age around its identity's age (training, lfw, cfp)


@dataclass(frozen=True)
class ProtocolSpec:
    """A pair protocol on held-out identities, LFW View 2 style: folds of `pairs_per_fold` same + as many different."""

    identities_per_fold: int = 60
    images_per_identity: int = 5
    folds: int = 10
    pairs_per_fold: int = 300
    hard_negative_fraction: float = 0.1  # share of different pairs drawn between look-alikes
    profile_per_identity: int = 0  # synth-cfp-fp: images per identity with a profile-like yaw (the rest frontal)
    min_age_gap: float = 0.0  # synth-agedb: every pair (same or different) spans at least this many years


def _default_protocols() -> dict[str, ProtocolSpec]:
    return {
        "synth-lfw": ProtocolSpec(identities_per_fold=60, images_per_identity=5),
        "synth-cfp-fp": ProtocolSpec(identities_per_fold=50, images_per_identity=7, profile_per_identity=3),
        "synth-agedb": ProtocolSpec(identities_per_fold=40, images_per_identity=8, min_age_gap=25.0),
    }


@dataclass(frozen=True)
class SyntheticSpec:
    """The whole benchmark: training identities, look-alikes, label noise, nuisance and the pair protocols.

    Difficulty knobs, strongest first: `nuisance.*` (pose, light, occlusion, ageing), `identity_strength`,
    `lookalike_fraction` / `lookalike_strength` with each protocol's `hard_negative_fraction`, `label_noise`.
    """

    seed: int = 0
    canvas: int = 128  # unaligned image side (the face is neither centred nor aligned)
    train_identities: int = 500
    train_images_per_identity: int = 24
    label_noise: float = 0.05  # fraction of training images labelled as another identity
    lookalike_fraction: float = 0.2  # identities drawn as a near neighbour of an earlier identity
    lookalike_strength: float = 0.3  # std of a look-alike's latent offset, relative to the spread of identities
    identity_strength: float = 1.0  # spread of identities in trait space (lower: faces more alike, harder)
    nuisance: NuisanceSpec = field(default_factory=NuisanceSpec)
    protocols: dict[str, ProtocolSpec] = field(default_factory=_default_protocols)
    shard_size: int = 4096

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "data.synthetic") -> SyntheticSpec:
        """Build from params (nested dicts for `nuisance` and `protocols`); unknown keys are errors."""
        values = dict(values)
        nuisance = build_spec(NuisanceSpec, values.pop("nuisance", {}) or {}, f"{source}.nuisance")
        protocols = _default_protocols()
        for name, override in (values.pop("protocols", {}) or {}).items():
            if name not in protocols:
                raise ValueError(f"{source}.protocols: unknown protocol {name!r}; known: {', '.join(protocols)}")
            if override is None:  # `name: null` drops the protocol
                del protocols[name]
                continue
            if not isinstance(override, dict):
                raise ValueError(f"{source}.protocols.{name} must be a mapping or null, got {type(override).__name__}")
            base = dataclasses.asdict(protocols[name])
            protocols[name] = build_spec(ProtocolSpec, {**base, **override}, f"{source}.protocols.{name}")
        return build_spec(cls, {**values, "nuisance": nuisance, "protocols": protocols}, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_spec(kind: type, values: dict[str, Any], source: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{source} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown parameter(s) {unknown}; known: {', '.join(sorted(known))}")
    try:
        return kind(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _validate(spec: SyntheticSpec) -> None:
    _require(isinstance(spec.seed, int) and spec.seed >= 0, f"seed must be a non-negative integer, got {spec.seed!r}")
    _require(spec.canvas >= 32, f"canvas must be >= 32 pixels, got {spec.canvas}")
    _require(spec.train_identities >= 2, f"train_identities must be >= 2, got {spec.train_identities}")
    _require(spec.train_identities < IDENTITY_BLOCK, f"train_identities must be < {IDENTITY_BLOCK}")
    _require(spec.train_images_per_identity >= 1, "train_images_per_identity must be >= 1")
    _require(0.0 <= spec.label_noise < 1.0, f"label_noise must be in [0, 1), got {spec.label_noise}")
    _require(0.0 <= spec.lookalike_fraction < 1.0, f"lookalike_fraction must be in [0, 1), got {spec.lookalike_fraction}")
    _require(spec.lookalike_strength >= 0.0, f"lookalike_strength must be >= 0, got {spec.lookalike_strength}")
    _require(spec.identity_strength > 0.0, f"identity_strength must be > 0, got {spec.identity_strength}")
    _require(spec.shard_size >= 1, f"shard_size must be >= 1, got {spec.shard_size}")
    n = spec.nuisance
    for name in ("roll_std_deg", "scale_jitter", "shift_std", "yaw_std_deg", "illumination", "brightness_jitter",
                 "colour_cast", "expression", "blur_max", "noise_max", "age_jitter"):
        _require(getattr(n, name) >= 0.0, f"nuisance.{name} must be >= 0, got {getattr(n, name)}")
    for name in ("profile_fraction", "blur_prob", "noise_prob", "occlusion_prob"):
        _require(0.0 <= getattr(n, name) <= 1.0, f"nuisance.{name} must be in [0, 1], got {getattr(n, name)}")
    _require(n.expression <= 1.0, f"nuisance.expression must be in [0, 1], got {n.expression}")
    _require(0.2 <= n.face_scale <= 1.2, f"nuisance.face_scale must be in [0.2, 1.2], got {n.face_scale}")
    _require(0.0 <= n.yaw_max_deg <= 89.0, f"nuisance.yaw_max_deg must be in [0, 89], got {n.yaw_max_deg}")
    _require(0.0 <= n.profile_min_deg <= n.profile_max_deg <= 89.0,
             f"nuisance.profile_min_deg <= profile_max_deg <= 89 required, got {n.profile_min_deg}, {n.profile_max_deg}")
    _require(0.0 <= n.frontal_max_deg <= 89.0, f"nuisance.frontal_max_deg must be in [0, 89], got {n.frontal_max_deg}")
    _require(0.0 <= n.age_min < n.age_max, f"nuisance.age_min < age_max required, got {n.age_min}, {n.age_max}")
    for name, p in spec.protocols.items():
        where = f"protocols.{name}"
        _require(p.identities_per_fold >= 2, f"{where}.identities_per_fold must be >= 2, got {p.identities_per_fold}")
        _require(p.images_per_identity >= 2, f"{where}.images_per_identity must be >= 2, got {p.images_per_identity}")
        _require(p.folds >= 1, f"{where}.folds must be >= 1, got {p.folds}")
        _require(p.pairs_per_fold >= 1, f"{where}.pairs_per_fold must be >= 1, got {p.pairs_per_fold}")
        _require(0.0 <= p.hard_negative_fraction <= 1.0, f"{where}.hard_negative_fraction must be in [0, 1]")
        _require(0 <= p.profile_per_identity < p.images_per_identity,
                 f"{where}.profile_per_identity must be in [0, images_per_identity), got {p.profile_per_identity}")
        _require(p.folds * p.identities_per_fold < IDENTITY_BLOCK,
                 f"{where}: folds * identities_per_fold must be < {IDENTITY_BLOCK}")
        _require(p.min_age_gap >= 0.0, f"{where}.min_age_gap must be >= 0, got {p.min_age_gap}")


IDENTITY_BLOCK = 1_000_000  # identity ids: training 0.., protocol k (1-based) k * IDENTITY_BLOCK + ..
