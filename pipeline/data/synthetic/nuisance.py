"""Per-image nuisance: pose, expression, light, blur, noise, occlusion and scene, drawn from one image stream."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from pipeline.data.synthetic.spec import NuisanceSpec

OCCLUSIONS = ("none", "sunglasses", "mask", "hand", "patch")  # index = the `occlusion` extras code


class YawMode(str, Enum):
    GENERAL = "general"  # normal around frontal, clipped (synth-lfw, synth-agedb)
    TRAINING = "training"  # GENERAL, but a `profile_fraction` share profile-like (so profiles can be learnt)
    FRONTAL = "frontal"  # |yaw| <= frontal_max_deg
    PROFILE = "profile"  # |yaw| in [profile_min_deg, profile_max_deg], either side


@dataclass(frozen=True)
class Nuisance:
    yaw_deg: float
    roll_deg: float
    scale: float  # canvas pixels per face-frame unit
    cx: float  # canvas position of the head centre
    cy: float
    age: float
    smile: float  # 0..1
    mouth_open: float  # 0..1
    brow_raise: float  # -1..1
    gain: float
    gradient: float  # light gradient amplitude
    gradient_angle: float  # radians
    cast: tuple[float, float, float]
    blur: float  # Gaussian radius in canvas pixels, 0 = sharp
    noise: float  # std in 8-bit levels
    noise_seed: int
    occlusion: int  # index into OCCLUSIONS
    occluder: tuple[float, ...]  # 4 placement numbers in [0, 1] and an RGB colour
    background: tuple[float, float, float]
    clutter: tuple[tuple[float, ...], ...]  # (0 box / 1 ellipse, centre x, centre y, width, height in [0, 1], r, g, b)
    shirt: tuple[float, float, float]

    @property
    def occluded(self) -> bool:
        return self.occlusion != 0


def neutral(canvas: int, age: float = 30.0, yaw_deg: float = 0.0, roll_deg: float = 0.0, scale: float | None = None,
            cx: float | None = None, cy: float | None = None, face_scale: float = NuisanceSpec.face_scale) -> Nuisance:
    """A clean render: no expression, flat light, no blur, noise, occlusion or clutter (tests and inspection)."""
    return Nuisance(
        yaw_deg=yaw_deg, roll_deg=roll_deg, scale=scale if scale is not None else canvas / 112.0 * face_scale,
        cx=cx if cx is not None else (canvas - 1) / 2.0, cy=cy if cy is not None else (canvas - 1) / 2.0,
        age=age, smile=0.0, mouth_open=0.0, brow_raise=0.0, gain=1.0, gradient=0.0, gradient_angle=0.0,
        cast=(1.0, 1.0, 1.0), blur=0.0, noise=0.0, noise_seed=0, occlusion=0, occluder=(0.0,) * 7,
        background=(128.0, 128.0, 128.0), clutter=(), shirt=(60.0, 70.0, 90.0),
    )


def _yaw(rng: np.random.Generator, spec: NuisanceSpec, mode: YawMode) -> float:
    side = 1.0 if rng.random() < 0.5 else -1.0
    if mode is YawMode.FRONTAL:
        return side * rng.uniform(0.0, spec.frontal_max_deg)
    if mode is YawMode.PROFILE or (mode is YawMode.TRAINING and rng.random() < spec.profile_fraction):
        return side * rng.uniform(spec.profile_min_deg, spec.profile_max_deg)
    return float(np.clip(rng.normal(0.0, spec.yaw_std_deg), -spec.yaw_max_deg, spec.yaw_max_deg))


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A scene colour: mostly muted, like walls and clothes, rarely saturated."""
    level = rng.uniform(25.0, 230.0)
    chroma = rng.normal(0.0, 35.0, 3)
    return tuple(float(c) for c in np.clip(level + chroma, 0.0, 255.0))


def sample(rng: np.random.Generator, spec: NuisanceSpec, canvas: int, mode: YawMode, age: float) -> Nuisance:
    """Draw one image's nuisance; the draw order is fixed so the same stream gives the same image."""
    yaw = _yaw(rng, spec, mode)
    roll = float(np.clip(rng.normal(0.0, spec.roll_std_deg), -3 * spec.roll_std_deg, 3 * spec.roll_std_deg))
    scale = canvas / 112.0 * spec.face_scale * float(np.exp(np.clip(rng.normal(0.0, spec.scale_jitter), -0.25, 0.25)))
    centre = (canvas - 1) / 2.0
    cx, cy = centre + np.clip(rng.normal(0.0, spec.shift_std, 2), -0.1, 0.1) * canvas
    expressive = rng.random() < spec.expression
    smile, mouth_open, raise_ = rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0) ** 2, rng.uniform(-0.6, 1.0)
    gain = float(np.exp(rng.normal(0.0, spec.brightness_jitter)))
    gradient = float(rng.uniform(0.0, spec.illumination))
    gradient_angle = float(rng.uniform(0.0, 2 * np.pi))
    cast = tuple(float(c) for c in 1.0 + rng.normal(0.0, spec.colour_cast, 3))
    blurred, noisy = rng.random() < spec.blur_prob, rng.random() < spec.noise_prob
    blur = float(rng.uniform(0.3, max(spec.blur_max, 0.3)))
    noise = float(rng.uniform(1.0, max(spec.noise_max, 1.0)))
    noise_seed = int(rng.integers(0, 2**31 - 1))
    occluded = rng.random() < spec.occlusion_prob
    occlusion = int(rng.integers(1, len(OCCLUSIONS)))
    occluder = tuple(float(v) for v in rng.random(4)) + _colour(rng)
    background = _colour(rng)
    clutter = tuple(
        (float(rng.integers(0, 2)), *(float(v) for v in rng.random(4)), *_colour(rng)) for _ in range(int(rng.integers(0, 4)))
    )
    shirt = _colour(rng)
    return Nuisance(
        yaw_deg=yaw, roll_deg=roll, scale=scale, cx=float(cx), cy=float(cy), age=float(age),
        smile=float(smile) * spec.expression if expressive else 0.0,
        mouth_open=float(mouth_open) * spec.expression if expressive else 0.0,
        brow_raise=float(raise_) * spec.expression if expressive else 0.0,
        gain=gain, gradient=gradient, gradient_angle=gradient_angle, cast=cast,
        blur=blur if blurred and spec.blur_max > 0 else 0.0, noise=noise if noisy and spec.noise_max > 0 else 0.0,
        noise_seed=noise_seed, occlusion=occlusion if occluded else 0, occluder=occluder,
        background=background, clutter=clutter, shirt=shirt,
    )
