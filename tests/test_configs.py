"""Every shipped training configuration parses with the script it is written for (unknown keys and bad values are
errors there), so that a renamed argument cannot leave a configuration behind. GPU configurations are parsed with
`--use_cpu true` added (on a CPU-only machine transformers refuses their bf16 before anything else is checked) and
with local stand-ins for the data and weight folders that only exist on a real machine."""

from __future__ import annotations

from pathlib import Path

import pytest

import train_medklip
import train_sft

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MEDKLIP_CONFIGS = sorted(CONFIGS.glob("medklip-*.yaml"))
LITEGPT_CONFIGS = sorted(set(CONFIGS.glob("*.yaml")) - set(MEDKLIP_CONFIGS))


def test_the_configs_are_found():
    names = {p.name for p in LITEGPT_CONFIGS}
    assert {"demo.yaml", "litegpt-7b.yaml", "litegpt-existence-cpu.yaml"} <= names and MEDKLIP_CONFIGS


@pytest.mark.parametrize("config", LITEGPT_CONFIGS, ids=lambda p: p.name)
def test_litegpt_config_parses(config, tmp_path):
    stand_ins = ["--model_name_or_path", str(tmp_path), "--data_dir", str(tmp_path), "--init_from", "none"]
    train_sft.parse_arguments(["--config", str(config), "--use_cpu", "true", *(stand_ins if "/data/" in config.read_text() else [])])


@pytest.mark.parametrize("config", MEDKLIP_CONFIGS, ids=lambda p: p.name)
def test_medklip_config_parses(config, tmp_path):
    stand_ins = ["--mimic_data_dir", str(tmp_path), "--vision_weights", str(tmp_path), "--text_encoder", str(tmp_path)]
    train_medklip.parse_arguments(["--config", str(config), "--use_cpu", "true", *(stand_ins if "/data/" in config.read_text() else [])])


def test_an_unknown_key_is_refused(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text((CONFIGS / "litegpt-existence-cpu.yaml").read_text() + "quantization: none\n")
    with pytest.raises(ValueError, match="quantization"):
        train_sft.parse_arguments(["--config", str(config)])
