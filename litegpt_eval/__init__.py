"""LiteGPT-CXR evaluation: metrics, generation, reports (docs/design.md, "Metrics").

Modules (each usable on its own, `eval.py` at the repository root is a thin CLI over them):

* `classification` - multi-label P/R/F1 (sklearn's definitions), Finding vs No finding, label matrices from parsed
  answers (strict, negation-aware) and from the reference code's substring protocol (`paper`);
* `localization` - IoU, the reference code's Acc@IoU (`paper`), one-to-one matched detection P/R/F1,
  VOC all-point AP and mAP (vindr22 / kaggle14 taxonomies);
* `confidence` - box and label confidences from token log-probabilities, teacher-forced label-slot and yes/no
  probabilities (AUC);
* `text_metrics` - ROUGE, BLEU-1..4, METEOR (NLTK and COCO 1.5), CIDEr-D, offline, with explicit "unavailable";
* `bootstrap` - percentile bootstrap over images, vectorised statistics of every metric;
* `thresholds` - per-label decision thresholds chosen on validation predictions (the `thresholded` protocol);
* `baselines` - trivial baselines fitted on the training split, scored by the same code;
* `box_formats` - converters between peer box conventions and the canonical normalised xyxy;
* `records` - the predictions JSONL schema, reading/validation, resume;
* `generation` - dataset adapter and batched greedy generation writing predictions as they are produced;
* `scoring` - predictions -> the metrics dictionary written to `metrics.json`;
* `report` - `metrics.json`, `report.md` and figures.
"""

SCHEMA_VERSION = 1
