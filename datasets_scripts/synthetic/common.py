"""Shared pieces of the synthetic sample: release folder names, box helpers, CSV writers, image sizes."""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from pathlib import Path

import numpy as np

from codec_litegpt import box_iou

VINDR_VERSION_DIR = "vindr-cxr/1.0.0"


MIMIC_DICOM_DIR = "mimic-cxr/2.0.0"


MIMIC_JPG_DIR = "mimic-cxr-jpg/2.1.0"


SOP_CLASS_DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def _fmt(x: float) -> str:
    return repr(float(round(float(x), 2)))


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
        if box_iou(cand, box) > 0.6 and cand != box:
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
