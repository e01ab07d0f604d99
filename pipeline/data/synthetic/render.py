"""Render one image: identity traits x nuisance -> RGB uint8 canvas and the 5 ground-truth landmarks.

The portrait is drawn part by part (parts.py) at SS x resolution and box-reduced, then blurred, lit and noised.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import ImageFilter
from scipy.special import ndtri

from pipeline.data.synthetic import parts
from pipeline.data.synthetic.face import Face, age_factor, colours, landmarks, pose_of
from pipeline.data.synthetic.geometry import Head
from pipeline.data.synthetic.nuisance import Nuisance
from pipeline.data.synthetic.scene import SS, Scene
from pipeline.data.synthetic.traits import Traits


def render(traits: Traits, nuisance: Nuisance, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one image; returns (RGB uint8 canvas x canvas x 3, landmarks (5, 2) float32 in canvas pixels)."""
    n, t = nuisance, traits
    af = age_factor(n.age)
    head = Head.from_traits(t, sag=af)
    pose = pose_of(n)
    face = Face.build(t, n)
    scene = Scene(head, pose, canvas)

    tones = colours(t, n.age)
    skin, hair = tones.skin, tones.hair

    parts.scenery(scene, n, canvas)
    parts.body(scene, head, skin, n.shirt)
    style = min(int(t.hair_style), 3)
    volume = t.hair_volume * (0.25 if style == 3 else 1.0)
    if style == 2:
        parts.back_hair(scene, head, volume, hair, pose.yaw)
    near_ear_in_front = abs(math.sin(pose.yaw)) > 0.5
    parts.ears(scene, head, t, skin, pose.yaw, front=False, skip_near=near_ear_in_front)
    parts.outline(scene, head, skin, pose.yaw)
    parts.skin_details(scene, head, t, face, skin, af, n.smile, n.brow_raise)
    parts.hair_cap(scene, head, t, face, style, volume, hair, pose.yaw)
    parts.nose(scene, t, face, skin)
    parts.beard(scene, head, t, face, hair)
    parts.mouth(scene, t, face, tones.lip)
    for side in (-1.0, 1.0):
        parts.eye(scene, t, face, side, tones.iris)
        parts.brow(scene, t, face, side, tones.brow)
    if near_ear_in_front:
        parts.ears(scene, head, t, skin, pose.yaw, front=True, skip_near=False)
    if n.occlusion:
        parts.occluder(scene, head, t, face, n, canvas)

    image = scene.draw(n.background).reduce(SS)
    if n.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(n.blur))
    pixels = _photometric(np.array(image, dtype=np.float32), n)
    return pixels, landmarks(t, n).astype(np.float32)


_GAUSS_LEVELS = ndtri((np.arange(256) + 0.5) / 256).astype(np.float32)  # standard-normal quantiles


@functools.lru_cache(maxsize=8)
def _ramp(size: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, size, dtype=np.float32)


def _photometric(pixels: np.ndarray, n: Nuisance) -> np.ndarray:
    """Light gradient, gain and white balance, then sensor noise; returns uint8."""
    h, w, _ = pixels.shape
    ramp_x = (n.gain * n.gradient * math.cos(n.gradient_angle)) * _ramp(w)
    ramp_y = n.gain + (n.gain * n.gradient * math.sin(n.gradient_angle)) * _ramp(h)
    light = (ramp_y[:, None] + ramp_x[None, :])[:, :, None] * np.asarray(n.cast, dtype=np.float32)
    pixels *= light
    if n.noise > 0:  # Gaussian noise quantised to 256 levels: a table lookup is 4x faster than drawing normals
        levels = np.random.default_rng(n.noise_seed).integers(0, 256, pixels.shape, dtype=np.uint8)
        pixels += n.noise * _GAUSS_LEVELS[levels]
    pixels += 0.5
    return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)
