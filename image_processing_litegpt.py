"""LiteGPT's image processor: any chest X-ray input (PIL, numpy, DICOM) -> `pixel_values` for both vision towers.

Shipped as remote code next to the weights, with `processing_litegpt.py`, which re-exports every public name here.
Imports only transformers, numpy, PIL, the standard library and its sibling `configuration_litegpt.py`; pydicom is
imported when a DICOM arrives (inside `try`, so loading a checkpoint never requires it).

* DICOM -> 8-bit (`dicom_to_uint8`), in four windowing modes: `window` (the DICOM window, the default),
  `paper_appendix` (the LiteGPT paper's Appendix A.1 code), `voi_lut`, `minmax`; MONOCHROME1 is inverted in every
  mode. 16-bit data never goes through PIL's mode conversions, which clip it.
* `load_image`: anything an image may arrive as (PIL in any mode, numpy arrays or tensors, DICOM paths, bytes or
  datasets, PNG/JPEG paths, URLs, `datasets` image dicts) -> an RGB PIL image; bad input raises a `ValueError`
  that says what was wrong.
* `LiteGPTImageProcessor`: a `CLIPImageProcessor` that loads its inputs with `load_image` and preprocesses as the
  reference code did: squash-resize to a square (bicubic, aspect ratio not kept, no crop: the boxes stay valid in
  normalised coordinates), OpenAI-CLIP mean and standard deviation.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs

try:
    from .configuration_litegpt import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD
except ImportError:  # imported as a plain module (tests, repository scripts)
    from configuration_litegpt import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD


# ======================================================================================= DICOM -> 8-bit

WINDOWING_MODES = ("window", "paper_appendix", "voi_lut", "minmax")


def check_windowing(windowing: str) -> str:
    """`windowing` itself, or a `ValueError` naming the modes."""
    if windowing not in WINDOWING_MODES:
        raise ValueError(f"windowing must be one of {WINDOWING_MODES}, got {windowing!r}")
    return windowing


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
    check_windowing(windowing)
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


# ======================================================================================= image processor


class LiteGPTImageProcessorKwargs(ImagesKwargs, total=False):
    """`ImagesKwargs` plus the DICOM conversion (`windowing`, one of `WINDOWING_MODES`)."""

    windowing: str


class LiteGPTImageProcessor(CLIPImageProcessor):
    r"""Image processor of LiteGPT: loads any input with `load_image`, then preprocesses as the reference code.

    Every vision tower reads the same `pixel_values`: RGB, squash-resized to `image_size` x `image_size` (bicubic;
    no centre crop, which would move the boxes), rescaled to [0, 1] and normalised with the OpenAI-CLIP mean and
    standard deviation.

    Args:
        image_size (`int`, *optional*, defaults to 224): side of the square input (the encoders' input size);
            sets `size` and `crop_size`.
        windowing (`str`, *optional*, defaults to `"window"`): DICOM conversion of `dicom_to_uint8`.
        **kwargs: any `CLIPImageProcessor` setting.
    """

    # Saved with the processor as remote code: `auto_map` names this class, so `AutoImageProcessor` (which
    # `AutoProcessor` calls) loads it from the folder's copy of this file.
    _auto_class = "AutoImageProcessor"
    valid_kwargs = LiteGPTImageProcessorKwargs
    size: ClassVar[dict[str, int]] = {"height": 224, "width": 224}
    crop_size: ClassVar[dict[str, int]] = {"height": 224, "width": 224}
    do_center_crop = False
    resample = PILImageResampling.BICUBIC
    image_mean: ClassVar[list[float]] = list(CLIP_IMAGE_MEAN)
    image_std: ClassVar[list[float]] = list(CLIP_IMAGE_STD)
    windowing = "window"

    def __init__(self, image_size: int | None = None, **kwargs):
        if image_size is not None:
            side = {"height": int(image_size), "width": int(image_size)}
            kwargs["size"], kwargs["crop_size"] = side, dict(side)
        check_windowing(kwargs.get("windowing") or self.windowing)
        super().__init__(**kwargs)

    @classmethod
    def from_image_processor(cls, image_processor: Any, windowing: str | None = None) -> LiteGPTImageProcessor:
        """The same settings as another image processor (a `CLIPImageProcessor` saved by an older LiteGPT processor),
        with LiteGPT's input loading."""
        settings = {key: value for key, value in image_processor.to_dict().items()
                    if key in LiteGPTImageProcessorKwargs.__annotations__}  # fmt: skip
        if windowing is not None:
            settings["windowing"] = windowing
        return cls(**settings)

    def load_images(self, images: Any, windowing: str | None = None) -> tuple[Any, list[tuple[int, int]]]:
        """`images` (one image or a nested, per-sample list; a 4D array is a batch) loaded to RGB PIL with
        `load_image`, keeping the nesting, and the original `(width, height)` of every image in order."""
        loaded = _load_images_nested(images, check_windowing(windowing or self.windowing))
        return loaded, [image.size for image in _flatten_images(loaded)]

    def fetch_images(self, image_url_or_urls: Any) -> Any:
        """transformers' hook for images given as paths or URLs (chat messages, processor calls): `load_image`, so
        that DICOM files work there too."""
        return self.load_images(image_url_or_urls)[0]

    def preprocess(self, images: Any, *args, return_image_sizes: bool = False, **kwargs):
        """`pixel_values` of `images` (anything `load_image` accepts; DICOM with `windowing`, default
        `self.windowing`); with `return_image_sizes=True` also `image_sizes`, the original `(width, height)` per
        image, the pixel space of the boxes."""
        loaded, sizes = self.load_images(images, kwargs.pop("windowing", None))
        outputs = super().preprocess(loaded, *args, **kwargs)
        if return_image_sizes:
            outputs["image_sizes"] = sizes
        return outputs


__all__ = [
    "WINDOWING_MODES",
    "DicomReadError",
    "LiteGPTImageProcessor",
    "check_windowing",
    "dicom_to_uint8",
    "is_dicom_file",
    "load_image",
    "load_image_with_size",
    "minmax_to_uint8",
    "paper_appendix_to_uint8",
    "read_dicom",
    "window_to_uint8",
]
