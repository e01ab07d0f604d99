"""The head model and camera: a stack of elliptical cross-sections, turned by yaw, then rolled, scaled and shifted.

Face frame: x right, y down, z toward the camera; units are pixels of a 112 ArcFace crop, origin at the head centre.
Each row y of the head is an ellipse of half-width w(y) and half-depth d(y) centred at depth z0(y); the front of
the face is z0 + d. Yaw turns the head about the vertical axis: x' = x cos(yaw) + z sin(yaw), so a positive yaw
moves the nose toward larger image x and hides the right (larger x) cheek.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.synthetic.traits import Traits


@dataclass(frozen=True)
class Head:
    a: float  # cheek half-width
    top: float  # skull top above the origin
    q: float  # skull superellipse exponent
    jaw_w: float  # jaw-angle half-width as a fraction of a
    jaw_y: float
    chin_y: float
    chin_p: float
    r: float  # depth / width

    @classmethod
    def from_traits(cls, traits: Traits, sag: float = 0.0) -> Head:
        """`sag` in [0, 1] (ageing) widens the jaw and lowers the chin a little."""
        return cls(
            a=traits.head_a, top=traits.head_top, q=traits.skull_q,
            jaw_w=min(traits.jaw_w * (1.0 + 0.06 * sag), 0.98), jaw_y=traits.jaw_y,
            chin_y=traits.chin_y + 2.0 * sag, chin_p=traits.chin_p, r=traits.depth_r,
        )


def half_width(head: Head, y: np.ndarray) -> np.ndarray:
    """w(y): the frontal face outline (skull superellipse above 0, cheek-to-jaw taper, then the chin curve)."""
    y = np.asarray(y, dtype=np.float64)
    skull = head.a * np.maximum(1.0 - np.abs(np.minimum(y, 0.0) / head.top) ** head.q, 0.0) ** (1.0 / head.q)
    t = np.minimum(np.maximum(y / head.jaw_y, 0.0), 1.0)
    cheek = head.a * (1.0 - (1.0 - head.jaw_w) * t * t * (3.0 - 2.0 * t))  # smoothstep to the jaw angle
    u = np.minimum(np.maximum((y - head.jaw_y) / (head.chin_y - head.jaw_y), 0.0), 1.0)
    chin = head.a * head.jaw_w * (1.0 - u**head.chin_p) ** (1.0 / head.chin_p)
    w = np.where(y <= 0.0, skull, np.where(y <= head.jaw_y, cheek, chin))
    return np.where((y < -head.top) | (y > head.chin_y), 0.0, w)


def section(head: Head, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w, d, z0) of row y: the front z0 + d follows the skull above 0 and recedes gently to the chin below."""
    y = np.asarray(y, dtype=np.float64)
    w = half_width(head, y)
    d = head.r * w
    lower = head.r * head.a * (1.0 - 0.3 * (np.minimum(np.maximum(y, 0.0), head.chin_y) / head.chin_y) ** 2)
    front = np.where(y <= 0.0, d, lower)
    return w, d, front - d


Section = tuple[np.ndarray, np.ndarray, np.ndarray]


def surface_z(head: Head, x: np.ndarray, y: np.ndarray, rows: Section | None = None) -> np.ndarray:
    """Depth of the face surface at (x, y): z0 + d sqrt(1 - (x/w)^2) on the row's ellipse."""
    w, d, z0 = rows if rows is not None else section(head, y)
    ratio = np.minimum(np.abs(x) / np.maximum(w, 1e-6), 1.0)
    return z0 + d * np.sqrt(1.0 - ratio**2)


def yaw_x(x: np.ndarray, z: np.ndarray, yaw: float) -> np.ndarray:
    """Image-plane x after turning the head by `yaw` radians about the vertical axis."""
    return x * np.cos(yaw) + z * np.sin(yaw)


def facing(head: Head, x: np.ndarray, y: np.ndarray, yaw: float, rows: Section | None = None) -> np.ndarray:
    """True where the surface normal at (x, y) still faces the camera after the yaw (else self-occluded)."""
    w, d, _ = rows if rows is not None else section(head, y)
    w = np.maximum(w, 1e-6)
    ratio = np.minimum(np.maximum(x / w, -1.0), 1.0)
    # normal of x^2/w^2 + (z-z0)^2/d^2 = 1 at the surface point, turned by the yaw; its z-component decides
    nz = -np.sin(yaw) * ratio / w + np.cos(yaw) * np.sqrt(1.0 - ratio**2) / np.maximum(d, 1e-6)
    return nz > 0.0


def silhouette(head: Head, y: np.ndarray, yaw: float, rows: Section | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half-extent) in image-plane x of row y's outline after the yaw: z0 sin, sqrt(w^2 cos^2 + d^2 sin^2)."""
    w, d, z0 = rows if rows is not None else section(head, y)
    return z0 * np.sin(yaw), np.sqrt((w * np.cos(yaw)) ** 2 + (d * np.sin(yaw)) ** 2)


@dataclass(frozen=True)
class Pose:
    yaw: float  # radians
    roll: float  # radians, in-plane, clockwise on screen for positive values (y points down)
    scale: float  # canvas pixels per face-frame unit
    cx: float  # canvas position of the face-frame origin (pixel centres at integers)
    cy: float


def to_canvas(pose: Pose, xp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Similarity from the turned face plane (x', y) to canvas pixels: s R(roll) [x', y] + c. Returns (N, 2)."""
    c, s = np.cos(pose.roll), np.sin(pose.roll)
    u = pose.scale * (c * xp - s * y) + pose.cx
    v = pose.scale * (s * xp + c * y) + pose.cy
    return np.column_stack([u, v])


def project_surface(head: Head, pose: Pose, x: np.ndarray, y: np.ndarray, dz: np.ndarray, clamp: bool,
                    rows: Section | None = None) -> np.ndarray:
    """Canvas positions of surface points raised by dz. With `clamp`, self-occluded points are pushed onto the far
    outline (what remains visible of a turned-away feature is a sliver at the edge)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rows = rows if rows is not None else section(head, y)
    xp = yaw_x(x, surface_z(head, x, y, rows) + dz, pose.yaw)
    if clamp and pose.yaw != 0.0:
        centre, extent = silhouette(head, y, pose.yaw, rows)
        hidden = ~facing(head, x, y, pose.yaw, rows)
        xp = np.where(hidden, centre + np.sign(pose.yaw) * extent, xp)
    return to_canvas(pose, xp, y)
