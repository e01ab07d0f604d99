"""The parts of a portrait, each added to a Scene in the face frame: scenery, body, hair, ears, skin, marks and
wrinkles, nose, beard, mouth, eyes, brows and occluders."""
from __future__ import annotations

import math

import numpy as np

from pipeline.data.synthetic.face import MOUTH, PUPIL, SCLERA, SKIN, TEETH, Face, landmarks, mix, palette
from pipeline.data.synthetic.geometry import Head, section, silhouette
from pipeline.data.synthetic.nuisance import OCCLUSIONS, Nuisance
from pipeline.data.synthetic.scene import ANGLES, CROWN, Colour, Mode, Scene, ellipse, lin
from pipeline.data.synthetic.traits import Traits


def scenery(scene: Scene, n: Nuisance, canvas: int) -> None:
    for kind, x0, y0, x1, y1, *colour in n.clutter:
        cx, cy = (x0 * canvas, y0 * canvas)
        rx, ry = 0.1 * canvas + 0.3 * canvas * x1, 0.1 * canvas + 0.3 * canvas * y1
        if kind == 0:
            xs, ys = np.array([cx - rx, cx + rx, cx + rx, cx - rx]), np.array([cy - ry, cy - ry, cy + ry, cy + ry])
        else:
            xs, ys = ellipse(cx, cy, rx, ry)
        scene.add("polygon", colour, (Mode.CANVAS, xs, ys))


def body(scene: Scene, head: Head, skin: np.ndarray, shirt: Colour) -> None:
    a, c = head.a, head.chin_y
    scene.add("polygon", skin * 0.85, (Mode.FLAT, np.array([-0.5, 0.5, 0.56, -0.56]) * a,
                                        np.array([head.jaw_y, head.jaw_y, c + 45, c + 45])))
    xs = np.array([-0.62, 0.0, 0.62, 2.3, 2.7, -2.7, -2.3]) * a
    ys = np.array([c + 20, c + 36, c + 20, c + 36, c + 160, c + 160, c + 36])
    scene.add("polygon", shirt, (Mode.FLAT, xs, ys))


def _hair_outer(head: Head, volume: float, yaw: float, bottom: float, rows: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Outline of the hair mass (the skull inflated by `volume`) from the left side at `bottom` over the top to the right."""
    top = head.top + volume
    a = head.a + 0.7 * volume
    y = -top + (bottom + top) * CROWN[rows]
    w = a * np.clip(1.0 - np.abs(np.minimum(y, 0.0) / top) ** head.q, 0.0, 1.0) ** (1.0 / head.q)
    ext = np.sqrt((w * math.cos(yaw)) ** 2 + (head.r * w * math.sin(yaw)) ** 2)
    return np.concatenate([-ext[::-1], ext]), np.concatenate([y[::-1], y])


def back_hair(scene: Scene, head: Head, volume: float, hair: np.ndarray, yaw: float) -> None:
    x, y = _hair_outer(head, volume, yaw, 0.0)
    bottom = head.chin_y + 22.0
    x = np.concatenate([x[:1], x, x[-1:]])
    y = np.concatenate([[bottom], y, [bottom]])
    scene.add("polygon", hair * 0.85, (Mode.FLAT, x, y))


def ears(scene: Scene, head: Head, t: Traits, skin: np.ndarray, yaw: float, front: bool, skip_near: bool) -> None:
    """Ears sit on the sides of the head (behind the face outline); the near one is drawn over the face when the
    head turns far enough to show it flat."""
    y_ear = t.eye_y + 9.0
    w, d, z0 = (float(v[0]) for v in section(head, np.array([y_ear])))
    ct, st = np.cos(ANGLES[8]), np.sin(ANGLES[8])
    for side in (-1.0, 1.0):
        near = side * math.sin(yaw) < 0
        if (front and not near) or (skip_near and near):
            continue
        x = side * (w - 1.0 + t.ear_prot * 0.5 * (1.0 + ct))
        y = y_ear + 0.5 * t.ear_size * st
        z = z0 - 0.15 * d + 0.35 * t.ear_size * ct
        scene.add("polygon", skin * 0.95, (Mode.FREE, x, y, z), outline=skin * 0.72)


def outline(scene: Scene, head: Head, skin: np.ndarray, yaw: float) -> None:
    """The head outline row by row: each row's ellipse seen after the yaw."""
    y = np.concatenate([-head.top + (head.top + head.jaw_y) * CROWN[12], lin(head.jaw_y, head.chin_y, 8)[1:]])
    centre, ext = silhouette(head, y, yaw)
    scene.add("polygon", skin, (Mode.FLAT, np.concatenate([centre + ext, (centre - ext)[::-1]]), np.concatenate([y, y[::-1]])))


def skin_details(scene: Scene, head: Head, t: Traits, face: Face, skin: np.ndarray, af: float, smile: float,
                 brow_raise: float) -> None:
    """Blush, moles, freckles, age spots and wrinkles (ageing and expression lines)."""
    cheek_y = 0.5 * (t.eye_y + t.nose_y) + 6.0
    blush = mix(skin, (205.0, 100.0, 100.0), 0.18 * t.blush)
    for side in (-1.0, 1.0):
        scene.add("polygon", blush, (Mode.SURFACE, *ellipse(side * 0.6 * head.a, cheek_y, 7.0, 5.0, 8)))
    freckles = int(max(0.0, t.freckles - 0.7) / 0.3 * 16)
    spots = int(af * af * 6)
    marks = [(x, y, size, np.array([70.0, 48.0, 40.0])) for x, y, size in t.moles]
    freckle, spot = mix(skin, (150.0, 90.0, 60.0), 0.45), mix(skin, (130.0, 95.0, 70.0), 0.5)
    marks += [(x, y, 0.6 if k < freckles else 1.2, freckle if k < freckles else spot)
              for k, (x, y) in enumerate(t.marks[: freckles + spots].tolist())]
    if marks:  # mark x positions are fractions of the local half-width, so they stay on the face
        widths = section(head, np.array([m[1] for m in marks]))[0]
        for (x, y, size, colour), w in zip(marks, widths.tolist()):
            scene.add("polygon", colour, (Mode.SURFACE, *ellipse(x * w, y, size, size, 6)))

    def line(strength: float) -> np.ndarray:  # a wrinkle darkens the skin by its strength
        return mix(skin, skin * 0.55, min(strength, 1.0))

    forehead = min(1.0, af + 0.6 * max(brow_raise, 0.0))
    if forehead > 0.05:
        brow_y = face.eye_y - face.brow_gap
        for k in range(3):
            y0 = brow_y - 6.0 - 4.0 * k
            if y0 > face.hairline_y + 3.0:
                xs = lin(-0.45, 0.45, 5) * head.a
                scene.add("line", line(forehead * (1.0 - 0.2 * k)), (Mode.SURFACE, xs, y0 + 0.02 * xs**2 / head.a), width=0.7)
    fold = max(af, 0.7 * smile)
    for side in (-1.0, 1.0):
        if fold > 0.05:
            xs = side * np.array([t.nose_w + 2.5, t.nose_w + 4.0, face.mouth_x + 3.0])
            ys = np.array([t.nose_y + 1.0, 0.5 * (t.nose_y + face.mouth_y) + 2.0, face.mouth_y + 3.0])
            scene.add("line", line(fold), (Mode.SURFACE, xs, ys), width=0.8)
        if af > 0.05:
            ex = side * (face.eye_x + t.eye_w + 1.5)
            for k in (-1.0, 0.0, 1.0):
                scene.add("line", line(af), (Mode.SURFACE, np.array([ex, ex + side * 4.0]),
                                            np.array([face.eye_y, face.eye_y + 2.2 * k])), width=0.6)
            ux = side * face.eye_x + lin(-0.7, 0.7, 4) * t.eye_w
            scene.add("line", line(0.8 * af), (Mode.SURFACE, ux, face.eye_y + t.eye_w * face.eye_open + 2.5), width=0.6)


def hair_cap(scene: Scene, head: Head, t: Traits, face: Face, style: int, volume: float, hair: np.ndarray,
              yaw: float) -> None:
    """Hair over the skull: the inflated outline outside, the hairline and sideburns on the face surface inside."""
    side_bottom = {0: t.eye_y + 2.0, 1: t.nose_y + 6.0, 2: face.mouth_y, 3: t.eye_y - 4.0}[style]
    temple_y = face.hairline_y + 14.0 - face.temple_lift
    ox, oy = _hair_outer(head, volume, yaw, side_bottom)
    burn_y = lin(side_bottom, temple_y, 4)
    burn_x = 0.93 * section(head, burn_y)[0]  # burn_y ends at the temple
    xt = burn_x[-1]
    s = lin(1.0, -1.0, 9)  # hairline from the right temple to the left one
    line_y = face.hairline_y + (temple_y - face.hairline_y) * np.abs(s) ** 1.6
    line_y = line_y + 5.0 * t.hair_peak * (1.0 - np.abs(s)) ** 4 + 4.0 * t.hair_tilt * s
    inner_x = np.concatenate([burn_x, xt * s, -burn_x[::-1]])
    inner_y = np.concatenate([burn_y, line_y, burn_y[::-1]])
    scene.add("polygon", hair, (Mode.FLAT, ox, oy), (Mode.SURFACE, inner_x, inner_y))


def nose(scene: Scene, t: Traits, face: Face, skin: np.ndarray) -> None:
    """Bridge, tip and wings; the hull of their projections shades the nose, sharpening into a profile when turned."""
    p = face.nose_prot
    y0 = face.eye_y + 3.0
    xs = np.array([0.0, 0.0, 0.0, -t.nose_w, t.nose_w, -0.5 * t.nose_w, 0.5 * t.nose_w])
    ys = np.array([y0, t.nose_y, t.nose_y + 3.0, t.nose_y + 1.5, t.nose_y + 1.5, y0 + 6.0, y0 + 6.0])
    dz = np.array([0.25 * p, p, 0.45 * p, 0.1 * p, 0.1 * p, 0.35 * p, 0.35 * p])
    scene.add("hull", skin * 0.93, (Mode.SURFACE, xs, ys, dz))
    for side in (-1.0, 1.0):
        nx, ny = ellipse(side * 0.45 * t.nose_w, t.nose_y + 2.2, 1.1 * t.nostril, 0.6 * t.nostril, 6)
        scene.add("polygon", skin * 0.42, (Mode.SURFACE, nx, ny, 0.3 * p))


def beard(scene: Scene, head: Head, t: Traits, face: Face, hair: np.ndarray) -> None:
    if t.beard < 0.65:
        return
    top_lip = face.mouth_mid - t.lip_up
    if t.beard < 0.78:  # moustache
        xs = np.array([-face.mouth_x - 1.0, -0.6 * face.mouth_x, 0.0, 0.6 * face.mouth_x, face.mouth_x + 1.0,
                       0.5 * face.mouth_x, 0.0, -0.5 * face.mouth_x])
        ys = np.array([face.mouth_y + 1.0, top_lip - 4.0, top_lip - 4.5, top_lip - 4.0, face.mouth_y + 1.0,
                       top_lip - 0.5, top_lip, top_lip - 0.5])
        scene.add("polygon", hair * 0.9, (Mode.SURFACE, xs, ys, 1.0))
        return
    low = face.mouth_mid + face.gap + t.lip_low
    if t.beard < 0.88:  # goatee
        xs = np.array([-0.45, 0.45, 0.4, 0.0, -0.4]) * face.mouth_x
        ys = np.array([low + 1.0, low + 1.0, head.chin_y - 1.0, head.chin_y + 1.0, head.chin_y - 1.0])
        scene.add("polygon", hair * 0.9, (Mode.SURFACE, xs, ys, 1.0))
        return
    rows = lin(t.nose_y - 2.0, head.chin_y, 7)
    edge = 0.98 * section(head, rows)[0]
    inner_x = np.array([face.mouth_x + 3.0, face.mouth_x + 1.0, 0.0, -face.mouth_x - 1.0, -face.mouth_x - 3.0])
    inner_y = np.array([t.nose_y + 2.0, low + 1.0, low + 2.0, low + 1.0, t.nose_y + 2.0])
    xs = np.concatenate([-edge, edge[::-1], inner_x])
    ys = np.concatenate([rows, rows[::-1], inner_y])
    scene.add("polygon", hair * 0.9, (Mode.SURFACE, xs, ys, 0.5))


def mouth(scene: Scene, t: Traits, face: Face, lip: np.ndarray) -> None:
    """Upper and lower lip between the corners (the mouth landmarks); an open mouth shows a dark gap and teeth."""
    mx, my, mid = face.mouth_x, face.mouth_y, face.mouth_mid
    xs = np.array([-0.55, -0.18, 0.0, 0.18, 0.55]) * mx
    bend = mid - my  # how far the lip line sags below the corners at the centre (smiles curve it)
    slit = my + bend * (1.0 - (xs / mx) ** 2)
    upper_top = slit - t.lip_up * np.array([0.85, 1.05, 0.8, 1.05, 0.85])
    lower_top = slit + face.gap * (1.0 - (xs / mx) ** 2)
    lower_bottom = lower_top + t.lip_low * np.array([0.8, 1.0, 1.0, 1.0, 0.8])
    cx = np.array([-mx, mx])
    cy = np.array([my, my])
    scene.add("polygon", lip, (Mode.SURFACE, np.concatenate([cx[:1], xs, cx[1:], xs[::-1]]),
                               np.concatenate([cy[:1], upper_top, cy[1:], slit[::-1]])))
    if face.gap > 0.5:
        scene.add("polygon", MOUTH, (Mode.SURFACE, np.concatenate([cx[:1], xs, cx[1:], xs[::-1]]),
                                     np.concatenate([cy[:1], slit, cy[1:], lower_top[::-1]])))
        teeth = slit + np.minimum(face.gap * (1.0 - (xs / mx) ** 2), 2.0)
        scene.add("polygon", TEETH, (Mode.SURFACE, np.concatenate([xs, xs[::-1]]), np.concatenate([slit, teeth[::-1]])))
    scene.add("polygon", lip * 1.05, (Mode.SURFACE, np.concatenate([cx[:1], xs, cx[1:], xs[::-1]]),
                                      np.concatenate([cy[:1], lower_top, cy[1:], lower_bottom[::-1]])))


def eye(scene: Scene, t: Traits, face: Face, side: float, iris: np.ndarray) -> None:
    """Almond-shaped opening, iris and pupil cut to the lids, lash line; the eye landmark is the iris centre."""
    ew = t.eye_w
    eh = ew * face.eye_open
    cx, cy = side * face.eye_x, face.eye_y
    ang = ANGLES[12]
    lx = ew * np.cos(ang)
    ly = eh * np.sin(ang) * np.where(np.sin(ang) < 0, 1.0, 0.75)  # upper lid rounder than the lower one
    shear = -t.eye_tilt * side  # tilt lifts the outer corner

    def place(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cx + x, cy + y + shear * x

    scene.add("polygon", SCLERA, (Mode.SURFACE, *place(lx, ly)))
    for radius, colour in ((t.iris * ew, iris), (0.4 * t.iris * ew, np.array(PUPIL))):
        ix, iy = radius * np.cos(ang), radius * np.sin(ang)
        lid = np.sqrt(np.clip(1.0 - (ix / ew) ** 2, 0.0, 1.0))
        iy = np.clip(iy, -eh * lid, 0.75 * eh * lid)  # the lids cut the circle
        scene.add("polygon", colour, (Mode.SURFACE, *place(ix, iy)))
    top = np.sin(ang) <= 0
    order = np.argsort(lx[top])
    scene.add("line", PUPIL, (Mode.SURFACE, *place(lx[top][order], ly[top][order])), width=0.8)


def brow(scene: Scene, t: Traits, face: Face, side: float, colour: np.ndarray) -> None:
    s = lin(0.0, 1.0, 6)  # 0 at the inner end, 1 at the outer end
    inner = side * (face.eye_x - 0.9 * t.eye_w)
    outer = side * (face.eye_x + t.brow_len * t.eye_w)
    x = inner + s * (outer - inner)
    y = face.eye_y - face.brow_gap - t.brow_arch * np.sin(np.pi * s) - 10.0 * t.brow_angle * (s - 0.5)
    half = 0.5 * t.brow_thick * (1.0 - 0.5 * s)
    band_x, band_y = np.concatenate([x, x[::-1]]), np.concatenate([y - half, (y + half)[::-1]])
    scene.add("polygon", colour, (Mode.SURFACE, band_x, band_y, 0.5))


def occluder(scene: Scene, head: Head, t: Traits, face: Face, n: Nuisance, canvas: int) -> None:
    kind = OCCLUSIONS[n.occlusion]
    p0, p1, p2, p3, *colour = n.occluder
    if kind == "sunglasses":
        for side in (-1.0, 1.0):
            lx, ly = ellipse(side * face.eye_x, face.eye_y + 0.5, 1.45 * t.eye_w + 1.0, 1.05 * t.eye_w + 1.0, 12)
            scene.add("polygon", (22.0, 22.0, 26.0), (Mode.SURFACE, lx, ly, 2.0))
        bridge = face.eye_x - 1.45 * t.eye_w
        scene.add("line", (22.0, 22.0, 26.0),
                  (Mode.SURFACE, np.array([-bridge, bridge]), np.full(2, face.eye_y - 1.0), 2.0), width=1.2)
    elif kind == "mask":
        top = t.nose_y - 2.0 + 4.0 * p0
        rows = lin(top, head.chin_y + 2.0, 6)
        edge = 1.02 * section(head, rows)[0]
        mask_x, mask_y = np.concatenate([-edge, edge[::-1]]), np.concatenate([rows, rows[::-1]])
        scene.add("polygon", colour, (Mode.SURFACE, mask_x, mask_y, 1.5))
    else:  # a hand or a patch somewhere over the face, in canvas pixels
        spot = landmarks(t, n)[int(p0 * 5) % 5]
        size = (0.12 + 0.12 * p1) * canvas
        cx, cy = spot + (np.array([p2, p3]) - 0.5) * size
        if kind == "hand":
            hand = palette(SKIN, p2)
            scene.add("polygon", hand, (Mode.CANVAS, *ellipse(cx, cy, 0.9 * size, 0.6 * size, 16)))
        else:
            c, s = math.cos(6.0 * p3), math.sin(6.0 * p3)
            box = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * np.array([size, 0.6 * size])
            scene.add("polygon", colour, (Mode.CANVAS, cx + c * box[:, 0] - s * box[:, 1], cy + s * box[:, 0] + c * box[:, 1]))
