"""LiteGPT-CXR evaluation: metrics, generation, reports (docs/design.md, "Metrics").

`litegpt_eval.evaluate(EvalArguments(...))` runs a whole evaluation (`evaluation.py`); `eval.py` at the repository
root is its command line and `train_sft.py` calls it after each stage. Modules, each usable on its own:

* `arguments` - `EvalArguments`, every option of an evaluation and their conflicts;
* `evaluation` - `evaluate`: generation, scoring, baselines, the seeds of `--paper_decoding`;
* `generation` - dataset adapter and batched greedy generation writing predictions as they are produced;
* `records` - the predictions JSONL schema, reading/validation, resume;
* `scoring` - predictions -> the metrics dictionary written to `metrics.json`, one module per task;
* `classification` - multi-label P/R/F1 (sklearn's definitions), Finding vs No finding, label matrices from parsed
  answers (strict, negation-aware) and from the reference code's substring protocol (`paper`);
* `localization` - IoU, the reference code's Acc@IoU (`paper`), one-to-one matched detection P/R/F1,
  VOC all-point AP and mAP (vindr22 / kaggle14 taxonomies);
* `confidence` - box and label confidences from token log-probabilities, teacher-forced label-slot and yes/no
  probabilities (AUC);
* `text_metrics` - ROUGE, BLEU-1..4, METEOR (NLTK and COCO 1.5), CIDEr-D, offline, with explicit "unavailable";
* `bootstrap` - percentile bootstrap over images, vectorised statistics of every metric, paired differences;
* `thresholds` - per-label decision thresholds chosen on validation predictions (the `thresholded` protocol);
* `baselines` - trivial baselines fitted on the training split, scored by the same code;
* `box_formats` - converters between peer box conventions and the canonical normalised xyxy;
* `report` - `metrics.json`, `report.md` (one function per table) and figures;
* `manifest` - library versions, commit and file hashes of a run.
"""

from typing import Any

SCHEMA_VERSION = 1


def __getattr__(name: str) -> Any:
    """`evaluate`, `EvalArguments` and `EvalResult` on first use: importing a metric module stays light."""
    if name in ("evaluate", "EvalResult"):
        from . import evaluation

        return getattr(evaluation, name)
    if name == "EvalArguments":
        from .arguments import EvalArguments

        return EvalArguments
    raise AttributeError(f"module 'litegpt_eval' has no attribute {name!r}")


__all__ = ["SCHEMA_VERSION", "EvalArguments", "EvalResult", "evaluate"]
