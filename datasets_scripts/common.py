"""Infrastructure shared by the dataset builders (`vindr_cxr.py`, `mimic_cxr.py`): counted, logged and listed skips
(`SkipLog`), the preprocessing log (`PreparationLogMixin`), setting checks, CSV reading, the code part of the cache
key, and PNG encoding. Export and the command line are in `export.py`."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from configuration_litegpt import DEFAULT_TASK_TOKENS

__all__ = [
    "PreparationLogMixin",
    "SkipLog",
    "check_choices",
    "codec_source_files",
    "encode_png",
    "grey_png_bytes",
    "input_error_cause",
    "read_csv_strings",
    "task_tokens_of",
    "update_with_code",
]

logger = logging.getLogger(__name__)

# Fields of `datasets.BuilderConfig` that are not builder settings.


# ======================================================================================================= skips


class SkipLog:
    """Counted, logged and listed skips: nothing a builder drops is silent.

    `skip(item, reason)` logs a warning naming the item (a file, a CSV row, an image id) and the reason, counts it
    under `reason` and keeps it in the item list. `summary()` is JSON-ready: `{reason: count, ..., "items":
    [{"item": ..., "reason": ...}, ...]}` (reasons sorted by name, items in skip order). `extend()` merges another
    `SkipLog` or a `summary()` dict (e.g. read back from a worker's JSON file).
    """

    ITEMS_KEY = "items"

    def __init__(self, name: str = "", log: logging.Logger | None = None, quiet: bool = False):
        self.name = name
        self._logger = log or logger
        self._quiet = quiet
        self._items: list[dict[str, str]] = []

    def skip(self, item: str, reason: str) -> None:
        """Record one skipped item (logged as a warning naming it)."""
        item, reason = str(item), str(reason)
        if reason == self.ITEMS_KEY:
            raise ValueError(f"{self.ITEMS_KEY!r} is reserved and cannot be a skip reason")
        self._items.append({"item": item, "reason": reason})
        if not self._quiet:
            prefix = f"[{self.name}] " if self.name else ""
            self._logger.warning("%sskipped %s: %s", prefix, item, reason)

    def extend(self, other: SkipLog | Mapping[str, Any] | None) -> SkipLog:
        """Append the items of another log (or of a `summary()` dict); returns self."""
        if other is None:
            return self
        items = other._items if isinstance(other, SkipLog) else other.get(self.ITEMS_KEY, [])
        for entry in items:
            self._items.append({"item": str(entry["item"]), "reason": str(entry["reason"])})
        return self

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any] | None, name: str = "") -> SkipLog:
        """Rebuild a log from a `summary()` dict (items are not logged again)."""
        return cls(name=name, quiet=True).extend(summary)

    def counts(self) -> dict[str, int]:
        """`{reason: count}` sorted by reason."""
        out: dict[str, int] = {}
        for entry in self._items:
            out[entry["reason"]] = out.get(entry["reason"], 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, Any]:
        """`{reason: count, ..., "items": [{"item", "reason"}, ...]}`."""
        return {**self.counts(), self.ITEMS_KEY: [dict(entry) for entry in self._items]}

    @property
    def items(self) -> list[dict[str, str]]:
        return [dict(entry) for entry in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __repr__(self) -> str:
        return f"SkipLog({self.name!r}, {self.counts()})"


# ======================================================================================================= export


# ======================================================================================================= CLI


class PreparationLogMixin:
    """What the builders share around `datasets`' preparation: input errors surfaced from it, and the preprocessing
    log (settings, counts, skips) written and read back.

    The builder writes the log as `preprocessing_log_name` into its prepared cache folder, so the numbers are still
    there when `download_and_prepare` reuses the cache. Expects `self.config.settings()`, `self._output_dir` and a
    `self._log` attribute (None until read or written).
    """

    preprocessing_log_name: str = "preprocessing.json"
    # The builder's input errors (their messages name the file): a failed preparation re-raises the first of its
    # cause chain instead of datasets' generic wrapper.
    input_errors: tuple[type[Exception], ...] = (FileNotFoundError,)

    def download_and_prepare(self, *args, **kwargs):
        """`datasets`' download_and_prepare (atomic: `.incomplete` folder renamed on success) with the input error
        of a failed conversion surfaced (it names the file) instead of datasets' generic wrapper."""
        try:
            from datasets.builder import DatasetGenerationError
        except ImportError:  # pragma: no cover - older layouts
            from datasets.exceptions import DatasetGenerationError
        try:
            return super().download_and_prepare(*args, **kwargs)
        except DatasetGenerationError as err:
            cause = input_error_cause(err, self.input_errors)
            if cause is None:
                raise
            raise self._surfaced_error(cause, f"{cause} (nothing was written to the cache)") from err

    def _surfaced_error(self, cause: Exception, message: str) -> Exception:
        """`cause` again with `message` (a builder whose errors carry more than a message overrides this)."""
        return type(cause)(message)

    @property
    def settings(self) -> dict[str, Any]:
        return self.config.settings()

    @property
    def preprocessing_log(self) -> dict[str, Any]:
        """The log of the last preparation (read back from the cache)."""
        if self._log is None:
            path = os.path.join(self._output_dir, self.preprocessing_log_name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    self._log = json.load(handle)
        return self._log or {}

    @property
    def counts(self) -> dict[str, Any]:
        return self.preprocessing_log.get("counts", {})

    @property
    def skipped(self) -> dict[str, Any]:
        """`SkipLog.summary()` of everything skipped: `{reason: count, "items": [{"item", "reason"}, ...]}`."""
        return self.preprocessing_log.get("skipped", SkipLog().summary())

    # Worker processes cannot share a SkipLog: each skipped image is written as one JSON file in
    # `worker_skips_dirname` under the cache folder and merged, in a deterministic order, once preparation ends.
    worker_skips_dirname: str = "_skips"

    def _record_worker_skip(self, entry: dict[str, Any]) -> None:
        """Write one skip (`split`, `index`, `item`, `reason`, ...) from a worker process."""
        skip_dir = Path(self._output_dir) / self.worker_skips_dirname
        skip_dir.mkdir(parents=True, exist_ok=True)
        with open(skip_dir / f"{entry['split']}-{entry['index']:08d}.json", "w", encoding="utf-8") as handle:
            json.dump(entry, handle)

    def _collect_worker_skips(self, split_order: tuple[str, ...]) -> list[dict[str, Any]]:
        """The workers' skips, sorted by split then item index; their folder is removed."""
        skip_dir = Path(self._output_dir) / self.worker_skips_dirname
        if not skip_dir.is_dir():
            return []
        entries = []
        for path in sorted(skip_dir.glob("*.json")):
            with open(path, encoding="utf-8") as handle:
                entries.append(json.load(handle))
            path.unlink()
        skip_dir.rmdir()
        return sorted(entries, key=lambda e: (split_order.index(e["split"]), e["index"]))

    def _omit_splits_emptied_by_skips(self) -> list[str]:
        """Splits that lost every row while generating (all their images skipped with `on_bad_image="skip"`).

        `datasets` cannot read back a split without rows (`as_dataset()` fails with "corresponds to no data"), so
        they are removed from the dataset info, exactly as splits already empty in the plan are never generated.
        """
        emptied = [name for name, split in (self.info.splits or {}).items() if split.num_examples == 0]
        for name in emptied:
            del self.info.splits[name]
            logger.warning("%s: every image of the %r split was skipped; the split is left out", self.name, name)
        return emptied

    def _finish_preprocessing_log(
        self,
        skips: SkipLog,
        worker_skips: list[dict[str, Any]],
        extra_counts: dict[str, Any],
        title: str,
        empty_splits_key: str = "empty_splits",
    ) -> dict[str, Any]:
        """Merge plan and worker skips, row counts and `extra_counts` into the log; write it to the cache folder
        and into `info.description` (so it survives cache reuse). Splits emptied by skipped images are left out and
        added to `counts[empty_splits_key]`, next to the splits the plan left empty."""
        for entry in worker_skips:
            skips.extend({"items": [{"item": entry["item"], "reason": entry["reason"]}]})
        log = dict(self._log or {})
        counts = log.setdefault("counts", {})
        emptied = self._omit_splits_emptied_by_skips()
        if emptied:
            counts[empty_splits_key] = [*counts.get(empty_splits_key, []), *emptied]
        log["skipped"] = skips.summary()
        log["rows"] = {name: split.num_examples for name, split in (self.info.splits or {}).items()}
        counts.update(extra_counts)
        self._log = log
        with open(Path(self._output_dir) / self.preprocessing_log_name, "w", encoding="utf-8") as handle:
            json.dump(log, handle, indent=1, default=str)
            handle.write("\n")
        self.info.description = (
            f"{title} for LiteGPT-CXR. Preprocessing log (settings, counts, rows):\n"
            + json.dumps({k: log.get(k) for k in ("settings", "counts", "rows")}, default=str)
            + "\nskipped: "
            + json.dumps(log["skipped"])
        )
        return log


def read_csv_strings(path: Path, error_type: type[Exception], missing: str | None = None):
    """A CSV as a pandas frame of strings (no NaN conversion: an empty cell stays ""), column names stripped. A file
    that does not parse raises `error_type` naming it; with `missing`, an absent file raises `FileNotFoundError` with
    that message (else pandas' own error)."""
    import pandas as pd

    if missing is not None and not path.is_file():
        raise FileNotFoundError(missing)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as err:
        raise error_type(f"cannot parse {path}: {type(err).__name__}: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def codec_source_files() -> list[Path]:
    """The shipped files whose code shapes a builder's rows: the codec (targets, labels), the image processing (DICOM
    conversion) and the configuration they read."""
    import codec_litegpt
    import configuration_litegpt
    import image_processing_litegpt

    return [Path(module.__file__) for module in (codec_litegpt, configuration_litegpt, image_processing_litegpt)]


def update_with_code(digest: Any, paths: Iterable[Path]) -> None:
    """Feed the bytes of these source files into `digest` (the path itself when unreadable): part of a builder's cache
    key, which then changes whenever its code or the codec changes."""
    for path in paths:
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(str(path).encode())


def task_tokens_of(config: Any, task: str) -> dict[str, str]:
    """The task tokens a builder writes into its prompts: the defaults, with the config's `task_token` (when set) for
    `task`."""
    tokens = dict(DEFAULT_TASK_TOKENS)
    if config.task_token is not None:
        tokens[task] = config.task_token
    return tokens


def check_choices(owner: str, settings: Any, choices: Mapping[str, Iterable[Any]]) -> None:
    """Raise `ValueError` naming the first setting of `settings` whose value is not among its allowed choices."""
    for key, allowed in choices.items():
        if getattr(settings, key) not in allowed:
            raise ValueError(f"{owner}.{key} must be one of {allowed}, got {getattr(settings, key)!r}")


def input_error_cause(err: BaseException, error_types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `error_types` in `err`'s cause chain (datasets wraps generation errors)."""
    cause = err.__cause__
    while cause is not None and not isinstance(cause, error_types):
        cause = cause.__cause__
    return cause


# ======================================================================================================= images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def grey_png_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """8-bit greyscale PNG of a 2D uint8 array (standard PNG, decoded by any reader).

    Every row uses PNG filter type 3 (Average), computed with numpy, then zlib: level 0 stores, level 1 uses the
    run-length strategy (`Z_RLE`: on filtered radiographs about as small as full deflate and several times faster),
    levels 2-9 full deflate. Pillow's encoder spends most of its time choosing a filter per row (~3-5x slower at equal
    size on 1024 px images), which made it the bottleneck of the conversion.
    """
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"grey_png_bytes expects a 2D uint8 array, got {array.dtype} {array.shape}")
    height, width = array.shape
    left = np.zeros_like(array)
    left[:, 1:] = array[:, :-1]
    up = np.zeros_like(array)
    up[1:] = array[:-1]
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 3  # filter type: Average
    np.subtract(array, ((left.astype(np.uint16) + up) >> 1).astype(np.uint8), out=rows[:, 1:])
    level = int(compress_level)
    strategy = zlib.Z_RLE if level == 1 else zlib.Z_DEFAULT_STRATEGY
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 8, strategy)
    data = compressor.compress(rows.data) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def encode_png(array: np.ndarray, max_side: int | None, compress_level: int):
    """uint8 array -> (PNG bytes, stored (width, height)), downscaled so the longest side is <= `max_side`
    (Lanczos). Greyscale goes through `grey_png_bytes`; colour through Pillow."""
    from PIL import Image

    array = np.ascontiguousarray(array)
    height, width = array.shape[:2]
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        array = np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))
    if array.ndim == 2:
        return grey_png_bytes(array, compress_level), (array.shape[1], array.shape[0])
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=int(compress_level))
    return buffer.getvalue(), (array.shape[1], array.shape[0])
