"""Outputs of an evaluation: `metrics.json`, `report.md` (laid out like the paper's tables) and PNG figures.

One function per table in `tables.py`, number and table formatting in `formatting.py`, figures in `figures.py`.

`report.md` numbers a table after the paper only where it reproduces that paper table's content; every other table
is ours and is named, not numbered. Each table is captioned with what it holds and the protocol of every number:

* Table 1 - Finding vs No finding from the stage-2 `[vqa]` answers (the paper's Table 1 caption), three protocols
  side by side + paper values; stage 1's own Finding row follows as an extra, labelled table;
* Table 2 - global diseases (stage 2) per label and averages + paper's global F1;
* Table 3 - Acc@IoU 0.3/0.4/0.5: [C]'s protocol, the paper's conditional reading and one-to-one matching, side by
  side + paper values;
* Table 4 - text metrics of stage-1 answers with boxes removed (`paper` and `tag_free`) + paper values;
* Table 5 - text metrics of stage-2 answers + paper values;
* ours: detection mAP@0.4 / mAP@0.5 (vindr22, kaggle14) and macro AUC (local and global labels), with 95 % intervals;
  validation-tuned thresholds (extra protocol, with `--thresholds_from` / `--threshold_split`); trivial baselines
  vs the model (with `--baselines`);
* Appendix: Table 8 - local labels (stage 1) per label, paper protocol (+ ours, strict); Table 11 - global labels
  (stage 2) per label, paper protocol; ours: per-label AP, per-label matched localisation, MIMIC existence
  (MedKLIP-style per entity), MIMIC report text metrics and per-label AUC of the local labels. (The paper's
  Tables 9-10 and 12-13 are the same tables for its single-encoder models, Table 6 its `[grounding]` vs
  `[identify]` ablation, Table 7 two example answers: none is a table of one evaluation run.)
* parse failures, skipped items, unavailable metrics (with reasons), intervals.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..records import _clean_floats, _json_default
from .figures import make_figures, plot_box_overlay, plot_detection_pr_curves, plot_label_pr_curves
from .formatting import PAPER_NUMBERS, TEXT_METRIC_NAMES
from .tables import (
    appendix_local_auc,
    appendix_mimic,
    appendix_paper_tables,
    appendix_per_label_localisation,
    baselines_comparison,
    detection_map_and_auc,
    finding_tables,
    parse_section,
    run_section,
    table2_global_diseases,
    table3_localisation,
    table4_text_stage1,
    table5_text_stage2,
    unavailable_metrics,
    validation_thresholds,
)

# The tables of `report.md`, in order, after the run section and the parse statistics.
SECTIONS = (
    finding_tables,
    table2_global_diseases,
    table3_localisation,
    table4_text_stage1,
    table5_text_stage2,
    detection_map_and_auc,
    validation_thresholds,
    baselines_comparison,
    appendix_paper_tables,
    appendix_per_label_localisation,
    appendix_mimic,
    appendix_local_auc,
    unavailable_metrics,
)


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike) -> None:
    """`metrics.json`: NaN/inf written as null, keys in a stable order."""
    Path(path).write_text(json.dumps(_clean_floats(metrics), indent=2, default=_json_default, allow_nan=False) + "\n")


def render_report(metrics: Mapping[str, Any], manifest: Mapping[str, Any] | None = None, figures: list[str] | None = None) -> str:
    """`report.md` of `metrics`: the run, the parse statistics, every table of `SECTIONS` that has something to show,
    and the `figures` (paths relative to the report)."""
    out = run_section(metrics, manifest or metrics.get("manifest") or {})
    out.append(parse_section(metrics))
    for section in SECTIONS:
        out += section(metrics)
    if figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(out)


__all__ = [
    "PAPER_NUMBERS",
    "SECTIONS",
    "TEXT_METRIC_NAMES",
    "make_figures",
    "plot_box_overlay",
    "plot_detection_pr_curves",
    "plot_label_pr_curves",
    "render_report",
    "write_metrics_json",
]
