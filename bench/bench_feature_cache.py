"""Training step time with and without the projector-input cache, measured side by side in one run.

    python bench/bench_feature_cache.py                     # litegpt-smol LM (SmolLM2), small encoders (the CPU preset)
    python bench/bench_feature_cache.py --encoders paper    # same LM, the paper's ViT-B/16 + ViT-B/32 at 224 px

Each step is what SFTTrainer does per batch: collate (TRL's vision collator, or ours with the cache), forward,
backward, AdamW step, on the LoRA + projector parameters. Steps alternate between the two collators on the same
batches so that machine noise hits both alike; the first step of each is a warm-up and is not counted. Prints the
median step times and the ratio (uncached / cached), plus the one-off cost of filling the cache.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from PIL import Image

from codec_litegpt import completion_messages, prompt_messages

ONE_BOX_ANSWER = "Local diseases of this chest radiograph are <p>Cardiomegaly</p> {<35><51><75><78>}."


def synthetic_rows(processor, n: int, seed: int = 0, answers: tuple[str, ...] = (ONE_BOX_ANSWER,)) -> list[dict]:
    """`n` grounding rows with random 256 px images; row i answers `answers[i % len(answers)]`."""
    rng = np.random.default_rng(seed)
    return [
        {
            "images": [Image.fromarray((rng.random((256, 256)) * 255).astype(np.uint8))],
            "prompt": prompt_messages("grounding", task_tokens=processor.task_tokens),
            "completion": completion_messages(answers[i % len(answers)]),
        }
        for i in range(n)
    ]


def build_model(encoders: str):
    from configuration_litegpt import LiteGPTConfig, paper_vision_encoders
    from litegpt_train.base import assemble_litegpt, find_smollm2_gguf, load_gguf_language_model

    language_model, tokenizer = load_gguf_language_model(find_smollm2_gguf())
    overrides = {"vision_encoders": paper_vision_encoders(), "projector_hidden_size": 2304} if encoders == "paper" else {}
    config = LiteGPTConfig.from_preset("litegpt-smol", **overrides)
    return assemble_litegpt(config, tokenizer, language_model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", choices=("small", "paper"), default="small")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per variant (plus one warm-up)")
    args = parser.parse_args(argv)

    from peft import get_peft_model
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from litegpt_train.feature_cache import CachedProjectorInputsCollator, ProjectorInputCache
    from modeling_litegpt import LiteGPTForConditionalGeneration

    torch.manual_seed(0)
    model, processor = build_model(args.encoders)
    model = get_peft_model(model, LiteGPTForConditionalGeneration.lora_config()).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rows = synthetic_rows(processor, args.batch_size * (args.steps + 1))
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    cache = ProjectorInputCache()
    started = time.perf_counter()
    cache.fill(model, processor, (row["images"] for row in rows), total=len(rows), show_progress=False)
    fill_seconds = time.perf_counter() - started
    collators = {
        "uncached": DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True),
        "cached": CachedProjectorInputsCollator(processor, cache, completion_only_loss=True),
    }

    def step(collator, batch) -> float:
        begin = time.perf_counter()
        inputs = collator([dict(row) for row in batch])
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - begin

    times: dict[str, list[float]] = {name: [] for name in collators}
    for index, batch in enumerate(batches):
        for name, collator in collators.items():
            elapsed = step(collator, batch)
            if index > 0:
                times[name].append(elapsed)
    if cache.misses:
        raise RuntimeError(f"{cache.misses} cache misses: the cached variant ran the encoders")

    uncached, cached = (statistics.median(times[name]) for name in ("uncached", "cached"))
    print(f"encoders={args.encoders} image_size={model.config.image_size} visual tokens={model.config.num_image_tokens} "
          f"batch={args.batch_size} steps={args.steps} threads={torch.get_num_threads()}")
    print(f"median step: uncached {uncached:.3f} s, cached {cached:.3f} s -> speed-up {uncached / cached:.2f}x")
    print(f"one-off cache fill: {fill_seconds:.2f} s for {len(cache)} images "
          f"({fill_seconds / len(cache) * 1000:.1f} ms/image)")


if __name__ == "__main__":
    main()
