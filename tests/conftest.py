"""Shared fixtures: a tiny LiteGPT (random weights, char-level tokenizer) built and saved offline."""

from __future__ import annotations

import pytest
import torch
from tiny_tokenizer import build_tiny_tokenizer

from configuration_litegpt import LiteGPTConfig

# `pytest -n 2` runs two workers on CI's two cores: two torch threads each would oversubscribe the machine, and
# tiny-model ops then run 10-40x slower (measured); one thread per worker keeps both cores busy without that.
torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> LiteGPTConfig:
    return LiteGPTConfig.from_preset("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    from modeling_litegpt import LiteGPTForConditionalGeneration

    torch.manual_seed(0)
    return LiteGPTForConditionalGeneration(tiny_config).eval()


@pytest.fixture
def tiny_model_and_processor():
    """A tiny model and its processor, assembled exactly as real checkpoints are."""
    from litegpt_train.base import assemble_litegpt

    return assemble_litegpt(LiteGPTConfig.from_preset("tiny"), build_tiny_tokenizer(), seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A saved tiny LiteGPT folder (weights, config with auto_map, processor, remote code)."""
    from litegpt_train.base import assemble_litegpt, save_litegpt

    model, processor = assemble_litegpt(LiteGPTConfig.from_preset("tiny"), build_tiny_tokenizer(), seed=0)
    return save_litegpt(model, processor, tmp_path_factory.mktemp("tiny_litegpt"))


# The VinDr builder tests' synthetic sample and default builds, shared by their two files (built once per session).
from vindr_support import built, cache_root, synthetic  # noqa: E402,F401
