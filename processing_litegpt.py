"""LiteGPT processor: images (PIL, numpy, DICOM) -> pixel values, prompts -> tokens, and the box text codec.

Shipped as remote code next to the weights: imports only transformers, numpy, PIL and the standard
library at module level (pydicom is imported lazily, only when a DICOM is given).

Contents:

* VinDr label lists, aliases and `canonical_label` (exact match after normalisation, never substrings);
* DICOM -> 8-bit (`dicom_to_uint8`) and `load_image` for anything an image may arrive as;
* the 0-100 box grid codec and the target formatters / tolerant parsers of the two VinDr stages;
* `LiteGPTProcessor`, a `ProcessorMixin` (LLaVA layout) with the Llama-2 chat template, stage prompts and
  post-processing of generated answers into boxes.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor
from transformers.processing_utils import MultiModalData, ProcessorMixin

try:
    from .configuration_litegpt import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, DEFAULT_IMAGE_TOKEN, DEFAULT_TASK_TOKENS
except ImportError:  # imported as a plain module (tests, repo scripts)
    from configuration_litegpt import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, DEFAULT_IMAGE_TOKEN, DEFAULT_TASK_TOKENS


# ======================================================================================= labels

# fmt: off
# VinDr-CXR local labels (22), exact spelling, CSV column order = canonical index.
VINDR_LOCAL_LABELS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
)
# VinDr-CXR global labels (6), CSV order.
VINDR_GLOBAL_LABELS = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
NO_FINDING = "No finding"
# CheXpert / NegBio labels of MIMIC-CXR (14), CSV order.
CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
# fmt: on
# Every VinDr label, local first: the default vocabulary of `canonical_label`.
VINDR_LABELS = VINDR_LOCAL_LABELS + VINDR_GLOBAL_LABELS

# Spelling variants that normalisation (casefold, whitespace collapse, spaces around "/") does not already
# reconcile, keyed by their normalised form. Case-only variants (`Lung Tumor`, `No Finding`,
# `Pulmonary Fibrosis`, `Lung opacity`) need no entry. Keep this table explicit: anything absent raises.
LABEL_ALIASES = {
    "other disease": "Other diseases",  # the two VinDr files disagree; the released LiteGPT code and we use the plural
    "nodule / mass": "Nodule/Mass",  # already reconciled by normalisation; listed for the record
    "no findings": "No finding",  # the stage-1 instruction itself says "shows no findings"
}


def normalize_label_name(name: str) -> str:
    """Normal form used to compare label spellings: casefold, collapse whitespace, no spaces around `/`."""
    text = " ".join(str(name).split()).casefold()
    return re.sub(r"\s*/\s*", "/", text)


@lru_cache(maxsize=64)
def _label_lookup(labels: tuple[str, ...]) -> dict[str, str]:
    """Normalised spelling -> canonical label, for one label vocabulary (aliases included when their target is in it)."""
    lookup = {normalize_label_name(label): label for label in labels}
    for alias, target in LABEL_ALIASES.items():
        if target in labels:
            lookup.setdefault(normalize_label_name(alias), target)
    return lookup


def canonical_label(name: str, labels: Sequence[str] = VINDR_LABELS) -> str:
    """Map a label spelling to its canonical form in `labels`.

    The whole name must match a label or an alias after `normalize_label_name`; there is no substring
    matching (the released LiteGPT code's defect: "mild" contains "ild"). Raises `ValueError` naming the unknown label.
    """
    key = normalize_label_name(name)
    canonical = _label_lookup(tuple(labels)).get(key)
    if canonical is None:
        raise ValueError(f"unknown label {name!r} (normalised {key!r}); expected one of {list(labels)}")
    return canonical


def label_index(name: str, labels: Sequence[str] = VINDR_LABELS) -> int:
    """Canonical index of a label (its CSV column order), the sort key of every target list."""
    return tuple(labels).index(canonical_label(name, labels))


# ======================================================================================= DICOM -> 8-bit

WINDOWING_MODES = ("window", "paper_appendix", "voi_lut", "minmax")


class DicomReadError(ValueError):
    """A DICOM file could not be read or decoded; the message names the file."""


def _import_pydicom():
    """pydicom, imported lazily: the import sits in a `try` so that transformers' remote-code loader does not make
    it a requirement of the whole processor (only DICOM inputs need it)."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Reading DICOM files needs pydicom (`pip install pydicom`).") from err
    return pydicom, apply_modality_lut, apply_voi_lut


def _round_half_up_to_uint8(values: np.ndarray) -> np.ndarray:
    """`floor(v + 0.5)` clipped to 0..255: explicit half-up so that exact values are predictable (np.rint rounds half to even)."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def minmax_to_uint8(array: np.ndarray) -> np.ndarray:
    """Linear map of the full value range onto 0..255 (`u = floor(255 (v - min) / (max - min) + 0.5)`).

    This replaces PIL's mode conversions, which clip 16-bit values to 255 instead of rescaling them.
    A constant image maps to 0; NaN maps to 0.
    """
    values = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.where(finite, (values - low) / (high - low) * 255.0, 0.0)
    return _round_half_up_to_uint8(scaled)


def window_to_uint8(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window `[c - w/2, c + w/2]` onto 0..255: `u = floor(255 clip((v - lo) / w, 0, 1) + 0.5)`."""
    low = center - width / 2.0
    values = np.asarray(array, dtype=np.float64)
    scaled = np.clip((values - low) / width, 0.0, 1.0) * 255.0
    return _round_half_up_to_uint8(scaled)


def paper_appendix_to_uint8(pixels: np.ndarray, center: float | None, width: float | None, monochrome1: bool) -> np.ndarray:
    """The LiteGPT paper's DICOM conversion (its Appendix A.1), on the stored values (no modality LUT).

    With window tags: `n = (v - center) / width`, which maps `[center - width, center + width]` (twice the DICOM
    window) onto [-1, 1]. Without them: `n = (v - mean) / (max - min)`. Then `clip(n, -1, 1) * flip * 127.5 + 127.5`
    truncated to `uint8` (not rounded), with `flip = -1` for MONOCHROME1: the inversion happens before the
    truncation, so an inverted value is `trunc(255 - x)`, not `255 - trunc(x)`.

    Where the appendix's code has no answer, our decisions: a caller passes no window when the width is not positive
    (the code would divide by it); a constant image (`max == min`) maps to `n = 0`, i.e. 127 (the code would produce
    NaN, whose conversion to `uint8` is undefined).
    """
    values = np.asarray(pixels, dtype=np.float64)
    if center is not None and width is not None:
        normalized = (values - center) / width
    else:
        spread = float(values.max() - values.min()) if values.size else 0.0
        normalized = (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
    flip = -1.0 if monochrome1 else 1.0
    return (np.clip(normalized, -1.0, 1.0) * flip * 127.5 + 127.5).astype(np.uint8)


def _first_value(value: Any) -> float | None:
    """First number of a possibly multi-valued DICOM attribute (`WindowCenter` may hold several windows)."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _dicom_name(ds: Any) -> str:
    """A name for error messages: the file the dataset was read from, if any."""
    filename = getattr(ds, "filename", None)
    return str(filename) if filename else "<in-memory DICOM dataset>"


def dicom_to_uint8(ds: Any, windowing: str = "window") -> np.ndarray:
    """Convert a DICOM dataset (or a path to one) to a `uint8` array.

    * `"window"` (default; ours, our reading of the paper's section 4.2 text "through the stored windowing
      parameters or, if they were missing, the full-color space"): `pixel_array` -> `apply_modality_lut` (rescale
      slope/intercept) -> linear window on the stored `WindowCenter`/`WindowWidth` (first value when
      multi-valued), `[c - w/2, c + w/2]` -> 0..255 rounded half up; full min-max when the tags are absent or
      invalid; then inverted (`255 - u`) for `MONOCHROME1`;
    * `"paper_appendix"`: the paper's own code (its Appendix A.1, `paper_appendix_to_uint8`): stored values without
      modality LUT, `(v - WindowCenter) / WindowWidth` clipped to +-1 (twice the DICOM window), else
      `(v - mean) / (max - min)`, MONOCHROME1 flipped, truncated to `uint8`. Multi-valued window tags (where the
      appendix's `float(...)` fails) take the first value, as `"window"` does;
    * `"voi_lut"`: modality LUT, pydicom's `apply_voi_lut` (VOI LUT sequence or the DICOM window formula), then
      min-max, MONOCHROME1 inverted;
    * `"minmax"`: modality LUT, full min-max (window tags ignored), MONOCHROME1 inverted.

    Returns `(rows, columns)` for greyscale, `(rows, columns, 3)` for colour data (min-max, no window). Raises
    `DicomReadError` (a `ValueError`) naming the file when the pixel data cannot be decoded (truncated file, missing
    transfer syntax, no decoder...).
    """
    if windowing not in WINDOWING_MODES:
        raise ValueError(f"windowing must be one of {WINDOWING_MODES}, got {windowing!r}")
    if isinstance(ds, (str, os.PathLike)):
        ds = read_dicom(ds)
    _, apply_modality_lut, apply_voi_lut = _import_pydicom()
    name = _dicom_name(ds)
    if not any(keyword in ds for keyword in PIXEL_DATA_KEYWORDS):
        sop_class = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("SOPClassUID", "unknown SOP class")
        raise DicomReadError(
            f"{name} holds no image: it has no Pixel Data element ({sop_class}; e.g. a structured report)"
        )
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises ValueError/AttributeError/RuntimeError/NotImplementedError here
        raise DicomReadError(f"cannot decode the pixel data of {name}: {type(err).__name__}: {err}") from err

    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise DicomReadError(f"{name}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not a chest radiograph")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        # Colour data has no VOI windowing; keep 8-bit data as is, rescale anything else.
        return pixels.astype(np.uint8) if pixels.dtype == np.uint8 else minmax_to_uint8(pixels)

    monochrome1 = str(getattr(ds, "PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
    if windowing == "paper_appendix":
        center, width = _first_value(ds.get("WindowCenter")), _first_value(ds.get("WindowWidth"))
        if center is None or width is None or width <= 0:
            center = width = None
        return paper_appendix_to_uint8(pixels, center, width, monochrome1)

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if windowing == "window":
        center = _first_value(ds.get("WindowCenter"))
        width = _first_value(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            out = window_to_uint8(values, center, width)
        else:
            out = minmax_to_uint8(values)
    elif windowing == "voi_lut":
        out = minmax_to_uint8(apply_voi_lut(values, ds))
    else:
        out = minmax_to_uint8(values)

    if monochrome1:
        out = 255 - out  # MONOCHROME1 stores bright bone as low values; flip to the usual display
    return out


PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Element groups every DICOM image carries (identification, image pixel module, pixel data): a file without the
# Part-10 preamble is taken as DICOM only if pydicom finds one of them in it.
_DICOM_IMAGE_GROUPS = (0x0008, 0x0028, 0x7FE0)


def _has_dicom_magic(header: bytes) -> bool:
    """DICOM Part 10 files carry `DICM` after a 128-byte preamble."""
    return len(header) >= 132 and header[128:132] == b"DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for `.dcm`/`.dicom` files and any file carrying the DICM magic."""
    if str(path).lower().endswith((".dcm", ".dicom")):
        return True
    try:
        with open(path, "rb") as handle:
            return _has_dicom_magic(handle.read(132))
    except OSError:
        return False


def read_dicom(source: str | os.PathLike | bytes) -> Any:
    """`pydicom.dcmread` with errors that name the file.

    Files without the Part-10 preamble (`DICM` at byte 128) are read with `force=True`, as some archives store bare
    datasets; such a file is refused as "not a DICOM file" when pydicom finds no DICOM image element in it (text,
    a PNG or anything else named `.dcm`). An empty file is refused as such.
    """
    pydicom, _, _ = _import_pydicom()
    name = "<DICOM bytes>" if isinstance(source, bytes) else str(source)
    data = source if isinstance(source, bytes) else None
    if data is None:
        with open(source, "rb") as handle:
            header = handle.read(132)
    else:
        header = data[:132]
    if not header:
        raise DicomReadError(f"{name} is empty (0 bytes): not a DICOM file")
    has_magic = _has_dicom_magic(header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # forced reads of non-DICOM bytes warn about every unknown tag
        try:
            ds = pydicom.dcmread(io.BytesIO(data) if data is not None else source, force=not has_magic)
        except Exception as err:
            raise DicomReadError(f"cannot read DICOM file {name}: {type(err).__name__}: {err}") from err
        looks_like_dicom = has_magic or any(tag.group in _DICOM_IMAGE_GROUPS for tag in ds.keys())
    if not looks_like_dicom:
        raise DicomReadError(
            f"{name} is not a DICOM file: no 'DICM' preamble and pydicom found no DICOM image element in it "
            f"(it starts with {header[:8]!r})"
        )
    return ds


def _is_pydicom_dataset(obj: Any) -> bool:
    """A `pydicom.Dataset` (with or without pixel data), recognised without importing pydicom for other inputs."""
    return any(cls.__name__ == "Dataset" and cls.__module__.startswith("pydicom") for cls in type(obj).__mro__)


# ======================================================================================= images


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    """2D/3D array of any dtype -> RGB PIL image. Non-`uint8` data is min-max scaled (never clipped)."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.transpose(array, (1, 2, 0))  # channels-first (e.g. a torch tensor) -> channels-last
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        array = array[..., 0]  # grey (+ alpha)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]  # drop alpha
    if array.ndim == 2:
        grey = array if array.dtype == np.uint8 else minmax_to_uint8(array)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if array.ndim == 3 and array.shape[-1] == 3:
        rgb = array if array.dtype == np.uint8 else minmax_to_uint8(array)
        return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    raise ValueError(f"cannot interpret an array of shape {array.shape} as an image (expected HxW, HxWxC or CxHxW)")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; 16-bit/int/float modes go through numpy min-max (PIL would clip them to 255)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("L", "P", "RGBA", "LA", "1", "CMYK", "YCbCr", "LAB", "HSV", "PA", "RGBX", "RGBa", "La"):
        return image.convert("RGB")
    return _array_to_rgb(np.asarray(image))  # I;16*, I, F


def load_image_with_size(obj: Any, windowing: str = "window") -> tuple[Image.Image, tuple[int, int]]:
    """Load anything an image may arrive as and return `(RGB PIL image, (width, height))`.

    The size is that of the decoded image, i.e. the DICOM `Columns` x `Rows` for DICOM inputs: the pixel space
    of VinDr boxes. Accepted inputs: PIL images (any mode, incl. `I;16`), numpy arrays or
    tensors (HxW, HxWxC, CxHxW; `uint8` kept, other dtypes min-max scaled), pydicom datasets, paths to DICOM
    files (`.dcm`/`.dicom` or DICM magic), paths to PNG/JPEG files, http(s) URLs, raw bytes, and the
    `{"bytes": ..., "path": ...}` dicts of `datasets.Image(decode=False)`.

    An alpha channel (RGBA, LA, PA images; 2- or 4-channel arrays) is dropped, not composited: every pixel keeps its
    colour or grey value whatever its transparency.
    """
    image = load_image(obj, windowing=windowing)
    return image, image.size


def load_image(obj: Any, windowing: str = "window") -> Image.Image:
    """Load one image as RGB PIL (see `load_image_with_size` for the accepted inputs)."""
    if isinstance(obj, Image.Image):
        return _pil_to_rgb(obj)
    if _is_pydicom_dataset(obj):
        return _array_to_rgb(dicom_to_uint8(obj, windowing=windowing))
    if isinstance(obj, dict) and ("bytes" in obj or "path" in obj):
        source = obj.get("bytes") or obj.get("path")
        if source is None:
            raise ValueError("image dict has neither 'bytes' nor 'path'")
        return load_image(source, windowing=windowing)
    if isinstance(obj, (bytes, bytearray)):
        data = bytes(obj)
        if _has_dicom_magic(data[:132]):
            return _array_to_rgb(dicom_to_uint8(read_dicom(data), windowing=windowing))
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return _pil_to_rgb(image)
        except Exception as err:
            raise ValueError(
                f"cannot read image bytes ({len(data)} bytes starting {data[:8]!r}): neither DICOM (no 'DICM' preamble) "
                f"nor an image format Pillow reads ({type(err).__name__}: {err})"
            ) from err
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if isinstance(path, str) and path.startswith(("http://", "https://")):
            from transformers.image_utils import load_image as hf_load_image

            return _pil_to_rgb(hf_load_image(path))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        if is_dicom_file(path):
            return _array_to_rgb(dicom_to_uint8(read_dicom(path), windowing=windowing))
        try:
            with Image.open(path) as image:
                image.load()
                return _pil_to_rgb(image)
        except Exception as err:
            raise ValueError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensor, without importing torch
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _array_to_rgb(obj)
    raise TypeError(f"unsupported image input of type {type(obj).__name__}")


def _load_images_nested(images: Any, windowing: str) -> Any:
    """Apply `load_image` to every leaf of a (possibly nested, per-sample) list of images, keeping the nesting.

    A 4D array/tensor is a batch: it becomes a list of images.
    """
    if images is None:
        return None
    if isinstance(images, (list, tuple)):
        return [_load_images_nested(item, windowing) for item in images]
    if hasattr(images, "detach") and hasattr(images, "cpu"):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [load_image(item, windowing=windowing) for item in images]
    return load_image(images, windowing=windowing)


def _flatten_images(images: Any) -> list[Image.Image]:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [leaf for item in images for leaf in _flatten_images(item)]
    return [images]


# ======================================================================================= box grid codec

GRID_MAX = 100
LOCAL_PREFIX = "Local diseases of this chest radiograph are"
GLOBAL_PREFIX = "Global diseases of this chest radiograph are"
NONE_ANSWER = "None"

Box = tuple[float, float, float, float]
GridBox = tuple[int, int, int, int]


def _check_size(size: float) -> float:
    size = float(size)
    if not size > 0 or not math.isfinite(size):
        raise ValueError(f"image size must be a positive number, got {size!r}")
    return size


def to_grid(value: float, size: float) -> int:
    """Pixel coordinate -> integer 0..100: `clamp(floor(100 v / size + 0.5), 0, 100)` (half up, written out: np.rint would round half to even)."""
    size = _check_size(size)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"box coordinate must be finite, got {value!r}")
    return min(max(math.floor(GRID_MAX * value / size + 0.5), 0), GRID_MAX)


def from_grid(grid: float, size: float) -> float:
    """Grid integer -> pixel coordinate `g / 100 * size` (at most half a grid step from the original)."""
    return float(grid) / GRID_MAX * _check_size(size)


def box_to_grid(box: Sequence[float], width: float, height: float) -> GridBox:
    """Pixel `(x1, y1, x2, y2)` -> grid box; x on `width` (DICOM Columns), y on `height` (Rows)."""
    x1, y1, x2, y2 = box
    return (to_grid(x1, width), to_grid(y1, height), to_grid(x2, width), to_grid(y2, height))


def grid_to_box(grid_box: Sequence[float], width: float, height: float) -> Box:
    """Grid box -> pixel `(x1, y1, x2, y2)` floats."""
    x1, y1, x2, y2 = grid_box
    return (from_grid(x1, width), from_grid(y1, height), from_grid(x2, width), from_grid(y2, height))


def format_grounding_phrase(label: str, grid_box: Sequence[int]) -> str:
    """`<p>{label}</p> {<x1><y1><x2><y2>}` (the MiniGPT-v2 grounding phrase)."""
    x1, y1, x2, y2 = (int(v) for v in grid_box)
    return f"<p>{label}</p> {{<{x1}><{y1}><{x2}><{y2}>}}"


def format_grounding_answer(
    findings: Iterable[tuple[str, Sequence[float]]],
    width: float,
    height: float,
    no_finding: bool = False,
    labels: Sequence[str] = VINDR_LOCAL_LABELS,
) -> str:
    """Stage-1 target: one phrase per box, sorted by canonical label index then grid box.

    `findings` are `(label, (x1, y1, x2, y2))` in original pixels. Normal images give
    `"Local diseases of this chest radiograph are No finding."`; abnormal images with nothing to list give
    `"... are None."`. Labels are canonicalised (unknown names raise).
    """
    grid_findings = [(canonical_label(label, labels), box_to_grid(box, width, height)) for label, box in findings]
    if no_finding and grid_findings:
        raise ValueError(f"an image marked 'No finding' cannot list boxes: {grid_findings}")
    order = {label: index for index, label in enumerate(labels)}
    grid_findings.sort(key=lambda item: (order[item[0]], item[1]))
    if no_finding:
        body = NO_FINDING
    elif not grid_findings:
        body = NONE_ANSWER
    else:
        body = ",".join(format_grounding_phrase(label, grid_box) for label, grid_box in grid_findings)
    return f"{LOCAL_PREFIX} {body}."


def format_diagnosis_answer(labels: Iterable[str], vocabulary: Sequence[str] = VINDR_GLOBAL_LABELS) -> str:
    """Stage-2 target: canonical global labels in canonical order joined by `", "` (`None` when empty).

    `"No finding"` must stand alone.
    """
    canonical = {canonical_label(label, vocabulary) for label in labels}
    if NO_FINDING in canonical and len(canonical) > 1:
        raise ValueError(f"'No finding' cannot be combined with other labels: {sorted(canonical)}")
    ordered = [label for label in vocabulary if label in canonical]
    body = ", ".join(ordered) if ordered else NONE_ANSWER
    return f"{GLOBAL_PREFIX} {body}."


# ----------------------------------------------------------------------------------------- parsing

_NUM = r"<\s*(\d{1,3})\s*>"
_BOX_RE = re.compile(r"\s*".join([_NUM] * 4))
_BOX_NC = r"\s*".join([r"<\s*\d{1,3}\s*>"] * 4)
# A tolerant phrase regex (spaces allowed around every part), extended to MiniGPT-v2's `{<..><..><..><..><delim><..>...}` multi-box form.
_PHRASE_RE = re.compile(
    r"<p>\s*([^<]*?)\s*</p>\s*\{\s*(" + _BOX_NC + r"(?:\s*<delim>\s*" + _BOX_NC + r")*)\s*\}",
    re.IGNORECASE,
)
_PREFIX_RE = re.compile(
    r"^\s*(?:local\s+|global\s+)?diseases?\s+of\s+(?:this|the)\s+chest\s+radiograph\s+(?:are|is)\b\s*:?",
    re.IGNORECASE,
)
_SEPARATOR_RE = re.compile(r"[,;]|\band\b", re.IGNORECASE)
_STRIP_CHARS = " \t\r\n.:"


@dataclass
class GroundingFinding:
    """One parsed box: canonical `label`, `grid_box` (0-100 ints), `box` (pixels, float xyxy), `span` in the text."""

    label: str
    grid_box: GridBox
    box: Box
    span: tuple[int, int]
    raw_label: str = ""


@dataclass
class GroundingParse:
    """Result of `parse_grounding_answer`.

    `no_finding`: the answer says "No finding"; `none_listed`: it says "None" (a valid empty list);
    `contradiction`: "No finding" together with boxes; `failures`: one message per fragment that could not be
    used (unparseable text, unknown label, coordinate > 100, inverted box). Nothing is guessed.
    """

    text: str
    findings: list[GroundingFinding] = field(default_factory=list)
    no_finding: bool = False
    none_listed: bool = False
    contradiction: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def labels(self) -> list[str]:
        """Distinct labels with at least one box, in first-seen order."""
        return list(dict.fromkeys(f.label for f in self.findings))


def _strip_prefix(text: str) -> tuple[str, int]:
    """Remove the `Local/Global diseases of this chest radiograph are` prefix; return the body and its offset."""
    match = _PREFIX_RE.match(text)
    return (text[match.end() :], match.end()) if match else (text, 0)


def _leftover_pieces(text: str, start: int, end: int) -> list[str]:
    """Non-empty pieces of an unmatched stretch, split on the list separators."""
    return [piece.strip(_STRIP_CHARS) for piece in _SEPARATOR_RE.split(text[start:end]) if piece.strip(_STRIP_CHARS)]


def _parse_phrase_boxes(
    match: re.Match, offset: int, width: float, height: float, labels: Sequence[str], result: GroundingParse
) -> None:
    raw_label = match.group(1)
    phrase = match.group(0)
    try:
        label = canonical_label(raw_label, labels)
    except ValueError:
        result.failures.append(f"unknown label {raw_label!r} in {phrase!r}")
        return
    for box_match in _BOX_RE.finditer(match.group(2)):
        grid_box = tuple(int(v) for v in box_match.groups())
        if any(v > GRID_MAX for v in grid_box):
            result.failures.append(f"coordinate > {GRID_MAX} in {phrase!r}")
            continue
        x1, y1, x2, y2 = grid_box
        if x2 < x1 or y2 < y1:
            result.failures.append(f"inverted box (x2 < x1 or y2 < y1) in {phrase!r}")
            continue
        result.findings.append(
            GroundingFinding(
                label=label,
                grid_box=grid_box,
                box=grid_to_box(grid_box, width, height),
                span=(offset + match.start(), offset + match.end()),
                raw_label=raw_label,
            )
        )


def parse_grounding_answer(
    text: str, width: float, height: float, labels: Sequence[str] = VINDR_LOCAL_LABELS
) -> GroundingParse:
    """Parse a stage-1 answer into boxes in grid and pixel space.

    Phrases are found with the tolerant regex `<p> label </p> {<x1><y1><x2><y2>}` (also the `<delim>` multi-box
    form); the text between phrases may only hold separators, the prefix, "No finding" or "None". Everything
    else is a counted failure: unparseable/truncated fragments, unknown labels (whole-label match only),
    coordinates > 100, inverted boxes. `width`/`height` are the original image size (DICOM Columns/Rows).
    """
    result = GroundingParse(text=text)
    body, offset = _strip_prefix(text)
    cursor = 0
    leftovers: list[str] = []
    for match in _PHRASE_RE.finditer(body):
        leftovers += _leftover_pieces(body, cursor, match.start())
        _parse_phrase_boxes(match, offset, width, height, labels, result)
        cursor = match.end()
    leftovers += _leftover_pieces(body, cursor, len(body))

    for piece in leftovers:
        if normalize_label_name(piece) in ("none", "none listed"):
            result.none_listed = True
            continue
        try:
            if canonical_label(piece, (NO_FINDING,)) == NO_FINDING:
                result.no_finding = True
                continue
        except ValueError:
            pass
        result.failures.append(f"unparseable fragment {piece!r}")

    if not body.strip(_STRIP_CHARS):
        result.failures.append("empty answer")
    result.contradiction = result.no_finding and bool(result.findings)
    return result


# Negation cues of diagnosis answers; "negative for" is tried before the single words.
_NEGATION_CUE_RE = re.compile(r"^(?:negative\s+for|without|absent|not|no)\b\s*", re.IGNORECASE)
_TRAILING_ABSENT_RE = re.compile(r"\s+(?:(?:is|are)\s+)?absent$", re.IGNORECASE)
_CLAUSE_SPLIT_RE = re.compile(r"[,;.]")
_CONJUNCTION_SPLIT_RE = re.compile(r"\s+(?:and|or|nor)\s+|^\s*(?:and|or|nor)\s+", re.IGNORECASE)


@dataclass
class DiagnosisParse:
    """Result of `parse_diagnosis_answer`.

    `positive`/`negative`: canonical labels in canonical order; `no_finding`: "No finding" asserted;
    `contradiction`: "No finding" plus other positive labels, or a label both asserted and negated (such labels
    are dropped from both lists and reported in `failures`); `failures`: unknown fragments.
    """

    text: str
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    no_finding: bool = False
    none_listed: bool = False
    contradiction: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _match_label_or_none(piece: str, labels: Sequence[str]) -> str | None:
    try:
        return canonical_label(piece, labels)
    except ValueError:
        return None


def parse_diagnosis_answer(text: str, labels: Sequence[str] = VINDR_GLOBAL_LABELS) -> DiagnosisParse:
    """Parse a stage-2 answer.

    The prefix is stripped, the rest split into clauses on `,`/`;`/`.` and within a clause on `and`/`or`; each
    piece must be a whole label (after normalisation/aliases). A negation cue (`no`, `not`, `without`, `absent`,
    `negative for`) at the start of a piece makes that label and the following labels of the same clause
    negative ("no Pneumonia or Tuberculosis"); a trailing "absent" negates its own piece. "No finding" is a
    label, not a negation. Unknown pieces are failures, never guessed.
    """
    result = DiagnosisParse(text=text)
    body, _ = _strip_prefix(text)
    if not body.strip(_STRIP_CHARS):
        result.failures.append("empty answer")
        return result

    positive: set[str] = set()
    negative: set[str] = set()
    for clause in _CLAUSE_SPLIT_RE.split(body):
        negated = False
        for raw_piece in _CONJUNCTION_SPLIT_RE.split(clause):
            piece = raw_piece.strip(_STRIP_CHARS)
            if not piece:
                continue
            if normalize_label_name(piece) == "none":
                result.none_listed = True
                continue
            label = _match_label_or_none(piece, labels)
            piece_negated = negated
            if label is None:
                cue = _NEGATION_CUE_RE.match(piece)
                if cue:
                    negated = piece_negated = True
                    piece = piece[cue.end() :]
                trailing = _TRAILING_ABSENT_RE.search(piece)
                if trailing:
                    piece_negated = True
                    piece = piece[: trailing.start()]
                label = _match_label_or_none(piece.strip(_STRIP_CHARS), labels)
            if label is None:
                result.failures.append(f"unknown fragment {raw_piece.strip()!r}")
            elif piece_negated:
                negative.add(label)
            else:
                positive.add(label)

    both = positive & negative
    for label in sorted(both):
        result.failures.append(f"label {label!r} both asserted and negated")
    positive -= both
    negative -= both
    result.positive = [label for label in labels if label in positive]
    result.negative = [label for label in labels if label in negative]
    result.no_finding = NO_FINDING in positive
    result.contradiction = bool(both) or (result.no_finding and len(positive) > 1)
    return result


def parse_yes_no(text: str) -> int | None:
    """Existence answers: 1 for a leading "yes", 0 for a leading "no", None otherwise (counted as a failure by callers)."""
    match = re.match(r"^\W*(yes|no)\b", text.strip(), re.IGNORECASE)
    if not match:
        return None
    return 1 if match.group(1).lower() == "yes" else 0


# ======================================================================================= prompts

GROUNDING_INSTRUCTION = (
    "Please describe the critical findings along with their localized bounding boxes in the radiological image of a "
    "chest as much detail as possible. If there are no findings, state that the chest radiograph shows no findings."
)
DIAGNOSIS_INSTRUCTION = (
    "Given the provided chest X-ray image, which of the following diagnoses are present (select all that apply): "
    "COPD, Lung Tumor, Pneumonia, Tuberculosis, Other Disease, or No Finding?"
)
REPORT_INSTRUCTION = "Please write the findings section of the radiology report for this chest X-ray."
EXISTENCE_INSTRUCTION = "Is there {entity} in this chest X-ray? Answer yes or no."

TASK_INSTRUCTIONS = {
    "grounding": GROUNDING_INSTRUCTION,
    "diagnosis": DIAGNOSIS_INSTRUCTION,
    "report": REPORT_INSTRUCTION,
    "existence": EXISTENCE_INSTRUCTION,
}


def task_instruction(
    task: str,
    instruction: str | None = None,
    entity: str | None = None,
    task_tokens: dict[str, str] | None = None,
) -> str:
    """The user text of a task: `"{task_token} {instruction}"`, e.g. `"[identify] Please describe ..."`.

    `instruction` overrides the task's sentence (`TASK_INSTRUCTIONS`); `{entity}` in it is filled from `entity` (required for
    `existence`).
    """
    tokens = dict(DEFAULT_TASK_TOKENS) if task_tokens is None else dict(task_tokens)
    if task not in TASK_INSTRUCTIONS or task not in tokens:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_INSTRUCTIONS)}")
    text = TASK_INSTRUCTIONS[task] if instruction is None else instruction
    if "{entity}" in text:
        if not entity:
            raise ValueError(f"task {task!r} needs an `entity` (its instruction is {text!r})")
        text = text.replace("{entity}", entity)
    token = tokens[task]
    return f"{token} {text}" if token else text


def prompt_messages(
    task: str,
    instruction: str | None = None,
    entity: str | None = None,
    task_tokens: dict[str, str] | None = None,
    system: str | None = None,
    image_block: bool = True,
) -> list[dict[str, Any]]:
    """TRL `prompt` column: `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}]`.

    With `image_block=False` the content is the plain string and TRL's `prepare_multimodal_messages` inserts the
    image block itself. An optional `system` message is prepended.
    """
    text = task_instruction(task, instruction=instruction, entity=entity, task_tokens=task_tokens)
    content: Any = [{"type": "image"}, {"type": "text", "text": text}] if image_block else text
    messages = [{"role": "user", "content": content}]
    if system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}] if image_block else system})
    return messages


def completion_messages(answer: str) -> list[dict[str, Any]]:
    """TRL `completion` column: `[{"role": "assistant", "content": [{"type": "text", "text": answer}]}]`."""
    return [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def messages_text(messages: Any) -> str:
    """The text of TRL messages (content as a string or a list of blocks), blocks joined by a space; `""` for None."""
    if messages is None:
        return ""
    if isinstance(messages, str):
        return messages
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(block.get("text") or "" for block in content if isinstance(block, dict))
    return " ".join(p for p in parts if p)


# ======================================================================================= chat template

# Llama-2 chat layout with LiteGPT's image wrapper:
#   {bos}[INST] <Img><ImageHere></Img> {task_token} {instruction} [/INST] {answer}{eos}
# * one BOS per [INST] turn (single turn -> exactly one), text is tokenized with add_special_tokens=False;
# * the generation prompt ends right after "[/INST]" and the answer turn starts with its space, so
#   render(prompt, add_generation_prompt=True) is a prefix of render(prompt + completion) and the loss covers
#   " {answer}{eos}" only; `{% generation %}` marks it for `assistant_only_loss`;
# * content is a string or a list of blocks: {"type": "image"} -> "<Img><ImageHere></Img> ", {"type": "text"};
# * an optional system message goes inside the first turn, Llama-2 `<<SYS>>` style.
_CHAT_TEMPLATE = r"""{#- LiteGPT chat template (Llama-2 chat layout) -#}
{%- macro render_content(content) -%}
{%- if content is string -%}
{{- content -}}
{%- elif content is not none -%}
{%- for block in content -%}
{%- if block['type'] == 'image' -%}
{{- __IMAGE_BLOCK__ -}}
{%- elif block['type'] == 'text' -%}
{{- block['text'] -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set bos = bos_token if (bos_token is defined and bos_token) else '' -%}
{%- set eos = eos_token if (eos_token is defined and eos_token) else '' -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system_message = render_content(messages[0]['content']) -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set system_message = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] not in ['user', 'assistant'] -%}
{{- raise_exception('LiteGPT chat template: unsupported role ' ~ message['role']) -}}
{%- endif -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('LiteGPT chat template: roles must alternate user/assistant after an optional system message') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{{- bos ~ '[INST] ' -}}
{%- if loop.first and system_message -%}
{{- '<<SYS>>\n' ~ system_message ~ '\n<</SYS>>\n\n' -}}
{%- endif -%}
{{- render_content(message['content']) ~ ' [/INST]' -}}
{%- else -%}
{%- generation -%}
{{- ' ' ~ render_content(message['content']) ~ eos -}}
{%- endgeneration -%}
{%- endif -%}
{%- endfor -%}
"""


def build_chat_template(
    image_token: str = DEFAULT_IMAGE_TOKEN, image_wrapper: Sequence[str] = ("<Img>", "</Img>")
) -> str:
    """The Jinja chat template, with the image block `"{wrapper[0]}{image_token}{wrapper[1]} "` baked in."""
    if len(image_wrapper) != 2:
        raise ValueError(f"image_wrapper must be (open, close), got {image_wrapper!r}")
    image_block = f"{image_wrapper[0]}{image_token}{image_wrapper[1]} "
    return _CHAT_TEMPLATE.replace("__IMAGE_BLOCK__", json.dumps(image_block))


def build_image_processor(image_size: int = 224) -> CLIPImageProcessor:
    """Built-in `CLIPImageProcessor` as the reference code preprocesses: squash-resize to `image_size`² bicubic, no crop, CLIP mean/std."""
    side = {"height": int(image_size), "width": int(image_size)}
    return CLIPImageProcessor(
        size=side,
        crop_size=dict(side),
        do_resize=True,
        do_center_crop=False,  # a crop would invalidate the normalised boxes
        resample=Image.Resampling.BICUBIC,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(CLIP_IMAGE_MEAN),
        image_std=list(CLIP_IMAGE_STD),
        do_convert_rgb=True,
    )


# ======================================================================================= generated output helpers


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if hasattr(value, "float") and str(getattr(value, "dtype", "")).startswith("torch.bfloat16"):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _sequences_as_rows(generated: Any) -> list[list[int]] | list[str]:
    """Token ids of a `generate()` output / tensor / array / list, as one list per sample (or the strings given)."""
    if hasattr(generated, "sequences"):
        generated = generated.sequences
    if isinstance(generated, str):
        return [generated]
    if isinstance(generated, (list, tuple)) and generated and all(isinstance(item, str) for item in generated):
        return list(generated)
    if isinstance(generated, (list, tuple)) and (not generated or isinstance(generated[0], (int, np.integer))):
        return [[int(v) for v in generated]]
    if isinstance(generated, (list, tuple)) and not isinstance(generated[0], (list, tuple)):
        return [[int(v) for v in _to_numpy(row).reshape(-1)] for row in generated]
    if isinstance(generated, (list, tuple)):
        return [[int(v) for v in row] for row in generated]
    array = _to_numpy(generated)
    if array.ndim == 1:
        array = array[None]
    return [[int(v) for v in row] for row in array]


def _token_logprobs(scores: Any, rows: list[list[int]]) -> list[np.ndarray]:
    """Log-probabilities of the last `T` tokens of each row.

    `scores` is either `generate()`'s per-step logits (a tuple of `T` arrays `(B, V)`, as returned with
    `output_scores=True`), normalised here with a log-softmax, or per-token log-probabilities `(B, T)` such as
    `model.compute_transition_scores(..., normalize_logits=True)`.
    """
    if isinstance(scores, (list, tuple)):
        steps = len(scores)
        out = np.zeros((len(rows), steps), dtype=np.float64)
        for t, step_logits in enumerate(scores):
            logits = _to_numpy(step_logits).astype(np.float64)
            if logits.ndim == 1:
                logits = logits[None]
            peak = np.max(logits, axis=-1, keepdims=True)
            log_norm = peak[:, 0] + np.log(np.sum(np.exp(logits - peak), axis=-1))
            for b, row in enumerate(rows):
                token = row[len(row) - steps + t]
                out[b, t] = logits[b, token] - log_norm[b]
        return [out[b] for b in range(len(rows))]
    array = _to_numpy(scores).astype(np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.shape[0] != len(rows):
        raise ValueError(f"scores cover {array.shape[0]} samples but {len(rows)} sequences were given")
    return [array[b] for b in range(len(rows))]


def _image_sizes_per_sample(image_size: Any, batch: int) -> list[tuple[float, float]]:
    """`(width, height)` for every sample from one pair (broadcast) or one pair per sample."""
    sizes = _to_numpy(image_size).astype(np.float64)
    if sizes.shape == (2,):
        return [(float(sizes[0]), float(sizes[1]))] * batch
    if sizes.ndim == 2 and sizes.shape[1] == 2 and sizes.shape[0] == batch:
        return [(float(w), float(h)) for w, h in sizes]
    raise ValueError(f"image_size must be (width, height) or one pair per sample ({batch}), got shape {sizes.shape}")


_INST_END = "[/INST]"


def _answer_part(text: str) -> tuple[str, int]:
    """The text after the last `[/INST]` (the answer when the prompt is included) and its offset."""
    cut = text.rfind(_INST_END)
    if cut < 0:
        return text, 0
    return text[cut + len(_INST_END) :], cut + len(_INST_END)


# ======================================================================================= processor


class LiteGPTProcessor(ProcessorMixin):
    r"""Processor of LiteGPT: a `CLIPImageProcessor` (squash-resize, CLIP normalisation) plus the LM tokenizer.

    Images may be anything `load_image` accepts (PIL in any mode, numpy, DICOM paths or datasets, PNG/JPEG paths).
    Each `<ImageHere>` in the text is expanded to `num_image_tokens` copies; text is tokenized with
    `add_special_tokens=False` because the chat template emits the single BOS.

    Args:
        image_processor (`CLIPImageProcessor`, *optional*): defaults to `build_image_processor(224)`.
        tokenizer: the LM tokenizer; it must already know `image_token` (see `from_tokenizer`).
        chat_template (`str`, *optional*): defaults to `build_chat_template(image_token, image_wrapper)`.
        image_token (`str`, defaults to `"<ImageHere>"`): the placeholder token.
        num_image_tokens (`int`, defaults to 49): LM positions per image (`LiteGPTConfig.num_image_tokens`).
        image_wrapper (`list[str]`, defaults to `["<Img>", "</Img>"]`): text around the placeholder.
        task_tokens (`dict[str, str]`, *optional*): task token per task, defaults to `DEFAULT_TASK_TOKENS`.
        windowing (`str`, defaults to `"window"`): DICOM conversion (`"window"`, `"paper_appendix"`, `"voi_lut"`,
            `"minmax"`; see `dicom_to_uint8`).
    """

    # The processor ships as remote code: saving copies this file (and configuration_litegpt.py) and writes
    # `"auto_map": {"AutoProcessor": "processing_litegpt.LiteGPTProcessor"}` into processor_config.json.
    _auto_class = "AutoProcessor"
    # Default tokenizer kwargs (lowest priority in `_merge_kwargs`): the chat template already emits the BOS.
    text_kwargs: ClassVar[dict[str, Any]] = {"add_special_tokens": False}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        num_image_tokens: int = 49,
        image_wrapper: Sequence[str] = ("<Img>", "</Img>"),
        task_tokens: dict[str, str] | None = None,
        windowing: str = "window",
        **kwargs,
    ):
        if tokenizer is None:
            raise ValueError("LiteGPTProcessor needs a tokenizer (use LiteGPTProcessor.from_tokenizer to build one)")
        if image_processor is None:
            image_processor = build_image_processor(224)
        if windowing not in WINDOWING_MODES:
            raise ValueError(f"windowing must be one of {WINDOWING_MODES}, got {windowing!r}")
        if int(num_image_tokens) < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.image_token = image_token
        self.num_image_tokens = int(num_image_tokens)
        self.image_wrapper = list(image_wrapper)
        self.task_tokens = dict(DEFAULT_TASK_TOKENS) if task_tokens is None else dict(task_tokens)
        self.windowing = windowing
        self.image_token_id = self._lookup_image_token_id(tokenizer, image_token)
        if chat_template is None:
            chat_template = build_chat_template(image_token, self.image_wrapper)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @staticmethod
    def _lookup_image_token_id(tokenizer, image_token: str) -> int:
        """Id of the placeholder; it must be a single added token, else it would be split into characters."""
        ids = tokenizer.encode(image_token, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer does not have {image_token!r} as a single token (got ids {ids}); "
                "use LiteGPTProcessor.from_tokenizer(...) to add it"
            )
        return int(ids[0])

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        image_size: int = 224,
        num_image_tokens: int = 49,
        config: Any = None,
        **kwargs,
    ) -> LiteGPTProcessor:
        """Build the processor from a bare LM tokenizer (conversion script, tests).

        A copy of the tokenizer gets `image_token` as an extra special token if missing, pad = id 0 if it has
        no pad token (`<unk>` for Llama) and left padding, which batched generation needs (training collators such as
        TRL's choose their padding side per call). The image processor and chat template are built here. With a
        `LiteGPTConfig` as `config`, `image_size`, `num_image_tokens`, `image_token` and `task_tokens` come from it.
        Remaining kwargs go to `__init__` (`image_wrapper`, `task_tokens`, `windowing`, `chat_template`...).
        """
        if config is not None:
            image_size = config.image_size
            num_image_tokens = config.num_image_tokens
            kwargs.setdefault("image_token", config.image_token)
            kwargs.setdefault("task_tokens", dict(config.task_tokens))
        image_token = kwargs.setdefault("image_token", DEFAULT_IMAGE_TOKEN)
        tokenizer = copy.deepcopy(tokenizer)
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"extra_special_tokens": [image_token]}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
        tokenizer.padding_side = "left"
        tokenizer.init_kwargs["padding_side"] = "left"  # `save_pretrained` writes the init kwargs' current values
        return cls(
            image_processor=build_image_processor(image_size),
            tokenizer=tokenizer,
            num_image_tokens=num_image_tokens,
            **kwargs,
        )

    @property
    def image_size(self) -> int:
        """Square side of `pixel_values`."""
        return int(self.image_processor.size["height"])

    # ----------------------------------------------------------------------------------- calling
    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        windowing: str | None = None,
        return_image_sizes: bool = False,
        **kwargs,
    ):
        """Tokenize `text` (expanding each `<ImageHere>`) and preprocess `images`.

        `images` may be one image or a (nested, per-sample) list of anything `load_image` accepts; they are
        loaded to RGB PIL first (DICOM with `windowing`, default `self.windowing`). Returns a `BatchFeature`
        with `input_ids`, `attention_mask`, `pixel_values` `(num_images, 3, S, S)`. With
        `return_image_sizes=True` it also holds `image_sizes`, the original `(width, height)` per image (a
        plain list, for `post_process_grounding`; pop it before calling the model). A mismatch between the
        number of `<ImageHere>` and of images raises `ValueError`.
        """
        image_sizes = None
        if images is not None:
            images = _load_images_nested(images, windowing or self.windowing)
            image_sizes = [image.size for image in _flatten_images(images)]
        outputs = super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        if return_image_sizes:
            outputs["image_sizes"] = image_sizes or []
        return outputs

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """Every image becomes `num_image_tokens` placeholders (49 = 245 patch tokens / 5 in the paper)."""
        return self.image_token * self.num_image_tokens

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder count per image (fixed: the image is squash-resized)."""
        data = {}
        if image_sizes is not None:
            data = {
                "num_image_tokens": [self.num_image_tokens] * len(image_sizes),
                "num_image_patches": [1] * len(image_sizes),
            }
        return MultiModalData(**data)

    # ----------------------------------------------------------------------------------- prompts
    def task_instruction(self, task: str, instruction: str | None = None, entity: str | None = None) -> str:
        """`"{task_token} {instruction}"` with this processor's task tokens."""
        return task_instruction(task, instruction=instruction, entity=entity, task_tokens=self.task_tokens)

    def build_prompt_messages(
        self,
        task: str,
        instruction: str | None = None,
        entity: str | None = None,
        system: str | None = None,
        image_block: bool = True,
    ) -> list[dict[str, Any]]:
        """TRL `prompt` messages of a task (image block + task text); see `prompt_messages`."""
        return prompt_messages(
            task,
            instruction=instruction,
            entity=entity,
            task_tokens=self.task_tokens,
            system=system,
            image_block=image_block,
        )

    @staticmethod
    def build_completion_messages(answer: str) -> list[dict[str, Any]]:
        """TRL `completion` messages of an answer."""
        return completion_messages(answer)

    def task_prompt(
        self,
        task: str,
        instruction: str | None = None,
        entity: str | None = None,
        add_generation_prompt: bool = True,
        answer: str | None = None,
        system: str | None = None,
    ) -> str:
        """Rendered prompt string of a task, e.g. `<s>[INST] <Img><ImageHere></Img> [identify] ... [/INST]`.

        With `answer`, the full training sequence (`... [/INST] {answer}</s>`) is rendered instead. Pass the result
        to the processor together with one image.
        """
        messages = self.build_prompt_messages(task, instruction=instruction, entity=entity, system=system)
        if answer is not None:
            messages = messages + self.build_completion_messages(answer)
            add_generation_prompt = False
        return self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    # ----------------------------------------------------------------------------------- post-processing
    def _decode_with_offsets(self, ids: list[int], skip_special_tokens: bool) -> tuple[str, list[tuple[int, int]]]:
        """Decoded text and each token's character span, from the lengths of decoded prefixes (tokenizer-agnostic)."""
        decode_kwargs = {"skip_special_tokens": skip_special_tokens, "clean_up_tokenization_spaces": False}
        text = self.tokenizer.decode(ids, **decode_kwargs)
        spans, previous = [], 0
        for k in range(1, len(ids) + 1):
            end = min(max(len(self.tokenizer.decode(ids[:k], **decode_kwargs)), previous), len(text))
            spans.append((previous, end))
            previous = end
        return text, spans

    def _decode_rows(
        self, generated: Any, scores: Any, skip_special_tokens: bool
    ) -> list[tuple[str, list[tuple[int, int]] | None, np.ndarray | None]]:
        """Per sample: answer text (after the last `[/INST]`), token spans in it and token log-probs (if scored)."""
        if scores is None and hasattr(generated, "scores") and generated.scores is not None:
            scores = generated.scores
        rows = _sequences_as_rows(generated)
        if rows and isinstance(rows[0], str):
            return [(_answer_part(text)[0], None, None) for text in rows]
        if scores is None:
            decoded = self.tokenizer.batch_decode(
                rows, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
            )
            return [(_answer_part(text)[0], None, None) for text in decoded]
        logprobs = _token_logprobs(scores, rows)
        out = []
        for row, row_logprobs in zip(rows, logprobs):
            generated_ids = row[len(row) - len(row_logprobs) :]
            text, spans = self._decode_with_offsets(generated_ids, skip_special_tokens)
            answer, offset = _answer_part(text)
            spans = [(start - offset, end - offset) for start, end in spans]
            out.append((answer, spans, row_logprobs))
        return out

    @staticmethod
    def _phrase_score(span: tuple[int, int], token_spans, logprobs) -> float | None:
        """`exp(mean log-prob)` of the tokens overlapping the phrase (label and coordinates: the box confidence of mAP)."""
        if token_spans is None or logprobs is None:
            return None
        start, end = span
        selected = [lp for (s, e), lp in zip(token_spans, logprobs) if e > s and s < end and e > start]
        if not selected:
            return None
        return float(math.exp(float(np.mean(selected))))

    def post_process_grounding(
        self,
        generated: Any,
        image_size: Any,
        scores: Any = None,
        skip_special_tokens: bool = True,
        labels: Sequence[str] = VINDR_LOCAL_LABELS,
    ) -> list[dict[str, Any]]:
        """Turn generated stage-1 answers into boxes.

        Args:
            generated: token ids (tensor/array/list, one or several rows, prompt included or not), a `generate()`
                output (its `.scores` are used when present) or already decoded strings. Text after the last
                `[/INST]` is parsed.
            image_size: original `(width, height)` (DICOM Columns, Rows), or one pair per sample.
            scores: per-step logits of `generate(..., output_scores=True)` or per-token log-probs `(B, T)` of the
                generated tokens (the last `T` ids of each row). Each box then gets
                `score = exp(mean log-prob)` of its phrase's tokens; otherwise `score` is None.

        Returns:
            One dict per sample: `text`, `findings` (list of `{"label", "box" (pixel xyxy floats), "grid_box",
            "score"}`), `no_finding`, `none_listed`, `contradiction` and `failures` (parse failures, counted).
        """
        decoded = self._decode_rows(generated, scores, skip_special_tokens)
        sizes = _image_sizes_per_sample(image_size, len(decoded))
        results = []
        for (text, token_spans, logprobs), (width, height) in zip(decoded, sizes):
            parsed = parse_grounding_answer(text, width, height, labels=labels)
            findings = [
                {
                    "label": finding.label,
                    "box": finding.box,
                    "grid_box": finding.grid_box,
                    "score": self._phrase_score(finding.span, token_spans, logprobs),
                }
                for finding in parsed.findings
            ]
            results.append(
                {
                    "text": text,
                    "findings": findings,
                    "no_finding": parsed.no_finding,
                    "none_listed": parsed.none_listed,
                    "contradiction": parsed.contradiction,
                    "failures": list(parsed.failures),
                }
            )
        return results

    def post_process_diagnosis(
        self, generated: Any, skip_special_tokens: bool = True, labels: Sequence[str] = VINDR_GLOBAL_LABELS
    ) -> list[dict[str, Any]]:
        """Turn generated stage-2 answers into label sets: one dict per sample with `text`, `positive`,
        `negative`, `no_finding`, `none_listed`, `contradiction`, `failures` (see `parse_diagnosis_answer`)."""
        decoded = self._decode_rows(generated, None, skip_special_tokens)
        results = []
        for text, _, _ in decoded:
            parsed = parse_diagnosis_answer(text, labels=labels)
            results.append(
                {
                    "text": text,
                    "positive": parsed.positive,
                    "negative": parsed.negative,
                    "no_finding": parsed.no_finding,
                    "none_listed": parsed.none_listed,
                    "contradiction": parsed.contradiction,
                    "failures": list(parsed.failures),
                }
            )
        return results


__all__ = [
    "DIAGNOSIS_INSTRUCTION",
    "EXISTENCE_INSTRUCTION",
    "GLOBAL_PREFIX",
    "GRID_MAX",
    "GROUNDING_INSTRUCTION",
    "LABEL_ALIASES",
    "LOCAL_PREFIX",
    "NO_FINDING",
    "CHEXPERT_LABELS",
    "REPORT_INSTRUCTION",
    "TASK_INSTRUCTIONS",
    "VINDR_GLOBAL_LABELS",
    "VINDR_LABELS",
    "VINDR_LOCAL_LABELS",
    "WINDOWING_MODES",
    "DiagnosisParse",
    "DicomReadError",
    "GroundingFinding",
    "GroundingParse",
    "LiteGPTProcessor",
    "box_to_grid",
    "build_chat_template",
    "build_image_processor",
    "canonical_label",
    "completion_messages",
    "messages_text",
    "dicom_to_uint8",
    "format_diagnosis_answer",
    "format_grounding_answer",
    "format_grounding_phrase",
    "from_grid",
    "grid_to_box",
    "is_dicom_file",
    "label_index",
    "load_image",
    "load_image_with_size",
    "minmax_to_uint8",
    "normalize_label_name",
    "parse_diagnosis_answer",
    "parse_grounding_answer",
    "parse_yes_no",
    "prompt_messages",
    "read_dicom",
    "task_instruction",
    "to_grid",
    "paper_appendix_to_uint8",
    "window_to_uint8",
]
