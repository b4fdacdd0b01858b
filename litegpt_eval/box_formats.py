"""Box conventions of peer systems, to and from one canonical form (docs/design.md, "Metrics").

Canonical box: float `(x1, y1, x2, y2)` in [0, 1] of the **original** image (x on width, y on height).
Each format has `parse(text, width, height, label=None) -> [PeerBox]` and `format(boxes, width, height) -> text`:

| name | text form | coordinates |
|---|---|---|
| `litegpt` (MiniGPT-v2) | `<p>label</p> {<x1><y1><x2><y2>}` (`<delim>` multi-box) | ints 0-100 of W/H, `round half up` |
| `maira2` | `<obj>phrase<box><x55><y45><x70><y56></box></obj>` | 100 bins of the centre-cropped square, bin centre `(k + 0.5) / 100`, then MAIRA-2's `adjust_box_for_original_image_size` (integer offset `(W - s) // 2`, pixel truncation) |
| `chexagent` | `<\\|ref\\|>class<\\|/ref\\|><\\|box\\|>(x1,y1),(x2,y2)<\\|/box\\|>` (8b: `<ref>`/`<box>`) | ints 0-100 |
| `florence2` (AG-KD) | `label<loc_x1><loc_y1><loc_x2><loc_y2>` | 1000 bins, bin centre `(k + 0.5) / 1000` [?]; AG-KD's `<loc_0>` x 4 = no box |
| `radvlm` | `[x1, y1, x2, y2]` | floats in [0, 1], 2 decimals |
| `medgemma` | `[y0, x0, y1, x1]` (also `{"box_2d": [...], "label": ...}`) | ints 0-1000, **y first** [?] |
| `vindr_csv` | CSV rows `class_name, x_min, y_min, x_max, y_max` | original pixels; `No finding` has empty boxes |
| `kaggle` | `cls score x1 y1 x2 y2 ...` (PredictionString) | original pixels; `14 1 0 0 1 1` = No finding |

`to_litegpt_answer` turns parsed peer boxes into a LiteGPT stage-1 answer, so that other models' outputs are
scored by exactly the same code (`eval.py --box_format NAME`). Labels are kept as written: names outside the label
list become parse failures of the strict parser, never guessed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from codec_litegpt import (
    KAGGLE14_LABELS,
    NO_FINDING,
    box_to_grid,
    canonical_label,
    format_grounding_phrase,
    grid_to_box,
    grounding_answer_text,
    parse_grounding_answer,
)


@dataclass
class PeerBox:
    """One box: `label` (as written, may be None), canonical normalised `box`, optional `score`."""

    label: str | None
    box: tuple[float, float, float, float] | None
    score: float | None = None


def _clamp01(v: float) -> float:
    return min(max(float(v), 0.0), 1.0)


def _bin(v: float, bins: int) -> int:
    """Normalised coordinate -> bin index `floor(v * bins)` clamped to `0..bins-1`."""
    return min(max(math.floor(float(v) * bins), 0), bins - 1)


def to_pixels(box: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def from_pixels(box: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
    return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


# ======================================================================================= LiteGPT / MiniGPT-v2


def parse_litegpt(text: str, width: float, height: float, label: str | None = None) -> list[PeerBox]:
    """Boxes of a LiteGPT answer, through the strict parser (failures are not boxes)."""
    parsed = parse_grounding_answer(text, width, height)
    return [PeerBox(f.label, tuple(grid_to_box(f.grid_box, 1.0, 1.0))) for f in parsed.findings]


def format_litegpt(boxes: Sequence[PeerBox], width: float = 1.0, height: float = 1.0) -> str:
    """Phrases in the given order (no sorting, labels as written), the codec's grid and phrase form."""
    return grounding_answer_text(
        [format_grounding_phrase(item.label or "", box_to_grid(item.box, 1.0, 1.0)) for item in boxes if item.box is not None]
    )


# ======================================================================================= MAIRA-2

_MAIRA_OBJ_RE = re.compile(r"<obj>(.*?)</obj>", re.DOTALL)
_MAIRA_BOX_RE = re.compile(r"<box>\s*<x(\d+)>\s*<y(\d+)>\s*<x(\d+)>\s*<y(\d+)>\s*</box>")
MAIRA_BINS = 100


def _maira_crop(width: float, height: float) -> tuple[int, int, int]:
    side = int(min(width, height))
    return side, (int(width) - side) // 2, (int(height) - side) // 2


def parse_maira2(text: str, width: float, height: float, label: str | None = None) -> list[PeerBox]:
    side, x_off, y_off = _maira_crop(width, height)
    out = []
    for obj in _MAIRA_OBJ_RE.finditer(text or ""):
        body = obj.group(1)
        phrase = re.sub(r"<box>.*?</box>", "", body, flags=re.DOTALL).strip() or label
        for m in _MAIRA_BOX_RE.finditer(body):
            x1, y1, x2, y2 = ((int(k) + 0.5) / MAIRA_BINS for k in m.groups())
            # MAIRA-2's adjust_box_for_original_image_size: pixel = int(norm * side + offset)
            px = (int(x1 * side + x_off), int(y1 * side + y_off), int(x2 * side + x_off), int(y2 * side + y_off))
            out.append(PeerBox(phrase, from_pixels(px, width, height)))
    return out


def format_maira2(boxes: Sequence[PeerBox], width: float, height: float) -> str:
    side, x_off, y_off = _maira_crop(width, height)
    parts = []
    for item in boxes:
        x1, y1, x2, y2 = to_pixels(item.box, width, height)
        ks = (
            _bin((x1 - x_off) / side, MAIRA_BINS), _bin((y1 - y_off) / side, MAIRA_BINS),
            _bin((x2 - x_off) / side, MAIRA_BINS), _bin((y2 - y_off) / side, MAIRA_BINS),
        )  # fmt: skip
        parts.append(f"<obj>{item.label or ''}<box><x{ks[0]}><y{ks[1]}><x{ks[2]}><y{ks[3]}></box></obj>")
    return "".join(parts)


# ======================================================================================= CheXagent

_CHEXAGENT_RE = re.compile(
    r"<\|?ref\|?>(.*?)<\|?/ref\|?>((?:\s*<\|?box\|?>.*?<\|?/box\|?>)+)", re.DOTALL
)
_CHEXAGENT_BOX_RE = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")


def parse_chexagent(text: str, width: float, height: float, label: str | None = None) -> list[PeerBox]:
    out = []
    for m in _CHEXAGENT_RE.finditer(text or ""):
        name = m.group(1).strip() or label
        for b in _CHEXAGENT_BOX_RE.finditer(m.group(2)):
            out.append(PeerBox(name, tuple(grid_to_box([int(v) for v in b.groups()], 1.0, 1.0))))  # the same 0-100 grid
    return out


def format_chexagent(boxes: Sequence[PeerBox], width: float = 1.0, height: float = 1.0, style: str = "2") -> str:
    ref, box = (("<|ref|>", "<|/ref|>"), ("<|box|>", "<|/box|>")) if style == "2" else (("<ref>", "</ref>"), ("<box>", "</box>"))
    parts = []
    for item in boxes:
        v = box_to_grid(item.box, 1.0, 1.0)  # CheXagent's 0-100 integers are LiteGPT's grid
        parts.append(f"{ref[0]}{item.label or ''}{ref[1]}{box[0]}({v[0]},{v[1]}),({v[2]},{v[3]}){box[1]}")
    return "".join(parts)


# ======================================================================================= Florence-2 / AG-KD

_FLORENCE_RE = re.compile(r"([^<]*)((?:<loc_\d+>){4})")
FLORENCE_BINS = 1000


def parse_florence2(text: str, width: float, height: float, label: str | None = None) -> list[PeerBox]:
    out = []
    for m in _FLORENCE_RE.finditer(text or ""):
        ks = [int(k) for k in re.findall(r"<loc_(\d+)>", m.group(2))]
        name = m.group(1).strip() or label
        if ks == [0, 0, 0, 0]:  # AG-KD writes <loc_0> x 4 for "no box"
            out.append(PeerBox(name, None))
            continue
        out.append(PeerBox(name, tuple((k + 0.5) / FLORENCE_BINS for k in ks)))
    return out


def format_florence2(boxes: Sequence[PeerBox], width: float = 1.0, height: float = 1.0) -> str:
    parts = []
    for item in boxes:
        ks = [0, 0, 0, 0] if item.box is None else [_bin(v, FLORENCE_BINS) for v in item.box]
        parts.append(f"{item.label or ''}" + "".join(f"<loc_{k}>" for k in ks))
    return "".join(parts)


# ======================================================================================= RadVLM

_FLOAT_LIST_RE = re.compile(r"\[\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\]")


def parse_radvlm(text: str, width: float, height: float, label: str | None = None) -> list[PeerBox]:
    return [PeerBox(label, tuple(_clamp01(float(v)) for v in m.groups())) for m in _FLOAT_LIST_RE.finditer(text or "")]


def format_radvlm(boxes: Sequence[PeerBox], width: float = 1.0, height: float = 1.0) -> str:
    return ", ".join("[" + ", ".join(f"{v:.2f}" for v in item.box) + "]" for item in boxes)


# ======================================================================================= MedGemma

MEDGEMMA_SCALE = 1000


def parse_medgemma(text: str, width: float, height: float, label: str | None = None) -> list[PeerBox]:
    """`[y0, x0, y1, x1]` lists in 0-1000 (y first [?]); JSON objects `{"box_2d": [...], "label": ...}` too."""
    out = []
    text = text or ""
    json_like = re.findall(r"\{[^{}]*\"box_2d\"[^{}]*\}", text)
    if json_like:
        for chunk in json_like:
            try:
                obj = json.loads(chunk)
            except ValueError:
                continue
            y0, x0, y1, x1 = (float(v) / MEDGEMMA_SCALE for v in obj["box_2d"])
            out.append(PeerBox(obj.get("label", label), (x0, y0, x1, y1)))
        return out
    for m in _FLOAT_LIST_RE.finditer(text):
        y0, x0, y1, x1 = (float(v) / MEDGEMMA_SCALE for v in m.groups())
        out.append(PeerBox(label, (x0, y0, x1, y1)))
    return out


def format_medgemma(boxes: Sequence[PeerBox], width: float = 1.0, height: float = 1.0) -> str:
    items = []
    for item in boxes:
        x0, y0, x1, y1 = (round(v * MEDGEMMA_SCALE) for v in item.box)
        items.append({"box_2d": [y0, x0, y1, x1], "label": item.label})
    return json.dumps(items)


# ======================================================================================= VinDr CSV / Kaggle


def parse_vindr_csv(text: str, width: float, height: float, label: str | None = None) -> list[PeerBox]:
    """CSV text with a header holding `class_name, x_min, y_min, x_max, y_max` (other columns ignored)."""
    out = []
    for row in csv.DictReader(io.StringIO(text or "")):
        coords = [row.get(k, "") for k in ("x_min", "y_min", "x_max", "y_max")]
        if any(c is None or str(c).strip() in ("", "nan", "NaN") for c in coords):
            out.append(PeerBox(row.get("class_name"), None))
            continue
        out.append(PeerBox(row.get("class_name"), from_pixels([float(c) for c in coords], width, height)))
    return out


def format_vindr_csv(boxes: Sequence[PeerBox], width: float, height: float) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class_name", "x_min", "y_min", "x_max", "y_max"])
    for item in boxes:
        if item.box is None:
            writer.writerow([item.label, "", "", "", ""])
        else:
            writer.writerow([item.label, *(f"{v:.6g}" for v in to_pixels(item.box, width, height))])
    return buffer.getvalue()


KAGGLE_CLASSES = (*KAGGLE14_LABELS, NO_FINDING)  # ids 0-13 + 14 No finding


def parse_kaggle(text: str, width: float, height: float, label: str | None = None) -> list[PeerBox]:
    """A VinBigData PredictionString `cls score x1 y1 x2 y2 ...` (pixels); class 14 = No finding (box ignored)."""
    values = (text or "").split()
    if len(values) % 6:
        raise ValueError(f"a Kaggle PredictionString has 6 values per box, got {len(values)}")
    out = []
    for k in range(0, len(values), 6):
        cls, score = int(float(values[k])), float(values[k + 1])
        if not 0 <= cls < len(KAGGLE_CLASSES):
            raise ValueError(f"Kaggle class id {cls} outside 0-14")
        name = KAGGLE_CLASSES[cls]
        if name == NO_FINDING:
            out.append(PeerBox(name, None, score))
            continue
        coords = [float(v) for v in values[k + 2 : k + 6]]
        out.append(PeerBox(name, from_pixels(coords, width, height), score))
    return out


def format_kaggle(boxes: Sequence[PeerBox], width: float, height: float) -> str:
    parts = []
    for item in boxes:
        score = 1.0 if item.score is None else item.score
        if item.box is None or item.label == NO_FINDING:
            parts.append(f"14 {score:.6g} 0 0 1 1")
            continue
        cls = KAGGLE_CLASSES.index(canonical_label(item.label, KAGGLE14_LABELS))
        parts.append(f"{cls} {score:.6g} " + " ".join(f"{v:.6g}" for v in to_pixels(item.box, width, height)))
    return " ".join(parts)


# ======================================================================================= registry


@dataclass(frozen=True)
class BoxFormat:
    name: str
    parse: Callable[..., list[PeerBox]]
    format: Callable[..., str]


BOX_FORMATS = {
    "litegpt": BoxFormat("litegpt", parse_litegpt, format_litegpt),
    "maira2": BoxFormat("maira2", parse_maira2, format_maira2),
    "chexagent": BoxFormat("chexagent", parse_chexagent, format_chexagent),
    "florence2": BoxFormat("florence2", parse_florence2, format_florence2),
    "radvlm": BoxFormat("radvlm", parse_radvlm, format_radvlm),
    "medgemma": BoxFormat("medgemma", parse_medgemma, format_medgemma),
    "vindr_csv": BoxFormat("vindr_csv", parse_vindr_csv, format_vindr_csv),
    "kaggle": BoxFormat("kaggle", parse_kaggle, format_kaggle),
}


def get_format(name: str) -> BoxFormat:
    if name not in BOX_FORMATS:
        raise ValueError(f"unknown box format {name!r}; available: {sorted(BOX_FORMATS)}")
    return BOX_FORMATS[name]


def convert(text: str, source: str, target: str, width: float, height: float, label: str | None = None) -> str:
    """Re-write boxes from one peer format into another (through the canonical form)."""
    boxes = get_format(source).parse(text, width, height, label=label)
    return get_format(target).format([b for b in boxes if b.box is not None], width, height)


def to_litegpt_answer(text: str, source: str, width: float, height: float, label: str | None = None) -> str:
    """A peer's output as a LiteGPT stage-1 answer (labels as written, grid rounding half-up).

    An output with only `No finding` entries (Kaggle class 14, a CSV `No finding` row) becomes
    `"... are No finding."`; an output without any box becomes `"... are None."`.
    """
    if source == "litegpt":
        return text
    boxes = get_format(source).parse(text, width, height, label=label)
    with_box = [b for b in boxes if b.box is not None]
    if not with_box and any(_is_no_finding(b.label) for b in boxes):
        return grounding_answer_text([], no_finding=True)
    return format_litegpt(with_box, width, height)


def _is_no_finding(label: str | None) -> bool:
    if not label:
        return False
    try:
        return canonical_label(label, (NO_FINDING,)) == NO_FINDING
    except ValueError:
        return False


__all__ = [
    "BOX_FORMATS",
    "KAGGLE_CLASSES",
    "BoxFormat",
    "PeerBox",
    "convert",
    "from_pixels",
    "get_format",
    "to_litegpt_answer",
    "to_pixels",
]
