"""The predictions file (`predictions.jsonl`): one JSON object per line, one line per (image, task) item.

Keys of a record (stable; `schema` = 1):

| key | type | meaning |
|---|---|---|
| `id` | str | unique key of the item: the `image_id` for VinDr tasks, `"{image_id}:{entity}"` for MIMIC existence |
| `image_id` | str | image identifier |
| `task` | str | `grounding` (stage 1), `diagnosis` (stage 2), `existence` (MIMIC yes/no), `report` (MIMIC findings) |
| `text` | str | the raw generated answer (special tokens removed); the only field scoring needs besides `reference` |
| `truncated` | bool / null | generation hit `max_new_tokens` without an end-of-sequence token |
| `parsed` | object | what the strict parsers made of `text` (grounding: `findings` [`label`, `box` (pixel xyxy), `grid_box`, `score`], `no_finding`, `none_listed`, `contradiction`, `failures`; diagnosis: `positive`, `negative`, ...; existence: `answer` 1/0/null) |
| `scores` | object | confidences: `no_finding` (stage 1), `labels` {label: probability} (stage 2 slots), `yes` (existence) |
| `tokens` | object | `ids` and `logprobs` of the generated tokens (optional) |
| `reference` | object | `width`, `height`, `local_labels`, `global_labels`, `no_finding`, `box_labels`, `boxes` (pixel xyxy), `text` (reference answer), `entity`, `label` (0/1), as available |
| `decoding` | object | decoding settings of this record (`do_sample`, `max_new_tokens`, `temperature`, `top_p`, `seed`) |
| `schema` | int | record schema version |

Scoring re-parses `text` (records written by other programs only need `id`, `task`, `text`, `reference`); stored
box scores are re-attached when the re-parse finds the same (label, grid box) sequence.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

TASKS = ("grounding", "diagnosis", "existence", "report")
RECORD_SCHEMA = 1


class PredictionsError(ValueError):
    """A predictions/references file is unusable (empty, malformed, duplicated ids...): the message says why."""


def _json_default(value: Any):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean_floats(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_floats(v) for v in value]
    return value


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(_clean_floats(record), default=_json_default, ensure_ascii=False, allow_nan=False)


class PredictionWriter:
    """Append-only JSONL writer: each record is written and flushed (and fsynced) as soon as it is produced."""

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open while generating

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(dumps(record) + "\n")
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def repair_partial_tail(path: str | os.PathLike) -> int:
    """Cut an interrupted last line (no newline / invalid JSON) off a JSONL file; returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data:
        return 0
    cut = len(data)
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
    else:
        last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[last_start:].decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            cut = last_start
    if cut < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(cut)
    return len(data) - cut


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, object)` of every non-blank line; malformed lines raise `PredictionsError` naming the line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise PredictionsError(f"{path}:{number}: not valid JSON ({err})") from err
            if not isinstance(obj, dict):
                raise PredictionsError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            yield number, obj


def done_keys(path: str | os.PathLike) -> set[tuple[str, str]]:
    """`(task, id)` of the records already in a predictions file (after repairing an interrupted last line)."""
    if not Path(path).exists():
        return set()
    repair_partial_tail(path)
    return {(str(obj.get("task")), str(obj.get("id"))) for _, obj in iter_jsonl(path) if obj.get("id") is not None}


def load_records(
    path: str | os.PathLike, on_duplicate: str = "error", tasks: Iterable[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read and validate a predictions file.

    Checks: the file exists and holds at least one record; every record has `id`, `task` (a known task) and `text`
    (a string); ids are unique (`on_duplicate="error"` raises listing them, `"first"` keeps the first and counts/
    lists the others as skipped). Returns `(records, skipped)` with `skipped = {reason: count, "items": [...]}`.
    """
    path = Path(path)
    if not path.exists():
        raise PredictionsError(f"predictions file not found: {path}")
    wanted = set(tasks) if tasks else None
    records: list[dict[str, Any]] = []
    skipped: dict[str, Any] = {"items": []}
    seen: dict[tuple[str, str], int] = {}
    duplicates: Counter = Counter()
    for number, obj in iter_jsonl(path):
        missing = [key for key in ("id", "task", "text") if key not in obj]
        if missing:
            raise PredictionsError(f"{path}:{number}: record without {missing} (keys: {sorted(obj)})")
        if obj["task"] not in TASKS:
            raise PredictionsError(f"{path}:{number}: unknown task {obj['task']!r}; expected one of {TASKS}")
        if obj["text"] is not None and not isinstance(obj["text"], str):
            raise PredictionsError(f"{path}:{number}: `text` must be a string, got {type(obj['text']).__name__}")
        if wanted is not None and obj["task"] not in wanted:
            continue
        key = (obj["task"], str(obj["id"]))
        if key in seen:
            duplicates[key] += 1
            if on_duplicate == "error":
                continue
            skipped["duplicate_id"] = skipped.get("duplicate_id", 0) + 1
            skipped["items"].append({"id": key[1], "task": key[0], "line": number, "reason": "duplicate_id"})
            continue
        seen[key] = number
        obj["id"] = str(obj["id"])
        obj.setdefault("image_id", obj["id"])
        records.append(obj)
    if duplicates and on_duplicate == "error":
        listed = ", ".join(f"{task}:{rid} (line {seen[(task, rid)]} and {n} more)" for (task, rid), n in list(duplicates.items())[:20])
        raise PredictionsError(
            f"{path}: {sum(duplicates.values())} duplicated ids: {listed}; use --on_duplicate first to keep the first"
        )
    if not records:
        raise PredictionsError(f"{path}: no prediction records" + (f" for tasks {sorted(wanted)}" if wanted else ""))
    return records, skipped


def load_references(path: str | os.PathLike) -> dict[tuple[str, str], dict[str, Any]]:
    """A references JSONL (`id`, `task`, `reference` per line, e.g. exported by `eval.py --export_references`):
    `{(task, id): reference}`; duplicated (task, id) raise."""
    refs: dict[tuple[str, str], dict[str, Any]] = {}
    for number, obj in iter_jsonl(path):
        if "id" not in obj or "task" not in obj or "reference" not in obj:
            raise PredictionsError(f"{path}:{number}: a reference line needs `id`, `task` and `reference`")
        key = (obj["task"], str(obj["id"]))
        if key in refs:
            raise PredictionsError(f"{path}:{number}: duplicated reference id {key[1]!r} for task {key[0]!r}")
        ref = dict(obj["reference"])
        ref.setdefault("image_id", obj.get("image_id", key[1]))
        refs[key] = ref
    if not refs:
        raise PredictionsError(f"{path}: no references")
    return refs


def attach_references(
    records: list[dict[str, Any]], references: dict[tuple[str, str], dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Join records with an external reference set.

    * a prediction whose (task, id) has no reference is skipped, counted and listed (`unknown_id`);
    * a reference without prediction becomes a record with `text = None` (`missing_prediction`): scored as a
      parse failure (all-negative), never dropped.
    """
    skipped: dict[str, Any] = {"items": []}
    out = []
    seen = set()
    for record in records:
        key = (record["task"], record["id"])
        if key not in references:
            skipped["unknown_id"] = skipped.get("unknown_id", 0) + 1
            skipped["items"].append({"id": record["id"], "task": record["task"], "reason": "unknown_id"})
            continue
        seen.add(key)
        out.append({**record, "reference": references[key]})
    for key, ref in references.items():
        if key not in seen:
            out.append({"id": key[1], "image_id": ref.get("image_id", key[1]), "task": key[0], "text": None,
                        "reference": ref, "missing_prediction": True})
            skipped["missing_prediction"] = skipped.get("missing_prediction", 0) + 1
            skipped["items"].append({"id": key[1], "task": key[0], "reason": "missing_prediction (scored as failure)"})
    return out, skipped


__all__ = [
    "RECORD_SCHEMA",
    "TASKS",
    "PredictionWriter",
    "PredictionsError",
    "attach_references",
    "done_keys",
    "dumps",
    "iter_jsonl",
    "load_records",
    "load_references",
    "repair_partial_tail",
]
