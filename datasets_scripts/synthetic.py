"""Small synthetic VinDr-CXR and MIMIC-CXR / MIMIC-CXR-JPG datasets, written in the official PhysioNet layouts.

    python -m datasets_scripts.synthetic --out DIR --n-train 60 --n-test 20 --seed 0 [--mimic-studies 20] [--image-size 256]

or from Python: ``generate(out_dir, n_train=60, n_test=20, mimic_studies=20, seed=0, image_size=256) -> manifest``.
Everything is a function of the arguments (same seed => byte-identical CSVs, reports, DICOMs and JPGs with the same
pydicom / Pillow versions). The builders' tests read these trees exactly as they would read the real downloads
(docs/design.md, "Datasets") and compare what they build with ``DIR/manifest.json``.

What is written
---------------
``DIR/vindr-cxr/1.0.0/``
    ``train/{image_id}.dicom``, ``test/{image_id}.dicom`` (image_id = 32 hex characters);
    ``annotations/annotations_train.csv`` (``image_id,rad_id,class_name,x_min,y_min,x_max,y_max``),
    ``annotations/annotations_test.csv`` (no ``rad_id``), ``annotations/image_labels_train.csv`` (``image_id,rad_id`` +
    22 local + 6 global 0/1 columns, in the label lists' order), ``annotations/image_labels_test.csv`` (no ``rad_id``).
    Train: 3 readers per image drawn from R1..R17; test: one consensus label set.
``DIR/mimic-cxr/2.0.0/``
    ``files/pXX/p{subject_id}/s{study_id}/{dicom_id}.dcm``, reports ``files/pXX/p{subject_id}/s{study_id}.txt``,
    ``cxr-record-list.csv.gz`` and ``cxr-study-list.csv.gz`` (as in the real release).
``DIR/mimic-cxr-jpg/2.1.0/``
    ``files/pXX/p{subject_id}/s{study_id}/{dicom_id}.jpg`` and ``mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz``.
``DIR/manifest.json``
    Paths (relative to DIR), counts, the DICOM variant of every image, the ground truth drawn into the pixels
    (``truth``) and what every reader wrote (``readers``: labels and pixel boxes exactly as in the CSVs), MIMIC report
    sections and labels, and ``edge_cases`` (ids per case). ``generate`` returns the same dict plus ``out_dir``.

Spelling choices (docs/design.md, "Label lists")
----------------------------
Annotation CSVs use canonical spellings only. The labels CSVs reproduce the real files' inconsistency in the global
column: ``image_labels_train.csv`` has ``Other diseases`` and ``image_labels_test.csv`` has ``Other disease`` (as
reported by several public loaders that rename the test column; see ``OTHER_DISEASE_COLUMN``). Annotation CSVs hold
local classes and ``No finding`` only (global labels are image-level, in the labels CSVs).

Edge cases included on purpose (ids in ``manifest["edge_cases"]``)
-----------------------------------------------------------------
VinDr train: reader misses a box; jittered boxes between readers; near-duplicate same-class boxes (IoU > 0.5) by one
reader; conflicts (one reader ``No finding``, another findings: a dissenting reader on an abnormal image and a
false-positive reader on a normal image); images whose findings are global only (``No finding`` = 0, no box, hence no
annotation row for that reader). VinDr/MIMIC DICOMs: MONOCHROME1 and MONOCHROME2; BitsStored 12/14/16; single-valued,
multi-valued and absent WindowCenter/WindowWidth; Rescale tags present/absent; transfer syntaxes Explicit VR Little
Endian (default), Explicit VR Big Endian, Implicit VR Little Endian and RLE Lossless (encapsulated, pydicom-native
encoder: no extra plugin needed to read). MIMIC: 1-2 images per study (PA/AP/LATERAL/LL), a study with two AP images,
a lateral-only study, subjects with several studies, reports with FINDINGS+IMPRESSION, IMPRESSION only, FINDINGS only,
CONCLUSION instead of IMPRESSION, one with neither (last-paragraph fallback), WET READ headers, PHI as ``___``,
negated ("No pneumothorax.") and uncertain ("Possible small left effusion.") mentions. The CheXpert CSV follows the
report sentences (1.0 / 0.0 / -1.0 / blank, No Finding 1.0 when nothing but support devices is positive/uncertain);
NegBio is identical except that it ignores "Heart size is normal." (no cardiomegaly term), leaving Cardiomegaly blank
where that sentence is the only mention.

Pixels
------
Chest-like frontal images (body, two dark lung fields, mediastinum, heart, aortic knob, ribs, clavicles, diaphragm,
vascular texture, noise, random gain/gamma); each VinDr class used is drawn inside its ``truth`` box with a distinctive
pattern: Nodule/Mass = soft round blob, Lung Opacity = patchy textured haze, Pulmonary fibrosis = reticular net,
Other lesion = ring, Pleural effusion = bright fluid at the lung base with a meniscus, Pleural thickening = bright band
along the pleura, Cardiomegaly = enlarged heart (box = heart), Aortic enlargement = enlarged aortic knob (box = knob).
COPD (global) = darker, larger lungs. Readers' boxes are jittered copies of the truth boxes.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import math
import shutil
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from processing_litegpt import CHEXPERT_LABELS, NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

__all__ = ["CHEXPERT_LABELS", "OTHER_DISEASE_COLUMN", "RADIOLOGISTS", "VINDR_USED_CLASSES", "generate", "main"]

# ----------------------------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------------------------
VINDR_VERSION_DIR = "vindr-cxr/1.0.0"
MIMIC_DICOM_DIR = "mimic-cxr/2.0.0"
MIMIC_JPG_DIR = "mimic-cxr-jpg/2.1.0"

SOP_CLASS_DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
RADIOLOGISTS = tuple(f"R{i}" for i in range(1, 18))
# R8, R9 and R10 read most of the real training set; the others far fewer.
_RAD_WEIGHTS = np.array([6.0 if r in ("R8", "R9", "R10") else 1.0 for r in RADIOLOGISTS]) / 32.0

# Column spelling of the "Other diseases" global label in each labels CSV (see module docstring).
OTHER_DISEASE_COLUMN = {"train": "Other diseases", "test": "Other disease"}

# Classes drawn (weight among abnormal images, max instances per image); frequencies loosely follow VinDr train.
VINDR_USED_CLASSES = {
    "Aortic enlargement": (0.24, 1),
    "Cardiomegaly": (0.20, 1),
    "Pleural thickening": (0.14, 2),
    "Pulmonary fibrosis": (0.12, 2),
    "Nodule/Mass": (0.10, 3),
    "Lung Opacity": (0.10, 2),
    "Pleural effusion": (0.08, 2),
    "Other lesion": (0.07, 1),
}
assert set(VINDR_USED_CLASSES) <= set(VINDR_LOCAL_LABELS)
_GLOBAL_FROM_LOCAL = {  # local class -> [(global label, probability)]
    "Nodule/Mass": [("Lung tumor", 0.7), ("Other diseases", 0.2)],
    "Lung Opacity": [("Pneumonia", 0.6), ("Other diseases", 0.25)],
    "Pulmonary fibrosis": [("Tuberculosis", 0.45), ("Other diseases", 0.35)],
    "Pleural thickening": [("Tuberculosis", 0.25), ("Other diseases", 0.3)],
    "Pleural effusion": [("Other diseases", 0.6)],
    "Aortic enlargement": [("Other diseases", 0.35)],
    "Cardiomegaly": [("Other diseases", 0.5)],
    "Other lesion": [("Other diseases", 0.6)],
}
assert {g for v in _GLOBAL_FROM_LOCAL.values() for g, _ in v} <= set(VINDR_GLOBAL_LABELS)
_GLOBAL_DISEASES = tuple(g for g in VINDR_GLOBAL_LABELS if g != NO_FINDING)

P_NORMAL = 0.6  # share of "No finding" images (VinDr: ~70 %; a bit lower to keep small sets informative)
P_MISS = 0.1  # a reader misses a box
P_NEAR_DUP = 0.05  # a reader draws a second, near-identical box
P_KEEP_GLOBAL = 0.88  # a reader reports a global label of the image

MIMIC_METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}

_TS_UIDS = {
    "ExplicitVRLittleEndian": "1.2.840.10008.1.2.1",
    "ImplicitVRLittleEndian": "1.2.840.10008.1.2",
    "ExplicitVRBigEndian": "1.2.840.10008.1.2.2",
    "RLELossless": "1.2.840.10008.1.2.5",
}

# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return repr(float(round(float(x), 2)))


def _box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _clip_box(box, W, H, min_size=3.0):
    """Round to 0.01 px and keep 0 <= x1 < x2 <= W - 1, 0 <= y1 < y2 <= H - 1 (at least ``min_size`` wide)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1 = min(max(x1, 0.0), W - 1.0 - min_size)
    y1 = min(max(y1, 0.0), H - 1.0 - min_size)
    x2 = min(max(x2, x1 + min_size), W - 1.0)
    y2 = min(max(y2, y1 + min_size), H - 1.0)
    return [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)]


def _jitter(rng, box, W, H, frac):
    w, h = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-frac, frac, 4) * np.array([w, h, w, h])
    return _clip_box([box[0] + d[0], box[1] + d[1], box[2] + d[2], box[3] + d[3]], W, H)


def _near_duplicate(rng, box, W, H):
    for frac in (0.08, 0.05, 0.03, 0.01):
        cand = _jitter(rng, box, W, H, frac)
        if _box_iou(cand, box) > 0.6 and cand != box:
            return cand
    return _clip_box([box[0] + 1, box[1] + 1, box[2] + 1, box[3] + 1], W, H)


def _mask_box(mask, thr=0.5):
    ys, xs = np.nonzero(mask > thr)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _write_csv_gz(path: Path, header, rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(buf.getvalue().encode("utf-8"))


def _force(rng, specs, key, values) -> None:
    """Make sure each of ``values`` occurs at least once for ``specs[i][key]`` without removing another one."""
    for val in values:
        counts = Counter(s[key] for s in specs)
        if counts[val]:
            continue
        cands = [i for i, s in enumerate(specs) if s[key] not in values or counts[s[key]] > 1]
        if not cands:
            return
        specs[int(rng.choice(cands))][key] = val


def _image_size(rng, image_size: int):
    lo, hi = round(0.78 * image_size), round(1.25 * image_size)
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))  # rows, columns


# ----------------------------------------------------------------------------------------------------------------
# Rendering (display space: float32 in [0, 1], bright = dense, as a MONOCHROME2 chest film is shown)
# ----------------------------------------------------------------------------------------------------------------


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


# Painters: draw one finding into the canvas, return its pixel box [x1, y1, x2, y2].


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


# ----------------------------------------------------------------------------------------------------------------
# DICOM writing
# ----------------------------------------------------------------------------------------------------------------


def _to_stored(rng, img, bits_stored, photometric):
    maxv = (1 << bits_stored) - 1
    lo = rng.uniform(0.0, 0.08) * maxv
    hi = rng.uniform(0.75, 1.0) * maxv
    d = 1.0 - img if photometric == "MONOCHROME1" else img
    stored = np.round(lo + d.astype(np.float64) * (hi - lo)).astype(np.uint16)
    return stored, lo, hi


def _write_dicom(
    path: Path,
    stored,
    *,
    uid_key: str,
    photometric,
    bits_stored,
    window,
    rescale,
    ts: str,
    lo,
    hi,
    rng,
    extra: dict | None = None,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, RLELossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS_DX
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sop", uid_key])
    ds.file_meta.TransferSyntaxUID = UID(_TS_UIDS["ExplicitVRLittleEndian" if ts == "RLELossless" else ts])
    ds.SOPClassUID = SOP_CLASS_DX
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", uid_key])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", uid_key])
    ds.Modality = "DX"
    ds.ConversionType = "WSD"
    ds.PatientOrientation = ""
    for k, val in (extra or {}).items():
        setattr(ds, k, val)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    if rescale:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    if window != "none":
        center = (lo + hi) / 2.0 + rng.uniform(-0.03, 0.03) * (hi - lo)
        width = (hi - lo) * rng.uniform(0.85, 1.05)
        if window == "multi":  # a second, narrower preset: builders must use the first value
            ds.WindowCenter = [round(center, 1), round(center * 1.05, 1)]
            ds.WindowWidth = [round(width, 1), round(width * 0.6, 1)]
        else:
            ds.WindowCenter = round(center, 1)
            ds.WindowWidth = round(width, 1)
    if ts == "ExplicitVRBigEndian":
        ds.PixelData = stored.astype(">u2").tobytes()
    else:
        ds.PixelData = stored.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    if ts == "RLELossless":
        ds.compress(RLELossless, stored, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=(ts == "ImplicitVRLittleEndian"),
        little_endian=(ts != "ExplicitVRBigEndian"),
    )


# ----------------------------------------------------------------------------------------------------------------
# VinDr-CXR
# ----------------------------------------------------------------------------------------------------------------


def _dicom_specs(rng, n, image_size, split):
    specs = []
    for _ in range(n):
        rows, cols = _image_size(rng, image_size)
        specs.append(
            {
                "rows": rows,
                "columns": cols,
                "photometric": "MONOCHROME1" if rng.random() < 0.2 else "MONOCHROME2",
                "bits_stored": int(rng.choice([12, 14, 16], p=[0.5, 0.3, 0.2])),
                "window": str(rng.choice(["single", "multi", "none"], p=[0.45, 0.15, 0.4])),
                "rescale": bool(rng.random() < 0.5),
                "transfer_syntax": "ExplicitVRLittleEndian",
            }
        )
    _force(rng, specs, "photometric", ["MONOCHROME2", "MONOCHROME1"])
    if split == "train":
        _force(rng, specs, "bits_stored", [12, 14, 16])
        _force(rng, specs, "window", ["single", "none", "multi"])
        _force(
            rng,
            specs,
            "transfer_syntax",
            ["ExplicitVRLittleEndian", "ExplicitVRBigEndian", "RLELossless", "ImplicitVRLittleEndian"],
        )
    else:
        _force(rng, specs, "window", ["single", "none"])
        _force(rng, specs, "transfer_syntax", ["ExplicitVRLittleEndian", "RLELossless"])
    return specs


def _plan_findings(rng, n, split):
    """Per image: {'classes': {cls: n}, 'globals': [...], 'copd': bool, 'special': str|None}."""
    plans = []
    names = list(VINDR_USED_CLASSES)
    weights = np.array([VINDR_USED_CLASSES[k][0] for k in names])
    weights = weights / weights.sum()
    for _ in range(n):
        plans.append(
            {"classes": {}, "globals": [], "copd": False, "special": None, "normal": bool(rng.random() < P_NORMAL)}
        )
    if n >= 2:  # at least one normal and one abnormal image
        _force(rng, plans, "normal", [True, False])
    if n >= 6 and sum(not p["normal"] for p in plans) < 2:
        plans[int(rng.choice([i for i, p in enumerate(plans) if p["normal"]]))]["normal"] = False
    for p in plans:
        if p["normal"]:
            continue
        k = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        for cls in rng.choice(names, size=k, replace=False, p=weights):
            cls = str(cls)
            maxn = VINDR_USED_CLASSES[cls][1]
            p["classes"][cls] = 1 + (int(rng.integers(0, maxn)) if maxn > 1 and rng.random() < 0.4 else 0)
        glob = set()
        for cls in p["classes"]:
            for g, prob in _GLOBAL_FROM_LOCAL[cls]:
                if rng.random() < prob:
                    glob.add(g)
        if rng.random() < 0.06:
            glob.add("COPD")
            p["copd"] = True
        p["globals"] = [g for g in _GLOBAL_DISEASES if g in glob]
    # Special cases on distinct images.
    normal_idx = [i for i, p in enumerate(plans) if p["normal"]]
    abnormal_idx = [i for i, p in enumerate(plans) if not p["normal"]]
    rng.shuffle(normal_idx)
    rng.shuffle(abnormal_idx)
    if len(normal_idx) >= 4 or (split == "test" and len(normal_idx) >= 3):
        i = normal_idx.pop()  # findings are global only: no box, No finding = 0
        plans[i].update(normal=False, special="global_only", globals=["Other diseases"])
    if split == "train":
        for special in ("near_duplicate", "conflict"):
            if abnormal_idx:
                plans[abnormal_idx.pop()]["special"] = special
        if len(normal_idx) >= 3:
            plans[normal_idx.pop()]["special"] = "false_positive"
        for i in abnormal_idx + normal_idx:  # a few more, at random
            r = rng.random()
            if not plans[i]["normal"] and r < 0.08:
                plans[i]["special"] = "conflict"
            elif plans[i]["normal"] and r < 0.03:
                plans[i]["special"] = "false_positive"
    return plans


def _reader_record(rad_id, boxes, globals_):
    local = [c for c in VINDR_LOCAL_LABELS if any(n == c for n, _ in boxes)]
    return {
        "rad_id": rad_id,
        "no_finding": int(not boxes and not globals_),
        "local_labels": local,
        "global_labels": list(globals_),
        "boxes": [{"class_name": n, "box": b} for n, b in boxes],
    }


def _simulate_readers(rng, truth, globals_, plan, W, H):
    rads = [str(r) for r in rng.choice(RADIOLOGISTS, size=3, replace=False, p=_RAD_WEIGHTS)]
    special = plan["special"]
    dissent = int(rng.integers(3)) if special == "conflict" else -1
    fp = int(rng.integers(3)) if special == "false_positive" else -1
    readers, cases = [], set()
    for k, rad in enumerate(rads):
        boxes, glob = [], []
        if k != dissent:
            for idx, (cls, box) in enumerate(truth):
                if rng.random() < P_MISS:
                    cases.add("missed_box")
                    continue
                b = _jitter(rng, box, W, H, rng.uniform(0.02, 0.09))
                boxes.append((cls, b))
                if rng.random() < P_NEAR_DUP or (special == "near_duplicate" and k == 0 and idx == 0):
                    boxes.append((cls, _near_duplicate(rng, b, W, H)))
            keep = 1.0 if special == "global_only" else P_KEEP_GLOBAL
            glob = [g for g in globals_ if rng.random() < keep]
        if k == fp:  # a reader sees something on a normal image
            cls = str(rng.choice(["Aortic enlargement", "Pleural thickening", "Other lesion"]))
            cx, cy = rng.uniform(0.3, 0.7) * W, rng.uniform(0.25, 0.65) * H
            half = rng.uniform(0.04, 0.08) * min(W, H)
            boxes.append((cls, _clip_box([cx - half, cy - half, cx + half, cy + half], W, H)))
            if rng.random() < 0.5:
                glob = ["Other diseases"]
        readers.append(_reader_record(rad, boxes, glob))
    nf = {r["no_finding"] for r in readers}
    if len(nf) == 2:
        cases.add("conflict")
    for r in readers:
        bs = r["boxes"]
        if any(
            a["class_name"] == b["class_name"] and _box_iou(a["box"], b["box"]) > 0.5
            for i, a in enumerate(bs)
            for b in bs[i + 1 :]
        ):
            cases.add("near_duplicate")
    if special == "global_only":
        cases.add("global_only")
    if special == "false_positive":
        cases.add("false_positive")
    return readers, sorted(cases)


def _generate_vindr(out: Path, n_train, n_test, seed, image_size, bar):
    root = out / VINDR_VERSION_DIR
    images = {}
    edge = {
        k: []
        for k in (
            "conflict",
            "near_duplicate",
            "missed_box",
            "false_positive",
            "global_only",
            "monochrome1",
            "no_window",
            "multi_window",
            "big_endian",
            "implicit_vr",
            "rle_lossless",
        )
    }
    ann = {"train": [], "test": []}
    lab = {"train": [], "test": []}
    for split, n, code in (("train", n_train, 1), ("test", n_test, 2)):
        rng = np.random.default_rng([seed, 10, code])
        ids = []
        while len(ids) < n:
            iid = rng.bytes(16).hex()
            if iid not in ids:
                ids.append(iid)
        specs = _dicom_specs(rng, n, image_size, split)
        plans = _plan_findings(rng, n, split)
        for i, (iid, spec, plan) in enumerate(zip(ids, specs, plans)):
            irng = np.random.default_rng([seed, 11, code, i])
            H, W = spec["rows"], spec["columns"]
            img, truth = _render_vindr(irng, H, W, plan["classes"], plan["copd"])
            globals_ = plan["globals"]
            if split == "train":
                readers, cases = _simulate_readers(irng, truth, globals_, plan, W, H)
            else:
                readers = [_reader_record(None, truth, globals_)]
                cases = ["global_only"] if plan["special"] == "global_only" else []
            stored, lo, hi = _to_stored(irng, img, spec["bits_stored"], spec["photometric"])
            rel = f"{VINDR_VERSION_DIR}/{split}/{iid}.dicom"
            extra = {"PatientID": iid[:12], "PatientSex": str(irng.choice(["M", "F", "O"], p=[0.5, 0.45, 0.05]))}
            if irng.random() < 0.7:
                extra["PatientAge"] = f"{int(irng.integers(18, 90)):03d}Y"
            _write_dicom(
                out / rel,
                stored,
                uid_key=iid,
                photometric=spec["photometric"],
                bits_stored=spec["bits_stored"],
                window=spec["window"],
                rescale=spec["rescale"],
                ts=spec["transfer_syntax"],
                lo=lo,
                hi=hi,
                rng=irng,
                extra=extra,
            )
            for c in cases:
                edge[c].append(iid)
            if spec["photometric"] == "MONOCHROME1":
                edge["monochrome1"].append(iid)
            if spec["window"] == "none":
                edge["no_window"].append(iid)
            if spec["window"] == "multi":
                edge["multi_window"].append(iid)
            for ts, key in (
                ("ExplicitVRBigEndian", "big_endian"),
                ("ImplicitVRLittleEndian", "implicit_vr"),
                ("RLELossless", "rle_lossless"),
            ):
                if spec["transfer_syntax"] == ts:
                    edge[key].append(iid)
            for r in readers:
                head = [iid, r["rad_id"]] if split == "train" else [iid]
                if r["no_finding"]:
                    ann[split].append(head + [NO_FINDING, "", "", "", ""])
                for b in r["boxes"]:
                    ann[split].append(head + [b["class_name"]] + [_fmt(x) for x in b["box"]])
                row = [int(c in r["local_labels"]) for c in VINDR_LOCAL_LABELS]
                row += [int(g in r["global_labels"]) for g in _GLOBAL_DISEASES] + [r["no_finding"]]
                lab[split].append(head + row)
            images[iid] = {
                "split": split,
                "path": rel,
                "rows": H,
                "columns": W,
                "dicom": {
                    "photometric": spec["photometric"],
                    "bits_stored": spec["bits_stored"],
                    "window": spec["window"],
                    "rescale": spec["rescale"],
                    "transfer_syntax": spec["transfer_syntax"],
                },
                "truth": {
                    "local": [{"class_name": n, "box": b} for n, b in truth],
                    "global_labels": list(globals_),
                    "no_finding": int(not truth and not globals_),
                    "copd_drawn": plan["copd"],
                },
                "readers": readers,
                "edge_cases": cases,
            }
            bar.update(1)
    ann_dir = root / "annotations"
    box_cols = ["class_name", "x_min", "y_min", "x_max", "y_max"]
    _write_csv(ann_dir / "annotations_train.csv", ["image_id", "rad_id"] + box_cols, ann["train"])
    _write_csv(ann_dir / "annotations_test.csv", ["image_id"] + box_cols, ann["test"])
    files = {
        "annotations_train": f"{VINDR_VERSION_DIR}/annotations/annotations_train.csv",
        "annotations_test": f"{VINDR_VERSION_DIR}/annotations/annotations_test.csv",
        "image_labels_train": f"{VINDR_VERSION_DIR}/annotations/image_labels_train.csv",
        "image_labels_test": f"{VINDR_VERSION_DIR}/annotations/image_labels_test.csv",
    }
    for split, head in (("train", ["image_id", "rad_id"]), ("test", ["image_id"])):
        globals_cols = [OTHER_DISEASE_COLUMN[split] if g == "Other diseases" else g for g in VINDR_GLOBAL_LABELS]
        _write_csv(out / files[f"image_labels_{split}"], head + list(VINDR_LOCAL_LABELS) + globals_cols, lab[split])
    class_counts = Counter(b["class_name"] for im in images.values() for b in im["truth"]["local"])
    counts = {
        "train_images": n_train,
        "test_images": n_test,
        "annotations_train_rows": len(ann["train"]),
        "annotations_test_rows": len(ann["test"]),
        "image_labels_train_rows": len(lab["train"]),
        "image_labels_test_rows": len(lab["test"]),
        "no_finding_images": {
            s: sum(1 for im in images.values() if im["split"] == s and im["truth"]["no_finding"])
            for s in ("train", "test")
        },
        "truth_boxes_per_class": {c: class_counts[c] for c in VINDR_LOCAL_LABELS if class_counts[c]},
    }
    return {
        "root": VINDR_VERSION_DIR,
        "files": files,
        "other_disease_column": dict(OTHER_DISEASE_COLUMN),
        "classes_used": list(VINDR_USED_CLASSES),
        "counts": counts,
        "images": images,
    }, edge


# ----------------------------------------------------------------------------------------------------------------
# MIMIC-CXR reports
# ----------------------------------------------------------------------------------------------------------------
# Each mention: label -> polarity templates. {side} is "left"/"right". Every sentence mentions a single label (or
# several, all negated), so the CheXpert-style labels follow from the sentences written.
_POS = {
    "Atelectasis": ["Mild {side} basilar atelectasis.", "Linear atelectasis at the {side} lung base."],
    "Cardiomegaly": ["Moderate cardiomegaly.", "Mild cardiomegaly is again noted."],
    "Consolidation": ["Focal consolidation in the {side} lower lobe.", "Dense consolidation at the {side} base."],
    "Edema": ["Mild pulmonary edema.", "Moderate interstitial pulmonary edema with perihilar haziness."],
    "Enlarged Cardiomediastinum": ["The cardiomediastinal silhouette is widened."],
    "Fracture": ["Displaced fracture of the {side} seventh rib."],
    "Lung Lesion": ["A 12 mm nodule projects over the {side} upper lobe.", "A {side} mid lung nodule is seen."],
    "Lung Opacity": ["Patchy opacity in the {side} lower lobe.", "Increased opacity at the {side} lung base."],
    "Pleural Effusion": ["Small {side} pleural effusion.", "There is a moderate {side} pleural effusion."],
    "Pleural Other": ["{Side} apical pleural thickening."],
    "Pneumonia": ["Findings are compatible with {side} lower lobe pneumonia."],
    "Pneumothorax": ["Small {side} apical pneumothorax.", "There is a tiny {side} apical pneumothorax."],
    "Support Devices": [
        "Endotracheal tube terminates 4 cm above the carina.",
        "Right internal jugular central venous catheter terminates in the mid SVC.",
        "Left chest wall pacemaker leads terminate in the right atrium and right ventricle.",
    ],
}
_IMPRESSION_POS = {
    "Atelectasis": "{Side} basilar atelectasis.",
    "Cardiomegaly": "Cardiomegaly.",
    "Consolidation": "{Side} lower lobe consolidation.",
    "Edema": "Pulmonary edema.",
    "Enlarged Cardiomediastinum": "Widened cardiomediastinal silhouette.",
    "Fracture": "{Side} rib fracture.",
    "Lung Lesion": "{Side} pulmonary nodule, CT recommended.",
    "Lung Opacity": "{Side} basilar opacity.",
    "Pleural Effusion": "{Side} pleural effusion.",
    "Pleural Other": "{Side} pleural thickening.",
    "Pneumonia": "{Side} lower lobe pneumonia.",
    "Pneumothorax": "{Side} apical pneumothorax.",
    "Support Devices": None,  # devices are described in FINDINGS only
}
_UNC = {
    "Atelectasis": "Possible {side} basilar atelectasis.",
    "Cardiomegaly": "Borderline cardiomegaly.",
    "Consolidation": "Consolidation at the {side} base cannot be excluded.",
    "Edema": "Possible mild interstitial edema.",
    "Enlarged Cardiomediastinum": "Mediastinal contours are possibly widened.",
    "Fracture": "Possible nondisplaced {side} rib fracture.",
    "Lung Lesion": "Questionable small nodule in the {side} mid lung.",
    "Lung Opacity": "Hazy opacity at the {side} base may reflect overlying soft tissue.",
    "Pleural Effusion": "Possible small {side} effusion.",
    "Pleural Other": "Possible {side} apical pleural thickening.",
    "Pneumonia": "Pneumonia cannot be excluded.",
    "Pneumothorax": "Possible tiny {side} apical pneumothorax.",
}
_NEG = {
    "Atelectasis": ["No atelectasis."],
    "Cardiomegaly": ["Heart size is normal.", "No cardiomegaly."],
    "Consolidation": ["No focal consolidation.", "There is no focal consolidation."],
    "Edema": ["No pulmonary edema.", "There is no pulmonary edema."],
    "Enlarged Cardiomediastinum": ["The cardiomediastinal silhouette is normal.", "Mediastinal contours are normal."],
    "Fracture": ["No acute displaced rib fracture."],
    "Lung Lesion": ["No suspicious pulmonary nodule."],
    "Lung Opacity": ["No focal opacity."],
    "Pleural Effusion": ["There is no pleural effusion.", "No pleural effusion."],
    "Pneumonia": ["No evidence of pneumonia."],
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
}
_NEGBIO_BLIND = {"Heart size is normal."}  # NegBio finds no cardiomegaly term in it
_NEUTRAL_LUNG = ["The lungs are clear.", "Lungs are well expanded and clear."]
_NEUTRAL_BONE = ["The osseous structures are unremarkable.", "No acute osseous abnormality is seen."]
_NORMAL_IMPRESSION = ["No acute cardiopulmonary process.", "No acute intrathoracic process."]
_INDICATIONS = [
    "___ with cough and fever, evaluate for pneumonia.",
    "___ with shortness of breath.",
    "___ with chest pain.",
    "___-year-old woman with hypoxia, assess for interval change.",
    "___M s/p line placement, assess position.",
]
_MIMIC_POS_WEIGHTS = {
    "Pleural Effusion": 0.2,
    "Lung Opacity": 0.15,
    "Atelectasis": 0.14,
    "Cardiomegaly": 0.12,
    "Edema": 0.1,
    "Support Devices": 0.12,
    "Consolidation": 0.06,
    "Pneumonia": 0.05,
    "Pneumothorax": 0.05,
    "Lung Lesion": 0.04,
    "Enlarged Cardiomediastinum": 0.03,
    "Fracture": 0.02,
    "Pleural Other": 0.02,
}
_LUNG_ORDER = (
    "Lung Opacity",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Edema",
    "Lung Lesion",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
)
_HEART_ORDER = ("Cardiomegaly", "Enlarged Cardiomediastinum")


def _sentence(text, chex: dict, negbio: dict | None = None):
    return {"text": text, "chexpert": chex, "negbio": chex if negbio is None else negbio}


def _plan_report(rng, normal: bool, canonical: str | None = None):
    """canonical: "normal" forces "No pneumothorax." / "There is no pleural effusion." / "Heart size is normal.";
    "uncertain_effusion" forces "Possible small left effusion." (so small sets always contain these forms)."""
    names = list(_MIMIC_POS_WEIGHTS)
    w = np.array([_MIMIC_POS_WEIGHTS[k] for k in names])
    pos, unc = set(), set()
    if not normal:
        k = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        pos = {str(x) for x in rng.choice(names, size=k, replace=False, p=w / w.sum())}
        if rng.random() < 0.35:
            rest = [n for n in _UNC if n not in pos]
            unc = {str(rng.choice(rest))}
    if normal and rng.random() < 0.2:  # a normal study with a line in place
        pos = {"Support Devices"}
    sides = {lab: str(rng.choice(["left", "right"])) for lab in CHEXPERT_LABELS}
    fixed = {}
    if canonical == "uncertain_effusion":
        pos.discard("Pleural Effusion")
        pos = pos or {"Atelectasis"}
        unc = {"Pleural Effusion"}
        sides["Pleural Effusion"] = "left"
    negs = [
        lab
        for lab in _NEG
        if lab not in pos
        and lab not in unc
        and rng.random()
        < (0.75 if lab in ("Pneumothorax", "Pleural Effusion", "Consolidation", "Cardiomegaly") else 0.2)
    ]
    if canonical == "normal":
        fixed = {
            "Pneumothorax": "No pneumothorax.",
            "Pleural Effusion": "There is no pleural effusion.",
            "Cardiomegaly": "Heart size is normal.",
        }
        negs = sorted(set(negs) | set(fixed), key=list(_NEG).index)
    if "Cardiomegaly" in pos or "Cardiomegaly" in unc:  # keep the mediastinum sentence coherent with a big heart
        negs = [n for n in negs if n != "Enlarged Cardiomediastinum"]

    def fill(t, lab):
        side = sides[lab]
        return t.format(side=side, Side=side.capitalize())

    findings = {"devices": [], "lungs": [], "heart": [], "bones": []}
    for lab in sorted(pos):
        group = (
            "devices"
            if lab == "Support Devices"
            else "heart"
            if lab in _HEART_ORDER
            else "bones"
            if lab == "Fracture"
            else "lungs"
        )
        findings[group].append(_sentence(fill(str(rng.choice(_POS[lab])), lab), {lab: 1}))
    for lab in sorted(unc):
        group = "heart" if lab in _HEART_ORDER else "bones" if lab == "Fracture" else "lungs"
        findings[group].append(_sentence(fill(_UNC[lab], lab), {lab: -1}))
    neg_lung = [n for n in negs if n in _LUNG_ORDER]
    if {"Pleural Effusion", "Pneumothorax"} <= set(neg_lung) and rng.random() < 0.5 and not fixed:
        neg_lung = [n for n in neg_lung if n not in ("Pleural Effusion", "Pneumothorax")]
        findings["lungs"].append(
            _sentence("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0})
        )
    for lab in neg_lung:
        findings["lungs"].append(_sentence(fixed.get(lab) or str(rng.choice(_NEG[lab])), {lab: 0}))
    for lab in negs:
        if lab in _HEART_ORDER or lab == "Fracture":
            t = fixed.get(lab) or str(rng.choice(_NEG[lab]))
            findings["heart" if lab in _HEART_ORDER else "bones"].append(
                _sentence(t, {lab: 0}, {} if t in _NEGBIO_BLIND else None)
            )
    if not any(lab in _LUNG_ORDER for lab in pos | unc):
        findings["lungs"].insert(0, _sentence(str(rng.choice(_NEUTRAL_LUNG)), {}))
    if rng.random() < 0.4:
        findings["bones"].append(_sentence(str(rng.choice(_NEUTRAL_BONE)), {}))
    findings_sents = findings["devices"] + findings["lungs"] + findings["heart"] + findings["bones"]

    impression = []
    for lab in sorted(pos):
        if _IMPRESSION_POS[lab]:
            impression.append(_sentence(fill(_IMPRESSION_POS[lab], lab), {lab: 1}))
    for lab in sorted(unc):
        impression.append(_sentence(fill(_UNC[lab], lab), {lab: -1}))
    if not impression:
        impression.append(_sentence(str(rng.choice(_NORMAL_IMPRESSION)), {}))
    return {"positives": sorted(pos), "uncertain": sorted(unc), "findings": findings_sents, "impression": impression}


def _wrap(sents) -> str:
    return textwrap.fill("  ".join(s["text"] for s in sents), width=78, initial_indent=" ", subsequent_indent=" ")


def _procedure(views) -> str:
    if "AP" in views:
        return "CHEST (PORTABLE AP)"
    return "CHEST (SINGLE VIEW)" if views == ("PA",) else "CHEST (PA AND LAT)"


def _report_text(rng, plan, variant, views, wet_read):
    """Returns (text, {'findings': str|None, 'impression': str|None, 'last_paragraph': str|None}, sentences used)."""
    exam = _procedure(views)
    find, imp = plan["findings"], plan["impression"]
    lines = []
    if wet_read:
        lines.append(f"WET READ: ___ ___ ___ {int(rng.integers(1, 12))}:{int(rng.integers(10, 60))} PM")
        lines.append("  " + " ".join(s["text"] for s in imp))
        lines.append("_" * 78)
        lines.append("")
    lines.append(" " * 33 + "FINAL REPORT")
    sections = {"findings": None, "impression": None, "last_paragraph": None}
    if variant == "no_sections":
        used = find
        lines += [
            f" {exam} PERFORMED ON ___",
            " ",
            " COMPARISON:  None.",
            " ",
            f" CLINICAL HISTORY:  {rng.choice(_INDICATIONS)}",
            " ",
            _wrap(used),
            "",
        ]
        sections["last_paragraph"] = "  ".join(s["text"] for s in used)
        return "\n".join(lines), sections, used
    lines += [f" EXAMINATION:  {exam}", " ", f" INDICATION:  {rng.choice(_INDICATIONS)}", " "]
    if rng.random() < 0.6:
        technique = "portable AP" if "AP" in views else "PA" if views == ("PA",) else "PA and lateral"
        lines += [f" TECHNIQUE:  Chest {technique}", " "]
    lines += [f" COMPARISON:  {rng.choice(['___', 'None.', 'Chest radiograph from ___.'])}", " "]
    used = []
    if variant in ("full", "findings_only", "conclusion"):
        lines += [" FINDINGS: ", " ", _wrap(find), " "]
        sections["findings"] = "  ".join(s["text"] for s in find)
        used += find
    if variant == "impression_only":  # devices and negations move to the impression
        devices = [s for s in find if "Support Devices" in s["chexpert"]]
        negations = [s for s in find if s["chexpert"] and all(v == 0 for v in s["chexpert"].values())]
        imp = devices + imp + negations
    if variant != "findings_only":
        head = "CONCLUSION" if variant == "conclusion" else "IMPRESSION"
        lines += [f" {head}: ", " ", _wrap(imp)]
        sections["impression"] = "  ".join(s["text"] for s in imp)
        used += imp
    lines.append("")
    return "\n".join(lines), sections, used


def _aggregate_labels(sents, key):
    vals = {}
    for s in sents:
        for lab, v in s[key].items():
            vals.setdefault(lab, []).append(v)
    out = {}
    for lab in CHEXPERT_LABELS:
        vs = vals.get(lab, [])
        out[lab] = 1.0 if 1 in vs else -1.0 if -1 in vs else 0.0 if 0 in vs else None
    abnormal = [
        lab for lab in CHEXPERT_LABELS if lab not in ("No Finding", "Support Devices") and out[lab] in (1.0, -1.0)
    ]
    out["No Finding"] = None if abnormal else 1.0
    return out


def _fmt_label(v):
    return "" if v is None else repr(float(v))


# ----------------------------------------------------------------------------------------------------------------
# MIMIC-CXR
# ----------------------------------------------------------------------------------------------------------------
_VIEW_SETS = [("PA", "LATERAL"), ("AP",), ("PA",), ("AP", "LATERAL"), ("PA", "LL"), ("AP", "AP"), ("LATERAL",)]
_VIEW_P = [0.45, 0.27, 0.1, 0.06, 0.04, 0.04, 0.04]
_VARIANTS = ["full", "impression_only", "findings_only", "conclusion"]
_VARIANT_P = [0.65, 0.2, 0.07, 0.08]


def _generate_mimic(out: Path, n_studies, seed, image_size, bar):
    rng = np.random.default_rng([seed, 20])
    n_subj = max(1, round(n_studies * 0.7)) if n_studies else 0
    subjects = []
    while len(subjects) < n_subj:
        s = int(rng.integers(10_000_000, 20_000_000))
        if s not in subjects:
            subjects.append(s)
    splits = {s: str(rng.choice(["train", "validate", "test"], p=[0.8, 0.1, 0.1])) for s in subjects}
    if n_subj >= 3:
        sp = [{"split": splits[s]} for s in subjects]
        _force(rng, sp, "split", ["train", "validate", "test"])
        splits = {s: d["split"] for s, d in zip(subjects, sp)}
    studies = []
    for i in range(n_studies):
        subj = subjects[i] if i < n_subj else subjects[int(rng.integers(n_subj))]
        while True:
            st = int(rng.integers(50_000_000, 60_000_000))
            if all(st != d["study_id"] for d in studies):
                break
        vi = int(rng.choice(len(_VIEW_SETS), p=_VIEW_P))
        studies.append(
            {
                "subject_id": subj,
                "study_id": st,
                "views": _VIEW_SETS[vi],
                "variant": str(rng.choice(_VARIANTS, p=_VARIANT_P)),
                "wet_read": bool(rng.random() < 0.2),
                "normal": bool(rng.random() < 0.35),
            }
        )
    if n_studies >= 2:  # "no_sections" is never drawn at random: exactly one such report
        variants = ["full", "impression_only", "no_sections"] + (["conclusion"] if n_studies >= 6 else [])
        _force(rng, studies, "variant", variants)
    if n_studies >= 6:
        _force(rng, studies, "normal", [True, False])
    for s in studies:
        s["canonical"] = None
    for want, normal in (("normal", True), ("uncertain_effusion", False)):
        cands = sorted((s for s in studies if s["normal"] == normal), key=lambda s: s["variant"] == "no_sections")
        if cands:
            cands[0]["canonical"] = want
    if n_studies >= 8:
        _force(rng, studies, "views", [("PA", "LATERAL"), ("AP",), ("AP", "AP"), ("LATERAL",)])

    meta_rows, split_rows, chex_rows, negbio_rows, record_rows, study_rows = [], [], [], [], [], []
    out_studies = {}
    edge = {
        k: []
        for k in (
            "impression_only",
            "findings_only",
            "conclusion_header",
            "no_sections",
            "wet_read",
            "two_frontal",
            "lateral_only",
            "multi_study_subject",
            "monochrome1",
        )
    }
    subj_counts = Counter(s["subject_id"] for s in studies)
    order = sorted(range(n_studies), key=lambda i: (studies[i]["subject_id"], studies[i]["study_id"]))
    for i in order:
        st = studies[i]
        srng = np.random.default_rng([seed, 21, i])
        subj, sid = st["subject_id"], st["study_id"]
        plan = _plan_report(srng, st["normal"], st["canonical"])
        text, sections, used = _report_text(srng, plan, st["variant"], st["views"], st["wet_read"])
        chex = _aggregate_labels(used, "chexpert")
        negbio = _aggregate_labels(used, "negbio")
        pdir = f"p{subj}"[:3]
        study_rel = f"files/{pdir}/p{subj}/s{sid}"
        report_rel = f"{MIMIC_DICOM_DIR}/files/{pdir}/p{subj}/s{sid}.txt"
        (out / report_rel).parent.mkdir(parents=True, exist_ok=True)
        (out / report_rel).write_text(text, encoding="utf-8")
        date = int(f"{int(srng.integers(2110, 2200))}{int(srng.integers(1, 13)):02d}{int(srng.integers(1, 29)):02d}")
        time_ = round(
            float(srng.integers(0, 24) * 10000 + srng.integers(0, 60) * 100 + srng.integers(0, 60))
            + float(srng.integers(0, 1000)) / 1000.0,
            3,
        )
        procedure = _procedure(st["views"])
        imgs = []
        for j, view in enumerate(st["views"]):
            dicom_id = "-".join(srng.bytes(4).hex() for _ in range(5))
            H, W = _image_size(srng, image_size)
            img = _render_mimic(srng, H, W, view, set(plan["positives"]))
            photometric = "MONOCHROME1" if srng.random() < 0.1 else "MONOCHROME2"
            bits = int(srng.choice([12, 16], p=[0.8, 0.2]))
            window = str(srng.choice(["single", "none"], p=[0.8, 0.2]))
            stored, lo, hi = _to_stored(srng, img, bits, photometric)
            dcm_rel = f"{MIMIC_DICOM_DIR}/{study_rel}/{dicom_id}.dcm"
            jpg_rel = f"{MIMIC_JPG_DIR}/{study_rel}/{dicom_id}.jpg"
            orient = "Erect" if view != "AP" else str(srng.choice(["Erect", "Recumbent", ""]))
            extra = {
                "PatientID": str(subj),
                "StudyID": str(sid),
                "StudyDate": str(date),
                "StudyTime": f"{time_:010.3f}",
                "ViewPosition": view,
                "PerformedProcedureStepDescription": procedure,
            }
            _write_dicom(
                out / dcm_rel,
                stored,
                uid_key=dicom_id,
                photometric=photometric,
                bits_stored=bits,
                window=window,
                rescale=False,
                ts="ExplicitVRLittleEndian",
                lo=lo,
                hi=hi,
                rng=srng,
                extra=extra,
            )
            (out / jpg_rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(img * 255.0).astype(np.uint8)).save(out / jpg_rel, format="JPEG", quality=95)
            if photometric == "MONOCHROME1":
                edge["monochrome1"].append(dicom_id)
            meta_rows.append(
                [dicom_id, subj, sid, procedure, view, H, W, date, repr(time_), procedure, _VIEW_MEANING[view], orient]
            )
            split_rows.append([dicom_id, sid, subj, splits[subj]])
            record_rows.append([subj, sid, dicom_id, f"{study_rel}/{dicom_id}.dcm"])
            imgs.append(
                {
                    "dicom_id": dicom_id,
                    "view": view,
                    "rows": H,
                    "columns": W,
                    "dicom": dcm_rel,
                    "jpg": jpg_rel,
                    "photometric": photometric,
                    "bits_stored": bits,
                    "window": window,
                }
            )
            bar.update(1)
        study_rows.append([subj, sid, f"{study_rel}.txt"])
        chex_rows.append([subj, sid] + [_fmt_label(chex[lab]) for lab in CHEXPERT_LABELS])
        negbio_rows.append([subj, sid] + [_fmt_label(negbio[lab]) for lab in CHEXPERT_LABELS])
        v = st["variant"]
        for key, cond in (
            ("impression_only", v == "impression_only"),
            ("findings_only", v == "findings_only"),
            ("conclusion_header", v == "conclusion"),
            ("no_sections", v == "no_sections"),
            ("wet_read", st["wet_read"]),
            ("two_frontal", st["views"] == ("AP", "AP")),
            ("lateral_only", st["views"] in (("LATERAL",), ("LL",))),
            ("multi_study_subject", subj_counts[subj] > 1),
        ):
            if cond:
                edge[key].append(sid)
        out_studies[str(sid)] = {
            "subject_id": subj,
            "study_id": sid,
            "split": splits[subj],
            "report": report_rel,
            "report_variant": v,
            "wet_read": st["wet_read"],
            "sections": sections,
            "positives": plan["positives"],
            "uncertain": plan["uncertain"],
            "chexpert": {lab: chex[lab] for lab in CHEXPERT_LABELS},
            "negbio": {lab: negbio[lab] for lab in CHEXPERT_LABELS},
            "images": imgs,
        }
    jroot = out / MIMIC_JPG_DIR
    droot = out / MIMIC_DICOM_DIR
    files = {
        "metadata": f"{MIMIC_JPG_DIR}/mimic-cxr-2.0.0-metadata.csv.gz",
        "split": f"{MIMIC_JPG_DIR}/mimic-cxr-2.0.0-split.csv.gz",
        "chexpert": f"{MIMIC_JPG_DIR}/mimic-cxr-2.0.0-chexpert.csv.gz",
        "negbio": f"{MIMIC_JPG_DIR}/mimic-cxr-2.0.0-negbio.csv.gz",
        "record_list": f"{MIMIC_DICOM_DIR}/cxr-record-list.csv.gz",
        "study_list": f"{MIMIC_DICOM_DIR}/cxr-study-list.csv.gz",
    }
    _write_csv_gz(out / files["metadata"], MIMIC_METADATA_COLUMNS, meta_rows)
    _write_csv_gz(out / files["split"], ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _write_csv_gz(out / files["chexpert"], ["subject_id", "study_id", *CHEXPERT_LABELS], chex_rows)
    _write_csv_gz(out / files["negbio"], ["subject_id", "study_id", *CHEXPERT_LABELS], negbio_rows)
    _write_csv_gz(out / files["record_list"], ["subject_id", "study_id", "dicom_id", "path"], record_rows)
    _write_csv_gz(out / files["study_list"], ["subject_id", "study_id", "path"], study_rows)
    jroot.mkdir(parents=True, exist_ok=True)
    droot.mkdir(parents=True, exist_ok=True)
    counts = {
        "subjects": len({s["subject_id"] for s in studies}),
        "studies": n_studies,
        "images": len(meta_rows),
        "splits_by_image": dict(sorted(Counter(r[3] for r in split_rows).items())),
        "views": dict(sorted(Counter(r[4] for r in meta_rows).items())),
        "report_variants": dict(sorted(Counter(s["variant"] for s in studies).items())),
    }
    return {
        "dicom_root": MIMIC_DICOM_DIR,
        "jpg_root": MIMIC_JPG_DIR,
        "files": files,
        "counts": counts,
        "studies": out_studies,
    }, edge


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------
class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def generate(
    out_dir,
    n_train: int = 60,
    n_test: int = 20,
    mimic_studies: int = 20,
    seed: int = 0,
    image_size: int = 256,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the synthetic VinDr-CXR and MIMIC-CXR(-JPG) trees under ``out_dir`` and return the manifest.

    ``image_size``: typical side; Rows and Columns are drawn per image in [0.78, 1.25] x image_size.
    ``progress``: tqdm bar (default: only when more than 300 images are written).
    ``overwrite``: remove this generator's previous output under ``out_dir`` first (else refuse to mix runs).
    """
    if n_train < 0 or n_test < 0 or mimic_studies < 0:
        raise ValueError("counts must be >= 0")
    if image_size < 32:
        raise ValueError("image_size must be >= 32")
    out = Path(out_dir)
    ours = [out / "vindr-cxr", out / "mimic-cxr", out / "mimic-cxr-jpg", out / "manifest.json"]
    if any(p.exists() for p in ours):
        if not overwrite:
            raise FileExistsError(f"{out} already holds synthetic data; pass overwrite=True (--overwrite)")
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    total = n_train + n_test + round(mimic_studies * 1.55)
    if progress is None:
        progress = total > 300
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="synthetic CXR", unit="img")
    else:
        bar = _NoBar()
    try:
        vindr, vedge = _generate_vindr(out, n_train, n_test, seed, image_size, bar)
        mimic, medge = _generate_mimic(out, mimic_studies, seed, image_size, bar)
    finally:
        bar.close()
    manifest = {
        "generator": "datasets_scripts.synthetic",
        "format_version": 1,
        "params": {
            "n_train": n_train,
            "n_test": n_test,
            "mimic_studies": mimic_studies,
            "seed": seed,
            "image_size": image_size,
        },
        "counts": {"vindr": vindr["counts"], "mimic": mimic["counts"]},
        "edge_cases": {"vindr": vedge, "mimic": medge},
        "vindr": vindr,
        "mimic": mimic,
    }
    with open(out / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return {**manifest, "out_dir": str(out.resolve())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets_scripts.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mimic-studies", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=256, help="typical side; each image is 0.78-1.25x this")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous synthetic tree in --out")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    a = ap.parse_args(argv)
    m = generate(
        a.out,
        n_train=a.n_train,
        n_test=a.n_test,
        mimic_studies=a.mimic_studies,
        seed=a.seed,
        image_size=a.image_size,
        progress=a.progress,
        overwrite=a.overwrite,
    )
    summary = {
        "out_dir": m["out_dir"],
        "counts": m["counts"],
        "edge_cases": {ds: {k: len(v) for k, v in e.items()} for ds, e in m["edge_cases"].items()},
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
