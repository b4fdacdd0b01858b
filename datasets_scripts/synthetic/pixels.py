"""Chest-like pixels: a frontal (or lateral) radiograph drawn on a canvas, and each VinDr finding painted with a
distinctive pattern inside its box (see the package docstring, "Pixels")."""

from __future__ import annotations

import itertools
import math

import numpy as np
from PIL import Image

from codec_litegpt import VINDR_LOCAL_LABELS

from .common import _clip_box, _mask_box


def _smooth_noise(rng, H, W, cell):
    h, w = max(2, round(H / cell)), max(2, round(W / cell))
    a = rng.standard_normal((h, w)).astype(np.float32)
    out = np.asarray(Image.fromarray(a).resize((W, H), Image.BICUBIC), dtype=np.float32)
    return (out - out.mean()) / (out.std() + 1e-6)


def _ellipse(u, v, cu, cv, au, av, edge=0.08):
    r = np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)
    return np.clip((1.0 - r) / edge, 0.0, 1.0), r


class _Canvas:
    def __init__(self, H, W):
        self.H, self.W = H, W
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        self.X, self.Y = xx + 0.5, yy + 0.5
        self.u, self.v = self.X / W, self.Y / H
        self.img = np.zeros((H, W), np.float32)

    def blend(self, mask, value):
        self.img += mask * (value - self.img)


def _sample_anatomy(rng, copd=False, cardiomegaly=False, aortic=False, wide_mediastinum=False):
    s = rng.uniform(0.93, 1.05)
    cx = 0.5 + rng.normal(0, 0.012)
    lv = 0.45 + rng.normal(0, 0.015)
    k = 1.07 if copd else 1.0
    lungs = {
        "R": (cx - 0.185 * s, lv + 0.01, 0.13 * s * k, 0.29 * s * k),  # patient's right = image left
        "L": (cx + 0.19 * s, lv + 0.02, 0.125 * s * k, 0.30 * s * k),
    }
    if cardiomegaly:
        heart = (cx + 0.055 * s, lv + 0.2 * s, rng.uniform(0.19, 0.22) * s, rng.uniform(0.125, 0.145) * s)
    else:
        heart = (cx + 0.05 * s, lv + 0.21 * s, rng.uniform(0.115, 0.14) * s, rng.uniform(0.095, 0.115) * s)
    knob_r = rng.uniform(0.05, 0.064) if aortic else rng.uniform(0.026, 0.036)
    return {
        "s": s,
        "cx": cx,
        "lv": lv,
        "lungs": lungs,
        "heart": heart,
        "knob": (cx + 0.045 * s + (0.012 if aortic else 0.0), lv - 0.17 * s, knob_r),
        "dome_v": lv + (0.24 if copd else 0.22) * s,
        "air": rng.uniform(0.02, 0.07),
        "soft": rng.uniform(0.38, 0.46),
        "lung_val": rng.uniform(0.07, 0.1) if copd else rng.uniform(0.14, 0.2),
        "med_val": rng.uniform(0.62, 0.7),
        "med_w": (0.085 if wide_mediastinum else 0.055) * s,
        "heart_val": rng.uniform(0.66, 0.74),
        "rib_freq": rng.uniform(9.0, 11.0),
        "rib_phase": rng.uniform(0, 2 * np.pi),
        "noise": rng.uniform(0.012, 0.03),
        "gamma": rng.uniform(0.85, 1.15),
    }


def _lung_mask(c, anat, scale=1.0, edge=0.12):
    m = np.zeros_like(c.img)
    for side in "RL":
        cu, cv, au, av = anat["lungs"][side]
        mm, _ = _ellipse(c.u, c.v, cu, cv, au * scale, av * scale, edge)
        m = np.maximum(m, mm)
    return m


def _render_base_frontal(c: _Canvas, rng, anat):
    u, v, X, Y = c.u, c.v, c.X, c.Y
    s, cx = anat["s"], anat["cx"]
    c.img[:] = anat["air"]
    body, _ = _ellipse(u, v, cx, 0.6, 0.45 * s, 0.72, edge=0.05)
    c.blend(body, anat["soft"])
    c.img += body * 0.025 * _smooth_noise(rng, c.H, c.W, 40)
    lungs = _lung_mask(c, anat)
    c.blend(lungs, anat["lung_val"])
    c.img += lungs * 0.018 * _smooth_noise(rng, c.H, c.W, 5)  # vascular markings
    for side, med in (("R", 1.0), ("L", -1.0)):  # hila
        cu, cv, au, av = anat["lungs"][side]
        hu = cu + med * 0.55 * au
        c.img += lungs * 0.09 * np.exp(-(((u - hu) / (0.35 * au)) ** 2) - ((v - cv) / (0.18 * av)) ** 2)
    t = v * anat["rib_freq"] + 2.2 * ((u - cx) / 0.3) ** 2
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * t + anat["rib_phase"])) ** 6
    c.img += 0.09 * ribs * (0.9 * lungs + 0.25 * body)
    med = np.clip((anat["med_w"] - np.abs(u - cx)) / 0.02, 0, 1) * np.clip((v - 0.06) / 0.05, 0, 1)
    c.blend(med * body, anat["med_val"])
    heart, _ = _ellipse(u, v, *anat["heart"], edge=0.1)
    c.blend(heart, anat["heart_val"])
    ku, kv, kr = anat["knob"]
    kd = np.sqrt((X - ku * c.W) ** 2 + (Y - kv * c.H) ** 2) / (kr * c.W)
    c.blend(np.clip((1.0 - kd) / 0.15, 0, 1), anat["heart_val"])
    dome = np.full_like(u, 10.0)
    for side in "RL":
        cu, cv, au, av = anat["lungs"][side]
        dome = np.minimum(dome, anat["dome_v"] + (0.02 if side == "L" else 0.0) + 0.06 * ((u - cu) / au) ** 2)
    dome = np.minimum(dome, anat["dome_v"] + 0.1)  # the abdomen fills the whole width below the domes
    abd = np.clip((v - dome) / 0.015, 0, 1) * body
    c.blend(abd, anat["heart_val"] + 0.04)
    for sgn in (-1.0, 1.0):  # clavicles
        du = sgn * (u - cx)
        line = 0.13 + 0.12 * du
        m = np.clip((0.012 - np.abs(v - line)) / 0.006, 0, 1) * ((du > 0.04) & (du < 0.3))
        c.img += 0.18 * m


def _finish(c: _Canvas, rng, anat):
    img = c.img * (1.0 + 0.04 * _smooth_noise(rng, c.H, c.W, 80))
    img = np.clip(img, 0.0, 1.0) ** anat["gamma"]
    img = img + rng.normal(0.0, anat["noise"], img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _lung_point(rng, anat, side, rho=(0.15, 0.72), vmin=None, vmax=None):
    cu, cv, au, av = anat["lungs"][side]
    u = v = None
    for _ in range(50):
        th = rng.uniform(0, 2 * np.pi)
        r = math.sqrt(rng.uniform(rho[0] ** 2, rho[1] ** 2))
        u, v = cu + r * au * math.cos(th), cv + r * av * math.sin(th)
        if v < anat["dome_v"] - 0.02 and (vmin is None or v >= vmin) and (vmax is None or v <= vmax):
            break
    return u, v


def _paint_nodule(c, rng, anat, side, avoid=()):
    m = min(c.H, c.W)
    for _ in range(20):
        u0, v0 = _lung_point(rng, anat, side)
        px, py = u0 * c.W, v0 * c.H
        if all(abs(px - (b[0] + b[2]) / 2) + abs(py - (b[1] + b[3]) / 2) > 0.15 * m for b in avoid):
            break
    r = rng.uniform(0.022, 0.06) * m
    d = np.sqrt((c.X - px) ** 2 + (c.Y - py) ** 2)
    th = np.arctan2(c.Y - py, c.X - px)
    reff = r * (1.0 + 0.12 * np.sin(rng.integers(3, 7) * th + rng.uniform(0, 6.3)))
    c.img += np.exp(-((d / reff) ** 4)) * rng.uniform(0.26, 0.38)
    return [px - 1.12 * r, py - 1.12 * r, px + 1.12 * r, py + 1.12 * r]


def _paint_opacity(c, rng, anat, side, amp=(0.18, 0.28), size=(0.35, 0.6)):
    _, cv, au, av = anat["lungs"][side]
    u0, v0 = _lung_point(rng, anat, side, rho=(0.0, 0.45), vmin=cv - 0.1 * av)
    a, b = au * rng.uniform(*size), av * rng.uniform(0.18, 0.3)
    m, _ = _ellipse(c.u, c.v, u0, v0, a, b, edge=0.3)
    tex = np.clip(0.55 + 0.35 * _smooth_noise(rng, c.H, c.W, 7), 0.0, 1.0)
    c.img += m * tex * rng.uniform(*amp)
    return _mask_box(m, 0.2)


def _paint_fibrosis(c, rng, anat, side):
    _, cv, au, av = anat["lungs"][side]
    upper = rng.random() < 0.5
    u0, v0 = _lung_point(rng, anat, side, rho=(0.1, 0.5), vmax=cv if upper else None, vmin=None if upper else cv)
    a, b = au * rng.uniform(0.4, 0.6), av * rng.uniform(0.2, 0.32)
    m, _ = _ellipse(c.u, c.v, u0, v0, a, b, edge=0.25)
    p = rng.uniform(5.0, 8.0)
    wx, wy = 3.0 * _smooth_noise(rng, c.H, c.W, 12), 3.0 * _smooth_noise(rng, c.H, c.W, 12)
    lines = np.maximum(np.abs(np.cos(np.pi * (c.X + wx) / p)), np.abs(np.cos(np.pi * (c.Y + wy) / p))) ** 10
    c.img += m * (0.05 + rng.uniform(0.2, 0.28) * lines)
    return _mask_box(m, 0.3)


def _paint_ring(c, rng, anat, side):
    u0, v0 = _lung_point(rng, anat, side, rho=(0.1, 0.6))
    px, py = u0 * c.W, v0 * c.H
    r = rng.uniform(0.03, 0.05) * min(c.H, c.W)
    d = np.sqrt((c.X - px) ** 2 + (c.Y - py) ** 2)
    c.img += 0.34 * np.exp(-(((d - r) / (0.25 * r)) ** 2)) + 0.06 * np.clip((r - d) / 2.0, 0, 1)
    return [px - 1.3 * r, py - 1.3 * r, px + 1.3 * r, py + 1.3 * r]


def _paint_effusion(c, rng, anat, side):
    cu, cv, au, av = anat["lungs"][side]
    lateral = -1.0 if side == "R" else 1.0  # lateral direction in image u
    level = cv + av * rng.uniform(0.2, 0.5)
    meniscus = level - 0.07 * av * (1.0 + lateral * (c.u - cu) / au)
    inside, _ = _ellipse(c.u, c.v, cu, cv + 0.03, au * 1.04, av * 1.06, edge=0.06)
    m = inside * np.clip((c.v - meniscus) / 0.012, 0, 1)
    c.blend(m, rng.uniform(0.58, 0.68))
    c.img += m * 0.02 * _smooth_noise(rng, c.H, c.W, 20)
    return _mask_box(m, 0.5)


def _paint_thickening(c, rng, anat, side):
    cu, cv, au, av = anat["lungs"][side]
    th0 = -np.pi / 2 if rng.random() < 0.5 else (np.pi if side == "R" else 0.0)  # apex or lateral wall
    th0 += rng.uniform(-0.25, 0.25)
    span = rng.uniform(0.35, 0.6)
    du, dv = (c.u - cu) / au, (c.v - cv) / av
    r, th = np.sqrt(du**2 + dv**2), np.arctan2(dv, du)
    band = np.clip((r - 0.85) / 0.04, 0, 1) * np.clip((1.02 - r) / 0.04, 0, 1)
    ang = np.clip((np.cos(th - th0) - math.cos(span)) / 0.05, 0, 1)
    m = band * ang
    c.blend(0.85 * m, rng.uniform(0.55, 0.65))
    return _mask_box(m, 0.4)


def _paint_atelectasis(c, rng, anat, side):
    cu, cv, au, av = anat["lungs"][side]
    m, _ = _ellipse(c.u, c.v, cu, cv + 0.55 * av, 0.55 * au, 0.035 * av + 0.004, edge=0.5)
    c.img += 0.25 * m


def _paint_edema(c, rng, anat):
    for side, med in (("R", 1.0), ("L", -1.0)):
        cu, cv, au, av = anat["lungs"][side]
        hu = cu + med * 0.4 * au
        c.img += 0.14 * np.exp(-(((c.u - hu) / (0.7 * au)) ** 2) - ((c.v - cv) / (0.45 * av)) ** 2)


def _paint_pneumothorax(c, rng, anat, side):
    cu, cv, au, av = anat["lungs"][side]
    du, dv = (c.u - cu) / au, (c.v - cv) / av
    r, th = np.sqrt(du**2 + dv**2), np.arctan2(dv, du)
    th0 = -np.pi / 2 + (-0.5 if side == "R" else 0.5)
    ang = np.clip((np.cos(th - th0) - math.cos(0.9)) / 0.1, 0, 1)
    m = ang * np.clip((r - 0.72) / 0.03, 0, 1) * np.clip((1.0 - r) / 0.03, 0, 1)
    c.blend(m, anat["air"] + 0.04)
    c.img += 0.12 * ang * np.exp(-(((r - 0.72) / 0.015) ** 2))


def _paint_tube(c, rng, anat):
    cx = anat["cx"]
    pts = np.array([[cx + rng.uniform(-0.01, 0.01), 0.0], [cx, 0.2], [cx + 0.01, anat["lv"] - 0.08]])
    if rng.random() < 0.5:  # central venous catheter from the right neck
        pts = np.array([[cx - 0.2, 0.05], [cx - 0.08, 0.18], [cx - 0.03, anat["lv"] - 0.05]])
    pts = pts * np.array([c.W, c.H])
    d = np.full_like(c.img, 1e9)
    for (x1, y1), (x2, y2) in itertools.pairwise(pts):
        vx, vy = x2 - x1, y2 - y1
        t = np.clip(((c.X - x1) * vx + (c.Y - y1) * vy) / (vx * vx + vy * vy), 0, 1)
        d = np.minimum(d, np.hypot(c.X - x1 - t * vx, c.Y - y1 - t * vy))
    c.blend(np.clip(1.5 - d, 0, 1), 0.95)


_VINDR_PAINTERS = {
    "Nodule/Mass": _paint_nodule,
    "Lung Opacity": _paint_opacity,
    "Pulmonary fibrosis": _paint_fibrosis,
    "Other lesion": _paint_ring,
    "Pleural effusion": _paint_effusion,
    "Pleural thickening": _paint_thickening,
}


def _render_vindr(rng, H, W, classes: dict, copd: bool):
    """classes: {class_name: n_instances}. Returns (display image, [(class_name, pixel box)])."""
    anat = _sample_anatomy(
        rng, copd=copd, cardiomegaly="Cardiomegaly" in classes, aortic="Aortic enlargement" in classes
    )
    c = _Canvas(H, W)
    _render_base_frontal(c, rng, anat)
    boxes = []
    if "Aortic enlargement" in classes:
        ku, kv, kr = anat["knob"]
        boxes.append(("Aortic enlargement", [(ku - kr) * W, kv * H - kr * W, (ku + kr) * W, kv * H + kr * W]))
    if "Cardiomegaly" in classes:
        hu, hv, ha, hb = anat["heart"]
        boxes.append(("Cardiomegaly", [(hu - ha) * W, (hv - hb) * H, (hu + ha) * W, (hv + hb) * H]))
    for cls in VINDR_LOCAL_LABELS:  # canonical order
        if cls not in classes or cls not in _VINDR_PAINTERS:
            continue
        sides = ["R", "L"]
        rng.shuffle(sides)
        for k in range(classes[cls]):
            side = sides[k % 2] if cls in ("Pleural effusion", "Pleural thickening") else str(rng.choice(["R", "L"]))
            if cls == "Nodule/Mass":
                box = _paint_nodule(c, rng, anat, side, avoid=[b for n, b in boxes if n == cls])
            else:
                box = _VINDR_PAINTERS[cls](c, rng, anat, side)
            if box is not None:
                boxes.append((cls, box))
    img = _finish(c, rng, anat)
    return img, [(n, _clip_box(b, W, H)) for n, b in boxes]


def _render_mimic(rng, H, W, view, positives: set):
    if view in ("LATERAL", "LL"):
        return _render_lateral(rng, H, W, positives)
    anat = _sample_anatomy(
        rng, cardiomegaly="Cardiomegaly" in positives, wide_mediastinum="Enlarged Cardiomediastinum" in positives
    )
    c = _Canvas(H, W)
    _render_base_frontal(c, rng, anat)
    side = str(rng.choice(["R", "L"]))
    if "Pleural Effusion" in positives:
        _paint_effusion(c, rng, anat, side)
    if positives & {"Lung Opacity", "Pneumonia"}:
        _paint_opacity(c, rng, anat, str(rng.choice(["R", "L"])))
    if "Consolidation" in positives:
        _paint_opacity(c, rng, anat, str(rng.choice(["R", "L"])), amp=(0.3, 0.4))
    if "Atelectasis" in positives:
        _paint_atelectasis(c, rng, anat, str(rng.choice(["R", "L"])))
    if "Edema" in positives:
        _paint_edema(c, rng, anat)
    if "Lung Lesion" in positives:
        _paint_nodule(c, rng, anat, str(rng.choice(["R", "L"])))
    if "Pneumothorax" in positives:
        _paint_pneumothorax(c, rng, anat, str(rng.choice(["R", "L"])))
    if "Pleural Other" in positives:
        _paint_thickening(c, rng, anat, str(rng.choice(["R", "L"])))
    if "Support Devices" in positives:
        _paint_tube(c, rng, anat)
    if view == "AP":  # portable films: lower contrast
        c.img = 0.12 + 0.85 * c.img
    return _finish(c, rng, anat)


def _render_lateral(rng, H, W, positives: set):
    anat = _sample_anatomy(rng)
    c = _Canvas(H, W)
    u, v = c.u, c.v
    c.img[:] = anat["air"]
    body, _ = _ellipse(u, v, 0.5, 0.58, 0.42, 0.7, edge=0.05)
    c.blend(body, anat["soft"] + 0.05)
    lung, _ = _ellipse(u, v, 0.5, 0.44, 0.27, 0.3, edge=0.15)
    c.blend(lung, anat["lung_val"] + 0.08)
    c.img += lung * 0.02 * _smooth_noise(rng, c.H, c.W, 6)
    spine = np.clip((0.045 - np.abs(u - 0.76)) / 0.01, 0, 1) * body
    c.blend(spine * (0.8 + 0.2 * (np.cos(2 * np.pi * v * 14) > 0)), 0.75)
    big = "Cardiomegaly" in positives
    heart, _ = _ellipse(u, v, 0.4, 0.62, 0.19 if big else 0.14, 0.16 if big else 0.13, edge=0.12)
    c.blend(heart, anat["heart_val"])
    dome = 0.72 + 0.1 * (u - 0.5) ** 2
    c.blend(np.clip((v - dome) / 0.015, 0, 1) * body, anat["heart_val"] + 0.04)
    if "Pleural Effusion" in positives:  # blunted posterior costophrenic sulcus
        m, _ = _ellipse(u, v, 0.66, 0.71, 0.08, 0.05, edge=0.3)
        c.blend(m, 0.62)
    return _finish(c, rng, anat)
