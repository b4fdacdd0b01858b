"""`EvalArguments`: everything an evaluation is given, the fields of `eval.py`'s command line.

Two modes: generation (`model` + `dataset`: generate, then score) and scoring only (`predictions`). The options of
both, their defaults and their conflicts live here, once: `eval.py` parses them with transformers'
`HfArgumentParser`, `train_sft.py` builds them in code, and `litegpt_eval.evaluate(EvalArguments(...))` runs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from .box_formats import BOX_FORMATS
from .records import TASKS


@dataclass
class EvalArguments:
    """An evaluation run (see the module docstring); a conflicting combination raises `ValueError` on construction."""

    out: str = field(metadata={"help": "output folder"})

    # ---------------------------------------------------------------- input
    model: str | None = field(
        default=None,
        metadata={"help": "model folder or Hub id (AutoModelForImageTextToText, trust_remote_code); generation mode. "
                          "A MedKLIP folder (model_type medklip) is scored on mimic_cxr:existence"},
    )
    revision: str | None = field(default=None, metadata={"help": "model revision to pin (Hub)"})
    dataset: str | None = field(
        default=None,
        metadata={"help": "vindr_cxr:<config>, mimic_cxr:<config>, a save_to_disk folder, or a .parquet/.jsonl file"},
    )
    data_dir: str | None = field(default=None, metadata={"help": "raw data folder for the builders"})
    dataset_settings: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "builder settings as JSON, the same as training used (e.g. '{\"max_side\": 256}')"},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder of the builders"})
    split: str = field(default="test", metadata={"help": "the scored split"})
    task: str | None = field(
        default=None,
        metadata={"help": "task of every row (default: from the dataset config or the prompt)", "choices": list(TASKS)},
    )
    limit: int | None = field(default=None, metadata={"help": "first N rows only"})
    predictions: str | None = field(default=None, metadata={"help": "score this predictions JSONL instead of generating"})
    references: str | None = field(
        default=None, metadata={"help": "references JSONL (`id`, `task`, `reference`) joined to --predictions by id"}
    )
    box_format: str = field(
        default="litegpt",
        metadata={"help": "box convention of the predictions' text", "choices": sorted(BOX_FORMATS)},
    )
    on_duplicate: str = field(
        default="error",
        metadata={"help": "duplicated ids: raise, or keep the first (counted)", "choices": ["error", "first"]},
    )

    # ---------------------------------------------------------------- generation
    batch_size: int = field(default=8, metadata={"help": "generation batch size"})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "override the per-task defaults of litegpt_eval.generation.DEFAULT_MAX_NEW_TOKENS"}
    )
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    device: str | None = field(default=None, metadata={"help": "e.g. cpu, cuda:0"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding (recorded)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (with do_sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (with do_sample)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    paper_decoding: bool = field(
        default=False, metadata={"help": "[C]'s sampling (T 0.6 / 0.1, top-p 0.9), one run per --seeds"}
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "seeds of --paper_decoding"})
    no_label_scores: bool = field(
        default=False,
        metadata={"help": "skip the teacher-forced label/yes probabilities (no AUC, no thresholded protocol); stage 1 "
                          "scores 22 labels at every list slot of each answer, which on a CPU can cost as much as "
                          "generating"},
    )
    no_tokens: bool = field(default=False, metadata={"help": "do not store generated token ids/log-probs"})
    num_proc: int | None = field(default=None, metadata={"help": "processes for building the dataset"})

    # ---------------------------------------------------------------- scoring
    bootstrap: int = field(default=DEFAULT_RESAMPLES, metadata={"help": "bootstrap resamples (0 = no intervals)"})
    bootstrap_seed: int = field(default=DEFAULT_SEED, metadata={"help": "seed of the bootstrap resamples"})
    no_coco_meteor: bool = field(default=False, metadata={"help": "skip the Java METEOR 1.5 variant"})
    no_text_metrics: bool = field(default=False, metadata={"help": "skip the text metrics"})
    no_figures: bool = field(default=False, metadata={"help": "write no figures"})
    n_overlays: int = field(default=8, metadata={"help": "box overlay figures (a seeded sample of images)"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bars"})
    export_references: bool = field(
        default=False, metadata={"help": "also write references.jsonl (for scoring other models)"}
    )

    # ---------------------------------------------------------------- validation thresholds (extra protocol)
    thresholds_from: str | None = field(
        default=None,
        metadata={"help": "validation predictions JSONL with label confidences: per-label F1-optimal thresholds "
                          "chosen there are applied to the scored (test) predictions"},
    )
    threshold_split: str | None = field(
        default=None,
        metadata={"help": "generation mode: also generate on this split (e.g. validation) into <out>/thresholds_<split>/ "
                          "and take the thresholds from it; never the scored split"},
    )

    # ---------------------------------------------------------------- trivial baselines
    baselines: bool = field(
        default=False,
        metadata={"help": "score no_finding, most_frequent and the oracle_labels_mean_box reference, fitted on the "
                          "training split; write <out>/baselines/<name>/ and a comparison table"},
    )
    train_dataset: str | None = field(
        default=None, metadata={"help": "training rows of the baselines (default: --dataset); same forms as --dataset"}
    )
    train_split: str = field(default="train", metadata={"help": "split of --train_dataset"})
    train_data_dir: str | None = field(
        default=None, metadata={"help": "raw data folder of --train_dataset (default: --data_dir)"}
    )

    def __post_init__(self):
        if isinstance(self.dataset_settings, str):
            try:
                self.dataset_settings = json.loads(self.dataset_settings)
            except json.JSONDecodeError as err:
                raise ValueError(f"dataset_settings must be a JSON object, got {self.dataset_settings!r}: {err}") from None
        if self.dataset_settings is not None and not isinstance(self.dataset_settings, dict):
            raise ValueError(f"dataset_settings must be a mapping, got {type(self.dataset_settings).__name__}")
        if self.predictions and (self.model or self.dataset):
            raise ValueError("give either --predictions (score only) or --model and --dataset (generate), not both")
        if not self.predictions and not (self.model and self.dataset):
            raise ValueError("generation needs --model and --dataset (or pass --predictions to score a file)")
        if self.threshold_split and self.predictions:
            raise ValueError("--threshold_split generates validation predictions: use --thresholds_from with --predictions")
        if self.threshold_split and self.threshold_split == self.split:
            raise ValueError(f"--threshold_split {self.threshold_split!r} is the scored split: thresholds are never tuned on it")
        if self.threshold_split and self.no_label_scores:
            raise ValueError("--threshold_split needs label confidences: drop --no_label_scores")

    @property
    def generates(self) -> bool:
        """Generation mode (a model and a dataset), as opposed to scoring a predictions file."""
        return self.predictions is None

    def decoding_runs(self) -> list[int | None]:
        """One entry per prediction file generation writes: the seeds of `--paper_decoding`, else one greedy (or
        sampled) run."""
        return list(self.seeds) if self.paper_decoding else [None]


__all__ = ["EvalArguments"]
