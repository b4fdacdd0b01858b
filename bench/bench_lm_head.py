"""Training step time with TRL's fused LM head and with the answer-only head, measured side by side in one run.

    python bench/bench_lm_head.py            # litegpt-smol: SmolLM2-135M (vocabulary 49,152), the CPU preset

On devices without Triton (CPUs), TRL's fused head projects every position of the batch through the LM head;
`litegpt_train.lm_head.add_answer_only_lm_head` projects only the answer positions (see its docstring). Each step is
what SFTTrainer does per batch: collate (cached projector inputs, as in the demo), forward with
`fused_lm_head=True`, backward, AdamW step on the LoRA + projector parameters. The rows carry the paper's grounding
instruction and answers of the demo's lengths ("No finding" to six boxes). The two heads alternate on the same
batches so that machine noise hits both alike; the first step of each is a warm-up and is not counted. Prints the
median step times and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from bench_feature_cache import ONE_BOX_ANSWER, build_model, synthetic_rows

from codec_litegpt import format_grounding_answer

NO_FINDING_ANSWER = format_grounding_answer([], width=100, height=100, no_finding=True)


def nodule_answer(boxes: int) -> str:
    """A stage-1 target listing `boxes` nodule boxes (grid units on a 100 x 100 image)."""
    return format_grounding_answer([("Nodule/Mass", (59, 47 + i, 65, 54 + i)) for i in range(boxes)], 100, 100)


# Answer lengths as in the synthetic demo data: "No finding" most often, then one to six boxes.
ANSWERS = (NO_FINDING_ANSWER, ONE_BOX_ANSWER, NO_FINDING_ANSWER, nodule_answer(3), NO_FINDING_ANSWER, nodule_answer(6))


def demo_training_setup(batch_size: int, steps: int):
    """What the demo's trainer holds before its first step, on `litegpt-smol`: the LoRA model with TRL's fused LM
    head (as `SFTTrainer.__init__` adds it), AdamW on the trainable parameters, `steps + 1` batches of synthetic
    rows with the demo's answer lengths, and the collator reading their projector inputs from a filled cache.

    Returns `(model, base causal LM, optimizer, batches, collator)`; the caller adds the answer-only head."""
    from peft import get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from litegpt_train.feature_cache import CachedProjectorInputsCollator, ProjectorInputCache
    from litegpt_train.lm_head import TRAINER_OUTPUTS, unwrapped_causal_lm
    from modeling_litegpt import LiteGPTForConditionalGeneration

    torch.manual_seed(0)
    model, processor = build_model("small")
    model = get_peft_model(model, LiteGPTForConditionalGeneration.lora_config()).train()
    base = unwrapped_causal_lm(model)
    add_fused_lm_head(base, outputs=TRAINER_OUTPUTS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rows = synthetic_rows(processor, batch_size * (steps + 1), answers=ANSWERS)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    cache = ProjectorInputCache()
    cache.fill(model, processor, (row["images"] for row in rows), total=len(rows), show_progress=False)
    collator = CachedProjectorInputsCollator(processor, cache, completion_only_loss=True)
    return model, base, optimizer, batches, collator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per variant (plus one warm-up)")
    args = parser.parse_args(argv)

    from litegpt_train.lm_head import add_answer_only_lm_head

    model, base, optimizer, batches, collator = demo_training_setup(args.batch_size, args.steps)
    forwards = {"trl_fused_head": base.forward}
    add_answer_only_lm_head(base)
    forwards["answer_only_head"] = base.forward

    def step(forward, inputs) -> float:
        base.forward = forward
        begin = time.perf_counter()
        model(**inputs, fused_lm_head=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - begin

    times: dict[str, list[float]] = {name: [] for name in forwards}
    positions = answers = 0
    for index, batch in enumerate(batches):
        inputs = collator([dict(row) for row in batch])
        positions += inputs["labels"][:, 1:].numel()
        answers += int(inputs["labels"][:, 1:].ne(-100).sum())
        for name, forward in forwards.items():
            elapsed = step(forward, inputs)
            if index > 0:
                times[name].append(elapsed)

    trl, ours = (statistics.median(times[name]) for name in forwards)
    print(f"litegpt-smol batch={args.batch_size} steps={args.steps} threads={torch.get_num_threads()} "
          f"answer positions {answers} of {positions} ({100 * answers / positions:.0f} %)")
    print(f"median step: TRL fused head {trl:.3f} s, answer-only head {ours:.3f} s -> speed-up {trl / ours:.2f}x")


if __name__ == "__main__":
    main()
