"""Formatting of `report.md`: numbers, intervals, markdown tables, and the paper's reported numbers the tables put
beside ours."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from codec_litegpt import NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

TEXT_METRIC_NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu2", "bleu3", "bleu4", "meteor",
                     "meteor_coco", "cider", "cider_paper")  # fmt: skip
# The paper's reported numbers for its BiomedCLIP + PubMedCLIP - Llama 2 model (LiteGPT), by table.
_PAPER_TEXT_COLUMNS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider_paper")
PAPER_NUMBERS = {
    "table1": {"Finding": (84, 59, 70), NO_FINDING: (83, 95, 89)},
    "global_f1": 60.0,  # Table 2
    "acc_iou": {"0.3": 12.54, "0.4": 10.5, "0.5": 8.12},  # Table 3
    # Tables 4 and 5: the paper's METEOR is NLTK's (through `evaluate`), its CIDEr the released code's swapped call.
    "text_stage1": dict(zip(_PAPER_TEXT_COLUMNS, (50.1, 40.58, 48.75, 48.74, 28.96, 27.02, 25.37, 23.74, 61.92, 0.56), strict=True)),
    "text_stage2": dict(zip(_PAPER_TEXT_COLUMNS, (95.12, 94.08, 95.12, 95.12, 94.45, 92.70, 91.60, 90.56, 94.74, 7.52), strict=True)),
    # Appendix Table 8 (local labels, F1 in [0, 1]) and Table 11 (global labels).
    "table8_f1": dict(zip(VINDR_LOCAL_LABELS, (0.47, 0.00, 0.01, 0.61, 0.00, 0.00, 0.00, 0.00, 0.00, 0.01, 0.03, 0.09,
                                               0.00, 0.00, 0.00, 0.04, 0.34, 0.38, 0.00, 0.36, 0.00, 0.00), strict=True)),
    "table8_avg_f1": {"micro": 0.32, "macro": 0.11, "weighted": 0.23, "samples": 0.29},
    "table11_f1": dict(zip(VINDR_GLOBAL_LABELS, (0.40, 0.18, 0.47, 0.28, 0.59, 0.89), strict=True)),
    "table11_avg_f1": {"micro": 0.76, "macro": 0.47, "weighted": 0.74, "samples": 0.79},
    "kaggle_map04": 0.314,
}
PAPER_PROTOCOL_NOTE = "paper values: VinDr test, [C] substring parsing, sampling (T 0.6 / 0.1)"


def fmt_pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * float(value):.2f}"


def fmt_num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def fmt_ci(metrics: Mapping[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    interval = metrics.get("confidence_intervals", {}).get(key)
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return ""
    low, high = interval["low"], interval["high"]
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return ""
    return f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def nested_get(tree: Any, *keys, default=None):
    for key in keys:
        if not isinstance(tree, Mapping) or key not in tree:
            return default
        tree = tree[key]
    return tree


def classification_table(
    report: Mapping[str, Any], labels, metrics=None, ci_prefix: str | None = None,
    paper_f1: Mapping[str, float] | None = None, paper_avg_f1: Mapping[str, float] | None = None,
) -> str:
    """Per-label and averaged P / R / F1 / support; with `paper_f1`, a column of the paper's F1 (as %)."""
    rows = []
    for label in labels:
        entry = report["labels"].get(label)
        if entry is None:
            continue
        ci = fmt_ci(metrics, f"{ci_prefix}.labels.{label}.f1", 100) if metrics is not None and ci_prefix else ""
        row = [label, fmt_pct(entry["precision"]), fmt_pct(entry["recall"]), fmt_pct(entry["f1"]) + ci, entry["support"]]
        rows.append(row + ([fmt_pct(paper_f1.get(label))] if paper_f1 is not None else []))
    for average in ("micro", "macro", "macro_present", "weighted", "samples"):
        entry = report["averages"].get(average)
        if entry is None:
            continue
        ci = fmt_ci(metrics, f"{ci_prefix}.averages.{average}.f1", 100) if metrics is not None and ci_prefix else ""
        row = [f"*{average} avg*", fmt_pct(entry["precision"]), fmt_pct(entry["recall"]), fmt_pct(entry["f1"]) + ci, entry["support"]]
        if paper_f1 is not None:
            row.append(fmt_pct((paper_avg_f1 or {}).get(average)) if average in (paper_avg_f1 or {}) else "")
        rows.append(row)
    return markdown_table(["label", "P", "R", "F1", "support"] + (["paper F1"] if paper_f1 is not None else []), rows)


def finding_table(metrics: Mapping[str, Any], task_name: str, with_paper: bool) -> str:
    """Finding / No finding P / R / F1 of one task under the three protocols (+ the paper's Table 1 values)."""
    task = metrics["tasks"][task_name]
    rows = []
    for cls in ("Finding", NO_FINDING):
        paper = PAPER_NUMBERS["table1"][cls]
        for protocol in ("strict", "failures_excluded", "paper"):
            e = task["finding"][protocol][cls]
            ci = fmt_ci(metrics, f"tasks.{task_name}.finding.strict.{cls}.f1", 100) if protocol == "strict" else ""
            row = [cls, protocol, fmt_pct(e["precision"]), fmt_pct(e["recall"]), fmt_pct(e["f1"]) + ci, e["support"]]
            rows.append(row + ([f"{paper[0]} / {paper[1]} / {paper[2]}" if protocol == "paper" else ""] if with_paper else []))
    header = ["class", "protocol", "P", "R", "F1", "support"] + (["paper P / R / F1"] if with_paper else [])
    return markdown_table(header, rows)


def text_table(metrics: Mapping[str, Any], task_name: str, variants: tuple[str, ...], paper: Mapping[str, float]) -> str:
    """Text metrics of one task's answers, one row per variant, then the paper's row."""
    text = metrics["tasks"][task_name]["text"]
    rows = []
    for variant in variants:
        values, unavailable = text[variant]["values"], text[variant]["unavailable"]
        rows.append([variant] + [fmt_num(values[n]) + fmt_ci(metrics, f"tasks.{task_name}.text.{variant}.values.{n}") if n in values
                                 else ("unavailable" if n in unavailable else "-") for n in TEXT_METRIC_NAMES])  # fmt: skip
    rows.append(["paper's reported"] + [fmt_num(paper[n]) if n in paper else "" for n in TEXT_METRIC_NAMES])
    return markdown_table(["variant", *TEXT_METRIC_NAMES], rows)


TEXT_METRIC_NOTE = ("`cider` = correct argument order; `cider_paper` = [C]'s swapped call (the paper's CIDEr protocol). "
                    "`meteor` = NLTK (evaluate's, the paper's); `meteor_coco` = Java METEOR 1.5.")  # fmt: skip


def headline_scale(key: str) -> tuple[float, int]:
    """(scale, digits) of a headline metric in Table 7: percentages x100, Acc@IoU (already %) and mAP as they are."""
    scale = 1.0 if "acc_iou.paper" in key or ".text." in key or key.endswith(".map") else 100.0
    return scale, 3 if key.endswith(".map") else 2
