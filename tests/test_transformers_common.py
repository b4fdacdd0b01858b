"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`) run against LiteGPT.

transformers ships these tests in its PyPI source distribution, not in the wheel: the sdist of the installed version
is downloaded at test time, checked against its sha256 and cached (`tests/sdist_cache.py`); offline, this module is
skipped with the reason. The adapter below follows the layout of transformers' LLaVA test: a model tester that
builds a tiny config and inputs (image tokens first, then text), a `unittest.TestCase` with the mixin, and
exclusions, each with its one-line reason, for tests that do not apply to this model.

Modules of transformers' test tree that the sdist does not contain are replaced by empty stand-ins of ours:
`tests/generation/test_utils.py` (`GenerationTesterMixin`: generation is covered by our own tests instead, see
`GENERATION_COVERAGE`), `tests/exporters/test_export.py` (`ExportTesterMixin`, torch.export tests) and
`tests/utils/test_configuration_utils.py` (`config_common_kwargs`, read only for non-composite configs).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
import unittest
from pathlib import Path

import pytest
import torch
import transformers

from configuration_litegpt import TINY_TEXT_CONFIG, LiteGPTConfig
from modeling_litegpt import LiteGPTForConditionalGeneration, LiteGPTModel
from sdist_cache import SdistUnavailable, extract_folder, fetch_sdist, sdist_cache_dir

TRANSFORMERS_VERSION = "5.23.0"
TRANSFORMERS_SDIST_SHA256 = "19d647a4d5d903a7c644ca5cde2d86efc3dde7d8c687ae7988806ff2205efa71"
SUITE_PACKAGE = "transformers_sdist_tests"  # import name of the sdist's `tests/` folder (ours is `tests` on sys.path)

# Files of transformers' test tree that the sdist does not ship, and what stands in for them here.
ABSENT_MODULES = {
    "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
    "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
    "utils.test_configuration_utils": {"config_common_kwargs": {}},
}


def load_common_test_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """`(test_modeling_common, test_configuration_common)` of the installed transformers' sdist."""
    if transformers.__version__ != TRANSFORMERS_VERSION:
        raise RuntimeError(
            f"transformers {transformers.__version__} is installed, the common tests are pinned to "
            f"{TRANSFORMERS_VERSION}: update TRANSFORMERS_VERSION and TRANSFORMERS_SDIST_SHA256 together"
        )
    if f"{SUITE_PACKAGE}.test_modeling_common" not in sys.modules:
        archive = fetch_sdist("transformers", TRANSFORMERS_VERSION, TRANSFORMERS_SDIST_SHA256)
        folder = extract_folder(archive, "tests", sdist_cache_dir() / f"transformers-{TRANSFORMERS_VERSION}")
        # test_configuration_common imports `tests/__init__.py` (empty in transformers' repository, absent here).
        (folder / "__init__.py").touch()
        _register_package(SUITE_PACKAGE, folder)
        for name, attributes in ABSENT_MODULES.items():
            parent = f"{SUITE_PACKAGE}.{name.split('.')[0]}"
            sys.modules.setdefault(parent, types.ModuleType(parent))
            module = types.ModuleType(f"{SUITE_PACKAGE}.{name}")
            module.__dict__.update(attributes)
            sys.modules[module.__name__] = module
    return (
        importlib.import_module(f"{SUITE_PACKAGE}.test_modeling_common"),
        importlib.import_module(f"{SUITE_PACKAGE}.test_configuration_common"),
    )


def _register_package(name: str, folder: Path) -> None:
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)


try:
    modeling_common, configuration_common = load_common_test_modules()
except SdistUnavailable as err:
    pytest.skip(f"transformers' common tests need its source distribution from PyPI: {err}", allow_module_level=True)

ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
ids_tensor, floats_tensor = modeling_common.ids_tensor, modeling_common.floats_tensor


class LiteGPTModelTester:
    """Tiny LiteGPT (both tower kinds, 4 image tokens per image) and inputs with the image tokens first."""

    def __init__(self, parent, batch_size: int = 3, text_length: int = 7, is_training: bool = True):
        self.parent = parent
        self.text_config = dict(TINY_TEXT_CONFIG)
        self.batch_size = batch_size
        self.is_training = is_training
        self.num_image_tokens = LiteGPTConfig.from_preset("tiny").num_image_tokens
        self.seq_length = text_length + self.num_image_tokens
        self.encoder_seq_length = self.seq_length
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.hidden_size = self.text_config["hidden_size"]
        self.vocab_size = self.text_config["vocab_size"]
        self.pad_token_id = self.text_config["pad_token_id"]
        self.image_size = LiteGPTConfig.from_preset("tiny").image_size

    def get_config(self) -> LiteGPTConfig:
        return LiteGPTConfig.from_preset("tiny", text_config=dict(self.text_config))

    def prepare_config_and_inputs_for_common(self) -> tuple[LiteGPTConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        input_ids[input_ids == config.image_token_id] = self.pad_token_id
        input_ids[:, : self.num_image_tokens] = config.image_token_id
        attention_mask = torch.ones_like(input_ids)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


# Common tests that do not apply, each with the reason (the key must name a test of the mixin: checked below).
EXCLUDED: dict[str, str] = {}


class LiteGPTForConditionalGenerationModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LiteGPTModel, LiteGPTForConditionalGeneration)
    _is_composite = True

    def setUp(self):
        self.model_tester = LiteGPTModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=LiteGPTConfig,
            has_text_modality=False,
            common_properties=["image_token_id", "tokens_per_group", "num_image_tokens"],
            image_token_id=98,
            projector_hidden_size=48,
        )

    def test_config(self):
        self.config_tester.run_common_tests()


for _name, _reason in EXCLUDED.items():
    setattr(LiteGPTForConditionalGenerationModelTest, _name, unittest.skip(_reason)(lambda self: None))
