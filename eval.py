"""Evaluate LiteGPT-CXR: generate (batched, greedy) and score, or score existing predictions.

    # generate + score (predictions written as they are produced; a rerun resumes)
    python eval.py --model runs/diagnosis --dataset vindr_cxr:diagnosis --data_dir /data/vindr --split test --out results/
    # score only (predictions.jsonl holds the references), or another model's outputs in its own box format
    python eval.py --predictions results/predictions.jsonl --out results/
    python eval.py --predictions maira2.jsonl --box_format maira2 --references refs.jsonl --out results/maira2/
    # + label thresholds tuned on validation predictions (extra protocol) and the trivial baselines (from train)
    python eval.py --model runs/grounding --dataset vindr_cxr:grounding --data_dir /data/vindr --split test \\
        --threshold_split validation --baselines --out results/
    python eval.py --predictions results/predictions.jsonl --thresholds_from results/thresholds_validation/predictions.jsonl \\
        --baselines --train_dataset vindr_cxr:grounding --data_dir /data/vindr --out results/

A thin command line over `litegpt_eval.evaluate(EvalArguments(...))` (`litegpt_eval/evaluation.py`; every option is
a field of `litegpt_eval.arguments.EvalArguments`). Outputs in --out: `predictions.jsonl` (generation mode),
`generation_manifest.json`, `metrics.json` (keys documented in litegpt_eval/README.md), `report.md` (the paper's
Tables 1-5 and Appendix Tables 8 and 11, each computed from the stage the paper used; our extra tables are named, not
numbered), `figures/` (PR curves, box overlays), with --threshold_split `thresholds_<split>/predictions.jsonl` and
with --baselines `baselines/<name>/{predictions.jsonl,metrics.json,report.md}`. `--dataset` accepts
`vindr_cxr:grounding|diagnosis`, `mimic_cxr:existence|report` (built with the project's builders from --data_dir), a
`save_to_disk` folder, or a Parquet / JSON Lines file with the builder's columns. A MedKLIP folder as --model
(`medklip/`, `model_type: medklip`) writes its existence predictions in the same record format through its own
generation step (`medklip.evaluation.generate_predictions`, plus `figures/medklip_attention_<entity>.png`);
`python -m litegpt_eval.existence_table` puts systems side by side.

Exit status: 0 when scored; 2 for predictions or data that cannot be scored (the reason is logged); argparse's
usage error for conflicting options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from transformers import HfArgumentParser

from litegpt_eval import evaluate
from litegpt_eval.arguments import EvalArguments
from litegpt_eval.evaluation import GenerationStep
from litegpt_eval.records import PredictionsError

logger = logging.getLogger("eval")


def parse_arguments(argv: list[str] | None = None) -> EvalArguments:
    """The command line as `EvalArguments`; a conflict between options is argparse's usage error (exit 2)."""
    parser = HfArgumentParser(EvalArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # EvalArguments' own checks of the combination
        parser.error(str(err))
    return args


def generation_step(args: EvalArguments) -> GenerationStep | None:
    """MedKLIP's generation step for a MedKLIP folder (config `model_type: medklip`); None: LiteGPT's."""
    if not args.generates:
        return None  # scoring only: no model, no model library to import
    from medklip.evaluation import generate_predictions, is_medklip_checkpoint

    return generate_predictions if is_medklip_checkpoint(args.model) else None


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        evaluate(args, generate=generation_step(args))
    except PredictionsError as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
