"""`evaluate(EvalArguments)`: generate (batched, greedy) and score, or score existing predictions.

The library call behind `eval.py` and the evaluation after each stage of `train_sft.py`. Steps, each its own function:

1. `generate_predictions` (generation mode): the dataset's rows, the model's answers written to
   `predictions.jsonl` as they come (a rerun resumes), one file per `--paper_decoding` seed, and, with
   `threshold_split`, the validation predictions the thresholds are chosen on. Another model family brings its own
   step (`evaluate(args, generate=...)`; MedKLIP's is `medklip.evaluation.generate_predictions`), writing the same
   prediction records;
2. `score_predictions`: the metrics of one predictions file (`litegpt_eval.scoring`), the trivial baselines beside
   them, `metrics.json`, `report.md` and figures;
3. with `paper_decoding`, `summarize_seeds`: mean and standard deviation of the headline numbers over the seeds.

Nothing of the arguments is changed along the way: what one step hands the next (the thresholds' source, the images
for the figures, the baselines' summary) is returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arguments import EvalArguments
from .manifest import EVAL_PACKAGES, git_commit, package_versions, weight_hashes
from .records import PredictionsError

logger = logging.getLogger(__name__)

# Headline values summarised as mean +- sd over seeds with --paper_decoding.
HEADLINE_KEYS = (
    "tasks.diagnosis.finding.paper.Finding.f1",  # the paper's Table 1 (stage-2 [vqa] answers)
    "tasks.diagnosis.finding.paper.No finding.f1",
    "tasks.diagnosis.finding.strict.Finding.f1",
    "tasks.grounding.finding.strict.Finding.f1",
    "tasks.grounding.classification.strict.averages.micro.f1",
    "tasks.grounding.localization.acc_iou.paper.0.3",
    "tasks.grounding.localization.acc_iou.paper.0.4",
    "tasks.grounding.localization.acc_iou.paper.0.5",
    "tasks.grounding.localization.acc_iou.paper_conditional.0.3",
    "tasks.grounding.localization.acc_iou.paper_conditional.0.4",
    "tasks.grounding.localization.acc_iou.paper_conditional.0.5",
    "tasks.grounding.text.paper.values.rouge1",
    "tasks.grounding.text.paper.values.bleu4",
    "tasks.grounding.text.paper.values.cider_paper",
    "tasks.diagnosis.text.paper.values.rouge1",
    "tasks.diagnosis.text.paper.values.bleu4",
    "tasks.diagnosis.classification.paper.averages.micro.f1",
    "tasks.diagnosis.classification.strict.averages.micro.f1",
    "tasks.diagnosis.classification.strict.averages.macro.f1",
)


@dataclass
class Generated:
    """What generation hands scoring: the prediction files (one per decoding run), the run manifest, the images by id
    (for the box overlays) and the validation predictions the thresholds come from (or None)."""

    prediction_files: list[Path]
    manifest: dict[str, Any]
    images: dict[str, Any] = field(default_factory=dict)
    thresholds_from: str | None = None


# A generation step: `(arguments, output folder) -> Generated`, prediction files written in the record format.
GenerationStep = Callable[[EvalArguments, Path], Generated]


@dataclass
class EvalResult:
    """The metrics of the scored predictions (the first seed's with `paper_decoding`) and the folders holding
    `metrics.json`."""

    metrics: dict[str, Any]
    folders: list[Path]


# ======================================================================================= manifest


def base_manifest(args: EvalArguments) -> dict[str, Any]:
    """What every `metrics.json` and generation manifest records about the run."""
    return {
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "versions": package_versions(EVAL_PACKAGES),
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split if args.dataset else None,
        "predictions": args.predictions,
        "bootstrap": {"resamples": args.bootstrap, "seed": args.bootstrap_seed},
    }


# ======================================================================================= generation


def generate_predictions(args: EvalArguments, out_dir: Path) -> Generated:
    """Generate the answers of `args.model` on `args.dataset` (see the module docstring, step 1)."""
    from .generation import DEFAULT_MAX_NEW_TOKENS, DecodingSettings, load_model_and_processor, run_generation

    items = _load_items(args, args.split)
    ids_digest = hashlib.sha1("\n".join(sorted(f"{i.task}:{i.id}" for i in items)).encode()).hexdigest()
    model, processor = load_model_and_processor(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    max_new = dict(DEFAULT_MAX_NEW_TOKENS)
    if args.max_new_tokens:
        max_new = dict.fromkeys(max_new, args.max_new_tokens)
    manifest = {**base_manifest(args), "items": len(items), "items_sha1": ids_digest,
                "weights_sha256": weight_hashes(args.model)}  # fmt: skip
    files = []
    for seed in args.decoding_runs():
        if seed is not None:
            decoding, name = DecodingSettings.paper(seed, max_new), f"predictions_seed{seed}.jsonl"
        elif args.do_sample:
            decoding, name = DecodingSettings(True, max_new, args.temperature, args.top_p, args.seed), "predictions.jsonl"
        else:
            decoding, name = DecodingSettings(False, max_new), "predictions.jsonl"
        summary = run_generation(
            model, processor, items, out_dir, decoding, batch_size=args.batch_size, label_scores=not args.no_label_scores,
            keep_tokens=not args.no_tokens, progress=not args.no_progress, predictions_name=name, manifest=manifest,
        )  # fmt: skip
        _log_generation(summary)
        files.append(Path(summary["path"]))
        manifest.setdefault("decoding", {})[name] = decoding.to_json()
    thresholds_from = args.thresholds_from
    if args.threshold_split:
        validation = _load_items(args, args.threshold_split, purpose="for the thresholds")
        summary = run_generation(
            model, processor, validation, out_dir / f"thresholds_{args.threshold_split}", DecodingSettings(False, max_new),
            batch_size=args.batch_size, label_scores=True, keep_tokens=not args.no_tokens, progress=not args.no_progress,
            manifest={**manifest, "split": args.threshold_split, "items": len(validation), "purpose": "validation thresholds"},
        )  # fmt: skip
        _log_generation(summary)
        thresholds_from = summary["path"]
    return Generated(files, manifest, {item.id: item.image for item in items}, thresholds_from)


def _load_items(args: EvalArguments, split: str, purpose: str = "") -> list[Any]:
    """The evaluation items of one split of `args.dataset`; a split without rows is an error."""
    from .generation import load_eval_dataset, rows_to_items

    dataset, task = load_eval_dataset(args.dataset, args.data_dir, split, args.num_proc, args.cache_dir,
                                      args.dataset_settings)  # fmt: skip
    items = rows_to_items(dataset, task=args.task or task, limit=args.limit)
    if not items:
        raise PredictionsError(f"dataset {args.dataset} ({split}) has no rows{' ' + purpose if purpose else ''}")
    return items


def _log_generation(summary: dict[str, Any]) -> None:
    logger.info("%s: %d written, %d already done", summary["path"], summary["written"], summary["skipped_done"])


# ======================================================================================= scoring


def load_train_rows(args: EvalArguments) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the baselines' training split, without image columns (never decoded)."""
    from .generation import load_eval_dataset

    spec = args.train_dataset or args.dataset
    if not spec:
        raise PredictionsError("--baselines needs the training rows: pass --train_dataset (and --data_dir for a builder)")
    if spec == args.dataset and args.train_split == args.split:
        raise PredictionsError(f"--train_split {args.train_split!r} is the scored split: baselines are fitted on training data only")
    dataset, _ = load_eval_dataset(
        spec, args.train_data_dir or args.data_dir, args.train_split, args.num_proc, args.cache_dir, args.dataset_settings
    )
    columns = [c for c in dataset.column_names if c not in ("images", "image")]
    rows = dataset.select_columns(columns).to_list() if hasattr(dataset, "select_columns") else [dict(r) for r in dataset]
    return rows, {"dataset": spec, "split": args.train_split, "rows": len(rows)}


def score_baselines_for(args: EvalArguments, records: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """The trivial baselines fitted on the training split and scored on `records`' references, into `folder`."""
    from .baselines import score_baselines

    train_rows, source = load_train_rows(args)
    return score_baselines(
        train_rows, records, folder, bootstrap=args.bootstrap, seed=args.bootstrap_seed,
        text_metrics=not args.no_text_metrics, coco_meteor=not args.no_coco_meteor, training_source=source,
    )  # fmt: skip


def baselines_entry(
    summary: dict[str, Any], metrics: dict[str, Any], model_bootstrap: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The `baselines` key of metrics.json: the baselines' `summary` compared with the model's `metrics` (with the
    model's per-resample values, `model_bootstrap`, also by paired differences)."""
    from .baselines import baselines_json, headline_table

    bootstrap = {"model": model_bootstrap, **summary["bootstrap_values"]} if model_bootstrap else None
    return baselines_json({**summary, "table": headline_table({"model": metrics, **summary["metrics"]}, bootstrap)})


def score_predictions(
    predictions: Path,
    out_dir: Path,
    args: EvalArguments,
    manifest: dict[str, Any],
    images: dict[str, Any] | None = None,
    thresholds_from: str | None = None,
    baselines: dict[str, Any] | None = None,
    baselines_dir: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Score one predictions file into `out_dir` (see the module docstring, step 2). `baselines`: a summary already
    scored for these references (reused across seeds); returns `(metrics, the baselines' summary or None)`."""
    from .records import attach_references, load_records, load_references
    from .report import make_figures, render_report, write_metrics_json
    from .scoring import score_records
    from .thresholds import load_threshold_source

    records, skipped = load_records(predictions, on_duplicate=args.on_duplicate)
    if args.references:
        records, more = attach_references(records, load_references(args.references))
        for key, value in more.items():
            if key == "items":
                skipped["items"] += value
            else:
                skipped[key] = skipped.get(key, 0) + value
    thresholds = load_threshold_source(thresholds_from, test_records=records) if thresholds_from else None
    metrics, extras = score_records(
        records, box_format=args.box_format, bootstrap=args.bootstrap, seed=args.bootstrap_seed,
        coco_meteor=not args.no_coco_meteor, text_metrics=not args.no_text_metrics, progress=not args.no_progress,
        skipped=skipped, thresholds=thresholds,
    )  # fmt: skip
    manifest = {**manifest, "predictions_file": str(predictions), "box_format": args.box_format,
                "predictions_sha256": hashlib.sha256(predictions.read_bytes()).hexdigest()}  # fmt: skip
    if thresholds_from:
        manifest["thresholds_from"] = str(thresholds_from)
    metrics = {"schema": metrics.pop("schema"), "manifest": manifest, **metrics}
    if args.baselines:
        scored = [r for r in records if isinstance(r.get("reference"), dict)]
        if baselines is None:
            baselines = score_baselines_for(args, scored, baselines_dir or out_dir / "baselines")
        model_bootstrap = {task: extra["bootstrap"] for task, extra in extras.items() if "bootstrap" in extra}
        metrics["baselines"] = baselines_entry(baselines, metrics, model_bootstrap)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [] if args.no_figures else make_figures(extras, out_dir, images=images, n_overlays=args.n_overlays)
    write_metrics_json(metrics, out_dir / "metrics.json")
    (out_dir / "report.md").write_text(render_report(metrics, manifest, figures))
    if args.export_references:
        write_references(records, out_dir / "references.jsonl")
    return metrics, baselines


def write_references(records: list[dict[str, Any]], path: Path) -> None:
    """`references.jsonl`: id, task, image id and reference of every scored record (to score another model's
    answers on the same items)."""
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            if isinstance(record.get("reference"), dict):
                handle.write(json.dumps({"id": record["id"], "task": record["task"], "image_id": record.get("image_id"),
                                         "reference": record["reference"]}) + "\n")  # fmt: skip


def summarize_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every headline value the seeds' metrics hold."""
    import numpy as np

    from .scoring import lookup

    out = {}
    for key in HEADLINE_KEYS:
        values = []
        for metrics in per_seed.values():
            try:
                value = lookup(metrics, key)
            except KeyError:
                continue
            if isinstance(value, (int, float)) and not math.isnan(value):
                values.append(float(value))
        if values:
            out[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        "n_seeds": len(values)}  # fmt: skip
    return out


# ======================================================================================= the whole evaluation


def evaluate(args: EvalArguments, generate: GenerationStep | None = None) -> EvalResult:
    """Generate (generation mode) and score; raises `PredictionsError` for predictions or data that cannot be scored.
    `generate`: the generation step of the model's family (default: LiteGPT's `generate_predictions`)."""
    out_dir = Path(args.out)
    if not args.generates:
        metrics, _ = score_predictions(Path(args.predictions), out_dir, args, base_manifest(args),
                                       thresholds_from=args.thresholds_from)  # fmt: skip
        return _finished(EvalResult(metrics, [out_dir]))
    generated = (generate or generate_predictions)(args, out_dir)
    if not args.paper_decoding:
        metrics, _ = score_predictions(generated.prediction_files[0], out_dir, args, generated.manifest, generated.images,
                                       thresholds_from=generated.thresholds_from)  # fmt: skip
        return _finished(EvalResult(metrics, [out_dir]))
    per_seed, baselines = {}, None
    for seed, path in zip(args.seeds, generated.prediction_files):
        per_seed[seed], baselines = score_predictions(
            path, out_dir / f"seed{seed}", args, generated.manifest, generated.images,
            thresholds_from=generated.thresholds_from, baselines=baselines, baselines_dir=out_dir / "baselines",
        )  # fmt: skip
    summary = {"protocol": "[C] sampling, mean and sd over seeds", "seeds": list(args.seeds),
               "headline": summarize_seeds(per_seed)}  # fmt: skip
    (out_dir / "paper_decoding.json").write_text(json.dumps(summary, indent=2))
    return _finished(EvalResult(per_seed[args.seeds[0]], [out_dir / f"seed{seed}" for seed in args.seeds]))


def _finished(result: EvalResult) -> EvalResult:
    for task, entry in result.metrics["tasks"].items():
        logger.info("%s: %d answers, %d parse failures", task, entry["n"], entry["parse"]["failures"])
    logger.info("wrote %s", ", ".join(str(folder / "metrics.json") for folder in result.folders))
    return result


__all__ = [
    "HEADLINE_KEYS",
    "EvalResult",
    "Generated",
    "GenerationStep",
    "base_manifest",
    "baselines_entry",
    "evaluate",
    "generate_predictions",
    "load_train_rows",
    "score_predictions",
    "summarize_seeds",
    "write_references",
]
