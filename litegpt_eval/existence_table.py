"""The MIMIC-CXR existence table of the MedKLIP-style study, for several systems side by side.

One row per entity plus the overall rows; per system the AUC and the accuracy, each with its 95 % bootstrap
interval (images resampled, the questions of an image together; `eval.py`'s intervals):

* AUC from the system's P(Yes) (`scores.yes`: MedKLIP's sigmoid, LiteGPT's P(Yes)/(P(Yes)+P(No)));
* accuracy at the entity's threshold chosen on the VALIDATION predictions (`tasks.existence.thresholded`: the
  F1-optimal threshold there, never tuned on test) when the system was scored with `--threshold_split` /
  `--thresholds_from`; otherwise, and for the trivial baselines (a constant needs no threshold), the accuracy of its
  own answers (`Yes`/`No` text; MedKLIP: P >= 0.5), marked as such;
* overall: the macro AUC (mean of the entity AUCs), the pooled AUC (every (image, entity) question ranked together;
  it rewards knowing which entities are frequent, not only reading the image: a constant per-entity prevalence
  scores above 0.5 on it) and the accuracy over all questions.

Inputs are `eval.py` output folders (`metrics.json` + `predictions.jsonl`; `baselines/<name>/` with `--baselines`).

    python -m litegpt_eval.existence_table --system MedKLIP=runs/medklip/eval --system LiteGPT=runs/litegpt/eval \\
        --baselines_from runs/medklip/eval --out runs/existence_table.md
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, auc_batch, bootstrap_values, intervals_from_values
from .records import PredictionsError, load_records

BASELINE_LABELS = {"most_frequent": "majority (per entity)", "no_finding": "always No"}


def _interval(metrics: Mapping[str, Any], path: str) -> list[float] | None:
    found = (metrics.get("confidence_intervals") or {}).get(path)
    if found and found.get("low") is not None and found.get("high") is not None:
        return [float(found["low"]), float(found["high"])]
    return None


def _cell(metrics: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(float(value)):
        return {"value": None}
    return {"value": float(value), "ci": _interval(metrics, path)}


def pooled_auc(records: Sequence[Mapping[str, Any]], bootstrap: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """AUC of every existence question ranked together, with its bootstrap interval (images resampled as units, in
    the order `score_records` uses, so the resamples are those of the other intervals)."""
    rows = [r for r in records if r.get("task") == "existence" and isinstance(r.get("reference"), dict)]
    scores = [(r.get("scores") or {}).get("yes") for r in rows]
    if not rows or any(s is None for s in scores):
        return {"value": None, "unavailable": "no P(Yes) confidences"}
    y = np.array([int(r["reference"]["label"]) for r in rows], dtype=np.float64)
    s = np.array(scores, dtype=np.float64)
    value = float(auc_batch(y, s, np.ones((1, len(y))))[0])
    out: dict[str, Any] = {"value": None if math.isnan(value) else value}
    image_ids = [str(r.get("image_id") or r["id"]) for r in rows]
    units = {image: k for k, image in enumerate(dict.fromkeys(image_ids))}
    if bootstrap and len(units) > 1 and out["value"] is not None:
        values = bootstrap_values(len(units), resamples=bootstrap, seed=seed, cluster_index=[units[i] for i in image_ids],
                                  batch_statistics=[lambda w: {"pooled_auc": auc_batch(y, s, w)}])
        interval = intervals_from_values(values, bootstrap, seed)["pooled_auc"]
        out["ci"] = [interval["low"], interval["high"]]
    return out


def system_columns(metrics: Mapping[str, Any], records: Sequence[Mapping[str, Any]] | None,
                   bootstrap: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """One system's cells: `{"entities": {entity: {"auc", "accuracy"}}, "overall": {...}, "accuracy_protocol"}`."""
    existence = (metrics.get("tasks") or {}).get("existence")
    if not existence:
        raise PredictionsError("these metrics have no MIMIC existence task (tasks.existence)")
    thresholded = existence.get("thresholded") or {}
    use_thresholds = bool(thresholded.get("entities")) and not thresholded.get("unavailable")
    prefix = "tasks.existence"
    columns: dict[str, Any] = {"entities": {}, "accuracy_protocol": "validation threshold" if use_thresholds else "own answers"}
    for entity, entry in existence["entities"].items():
        if use_thresholds:
            accuracy_path = f"{prefix}.thresholded.entities.{entity}.accuracy"
            accuracy = thresholded["entities"].get(entity, {}).get("accuracy")
        else:
            accuracy_path, accuracy = f"{prefix}.entities.{entity}.accuracy", entry.get("accuracy")
        columns["entities"][entity] = {
            "auc": _cell(metrics, f"{prefix}.entities.{entity}.auc", entry.get("auc")),
            "accuracy": _cell(metrics, accuracy_path, accuracy),
            "n": entry.get("n"),
            "positives": entry.get("positives"),
        }
    accuracy_path = f"{prefix}.thresholded.accuracy" if use_thresholds else f"{prefix}.accuracy"
    columns["overall"] = {
        "macro_auc": _cell(metrics, f"{prefix}.macro_auc", existence.get("macro_auc")),
        "pooled_auc": pooled_auc(records, bootstrap, seed) if records is not None else {"value": None},
        "accuracy": _cell(metrics, accuracy_path, thresholded.get("accuracy") if use_thresholds else existence.get("accuracy")),
        "n": existence.get("n"),
    }
    return columns


def load_eval_folder(folder: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(`metrics.json`, records of `predictions.jsonl` or None) of an eval.py output folder."""
    folder = Path(folder)
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise PredictionsError(f"{folder} has no metrics.json (an eval.py output folder is expected)")
    predictions = folder / "predictions.jsonl"
    records = load_records(predictions)[0] if predictions.is_file() else None
    return json.loads(metrics_path.read_text()), records


def study_table(systems: Mapping[str, tuple[Mapping[str, Any], Sequence[Mapping[str, Any]] | None]],
                bootstrap: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """`{"entities": [...], "systems": {name: system_columns(...)}}`; entities in the first system's order."""
    columns = {name: system_columns(metrics, records, bootstrap, seed) for name, (metrics, records) in systems.items()}
    entities: list[str] = []
    for column in columns.values():
        entities += [e for e in column["entities"] if e not in entities]
    counts = {name: column["overall"]["n"] for name, column in columns.items()}
    return {"entities": entities, "systems": columns, "questions": counts}


def _fmt(cell: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not cell or cell.get("value") is None:
        return "n/a"
    text = f"{cell['value']:.{digits}f}"
    if cell.get("ci"):
        text += f" [{cell['ci'][0]:.{digits}f}, {cell['ci'][1]:.{digits}f}]"
    return text


def render_markdown(table: Mapping[str, Any], digits: int = 2) -> str:
    """The study's layout: entity | per system AUC, accuracy; then the overall rows."""
    names = list(table["systems"])
    header = ["entity", "positives / n"] + [f"{name} {metric}" for name in names for metric in ("AUC", "accuracy")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    first = table["systems"][names[0]]
    for entity in table["entities"]:
        counts = first["entities"].get(entity, {})
        cells = [f"{counts.get('positives')} / {counts.get('n')}" if counts else "-"]
        for name in names:
            entry = table["systems"][name]["entities"].get(entity, {})
            cells += [_fmt(entry.get("auc"), digits), _fmt(entry.get("accuracy"), digits)]
        lines.append("| " + " | ".join([entity] + cells) + " |")
    for label, key in (("Overall (macro AUC)", "macro_auc"), ("Overall (pooled AUC)", "pooled_auc")):
        positives = sum(e.get("positives") or 0 for e in first["entities"].values())
        cells = [f"{positives} / {first['overall']['n']}"]
        for name in names:
            overall = table["systems"][name]["overall"]
            cells += [_fmt(overall.get(key), digits), _fmt(overall.get("accuracy"), digits) if key == "macro_auc" else ""]
        lines.append("| " + " | ".join([label] + cells) + " |")
    protocols = "; ".join(f"{name}: {table['systems'][name]['accuracy_protocol']}" for name in names)
    lines += ["", f"Accuracy: {protocols}. Brackets: 95 % bootstrap intervals over images (an entity with very few "
              "positives has an interval that only reflects those few images). Questions scored: "
              + ", ".join(f"{name} {n}" for name, n in table["questions"].items()) + "."]
    return "\n".join(lines) + "\n"


def baseline_systems(eval_dir: str | Path) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]] | None]]:
    """The trivial baselines an eval.py run wrote with `--baselines` (`baselines/<name>/`), keyed by a readable name."""
    out = {}
    for name, label in BASELINE_LABELS.items():
        folder = Path(eval_dir) / "baselines" / name
        if (folder / "metrics.json").is_file():
            out[label] = load_eval_folder(folder)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", action="append", required=True, metavar="NAME=EVAL_DIR",
                        help="a system's eval.py output folder (repeat; columns in this order)")
    parser.add_argument("--baselines_from", help="eval.py folder whose baselines/ (from --baselines) add columns")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", required=True, help="Markdown file (a .json with the numbers is written beside it)")
    args = parser.parse_args(argv)
    systems: dict[str, Any] = {}
    for spec in args.system:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--system expects NAME=EVAL_DIR, got {spec!r}")
        systems[name] = load_eval_folder(folder)
    if args.baselines_from:
        systems.update(baseline_systems(args.baselines_from))
    table = study_table(systems, args.bootstrap, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(table))
    out.with_suffix(".json").write_text(json.dumps(table, indent=1))
    print(out.read_text())
    return 0


__all__ = ["baseline_systems", "load_eval_folder", "pooled_auc", "render_markdown", "study_table", "system_columns"]


if __name__ == "__main__":
    raise SystemExit(main())

