"""Drawing machinery: shapes collected in the face frame, projected in one vectorised pass, drawn with PIL at SS x
the canvas resolution (box-reduced afterwards for anti-aliasing)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.synthetic.geometry import Head, Pose, facing, project_surface, section, to_canvas, yaw_x

SS = 2  # supersampling factor
Colour = tuple[float, float, float]


class Mode(IntEnum):
    SURFACE = 0  # (x, y, dz) on the face surface; self-occluded points pushed onto the outline
    FREE = 1  # (x, y, z) given; yawed, never clamped
    FLAT = 2  # (x', y) already in the turned face plane (outlines, the body)
    CANVAS = 3  # canvas pixels


@dataclass
class Shape:
    kind: str  # polygon | line | hull (the convex hull of the projected points, filled)
    colour: np.ndarray
    segments: list[tuple[Mode, int, int]]
    width: float = 0.0  # line width in face units
    outline: np.ndarray | None = None


class Scene:
    """Collects shapes point by point, projects every point at once, then draws in insertion order."""

    def __init__(self, head: Head, pose: Pose, canvas: int) -> None:
        self.head, self.pose, self.canvas = head, pose, canvas
        self.points: dict[Mode, list[np.ndarray]] = {m: [] for m in Mode}
        self.counts = {m: 0 for m in Mode}
        self.shapes: list[Shape] = []

    def _segment(self, mode: Mode, x: np.ndarray, y: np.ndarray, third: np.ndarray | float = 0.0) -> tuple[Mode, int, int]:
        block = np.empty((len(x), 3))
        block[:, 0], block[:, 1], block[:, 2] = x, y, third
        start = self.counts[mode]
        self.points[mode].append(block)
        self.counts[mode] += len(x)
        return mode, start, start + len(x)

    def add(self, kind: str, colour: np.ndarray | Colour, *segments: tuple, width: float = 0.0,
            outline: np.ndarray | None = None) -> None:
        """Each segment is (mode, x, y[, dz or z]); a shape may join segments of different modes (the hair)."""
        parts = [self._segment(s[0], s[1], s[2], s[3] if len(s) > 3 else 0.0) for s in segments]
        self.shapes.append(Shape(kind, np.asarray(colour, float), parts, width, outline))

    def draw(self, background: Colour) -> Image.Image:
        size = self.canvas * SS
        coords: dict[Mode, np.ndarray] = {}
        visible: np.ndarray | None = None
        for mode in Mode:
            if not self.points[mode]:
                continue
            p = np.concatenate(self.points[mode])
            if mode is Mode.SURFACE:
                rows = section(self.head, p[:, 1])
                uv = project_surface(self.head, self.pose, p[:, 0], p[:, 1], p[:, 2], clamp=True, rows=rows)
                visible = facing(self.head, p[:, 0], p[:, 1], self.pose.yaw, rows)
            elif mode is Mode.FREE:
                uv = to_canvas(self.pose, yaw_x(p[:, 0], p[:, 2], self.pose.yaw), p[:, 1])
            elif mode is Mode.FLAT:
                uv = to_canvas(self.pose, p[:, 0], p[:, 1])
            else:
                uv = p[:, :2]
            coords[mode] = uv * SS + (SS - 1) / 2.0  # canvas pixel centres -> supersampled pixel centres
        seen = [0] + np.cumsum(visible).tolist() if visible is not None else []  # visible SURFACE points before i
        image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
        draw = ImageDraw.Draw(image)
        unit = self.pose.scale * SS
        for shape in self.shapes:
            if all(m is Mode.SURFACE and seen[b] == seen[a] for m, a, b in shape.segments):
                continue  # turned entirely out of sight
            if len(shape.segments) == 1:
                m, a, b = shape.segments[0]
                xy = coords[m][a:b]
            else:
                xy = np.concatenate([coords[m][a:b] for m, a, b in shape.segments])
            fill = rgb(shape.colour)
            if shape.kind == "line":
                draw.line(xy.ravel().tolist(), fill=fill, width=max(1, round(shape.width * unit)))
                continue
            if shape.kind == "hull":
                xy = hull(xy)
            outline = None if shape.outline is None else rgb(shape.outline)
            draw.polygon(xy.ravel().tolist(), fill=fill, outline=outline)
        return image


def rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = colour.tolist()
    return min(max(int(r), 0), 255), min(max(int(g), 0), 255), min(max(int(b), 0), 255)


def _cross(o: tuple, a: tuple, b: tuple) -> float:
    """z of (a - o) x (b - o): > 0 for a counter-clockwise turn o -> a -> b."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain) of a few 2-D points, counter-clockwise."""
    pts = sorted(set(map(tuple, np.round(points, 4).tolist())))
    if len(pts) < 3:
        return np.asarray(pts)

    def half(seq: list) -> list:
        out: list = []
        for p in seq:
            while len(out) >= 2 and _cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.asarray(lower[:-1] + upper[:-1])


ANGLES = {n: np.linspace(0.0, 2.0 * np.pi, n, endpoint=False) for n in (6, 8, 12, 16)}
STEPS = {n: np.linspace(0.0, 1.0, n) for n in range(2, 13)}
CROWN = {n: 1.0 - np.cos(0.5 * np.pi * STEPS[n]) for n in (10, 12)}  # denser near the top of the head


def lin(start: float, stop: float, n: int) -> np.ndarray:
    """np.linspace(start, stop, n) from a cached unit ramp (this runs dozens of times per image)."""
    return start + (stop - start) * STEPS[n]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    t = ANGLES[n]
    return cx + rx * np.cos(t), cy + ry * np.sin(t)
