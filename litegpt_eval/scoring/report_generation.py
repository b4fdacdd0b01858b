"""MIMIC-CXR report generation: text metrics of the generated findings."""

from __future__ import annotations

from typing import Any

from ..records import PredictionsError
from ..text_metrics import compute_text_metrics
from .common import failure_rate_statistic, parse_summary, text_statistic


def score_report(records: list[dict[str, Any]], coco_meteor: bool = True, max_listed: int | None = None):
    rows = []
    for record in records:
        ref_text = (record.get("reference") or {}).get("text")
        if ref_text is None:
            raise PredictionsError(f"record {record['id']!r}: a report reference needs `text`")
        text = record.get("text")
        rows.append({"id": record["id"], "text": text or "", "ref": ref_text, "missing": text is None,
                     "failures": ["missing prediction"] if text is None else [], "failed": text is None,
                     "truncated": bool(record.get("truncated"))})  # fmt: skip
    out: dict[str, Any] = {"n": len(rows), "parse": parse_summary("report", rows, max_listed)}
    result = compute_text_metrics([r["text"] for r in rows], [r["ref"] for r in rows], coco_meteor=coco_meteor)
    out["text"] = {"raw": {"values": result["values"], "unavailable": result["unavailable"]}}
    stats = [failure_rate_statistic(rows), text_statistic("text.raw.values", result["raw"])]
    return out, stats, {"rows": rows}
