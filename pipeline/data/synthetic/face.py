"""An identity at one age with one expression: its colours, its face geometry and its 5 landmarks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.data.synthetic.geometry import Head, Pose, project_surface
from pipeline.data.synthetic.nuisance import Nuisance
from pipeline.data.synthetic.scene import Colour
from pipeline.data.synthetic.traits import Traits

SKIN = np.array([[240, 205, 180], [226, 182, 150], [200, 148, 112], [165, 113, 80], [118, 80, 58], [78, 54, 42]], float)
HAIR = np.array([[24, 20, 20], [58, 40, 30], [100, 68, 44], [138, 72, 42], [172, 136, 88], [216, 186, 132]], float)
IRIS = np.array([[48, 30, 20], [92, 58, 34], [118, 98, 56], [78, 112, 74], [68, 108, 160], [118, 128, 140]], float)
GREY = np.array([192.0, 192.0, 192.0])
SCLERA = (232.0, 228.0, 222.0)
PUPIL = (14.0, 12.0, 12.0)
MOUTH = (72.0, 26.0, 32.0)
TEETH = (226.0, 220.0, 204.0)


def palette(table: np.ndarray, t: float) -> np.ndarray:
    """Piecewise-linear colour along a palette, t in [0, 1]."""
    pos = float(np.clip(t, 0.0, 1.0)) * (len(table) - 1)
    k = min(int(pos), len(table) - 2)
    return table[k] + (pos - k) * (table[k + 1] - table[k])


def mix(a: np.ndarray | Colour, b: np.ndarray | Colour, t: float) -> np.ndarray:
    return np.asarray(a, float) * (1.0 - t) + np.asarray(b, float) * t


def age_factor(age: float) -> float:
    """0 up to 25 years, rising linearly to 1 at 70."""
    return float(np.clip((age - 25.0) / 45.0, 0.0, 1.0))


@dataclass(frozen=True)
class Colours:
    """An identity's colours at an age (hair greys from its grey-onset age on, skin darkens a little)."""

    skin: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    iris: np.ndarray
    lip: np.ndarray


def colours(traits: Traits, age: float) -> Colours:
    grey = float(np.clip((age - traits.grey_onset) / 25.0, 0.0, 1.0)) * 0.85
    warmth = (traits.skin_warmth - 0.5) * np.array([16.0, 0.0, -16.0])
    skin = palette(SKIN, traits.skin_tone) * (1.0 - 0.06 * age_factor(age)) + warmth
    return Colours(
        skin=skin, hair=mix(palette(HAIR, traits.hair_tone), GREY, grey),
        brow=mix(palette(HAIR, traits.hair_tone) * 0.8, GREY, 0.5 * grey), iris=palette(IRIS, traits.eye_colour),
        lip=mix(skin, (190.0, 82.0, 90.0), 0.3 + 0.3 * traits.lip_colour) * 0.95,
    )


@dataclass(frozen=True)
class Face:
    """Aged and expressive geometry of one image (face units), shared by the drawing and the landmarks."""

    eye_x: float  # |x| of the eye centres
    eye_y: float
    eye_open: float
    brow_gap: float
    mouth_x: float  # |x| of the mouth corners
    mouth_y: float  # y of the mouth corners
    mouth_mid: float  # y of the lip line at the centre
    gap: float  # mouth opening
    nose_prot: float
    hairline_y: float
    temple_lift: float

    @classmethod
    def build(cls, t: Traits, n: Nuisance) -> Face:
        af = age_factor(n.age)
        recede = t.baldness**2 * af
        return cls(
            eye_x=t.eye_sep, eye_y=t.eye_y, eye_open=t.eye_open * (1.0 - 0.25 * n.smile) * (1.0 - 0.15 * af),
            brow_gap=t.brow_gap - 1.2 * af + 3.5 * n.brow_raise,
            mouth_x=t.mouth_w + 2.0 * n.smile, mouth_y=t.mouth_y - 3.5 * n.smile + 1.5 * af,
            mouth_mid=t.mouth_y + 1.0 * n.smile, gap=7.0 * n.mouth_open, nose_prot=t.nose_prot * (1.0 + 0.08 * af),
            hairline_y=t.hairline_y - 18.0 * recede, temple_lift=12.0 * recede,
        )


def pose_of(n: Nuisance) -> Pose:
    return Pose(yaw=math.radians(n.yaw_deg), roll=math.radians(n.roll_deg), scale=n.scale, cx=n.cx, cy=n.cy)


def landmarks(traits: Traits, nuisance: Nuisance) -> np.ndarray:
    """The 5 ground-truth points (eye centres, nose tip, mouth corners) in canvas pixels, never clamped."""
    face = Face.build(traits, nuisance)
    head = Head.from_traits(traits, sag=age_factor(nuisance.age))
    x = np.array([-face.eye_x, face.eye_x, 0.0, -face.mouth_x, face.mouth_x])
    y = np.array([face.eye_y, face.eye_y, traits.nose_y, face.mouth_y, face.mouth_y])
    dz = np.array([0.0, 0.0, face.nose_prot, 0.0, 0.0])
    return project_surface(head, pose_of(nuisance), x, y, dz, clamp=False)
