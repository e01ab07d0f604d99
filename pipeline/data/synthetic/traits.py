"""Identities: a standard-normal latent vector per identity, mapped to named face traits; look-alikes are near
neighbours of an earlier identity in latent space.

Lengths are in face-frame units: pixels of a 112x112 ArcFace crop, origin at the head centre (56, 56), y down.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from pipeline.data.synthetic import seeds

# trait -> (low, high); a latent coordinate z maps to low + (high - low) * Phi(z)
TRAIT_RANGES: dict[str, tuple[float, float]] = {
    "head_a": (31.0, 41.0),  # cheek half-width
    "head_top": (54.0, 64.0),  # skull top above the origin
    "skull_q": (1.8, 2.8),  # superellipse exponent of the skull (higher: squarer forehead)
    "jaw_w": (0.6, 0.92),  # jaw-angle half-width / cheek half-width
    "jaw_y": (20.0, 36.0),
    "chin_y": (50.0, 64.0),
    "chin_p": (1.4, 3.2),  # chin exponent (low: pointed, high: square)
    "depth_r": (0.95, 1.25),  # head depth / width
    "eye_y": (-9.0, 0.0),
    "eye_sep": (15.0, 20.5),  # half the distance between the eye centres
    "eye_w": (5.0, 8.0),  # eye half-width
    "eye_open": (0.3, 0.58),  # eye half-height / half-width
    "eye_tilt": (-0.2, 0.2),
    "iris": (0.48, 0.72),  # iris radius / eye half-width
    "eye_colour": (0.0, 1.0),
    "brow_gap": (5.0, 10.5),
    "brow_thick": (1.2, 4.2),
    "brow_arch": (0.0, 4.0),
    "brow_angle": (-0.25, 0.25),
    "brow_len": (1.0, 1.6),
    "nose_y": (10.0, 22.0),
    "nose_w": (4.0, 8.5),
    "nose_prot": (8.0, 17.0),
    "nostril": (0.9, 2.3),
    "mouth_y": (30.0, 42.0),
    "mouth_w": (10.0, 17.5),
    "lip_up": (1.3, 4.0),
    "lip_low": (1.8, 5.0),
    "lip_colour": (0.0, 1.0),
    "skin_tone": (0.0, 1.0),
    "skin_warmth": (0.0, 1.0),
    "blush": (0.0, 1.0),
    "hair_tone": (0.0, 1.0),
    "hairline_y": (-47.0, -29.0),
    "hair_peak": (0.0, 1.0),  # widow's peak depth
    "hair_tilt": (-1.0, 1.0),  # asymmetry of the hairline (side parting)
    "hair_style": (0.0, 4.0),  # floor: 0 short, 1 medium, 2 long, 3 buzz
    "hair_volume": (1.5, 10.0),
    "ear_size": (8.0, 13.0),
    "ear_prot": (2.0, 6.0),
    "grey_onset": (30.0, 60.0),  # age at which hair starts greying
    "baldness": (0.0, 1.0),  # hairline recession per year of ageing
    "beard": (0.0, 1.0),  # < 0.65 none, < 0.78 moustache, < 0.88 goatee, else full beard
    "freckles": (0.0, 1.0),
    "age_u": (0.0, 1.0),  # identity's age as a fraction of the spec's age range
}
MOLES = 3  # each mole: presence, x (fraction of the half-width), y, size
MOLE_RANGES = {"present": (0.0, 1.0), "x": (-0.85, 0.85), "y": (-30.0, 45.0), "size": (0.7, 1.8)}
LATENT_DIM = len(TRAIT_RANGES) + 4 * MOLES
MARKS = 24  # freckle / age-spot positions per identity (not inherited by look-alikes)


@dataclass(frozen=True)
class Traits:
    values: dict[str, float]
    moles: tuple[tuple[float, float, float], ...]  # (x fraction, y, size) of the moles present
    marks: np.ndarray  # (MARKS, 2): x fraction, y of freckles and age spots

    def __getattr__(self, name: str) -> float:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(f"Traits has no trait {name!r}") from None


@dataclass(frozen=True)
class Population:
    """Where a group's identities live in latent space: latent = centre + spread * z, z the usual standard-normal
    draw. The training population is centre 0, spread 1; a shifted centre is a group the training set under-represents
    (per-group verification, RFW-like)."""

    centre: np.ndarray  # (LATENT_DIM,)
    spread: float

    @classmethod
    def shifted(cls, shifts: dict[str, float], spread: float) -> Population:
        """A population whose centre moves the named traits by the given latent standard deviations."""
        unknown = sorted(set(shifts) - set(TRAIT_RANGES))
        if unknown:
            raise ValueError(f"unknown trait(s) {unknown}; known: {', '.join(TRAIT_RANGES)}")
        if not spread > 0.0:
            raise ValueError(f"spread must be > 0, got {spread}")
        centre = np.zeros(LATENT_DIM)
        for k, name in enumerate(TRAIT_RANGES):
            centre[k] = float(shifts.get(name, 0.0))
        return cls(centre=centre, spread=float(spread))


@dataclass(frozen=True)
class Identity:
    id: int  # global identity id (the FaceRecord identity)
    index: int  # index within its split
    split: int  # seeds.TRAIN or a protocol code
    root: int  # global id of the identity this one is a look-alike of (itself when none)
    traits: Traits


def traits_from_latent(latent: np.ndarray, marks: np.ndarray) -> Traits:
    """Map a latent vector to traits through the normal CDF, so a standard-normal latent gives uniform traits."""
    latent = np.asarray(latent, dtype=np.float64)
    if latent.shape != (LATENT_DIM,):
        raise ValueError(f"latent must have shape ({LATENT_DIM},), got {latent.shape}")
    u = ndtr(latent)
    names = list(TRAIT_RANGES)
    values = {name: lo + (hi - lo) * float(u[k]) for k, (name, (lo, hi)) in enumerate(TRAIT_RANGES.items())}
    moles = []
    for m in range(MOLES):
        present, x, y, size = (
            lo + (hi - lo) * float(u[len(names) + 4 * m + k]) for k, (lo, hi) in enumerate(MOLE_RANGES.values())
        )
        if present < 0.35:
            moles.append((x, y, size))
    return Traits(values=values, moles=tuple(moles), marks=marks)


def _root_index(seed: int, split: int, index: int, block_start: int, fraction: float) -> int:
    """The split-local index of the identity `index` imitates: itself, or a non-look-alike earlier one of its block."""
    if index <= block_start:
        return index
    u, v = seeds.stream(seed, seeds.IDENTITY, split, index).random(2)
    if u >= fraction:
        return index
    parent = block_start + int(v * (index - block_start))
    return _root_index(seed, split, parent, block_start, fraction)


def make_identity(
    seed: int, split: int, index: int, block_start: int, id_offset: int,
    lookalike_fraction: float, lookalike_strength: float, identity_strength: float,
    population: Population | None = None,
) -> Identity:
    """Identity `index` of a split; look-alike parents are drawn only from [block_start, index). `population`
    (None: the training population, standard-normal latents) moves and narrows where the latent is drawn."""
    if not block_start <= index:
        raise ValueError(f"identity index {index} lies before its block start {block_start}")
    root = _root_index(seed, split, index, block_start, lookalike_fraction)
    own = _own_latent(seed, split, index)
    latent = own if root == index else _own_latent(seed, split, root) + lookalike_strength * own
    if population is not None:
        latent = population.centre + population.spread * latent
    marks_rng = seeds.stream(seed, seeds.IDENTITY_MARKS, split, index)
    marks = np.column_stack([marks_rng.uniform(-0.85, 0.85, MARKS), marks_rng.uniform(-20.0, 40.0, MARKS)])
    return Identity(
        id=id_offset + index, index=index, split=split, root=id_offset + root,
        traits=traits_from_latent(identity_strength * latent, marks),
    )


@functools.lru_cache(maxsize=4096)
def _own_latent_cached(seed: int, split: int, index: int) -> bytes:
    rng = seeds.stream(seed, seeds.IDENTITY, split, index)
    rng.random(2)  # the look-alike draws of _root_index come first on this stream
    return rng.standard_normal(LATENT_DIM).tobytes()


def _own_latent(seed: int, split: int, index: int) -> np.ndarray:
    return np.frombuffer(_own_latent_cached(seed, split, index), dtype=np.float64).copy()
