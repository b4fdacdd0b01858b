"""The base checkpoint as a Hub repository: its model card, the exact upload file set, and the push that the
adapters' `hub_base_model_id` names (tested offline: `HfApi` is replaced by a copy into a local "repo" folder)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from litegpt_train.base import BASE_CARD_REPO_PLACEHOLDER, base_upload_file_set, push_base
from litegpt_train.hub import remote_code_files
from scripts.litegpt_checkpoint import main

ROOT = Path(__file__).resolve().parent.parent
# The model's and the processor's remote code: the two entry files and every sibling they import relatively.
REMOTE_CODE = remote_code_files(ROOT, ["modeling_litegpt.py", "processing_litegpt.py"])
TINY_BASE_FILES = sorted([
    "README.md",
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    *REMOTE_CODE,
])


def card_parts(path: Path) -> tuple[dict[str, Any], str]:
    _, header, body = path.read_text().split("---\n", 2)
    return yaml.safe_load(header), body


def test_the_base_folder_has_a_model_card(tiny_checkpoint):
    meta, body = card_parts(Path(tiny_checkpoint) / "README.md")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    assert "custom_code" in meta["tags"]
    # What is inside, read from the config: both towers, the grouping, the language model.
    for fact in ("`biomed`", "`pubmed`", "timm", "CLIP", "4 visual tokens", "llama", "image token `<ImageHere>` (id 98)"):
        assert fact in body, fact
    assert "trust_remote_code=True" in body and BASE_CARD_REPO_PLACEHOLDER in body
    for dependency in ("timm", "pylibjpeg", "peft", "bitsandbytes"):
        assert dependency in body, dependency
    assert "hub_base_model_id" in body and "lora_config()" in body


def test_base_upload_file_set_is_exact_and_refuses_an_incomplete_folder(tiny_checkpoint, tmp_path):
    # The derived remote code holds the processor's siblings; a folder missing one of them is incomplete.
    assert {"codec_litegpt.py", "image_processing_litegpt.py", "configuration_litegpt.py"} <= set(REMOTE_CODE)
    assert base_upload_file_set(tiny_checkpoint) == TINY_BASE_FILES
    for missing in ("modeling_litegpt.py", "model.safetensors", "README.md", "codec_litegpt.py"):
        folder = tmp_path / missing
        shutil.copytree(tiny_checkpoint, folder, ignore=shutil.ignore_patterns(missing))
        with pytest.raises(FileNotFoundError, match=rf"not a complete LiteGPT base: missing \['{missing}'\]"):
            base_upload_file_set(folder)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """`HfApi` whose uploads land in `tmp_path / "hub" / <repo_id>`, a local stand-in for the Hub repo."""
    from huggingface_hub import HfApi

    calls: dict[str, Any] = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        calls["upload_folder"] = (repo_id, sorted(allow_patterns), kwargs)
        shutil.copytree(folder_path, tmp_path / "hub" / repo_id)
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls, tmp_path / "hub"


def test_push_base_uploads_a_repo_that_loads_and_that_adapters_can_name(tiny_checkpoint, fake_hub, tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    calls, hub = fake_hub
    repo_id = "litegpt-tests/tiny-base"
    assert push_base(tiny_checkpoint, repo_id, private=True) == "commit"
    assert calls["create_repo"] == (repo_id, {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload_folder"][1] == TINY_BASE_FILES
    repo = hub / repo_id
    assert sorted(p.name for p in repo.iterdir()) == TINY_BASE_FILES
    _, body = card_parts(repo / "README.md")
    assert f'from_pretrained("{repo_id}", trust_remote_code=True' in body and BASE_CARD_REPO_PLACEHOLDER not in body
    assert BASE_CARD_REPO_PLACEHOLDER in (Path(tiny_checkpoint) / "README.md").read_text()  # local card untouched

    # The repo loads like the folder it came from.
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    image = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    inputs = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    with torch.no_grad():
        from_repo = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True).eval()(**inputs).logits
        from_folder = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()(
            **inputs
        ).logits
    torch.testing.assert_close(from_repo, from_folder, rtol=0, atol=0)

    # An adapter whose `base_model_name_or_path` names the repo loads on it through the Auto class.
    base = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)
    peft_model = get_peft_model(base, type(base).lora_config(r=4, base_model_name_or_path=str(repo)))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.1)
    peft_model.eval().save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = peft_model(**inputs).logits
        loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "adapter", trust_remote_code=True).eval()
        assert isinstance(loaded, PeftModel) or hasattr(loaded, "peft_config")
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)
    assert not torch.allclose(expected, from_repo)


def test_cli_pushes_an_existing_base(tiny_checkpoint, fake_hub):
    calls, hub = fake_hub
    main(["--out", str(tiny_checkpoint), "--push_to_hub", "litegpt-tests/cli-base", "--push_only"])
    assert calls["upload_folder"][0] == "litegpt-tests/cli-base"
    assert sorted(p.name for p in (hub / "litegpt-tests/cli-base").iterdir()) == TINY_BASE_FILES
    assert calls["create_repo"][1]["private"] is True  # private unless --public: medical data derivatives
