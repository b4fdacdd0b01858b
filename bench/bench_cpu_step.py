"""A CPU training step of the demo in fp32 and under bf16 autocast, measured side by side in one run.

    python bench/bench_cpu_step.py                 # litegpt-smol (SmolLM2-135M + small encoders), batch 4
    python bench/bench_cpu_step.py --steps 10      # more measured steps per variant

Each step is what `LiteGPTSFTTrainer` does per batch in the demo: collate with the projector-input cache, forward
with the answer-only LM head, backward, AdamW on the LoRA (q/v) + projector parameters. `fp32` is the demo's
precision before bf16 (`bf16: false`); `bf16` is `bf16: true`, which Accelerate runs on a CPU as
`torch.autocast("cpu", dtype=torch.bfloat16)` around the forward pass (weights and optimizer stay fp32). The
variants alternate on the same batches so that machine noise hits both alike; the first step of each is a warm-up
and is not counted. Prints the median step times, their ratio and the losses of both on the same batches.

bf16 pays only on CPUs with native bf16 instructions (x86 AVX512-BF16 or AMX, Arm BF16); the script says whether
this one has them (`litegpt_train.precision.cpu_has_native_bf16`). Time it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from bench_lm_head import demo_training_setup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per variant (plus one warm-up)")
    args = parser.parse_args(argv)

    from litegpt_train.lm_head import add_answer_only_lm_head
    from litegpt_train.precision import cpu_has_native_bf16

    model, base, optimizer, batches, collator = demo_training_setup(args.batch_size, args.steps)
    add_answer_only_lm_head(base)  # what LiteGPTSFTTrainer adds
    precisions = {
        "fp32": contextlib.nullcontext,
        "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    }

    def step(precision, inputs) -> tuple[float, float]:
        begin = time.perf_counter()
        with precisions[precision]():
            loss = model(**inputs, fused_lm_head=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - begin, loss.item()

    times: dict[str, list[float]] = {name: [] for name in precisions}
    losses: dict[str, list[float]] = {name: [] for name in precisions}
    for index, batch in enumerate(batches):
        inputs = collator([dict(row) for row in batch])
        for name in precisions:
            elapsed, loss = step(name, inputs)
            losses[name].append(loss)
            if index > 0:
                times[name].append(elapsed)

    fp32, bf16 = (statistics.median(times[name]) for name in precisions)
    print(f"litegpt-smol batch={args.batch_size} steps={args.steps} threads={torch.get_num_threads()} "
          f"native bf16: {cpu_has_native_bf16()}")
    print(f"median step: fp32 {fp32:.3f} s, bf16 autocast {bf16:.3f} s -> speed-up {fp32 / bf16:.2f}x")
    print("losses (same batches; both variants update the same weights in turn): "
          + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(losses["fp32"], losses["bf16"])))


if __name__ == "__main__":
    main()
