"""The sections of `report.md`, one function per table: each takes the metrics dictionary and returns its markdown
lines (none when the evaluation scored nothing the table shows). `render_report` puts them in order."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from codec_litegpt import NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

from .formatting import (
    PAPER_NUMBERS,
    PAPER_PROTOCOL_NOTE,
    TEXT_METRIC_NOTE,
    classification_table,
    finding_table,
    fmt_ci,
    fmt_num,
    fmt_pct,
    headline_scale,
    markdown_table,
    text_table,
)


def run_section(metrics: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[str]:
    """The title, what a baseline's report scores, the run's manifest and the reading guide of every table."""
    out = ["# LiteGPT-CXR evaluation report", ""]
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
    ]
    return out


def parse_section(metrics: Mapping[str, Any], max_ids: int = 50) -> str:
    rows, lines = [], []
    for task, entry in metrics.get("tasks", {}).items():
        p = entry["parse"]
        rows.append([task, p["n"], p["failures"], fmt_pct(p["failure_rate"]), p["missing_predictions"], p["truncated"], p["contradictions"]])
        if p["failed_ids"]:
            listed = ", ".join(f"`{i}`" for i in p["failed_ids"][:max_ids])
            more = f" (+{len(p['failed_ids']) - max_ids} more in metrics.json)" if len(p["failed_ids"]) > max_ids else ""
            lines.append(f"- {task} failed ids: {listed}{more}")
    skipped = metrics.get("counts", {}).get("skipped", {})
    text = ["## Parsing", "", markdown_table(["task", "answers", "parse failures", "failure %", "missing predictions", "truncated", "contradictions"], rows), ""]
    text += lines
    if skipped:
        text += ["", "Skipped (counted, listed in metrics.json `counts.skipped_items`): " + ", ".join(f"{k}: {v}" for k, v in skipped.items())]
    return "\n".join(text) + "\n"


def finding_tables(metrics: Mapping[str, Any]) -> list[str]:
    """Table 1 (Finding vs No finding from the stage-2 answers, as the paper's caption says) and stage 1's own row."""
    tasks = metrics.get("tasks", {})
    g = tasks.get("grounding")
    d = tasks.get("diagnosis")
    out: list[str] = []
    out += ["## Table 1 - Finding vs No finding (stage-2 `[vqa]` answers)", ""]
    if d:
        out += ["From the stage-2 diagnosis answers, as the paper's Table 1.", "", finding_table(metrics, "diagnosis", True), "",
                f"*{PAPER_PROTOCOL_NOTE}.*", ""]  # fmt: skip
    else:
        out += ["Not computed here: the paper's Table 1 comes from the stage-2 `[vqa]` answers and this run scored none "
                "(evaluate the diagnosis stage).", ""]  # fmt: skip
    if g:
        out += ["## Ours - Finding vs No finding from the stage-1 answers", "",
                ("Not the paper's Table 1 (which is computed from stage 2): Finding = the stage-1 answer lists a finding or "
                 "'None', No finding = it answers 'No finding'."), "", finding_table(metrics, "grounding", False), ""]  # fmt: skip
    return out


def table2_global_diseases(metrics: Mapping[str, Any]) -> list[str]:
    """Table 2: global diseases (stage 2) per label, averages by protocol."""
    tasks = metrics.get("tasks", {})
    d = tasks.get("diagnosis")
    out: list[str] = []
    if d:
        out += ["## Table 2 - Global diseases (stage 2)", ""]
        strict = d["classification"]["strict"]
        out += [classification_table(strict, VINDR_GLOBAL_LABELS, metrics, "tasks.diagnosis.classification.strict"), ""]
        rows = [[p, fmt_pct(d["classification"][p]["averages"]["micro"]["f1"]), fmt_pct(d["classification"][p]["averages"]["macro"]["f1"]),
                 fmt_pct(d["classification"][p]["averages"]["weighted"]["f1"])] for p in ("strict", "failures_excluded", "paper")]  # fmt: skip
        out += ["Averages by protocol (F1):", "", markdown_table(["protocol", "micro", "macro", "weighted"], rows), "",
                f"Paper: global F1 {PAPER_NUMBERS['global_f1']:.0f} % ({PAPER_PROTOCOL_NOTE}).", ""]  # fmt: skip
    return out


def table3_localisation(metrics: Mapping[str, Any]) -> list[str]:
    """Table 3: Acc@IoU under the released code's and the paper's readings, and one-to-one matching."""
    tasks = metrics.get("tasks", {})
    g = tasks.get("grounding")
    out: list[str] = []
    if g:
        loc = g["localization"]
        out += ["## Table 3 - Localisation accuracy (Acc@IoU)", ""]
        acc_iou = loc["acc_iou"]
        rows = []
        for protocol, name in (("paper", "paper ([C]: any same-label box, grid IoU +1, hits / all reference boxes)"),
                               ("paper_conditional", "paper, conditional (same hits / reference boxes of labels the answer names)")):
            entry = acc_iou[protocol]
            rows.append([name] + [fmt_num(entry[t]) + fmt_ci(metrics, f"tasks.grounding.localization.acc_iou.{protocol}.{t}")
                                  for t in ("0.3", "0.4", "0.5")])  # fmt: skip
        for metric in ("recall", "precision", "f1"):
            rows.append([f"matched one-to-one, {metric}"] + [
                fmt_pct(acc_iou["matched"][t]["overall"][metric])
                + (fmt_ci(metrics, f"tasks.grounding.localization.acc_iou.matched.{t}.overall.{metric}", 100) if metric != "precision" else "")
                for t in ("0.3", "0.4", "0.5")
            ])  # fmt: skip
        rows.append(["paper's reported values"] + [fmt_num(PAPER_NUMBERS["acc_iou"][t]) for t in ("0.3", "0.4", "0.5")])
        paper = acc_iou["paper"]
        out += [markdown_table(["protocol", "IoU 0.3", "IoU 0.4", "IoU 0.5"], rows), "",
                (f"Reference boxes: {paper['gt_boxes']} in {paper['images_with_gt_boxes']} images, "
                 f"{acc_iou['paper_conditional']['gt_boxes_label_predicted']} of them of a label the answer names. The "
                 "paper describes the conditional reading (section 4.5: only correctly classified findings are "
                 "included); its released code divides by all reference boxes."), ""]  # fmt: skip
    return out


def table4_text_stage1(metrics: Mapping[str, Any]) -> list[str]:
    """Table 4: text metrics of the stage-1 answers with the boxes removed."""
    g = metrics.get("tasks", {}).get("grounding")
    if not g or "text" not in g:
        return []
    return ["## Table 4 - Text metrics of stage-1 answers (boxes removed)", "",
            text_table(metrics, "grounding", ("paper", "tag_free"), PAPER_NUMBERS["text_stage1"]), "",
            TEXT_METRIC_NOTE, ""]  # fmt: skip


def table5_text_stage2(metrics: Mapping[str, Any]) -> list[str]:
    """Table 5: text metrics of the stage-2 answers."""
    tasks = metrics.get("tasks", {})
    d = tasks.get("diagnosis")
    out: list[str] = []
    if d and "text" in d:
        out += ["## Table 5 - Text metrics of stage-2 answers", "",
                text_table(metrics, "diagnosis", ("paper",), PAPER_NUMBERS["text_stage2"]), "",
                TEXT_METRIC_NOTE + " Stage-2 answers carry no boxes or tags: `paper` scores them as written.", ""]  # fmt: skip
    return out


def detection_map_and_auc(metrics: Mapping[str, Any]) -> list[str]:
    """Ours: detection mAP (vindr22, kaggle14) and label AUCs."""
    tasks = metrics.get("tasks", {})
    g = tasks.get("grounding")
    d = tasks.get("diagnosis")
    out: list[str] = []
    rows = []
    if g:
        for t in ("0.4", "0.5"):
            for taxonomy in ("vindr22", "kaggle14"):
                entry = g["localization"]["map"][t][taxonomy]
                rows.append([f"mAP@{t} {taxonomy}", fmt_num(entry["map"], 3) + fmt_ci(metrics, f"tasks.grounding.localization.map.{t}.{taxonomy}.map", 1, 3),
                             f"{entry['n_classes']} classes", "Kaggle VinBigData 1st: 0.314 (private LB, other split)" if (t, taxonomy) == ("0.4", "kaggle14") else ""])  # fmt: skip
        rows.append(["box confidence", g["localization"]["box_confidence"], "", ""])
    if g and "auc" in g:
        auc = g["auc"]
        reason = auc.get("unavailable", {}).get("all", "")
        excluded = ", ".join(auc.get("no_positive_labels", []))
        rows.append(["macro AUC, local labels (stage 1)", fmt_num(auc.get("macro"), 3) + fmt_ci(metrics, "tasks.grounding.auc.macro", 1, 3),
                     f"{auc.get('n_labels', 0)} labels", reason or (f"excluded, no positive: {excluded}" if excluded else "")])  # fmt: skip
    if d:
        auc = d["auc"]
        rows.append(["macro AUC, global labels", fmt_num(auc.get("macro"), 3) + fmt_ci(metrics, "tasks.diagnosis.auc.macro", 1, 3),
                     f"{auc.get('n_labels', 0)} labels", "VinDr team system: 0.967 (other 3,000-scan set)"])  # fmt: skip
        for label in VINDR_GLOBAL_LABELS:
            value = auc["labels"].get(label)
            if label in auc.get("labels", {}):
                rows.append([f"AUC {label}", fmt_num(value, 3) + fmt_ci(metrics, f"tasks.diagnosis.auc.labels.{label}", 1, 3), "", auc["unavailable"].get(label, "")])
        if "all" in auc.get("unavailable", {}):
            rows.append(["AUC", "unavailable", "", auc["unavailable"]["all"]])
    e = tasks.get("existence")
    if e:
        rows.append(["MIMIC existence macro AUC", fmt_num(e.get("macro_auc"), 3), f"{len(e['entities'])} entities", "MedKLIP: per-class AUC, thresholds tuned on test"])
    if rows:
        out += ["## Ours - Detection mAP and label AUC (beyond the paper)", "", markdown_table(["metric", "value", "n", "reference"], rows), ""]
    return out


def validation_thresholds(metrics: Mapping[str, Any]) -> list[str]:
    """Ours: the extra protocol of validation-tuned thresholds."""
    tasks = metrics.get("tasks", {})
    g = tasks.get("grounding")
    d = tasks.get("diagnosis")
    out: list[str] = []
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
                             " / ".join(fmt_pct(averages[average][m]) for m in ("precision", "recall", "f1")) + fmt_ci(metrics, f"{prefix}.{average}.f1", 100),
                             " / ".join(fmt_pct(greedy[average][m]) for m in ("precision", "recall", "f1")),
                             f"{entry.get('n_validation')} validation answers"])  # fmt: skip
    e = tasks.get("existence")
    ex_thr = (e or {}).get("thresholded")
    if ex_thr:
        thr_rows.append(["existence", "accuracy", fmt_pct(ex_thr.get("accuracy")) + fmt_ci(metrics, "tasks.existence.thresholded.accuracy", 100),
                         fmt_pct(e.get("accuracy")), ex_thr.get("unavailable", {}).get("all", f"{ex_thr.get('n_validation')} validation answers")])  # fmt: skip
    if thr_rows:
        out += ["## Ours - Extra protocol: label confidences cut at validation-tuned thresholds", "",
                ("Not the headline. Per label, the threshold maximising F1 on the VALIDATION predictions is applied "
                 "unchanged to these test predictions (never tuned on test); labels without validation positives are "
                 "never predicted. Greedy = the headline strict protocol, for comparison."), "",
                markdown_table(["task", "average", "thresholded P / R / F1", "greedy (strict) P / R / F1", "validation"], thr_rows), ""]  # fmt: skip
        for task_name, task in (("grounding", g), ("diagnosis", d)):
            entry = (task or {}).get("thresholded")
            if entry and "classification" in entry:
                labels = VINDR_LOCAL_LABELS if task_name == "grounding" else VINDR_GLOBAL_LABELS
                rows = [[label, fmt_num(entry["thresholds"].get(label), 4) if entry["thresholds"].get(label) is not None else "never",
                         fmt_pct(entry["validation_f1"].get(label)), fmt_pct(entry["classification"]["labels"][label]["precision"]),
                         fmt_pct(entry["classification"]["labels"][label]["recall"]),
                         fmt_pct(entry["classification"]["labels"][label]["f1"])
                         + fmt_ci(metrics, f"tasks.{task_name}.thresholded.classification.labels.{label}.f1", 100),
                         entry["classification"]["labels"][label]["support"]] for label in labels]  # fmt: skip
                out += [f"Per label ({task_name}):", "",
                        markdown_table(["label", "threshold", "validation F1", "test P", "test R", "test F1", "support"], rows), ""]  # fmt: skip
    return out


def baselines_comparison(metrics: Mapping[str, Any]) -> list[str]:
    """Ours: the trivial baselines beside the model, with paired differences."""
    out: list[str] = []
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
                scale, digits = headline_scale(row["key"])
                ci = f" [{value['ci'][0] * scale:.{digits}f}, {value['ci'][1] * scale:.{digits}f}]" if value.get("ci") else ""
                cells.append(f"{value['value'] * scale:.{digits}f}{ci}")
            rows.append([row["label"], *cells])
        header = ["metric"] + [("**" + n + "**") if n == "model" else (n + " (reference)" if n == "oracle_labels_mean_box" else n) for n in names]
        out += ["## Ours - Trivial baselines vs the model", "",
                ("Baselines are fitted on the training split and answer in the model's format; their answers are scored "
                 "by the same code. `oracle_labels_mean_box` knows the TRUE test labels: an informational upper reference "
                 "for position-agnostic boxes, not a baseline. Percentages except Acc@IoU (already %), mAP."), "",
                markdown_table(header, rows), ""]  # fmt: skip
        out += paired_difference_table(baselines["table"])
        out += [f"- `{name}`: {definition}" for name, definition in baselines.get("definitions", {}).items()]
        training = baselines.get("training", {})
        out += [(f"- training: {training.get('images', 0)} images ({training.get('dataset', '?')}, split "
                 f"{training.get('split', '?')}); most frequent local labels: {training.get('most_frequent_local')}, "
                 f"global: {training.get('most_frequent_global')}"), ""]  # fmt: skip
    return out


def appendix_paper_tables(metrics: Mapping[str, Any]) -> list[str]:
    """Appendix: Table 8 (local labels, paper protocol, with our strict table) and Table 11 (global labels)."""
    tasks = metrics.get("tasks", {})
    g, d = tasks.get("grounding"), tasks.get("diagnosis")
    out: list[str] = []
    out += ["## Appendix", ""]
    if g:
        out += ["### Table 8 - Local labels (stage 1), paper protocol ([C] substring matching)", "",
                classification_table(g["classification"]["paper"], VINDR_LOCAL_LABELS, paper_f1=PAPER_NUMBERS["table8_f1"],
                                      paper_avg_f1=PAPER_NUMBERS["table8_avg_f1"]), "",
                "### Ours - Local labels (stage 1), strict protocol", "",
                classification_table(g["classification"]["strict"], VINDR_LOCAL_LABELS, metrics, "tasks.grounding.classification.strict"), ""]  # fmt: skip
    if d:
        out += ["### Table 11 - Global labels (stage 2), paper protocol", "",
                classification_table(d["classification"]["paper"], VINDR_GLOBAL_LABELS, paper_f1=PAPER_NUMBERS["table11_f1"],
                                      paper_avg_f1=PAPER_NUMBERS["table11_avg_f1"]), ""]  # fmt: skip
    return out


def appendix_per_label_localisation(metrics: Mapping[str, Any]) -> list[str]:
    """Ours: average precision and matched localisation per label."""
    g = metrics.get("tasks", {}).get("grounding")
    out: list[str] = []
    if g:
        maps = g["localization"]["map"]
        labels = list(VINDR_LOCAL_LABELS) + [NO_FINDING]
        rows = []
        for label in labels:
            cells = [maps[t][tax]["ap"].get(label) for t in ("0.4", "0.5") for tax in ("vindr22", "kaggle14")]
            if all(c is None for c in cells):
                continue
            rows.append([label] + [fmt_num(c, 3) if c is not None else "-" for c in cells])
        out += ["### Ours - Average precision per label", "",
                markdown_table(["label", "AP@0.4 vindr22", "AP@0.4 kaggle14", "AP@0.5 vindr22", "AP@0.5 kaggle14"], rows), ""]  # fmt: skip
        matched = g["localization"]["acc_iou"]["matched"]
        rows = []
        for label in VINDR_LOCAL_LABELS:
            cells = [matched[t]["labels"].get(label) for t in ("0.3", "0.4", "0.5")]
            if all(c is None for c in cells):
                continue
            rows.append([label] + [f"{fmt_pct(c['precision'])} / {fmt_pct(c['recall'])} / {fmt_pct(c['f1'])}" if c else "-" for c in cells]
                        + [str(cells[2]["tp"] + cells[2]["fn"]) if cells[2] else "-"])  # fmt: skip
        out += ["### Ours - Matched localisation per label (P / R / F1)", "",
                markdown_table(["label", "IoU 0.3", "IoU 0.4", "IoU 0.5", "reference boxes"], rows), ""]  # fmt: skip
    return out


def appendix_mimic(metrics: Mapping[str, Any]) -> list[str]:
    """Ours: MIMIC-CXR existence per entity (MedKLIP-style) and report-generation text metrics."""
    tasks = metrics.get("tasks", {})
    e = tasks.get("existence")
    out: list[str] = []
    if e:
        rows = [[entity, v["n"], v["positives"], fmt_num(v.get("auc"), 3) + fmt_ci(metrics, f"tasks.existence.entities.{entity}.auc", 1, 3),
                 fmt_pct(v["accuracy"]), fmt_pct(v["greedy_precision"]), fmt_pct(v["greedy_recall"]), fmt_pct(v["greedy_f1"]), v["failures"]]
                for entity, v in e["entities"].items()]  # fmt: skip
        out += ["### Ours - MIMIC-CXR existence per entity (MedKLIP-style)", "",
                markdown_table(["entity", "n", "positives", "AUC", "ACC (greedy)", "P", "R", "F1", "parse failures"], rows), "",
                (f"Overall accuracy {fmt_pct(e['accuracy'])}{fmt_ci(metrics, 'tasks.existence.accuracy', 100)}; "
                 f"macro AUC {fmt_num(e.get('macro_auc'), 3)}. Greedy answers are used as decisions (no threshold tuned on test)."), ""]  # fmt: skip
    r = tasks.get("report")
    if r:
        values, unavailable = r["text"]["raw"]["values"], r["text"]["raw"]["unavailable"]
        rows = [[name, fmt_num(value) + fmt_ci(metrics, f"tasks.report.text.raw.values.{name}")] for name, value in values.items()]
        rows += [[name, f"unavailable: {reason}"] for name, reason in unavailable.items()]
        out += ["### Ours - MIMIC-CXR report generation text metrics", "", markdown_table(["metric", "value"], rows), ""]
    return out


def appendix_local_auc(metrics: Mapping[str, Any]) -> list[str]:
    """Ours: the AUC of each local label's label-slot confidences (stage 1)."""
    g = metrics.get("tasks", {}).get("grounding")
    out: list[str] = []
    if g and g.get("auc", {}).get("labels"):
        auc = g["auc"]
        rows = [[label, fmt_num(auc["labels"].get(label), 3) + fmt_ci(metrics, f"tasks.grounding.auc.labels.{label}", 1, 3),
                 auc["unavailable"].get(label, "")] for label in VINDR_LOCAL_LABELS]  # fmt: skip
        out += ["### Ours - Local labels (stage 1): AUC of the label-slot confidences", "",
                markdown_table(["label", "AUC", "note"], rows), ""]  # fmt: skip
    return out


def unavailable_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """The metrics that could not be computed, with the reason (never a number)."""
    out: list[str] = []
    if metrics.get("unavailable"):
        out += ["## Unavailable metrics", "", "These could not be computed here; no number is reported for them.", ""]
        out += [f"- `{key}`: {reason}" for key, reason in metrics["unavailable"].items()]
        out.append("")
    return out


def paired_difference_table(table: list[dict[str, Any]]) -> list[str]:
    """Model minus each baseline with the 95 % paired-bootstrap interval of the difference (rows that have it)."""
    names = list(dict.fromkeys(n for row in table for n in row.get("differences", {})))
    if not names:
        return []
    rows = []
    for row in table:
        scale, digits = headline_scale(row["key"])
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
            markdown_table(["metric", *[f"model - {n}" for n in names]], rows), ""]
