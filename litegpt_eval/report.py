"""Outputs of an evaluation: `metrics.json`, `report.md` (laid out like the paper's tables) and PNG figures.

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
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from processing_litegpt import NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

from .records import _clean_floats, _json_default

# The paper's reported numbers for its BiomedCLIP + PubMedCLIP - Llama 2 model (LiteGPT), by table.
TEXT_METRIC_NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu1", "bleu2", "bleu3", "bleu4", "meteor",
                     "meteor_coco", "cider", "cider_paper")  # fmt: skip
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


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike) -> None:
    """`metrics.json`: NaN/inf written as null, keys in a stable order."""
    Path(path).write_text(json.dumps(_clean_floats(metrics), indent=2, default=_json_default, allow_nan=False) + "\n")


# ======================================================================================= formatting


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * float(value):.2f}"


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _ci(metrics: Mapping[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    interval = metrics.get("confidence_intervals", {}).get(key)
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return ""
    low, high = interval["low"], interval["high"]
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return ""
    return f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _get(tree: Any, *keys, default=None):
    for key in keys:
        if not isinstance(tree, Mapping) or key not in tree:
            return default
        tree = tree[key]
    return tree


def _classification_table(
    report: Mapping[str, Any], labels, metrics=None, ci_prefix: str | None = None,
    paper_f1: Mapping[str, float] | None = None, paper_avg_f1: Mapping[str, float] | None = None,
) -> str:
    """Per-label and averaged P / R / F1 / support; with `paper_f1`, a column of the paper's F1 (as %)."""
    rows = []
    for label in labels:
        entry = report["labels"].get(label)
        if entry is None:
            continue
        ci = _ci(metrics, f"{ci_prefix}.labels.{label}.f1", 100) if metrics is not None and ci_prefix else ""
        row = [label, _pct(entry["precision"]), _pct(entry["recall"]), _pct(entry["f1"]) + ci, entry["support"]]
        rows.append(row + ([_pct(paper_f1.get(label))] if paper_f1 is not None else []))
    for average in ("micro", "macro", "macro_present", "weighted", "samples"):
        entry = report["averages"].get(average)
        if entry is None:
            continue
        ci = _ci(metrics, f"{ci_prefix}.averages.{average}.f1", 100) if metrics is not None and ci_prefix else ""
        row = [f"*{average} avg*", _pct(entry["precision"]), _pct(entry["recall"]), _pct(entry["f1"]) + ci, entry["support"]]
        if paper_f1 is not None:
            row.append(_pct((paper_avg_f1 or {}).get(average)) if average in (paper_avg_f1 or {}) else "")
        rows.append(row)
    return _table(["label", "P", "R", "F1", "support"] + (["paper F1"] if paper_f1 is not None else []), rows)


def _finding_table(metrics: Mapping[str, Any], task_name: str, with_paper: bool) -> str:
    """Finding / No finding P / R / F1 of one task under the three protocols (+ the paper's Table 1 values)."""
    task = metrics["tasks"][task_name]
    rows = []
    for cls in ("Finding", NO_FINDING):
        paper = PAPER_NUMBERS["table1"][cls]
        for protocol in ("strict", "failures_excluded", "paper"):
            e = task["finding"][protocol][cls]
            ci = _ci(metrics, f"tasks.{task_name}.finding.strict.{cls}.f1", 100) if protocol == "strict" else ""
            row = [cls, protocol, _pct(e["precision"]), _pct(e["recall"]), _pct(e["f1"]) + ci, e["support"]]
            rows.append(row + ([f"{paper[0]} / {paper[1]} / {paper[2]}" if protocol == "paper" else ""] if with_paper else []))
    header = ["class", "protocol", "P", "R", "F1", "support"] + (["paper P / R / F1"] if with_paper else [])
    return _table(header, rows)


def _text_table(metrics: Mapping[str, Any], task_name: str, variants: tuple[str, ...], paper: Mapping[str, float]) -> str:
    """Text metrics of one task's answers, one row per variant, then the paper's row."""
    text = metrics["tasks"][task_name]["text"]
    rows = []
    for variant in variants:
        values, unavailable = text[variant]["values"], text[variant]["unavailable"]
        rows.append([variant] + [_num(values[n]) + _ci(metrics, f"tasks.{task_name}.text.{variant}.values.{n}") if n in values
                                 else ("unavailable" if n in unavailable else "-") for n in TEXT_METRIC_NAMES])  # fmt: skip
    rows.append(["paper's reported"] + [_num(paper[n]) if n in paper else "" for n in TEXT_METRIC_NAMES])
    return _table(["variant", *TEXT_METRIC_NAMES], rows)


TEXT_METRIC_NOTE = ("`cider` = correct argument order; `cider_paper` = [C]'s swapped call (the paper's CIDEr protocol). "
                    "`meteor` = NLTK (evaluate's, the paper's); `meteor_coco` = Java METEOR 1.5.")  # fmt: skip


# ======================================================================================= report.md


def _headline_scale(key: str) -> tuple[float, int]:
    """(scale, digits) of a headline metric in Table 7: percentages x100, Acc@IoU (already %) and mAP as they are."""
    scale = 1.0 if "acc_iou.paper" in key or ".text." in key or key.endswith(".map") else 100.0
    return scale, 3 if key.endswith(".map") else 2


def _paired_difference_table(table: list[dict[str, Any]]) -> list[str]:
    """Model minus each baseline with the 95 % paired-bootstrap interval of the difference (rows that have it)."""
    names = list(dict.fromkeys(n for row in table for n in row.get("differences", {})))
    if not names:
        return []
    rows = []
    for row in table:
        scale, digits = _headline_scale(row["key"])
        cells = []
        for name in names:
            diff = row.get("differences", {}).get(name)
            if not diff or "difference" not in diff:
                cells.append("-")
                continue
            mark = " *" if diff["excludes_zero"] else ""
            cells.append(f"{diff['difference'] * scale:+.{digits}f} [{diff['low'] * scale:+.{digits}f}, "
                         f"{diff['high'] * scale:+.{digits}f}]{mark}")
        rows.append([row["label"], *cells])
    return [("Model minus each baseline, with the 95 % interval of the difference over paired bootstrap resamples "
             "(the same test images drawn for both); * = the interval excludes 0."), "",
            _table(["metric", *[f"model - {n}" for n in names]], rows), ""]


def render_report(metrics: Mapping[str, Any], manifest: Mapping[str, Any] | None = None, figures: list[str] | None = None) -> str:
    tasks = metrics.get("tasks", {})
    out = ["# LiteGPT-CXR evaluation report", ""]
    manifest = manifest or metrics.get("manifest") or {}
    baseline = metrics.get("baseline")
    if baseline:
        out += [(f"**Baseline `{baseline.get('name')}`** - {baseline.get('definition')}. Its answers are scored by "
                 "the same code and protocols as the model's."), ""]  # fmt: skip
    if manifest:
        out += ["## Run", ""]
        for key in ("model", "dataset", "split", "predictions", "command", "commit", "decoding", "created"):
            if key in manifest:
                value = manifest[key]
                out.append(f"- **{key}**: `{json.dumps(value) if isinstance(value, (dict, list)) else value}`")
        out.append("")
    out += [
        (
            "All numbers are percentages unless stated (CIDEr x 10 as in COCO; mAP and AUC in [0, 1]). Brackets: 95 % "
            "percentile bootstrap over images (B and seed in `metrics.json`). Protocols: **strict** = exact, "
            "negation-aware parsing, a parse failure predicts nothing and stays counted; **failures excluded** = "
            "failed answers removed; **paper** = the reference code's protocol ([C]: substring label matching, regex "
            "boxes)."
        ),
        "",
        _parse_section(metrics),
    ]
    g, d = tasks.get("grounding"), tasks.get("diagnosis")

    # ---------------- Table 1 (from stage 2, as the paper's caption says) + stage 1's row, ours
    out += ["## Table 1 - Finding vs No finding (stage-2 `[vqa]` answers)", ""]
    if d:
        out += ["From the stage-2 diagnosis answers, as the paper's Table 1.", "", _finding_table(metrics, "diagnosis", True), "",
                f"*{PAPER_PROTOCOL_NOTE}.*", ""]  # fmt: skip
    else:
        out += ["Not computed here: the paper's Table 1 comes from the stage-2 `[vqa]` answers and this run scored none "
                "(evaluate the diagnosis stage).", ""]  # fmt: skip
    if g:
        out += ["## Ours - Finding vs No finding from the stage-1 answers", "",
                ("Not the paper's Table 1 (which is computed from stage 2): Finding = the stage-1 answer lists a finding or "
                 "'None', No finding = it answers 'No finding'."), "", _finding_table(metrics, "grounding", False), ""]  # fmt: skip

    # ---------------- Table 2
    if d:
        out += ["## Table 2 - Global diseases (stage 2)", ""]
        strict = d["classification"]["strict"]
        out += [_classification_table(strict, VINDR_GLOBAL_LABELS, metrics, "tasks.diagnosis.classification.strict"), ""]
        rows = [[p, _pct(d["classification"][p]["averages"]["micro"]["f1"]), _pct(d["classification"][p]["averages"]["macro"]["f1"]),
                 _pct(d["classification"][p]["averages"]["weighted"]["f1"])] for p in ("strict", "failures_excluded", "paper")]  # fmt: skip
        out += ["Averages by protocol (F1):", "", _table(["protocol", "micro", "macro", "weighted"], rows), "",
                f"Paper: global F1 {PAPER_NUMBERS['global_f1']:.0f} % ({PAPER_PROTOCOL_NOTE}).", ""]  # fmt: skip

    # ---------------- Table 3
    if g:
        loc = g["localization"]
        out += ["## Table 3 - Localisation accuracy (Acc@IoU)", ""]
        acc_iou = loc["acc_iou"]
        rows = []
        for protocol, name in (("paper", "paper ([C]: any same-label box, grid IoU +1, hits / all reference boxes)"),
                               ("paper_conditional", "paper, conditional (same hits / reference boxes of labels the answer names)")):
            entry = acc_iou[protocol]
            rows.append([name] + [_num(entry[t]) + _ci(metrics, f"tasks.grounding.localization.acc_iou.{protocol}.{t}")
                                  for t in ("0.3", "0.4", "0.5")])  # fmt: skip
        for metric in ("recall", "precision", "f1"):
            rows.append([f"matched one-to-one, {metric}"] + [
                _pct(acc_iou["matched"][t]["overall"][metric])
                + (_ci(metrics, f"tasks.grounding.localization.acc_iou.matched.{t}.overall.{metric}", 100) if metric != "precision" else "")
                for t in ("0.3", "0.4", "0.5")
            ])  # fmt: skip
        rows.append(["paper's reported values"] + [_num(PAPER_NUMBERS["acc_iou"][t]) for t in ("0.3", "0.4", "0.5")])
        paper = acc_iou["paper"]
        out += [_table(["protocol", "IoU 0.3", "IoU 0.4", "IoU 0.5"], rows), "",
                (f"Reference boxes: {paper['gt_boxes']} in {paper['images_with_gt_boxes']} images, "
                 f"{acc_iou['paper_conditional']['gt_boxes_label_predicted']} of them of a label the answer names. The "
                 "paper describes the conditional reading (section 4.5: only correctly classified findings are "
                 "included); its released code divides by all reference boxes."), ""]  # fmt: skip

        # ---------------- Table 4
        if "text" in g:
            out += ["## Table 4 - Text metrics of stage-1 answers (boxes removed)", "",
                    _text_table(metrics, "grounding", ("paper", "tag_free"), PAPER_NUMBERS["text_stage1"]), "",
                    TEXT_METRIC_NOTE, ""]  # fmt: skip

    # ---------------- Table 5
    if d and "text" in d:
        out += ["## Table 5 - Text metrics of stage-2 answers", "",
                _text_table(metrics, "diagnosis", ("paper",), PAPER_NUMBERS["text_stage2"]), "",
                TEXT_METRIC_NOTE + " Stage-2 answers carry no boxes or tags: `paper` scores them as written.", ""]  # fmt: skip

    # ---------------- ours: detection mAP and label AUC
    rows = []
    if g:
        for t in ("0.4", "0.5"):
            for taxonomy in ("vindr22", "kaggle14"):
                entry = g["localization"]["map"][t][taxonomy]
                rows.append([f"mAP@{t} {taxonomy}", _num(entry["map"], 3) + _ci(metrics, f"tasks.grounding.localization.map.{t}.{taxonomy}.map", 1, 3),
                             f"{entry['n_classes']} classes", "Kaggle VinBigData 1st: 0.314 (private LB, other split)" if (t, taxonomy) == ("0.4", "kaggle14") else ""])  # fmt: skip
        rows.append(["box confidence", g["localization"]["box_confidence"], "", ""])
    if g and "auc" in g:
        auc = g["auc"]
        reason = auc.get("unavailable", {}).get("all", "")
        excluded = ", ".join(auc.get("no_positive_labels", []))
        rows.append(["macro AUC, local labels (stage 1)", _num(auc.get("macro"), 3) + _ci(metrics, "tasks.grounding.auc.macro", 1, 3),
                     f"{auc.get('n_labels', 0)} labels", reason or (f"excluded, no positive: {excluded}" if excluded else "")])  # fmt: skip
    if d:
        auc = d["auc"]
        rows.append(["macro AUC, global labels", _num(auc.get("macro"), 3) + _ci(metrics, "tasks.diagnosis.auc.macro", 1, 3),
                     f"{auc.get('n_labels', 0)} labels", "VinDr team system: 0.967 (other 3,000-scan set)"])  # fmt: skip
        for label in VINDR_GLOBAL_LABELS:
            value = auc["labels"].get(label)
            if label in auc.get("labels", {}):
                rows.append([f"AUC {label}", _num(value, 3) + _ci(metrics, f"tasks.diagnosis.auc.labels.{label}", 1, 3), "", auc["unavailable"].get(label, "")])
        if "all" in auc.get("unavailable", {}):
            rows.append(["AUC", "unavailable", "", auc["unavailable"]["all"]])
    e = tasks.get("existence")
    if e:
        rows.append(["MIMIC existence macro AUC", _num(e.get("macro_auc"), 3), f"{len(e['entities'])} entities", "MedKLIP: per-class AUC, thresholds tuned on test"])
    if rows:
        out += ["## Ours - Detection mAP and label AUC (beyond the paper)", "", _table(["metric", "value", "n", "reference"], rows), ""]

    # ---------------- ours: validation thresholds
    thr_rows = []
    for task_name, task in (("grounding", g), ("diagnosis", d)):
        entry = (task or {}).get("thresholded")
        if not entry:
            continue
        if "classification" not in entry:
            thr_rows.append([task_name, "unavailable", "", "", entry.get("unavailable", {}).get("all", "")])
            continue
        averages = entry["classification"]["averages"]
        prefix = f"tasks.{task_name}.thresholded.classification.averages"
        greedy = task["classification"]["strict"]["averages"]
        for average in ("micro", "macro"):
            thr_rows.append([task_name, average,
                             " / ".join(_pct(averages[average][m]) for m in ("precision", "recall", "f1")) + _ci(metrics, f"{prefix}.{average}.f1", 100),
                             " / ".join(_pct(greedy[average][m]) for m in ("precision", "recall", "f1")),
                             f"{entry.get('n_validation')} validation answers"])  # fmt: skip
    e = tasks.get("existence")
    ex_thr = (e or {}).get("thresholded")
    if ex_thr:
        thr_rows.append(["existence", "accuracy", _pct(ex_thr.get("accuracy")) + _ci(metrics, "tasks.existence.thresholded.accuracy", 100),
                         _pct(e.get("accuracy")), ex_thr.get("unavailable", {}).get("all", f"{ex_thr.get('n_validation')} validation answers")])  # fmt: skip
    if thr_rows:
        out += ["## Ours - Extra protocol: label confidences cut at validation-tuned thresholds", "",
                ("Not the headline. Per label, the threshold maximising F1 on the VALIDATION predictions is applied "
                 "unchanged to these test predictions (never tuned on test); labels without validation positives are "
                 "never predicted. Greedy = the headline strict protocol, for comparison."), "",
                _table(["task", "average", "thresholded P / R / F1", "greedy (strict) P / R / F1", "validation"], thr_rows), ""]  # fmt: skip
        for task_name, task in (("grounding", g), ("diagnosis", d)):
            entry = (task or {}).get("thresholded")
            if entry and "classification" in entry:
                labels = VINDR_LOCAL_LABELS if task_name == "grounding" else VINDR_GLOBAL_LABELS
                rows = [[label, _num(entry["thresholds"].get(label), 4) if entry["thresholds"].get(label) is not None else "never",
                         _pct(entry["validation_f1"].get(label)), _pct(entry["classification"]["labels"][label]["precision"]),
                         _pct(entry["classification"]["labels"][label]["recall"]),
                         _pct(entry["classification"]["labels"][label]["f1"])
                         + _ci(metrics, f"tasks.{task_name}.thresholded.classification.labels.{label}.f1", 100),
                         entry["classification"]["labels"][label]["support"]] for label in labels]  # fmt: skip
                out += [f"Per label ({task_name}):", "",
                        _table(["label", "threshold", "validation F1", "test P", "test R", "test F1", "support"], rows), ""]  # fmt: skip

    # ---------------- ours: baselines
    baselines = metrics.get("baselines")
    if baselines and baselines.get("table"):
        names = [n for n in ("model", *baselines.get("definitions", {})) if any(n in row["values"] for row in baselines["table"])]
        rows = []
        for row in baselines["table"]:
            cells = []
            for name in names:
                value = row["values"].get(name)
                if value is None or value.get("value") is None:
                    cells.append("-")
                    continue
                scale, digits = _headline_scale(row["key"])
                ci = f" [{value['ci'][0] * scale:.{digits}f}, {value['ci'][1] * scale:.{digits}f}]" if value.get("ci") else ""
                cells.append(f"{value['value'] * scale:.{digits}f}{ci}")
            rows.append([row["label"], *cells])
        header = ["metric"] + [("**" + n + "**") if n == "model" else (n + " (reference)" if n == "oracle_labels_mean_box" else n) for n in names]
        out += ["## Ours - Trivial baselines vs the model", "",
                ("Baselines are fitted on the training split and answer in the model's format; their answers are scored "
                 "by the same code. `oracle_labels_mean_box` knows the TRUE test labels: an informational upper reference "
                 "for position-agnostic boxes, not a baseline. Percentages except Acc@IoU (already %), mAP."), "",
                _table(header, rows), ""]  # fmt: skip
        out += _paired_difference_table(baselines["table"])
        out += [f"- `{name}`: {definition}" for name, definition in baselines.get("definitions", {}).items()]
        training = baselines.get("training", {})
        out += [(f"- training: {training.get('images', 0)} images ({training.get('dataset', '?')}, split "
                 f"{training.get('split', '?')}); most frequent local labels: {training.get('most_frequent_local')}, "
                 f"global: {training.get('most_frequent_global')}"), ""]  # fmt: skip

    # ---------------- Appendix
    out += ["## Appendix", ""]
    if g:
        out += ["### Table 8 - Local labels (stage 1), paper protocol ([C] substring matching)", "",
                _classification_table(g["classification"]["paper"], VINDR_LOCAL_LABELS, paper_f1=PAPER_NUMBERS["table8_f1"],
                                      paper_avg_f1=PAPER_NUMBERS["table8_avg_f1"]), "",
                "### Ours - Local labels (stage 1), strict protocol", "",
                _classification_table(g["classification"]["strict"], VINDR_LOCAL_LABELS, metrics, "tasks.grounding.classification.strict"), ""]  # fmt: skip
    if d:
        out += ["### Table 11 - Global labels (stage 2), paper protocol", "",
                _classification_table(d["classification"]["paper"], VINDR_GLOBAL_LABELS, paper_f1=PAPER_NUMBERS["table11_f1"],
                                      paper_avg_f1=PAPER_NUMBERS["table11_avg_f1"]), ""]  # fmt: skip
    if g:
        maps = g["localization"]["map"]
        labels = list(VINDR_LOCAL_LABELS) + [NO_FINDING]
        rows = []
        for label in labels:
            cells = [maps[t][tax]["ap"].get(label) for t in ("0.4", "0.5") for tax in ("vindr22", "kaggle14")]
            if all(c is None for c in cells):
                continue
            rows.append([label] + [_num(c, 3) if c is not None else "-" for c in cells])
        out += ["### Ours - Average precision per label", "",
                _table(["label", "AP@0.4 vindr22", "AP@0.4 kaggle14", "AP@0.5 vindr22", "AP@0.5 kaggle14"], rows), ""]  # fmt: skip
        matched = g["localization"]["acc_iou"]["matched"]
        rows = []
        for label in VINDR_LOCAL_LABELS:
            cells = [matched[t]["labels"].get(label) for t in ("0.3", "0.4", "0.5")]
            if all(c is None for c in cells):
                continue
            rows.append([label] + [f"{_pct(c['precision'])} / {_pct(c['recall'])} / {_pct(c['f1'])}" if c else "-" for c in cells]
                        + [str(cells[2]["tp"] + cells[2]["fn"]) if cells[2] else "-"])  # fmt: skip
        out += ["### Ours - Matched localisation per label (P / R / F1)", "",
                _table(["label", "IoU 0.3", "IoU 0.4", "IoU 0.5", "reference boxes"], rows), ""]  # fmt: skip
    if e:
        rows = [[entity, v["n"], v["positives"], _num(v.get("auc"), 3) + _ci(metrics, f"tasks.existence.entities.{entity}.auc", 1, 3),
                 _pct(v["accuracy"]), _pct(v["greedy_precision"]), _pct(v["greedy_recall"]), _pct(v["greedy_f1"]), v["failures"]]
                for entity, v in e["entities"].items()]  # fmt: skip
        out += ["### Ours - MIMIC-CXR existence per entity (MedKLIP-style)", "",
                _table(["entity", "n", "positives", "AUC", "ACC (greedy)", "P", "R", "F1", "parse failures"], rows), "",
                (f"Overall accuracy {_pct(e['accuracy'])}{_ci(metrics, 'tasks.existence.accuracy', 100)}; "
                 f"macro AUC {_num(e.get('macro_auc'), 3)}. Greedy answers are used as decisions (no threshold tuned on test)."), ""]  # fmt: skip
    r = tasks.get("report")
    if r:
        values, unavailable = r["text"]["raw"]["values"], r["text"]["raw"]["unavailable"]
        rows = [[name, _num(value) + _ci(metrics, f"tasks.report.text.raw.values.{name}")] for name, value in values.items()]
        rows += [[name, f"unavailable: {reason}"] for name, reason in unavailable.items()]
        out += ["### Ours - MIMIC-CXR report generation text metrics", "", _table(["metric", "value"], rows), ""]

    if g and g.get("auc", {}).get("labels"):
        auc = g["auc"]
        rows = [[label, _num(auc["labels"].get(label), 3) + _ci(metrics, f"tasks.grounding.auc.labels.{label}", 1, 3),
                 auc["unavailable"].get(label, "")] for label in VINDR_LOCAL_LABELS]  # fmt: skip
        out += ["### Ours - Local labels (stage 1): AUC of the label-slot confidences", "",
                _table(["label", "AUC", "note"], rows), ""]  # fmt: skip

    if metrics.get("unavailable"):
        out += ["## Unavailable metrics", "", "These could not be computed here; no number is reported for them.", ""]
        out += [f"- `{key}`: {reason}" for key, reason in metrics["unavailable"].items()]
        out.append("")
    if figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(out)


def _parse_section(metrics: Mapping[str, Any], max_ids: int = 50) -> str:
    rows, lines = [], []
    for task, entry in metrics.get("tasks", {}).items():
        p = entry["parse"]
        rows.append([task, p["n"], p["failures"], _pct(p["failure_rate"]), p["missing_predictions"], p["truncated"], p["contradictions"]])
        if p["failed_ids"]:
            listed = ", ".join(f"`{i}`" for i in p["failed_ids"][:max_ids])
            more = f" (+{len(p['failed_ids']) - max_ids} more in metrics.json)" if len(p["failed_ids"]) > max_ids else ""
            lines.append(f"- {task} failed ids: {listed}{more}")
    skipped = metrics.get("counts", {}).get("skipped", {})
    text = ["## Parsing", "", _table(["task", "answers", "parse failures", "failure %", "missing predictions", "truncated", "contradictions"], rows), ""]
    text += lines
    if skipped:
        text += ["", "Skipped (counted, listed in metrics.json `counts.skipped_items`): " + ", ".join(f"{k}: {v}" for k, v in skipped.items())]
    return "\n".join(text) + "\n"


# ======================================================================================= figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_pr_figure(plt, fig, ax, drawn: int, path, title: str, legend_fontsize: int, legend_loc: str) -> str | None:
    """Label, save and close a precision-recall figure; None (nothing written) when no curve was drawn."""
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=legend_fontsize, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_label_pr_curves(y_true: np.ndarray, scores: np.ndarray, labels, path: str | os.PathLike, title: str) -> str | None:
    """Per-label precision-recall curves of label confidences (sklearn's `precision_recall_curve`)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    drawn = 0
    for k, label in enumerate(labels):
        if y_true[:, k].sum() == 0 or y_true[:, k].sum() == len(y_true):
            continue
        precision, recall, _ = precision_recall_curve(y_true[:, k], scores[:, k])
        ap = average_precision_score(y_true[:, k], scores[:, k])
        ax.step(recall, precision, where="post", label=f"{label} (AP {ap:.2f})")
        drawn += 1
    return _save_pr_figure(plt, fig, ax, drawn, path, title, legend_fontsize=7, legend_loc="lower left")


def plot_detection_pr_curves(detections: Mapping[str, Any], path: str | os.PathLike, title: str, max_labels: int = 12) -> str | None:
    """Detection PR curves (VOC flags) of the classes with reference boxes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    drawn = 0
    ranked = sorted(detections.items(), key=lambda kv: -float(kv[1].gt_per_image.sum()))
    for label, det in ranked[:max_labels]:
        n_gt = float(det.gt_per_image.sum())
        if n_gt <= 0:
            continue
        order = np.argsort(-det.scores, kind="stable")
        tp = np.cumsum(det.tp[order])
        fp = np.cumsum(1 - det.tp[order])
        if not len(tp):
            recall, precision = np.array([0.0]), np.array([0.0])
        else:
            recall, precision = tp / n_gt, tp / np.maximum(tp + fp, 1e-12)
        ax.plot(recall, precision, label=f"{label} (AP {det.ap():.2f}, n={int(n_gt)})")
        drawn += 1
    return _save_pr_figure(plt, fig, ax, drawn, path, title, legend_fontsize=6, legend_loc="upper right")


def plot_box_overlay(row: Mapping[str, Any], path: str | os.PathLike, image: Any = None) -> str:
    """Predicted (red, with confidence) and reference (green) boxes on the image (grey canvas without it)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    width, height = row["ref"]["width"], row["ref"]["height"]
    fig, ax = plt.subplots(figsize=(5, 5 * height / width))
    if image is not None:
        from processing_litegpt import load_image

        pil = load_image(image).convert("L")
        ax.imshow(np.asarray(pil), cmap="gray", extent=(0, width, height, 0))
    else:
        ax.imshow(np.full((8, 8), 0.5), cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
        ax.text(width / 2, height / 2, "image not available", ha="center", va="center", color="white", fontsize=9)
    for label, box in zip(row["ref"]["box_labels"], row["ref"]["boxes"]):
        ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec="lime", lw=1.5))
        ax.text(box[0], box[3], label, color="lime", fontsize=6, va="top")
    for f in row["findings"]:
        box = f["box"]
        ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, ec="red", lw=1.2, ls="--"))
        score = "" if f.get("score") is None else f" {f['score']:.2f}"
        ax.text(box[0], box[1], f"{f['label']}{score}", color="red", fontsize=6, va="bottom")
    status = "parse failure" if row["failed"] else ("No finding" if row["no_finding"] else f"{len(row['findings'])} boxes")
    ax.set_title(f"{row['image_id']} - pred (red) vs reference (green) - {status}", fontsize=7)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def make_figures(
    extras: Mapping[str, Any], out_dir: str | os.PathLike, images: Mapping[str, Any] | None = None,
    n_overlays: int = 8, seed: int = 0,
) -> list[str]:
    """Write the figures under `out_dir/figures/`; returns their paths relative to `out_dir`."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    diag = extras.get("diagnosis", {})
    if "scores" in diag:
        p = plot_label_pr_curves(diag["y_true"], diag["scores"], VINDR_GLOBAL_LABELS, fig_dir / "pr_global_labels.png",
                                 "Global labels: PR curves of label confidences")  # fmt: skip
        if p:
            written.append(p)
    ground = extras.get("grounding", {})
    if "scores" in ground:
        p = plot_label_pr_curves(ground["y_true"], ground["scores"], VINDR_LOCAL_LABELS, fig_dir / "pr_local_labels.png",
                                 "Local labels: PR curves of label confidences")  # fmt: skip
        if p:
            written.append(p)
    for t, detections in ground.get("pr_detections", {}).items():
        p = plot_detection_pr_curves(detections, fig_dir / f"pr_local_detection_iou{t}.png", f"Local labels: detection PR at IoU > {t}")
        if p:
            written.append(p)
    rows = ground.get("rows", [])
    if rows and n_overlays:
        images = images or {}
        with_boxes = [r for r in rows if r["ref"]["boxes"] or r["findings"]]
        pool = sorted(with_boxes or rows, key=lambda r: r["id"])
        rng = np.random.default_rng(seed)
        chosen = [pool[k] for k in sorted(rng.choice(len(pool), size=min(n_overlays, len(pool)), replace=False))]
        overlay_dir = fig_dir / "box_overlays"
        overlay_dir.mkdir(exist_ok=True)
        for row in chosen:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in row["id"])
            written.append(plot_box_overlay(row, overlay_dir / f"{safe}.png", images.get(row["id"])))
    return [os.path.relpath(p, out_dir) for p in written]


__all__ = [
    "PAPER_NUMBERS",
    "make_figures",
    "plot_box_overlay",
    "plot_detection_pr_curves",
    "plot_label_pr_curves",
    "render_report",
    "write_metrics_json",
]
