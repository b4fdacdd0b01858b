"""Training options checked before anything trains: CPU bf16 fallback and the LoRA scope of the LM."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import pytest
import yaml

import train_sft
from litegpt_train import precision
from litegpt_train.model import language_model_lora_targets, lora_config_for
from modeling_litegpt import LORA_TARGET_MODULES


def write_config(tmp_path: Path, base: Path, **overrides) -> list[str]:
    data = tmp_path / "vindr"
    data.mkdir(exist_ok=True)
    config = {"model_name_or_path": str(base), "data_dir": str(data), "output_dir": str(tmp_path / "out"),
              "use_cpu": True, "report_to": "none", **overrides}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--config", str(path)]


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads x86 /proc/cpuinfo")
def test_native_bf16_detection_matches_the_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert precision.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32_and_says_so(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    argv = write_config(tmp_path, tiny_checkpoint, bf16=True)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="litegpt_train.precision"):
        training_args = train_sft.parse_arguments(argv).sft
    assert training_args.bf16 is False
    assert "no native bf16" in caplog.text and "trains in fp32" in caplog.text


@pytest.mark.parametrize(("native", "asked"), [(True, True), (False, False), (True, False)])
def test_bf16_is_kept_where_the_cpu_has_it_and_never_switched_on(tiny_checkpoint, tmp_path, monkeypatch, caplog,
                                                                   native, asked):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="litegpt_train.precision"):
        training_args = train_sft.parse_arguments(write_config(tmp_path, tiny_checkpoint, bf16=asked)).sft
    assert training_args.bf16 is asked
    assert "bf16" not in caplog.text


def test_lora_scope_names_only_language_model_projections(tiny_model):
    import re

    names = [name for name, _ in tiny_model.named_modules()]
    paper = re.compile(language_model_lora_targets(["q_proj", "v_proj"]))
    wide = re.compile(language_model_lora_targets(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]))
    paper_hits = [n for n in names if paper.fullmatch(n)]
    wide_hits = [n for n in names if wide.fullmatch(n)]
    layers = tiny_model.config.text_config.num_hidden_layers
    assert len(paper_hits) == 2 * layers and len(wide_hits) == 7 * layers
    assert all(".language_model.layers." in n for n in wide_hits)
    assert any("pubmed_vision_tower" in n and n.endswith("q_proj") for n in names), "the CLIP tower has q_proj too"


def test_lora_target_modules_reach_the_adapter_config_and_bad_names_fail(tiny_checkpoint, tmp_path):
    run = train_sft.parse_arguments(write_config(tmp_path, tiny_checkpoint))
    assert lora_config_for(run.model, run.optimisation, "base").target_modules == LORA_TARGET_MODULES  # the paper's
    run = train_sft.parse_arguments(
        write_config(tmp_path, tiny_checkpoint, lora_target_modules=["q_proj", "v_proj", "up_proj"]))
    assert lora_config_for(run.model, run.optimisation, "base").target_modules == language_model_lora_targets(
        ["q_proj", "up_proj", "v_proj"])
    run = train_sft.parse_arguments(write_config(tmp_path, tiny_checkpoint, lora_target_modules=["up_proj"]))
    assert run.model.lora_target_modules == ["up_proj"]  # TRL's ModelConfig would make a one-name list a string
    with pytest.raises(ValueError, match="lora_target_modules"):
        train_sft.parse_arguments(write_config(tmp_path, tiny_checkpoint, lora_target_modules=["qkv"]))
