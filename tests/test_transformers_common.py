"""transformers' own common model and config tests (`ModelTesterMixin`, `ConfigTester`) run against LiteGPT.

transformers ships these tests in its PyPI source distribution, not in the wheel: the sdist of the installed version
is downloaded at test time, checked against its sha256 and cached (`tests/sdist_cache.py`); offline, this module is
skipped with the reason. The adapter below follows the layout of transformers' LLaVA test: a model tester that
builds a tiny config and inputs (image tokens first, then text), a `unittest.TestCase` with the mixin, and
exclusions, each with its one-line reason, for tests that do not apply to this model.

Modules of transformers' test tree that the sdist does not contain are replaced by empty stand-ins of ours:
`tests/generation/test_utils.py` (`GenerationTesterMixin`: generation is covered by our own tests instead, listed in
docs/testing.md), `tests/exporters/test_export.py` (`ExportTesterMixin`, torch.export tests) and
`tests/utils/test_configuration_utils.py` (`config_common_kwargs`, read only for non-composite configs).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
import unittest
import unittest.mock
from pathlib import Path

import pytest
import torch
import transformers
from sdist_cache import SdistUnavailable, extract_folder, fetch_sdist, sdist_cache_dir
from transformers.models.auto import modeling_auto

from configuration_litegpt import TINY_TEXT_CONFIG, LiteGPTConfig
from modeling_litegpt import LiteGPTForConditionalGeneration, LiteGPTModel

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
    """Tiny LiteGPT (both tower kinds, 4 image tokens per image) and inputs with the image tokens first.

    As in LLaVA's tester, the image token has a low id, so that the common tests that shrink the vocabulary (and
    clamp the ids) keep the image tokens. The batch has 7 rows: the eager-vs-SDPA tests run 7 rows and would
    otherwise append random rows without image tokens to `input_ids` but random images to `pixel_values`.
    """

    IMAGE_TOKEN_ID = 3

    def __init__(self, parent, batch_size: int = 7, text_length: int = 7, is_training: bool = True):
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
        return LiteGPTConfig.from_preset("tiny", text_config=dict(self.text_config), image_token_id=self.IMAGE_TOKEN_ID)

    def prepare_config_and_inputs_for_common(self) -> tuple[LiteGPTConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        input_ids[input_ids == config.image_token_id] = self.pad_token_id
        input_ids[:, : self.num_image_tokens] = config.image_token_id
        attention_mask = torch.ones_like(input_ids)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


# Common tests that do not apply, each with the reason (the key must name a test of the mixin: checked below).
_FROZEN_TOWER_CHECKPOINTING = (
    "counts checkpointed calls of the first GradientCheckpointingLayer in module order, which is in a vision tower "
    "that LiteGPT freezes and keeps in eval mode on purpose (no checkpointing there); tests/test_modeling.py checks "
    "checkpointing of the language model"
)
EXCLUDED: dict[str, str] = {
    "test_generation_tester_mixin_inheritance": (
        "asks the tester to inherit GenerationTesterMixin from tests/generation/test_utils.py, which transformers' sdist "
        "does not ship (generation is covered by tests/test_modeling.py instead)"
    ),
    **dict.fromkeys(
        [f"test_model_rope_scaling_from_config_{i}_{kind}" for i, kind in enumerate(("linear", "dynamic", "yarn"))],
        "feeds random ids over the whole vocabulary and no pixel_values, so image tokens arrive without an image, which "
        "LiteGPT refuses on purpose (the RoPE is the Llama language model's, tested by transformers)",
    ),
    "test_can_init_all_missing_weights": (
        "transformers initialises the missing weights of custom-code models conservatively (a module whose own "
        "parameters are set is skipped), so the CLIP tower's per-module std is applied in __init__ but not on this "
        "path; with LiteGPT counted as library code the two inits are identical (tested below)"
    ),
    "test_training_gradient_checkpointing": _FROZEN_TOWER_CHECKPOINTING,
    "test_training_gradient_checkpointing_use_reentrant_false": _FROZEN_TOWER_CHECKPOINTING,
    "test_training_gradient_checkpointing_use_reentrant_true": _FROZEN_TOWER_CHECKPOINTING,
}

class LiteGPTForConditionalGenerationModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (LiteGPTModel, LiteGPTForConditionalGeneration)
    _is_composite = True
    # Passed next to `input_ids` by the tests that take only the main input (eager vs SDPA): without the images,
    # the prompt's image tokens are refused on purpose.
    additional_model_inputs = ["pixel_values"]
    # The vision width is not `config.vision_config.hidden_size` (two towers); tests/test_modeling.py checks the
    # shape of `get_image_features(...).last_hidden_state` instead.
    skip_test_image_features_output_shape = True

    def setUp(self):
        # The mixin tells base models (no loss to train) and heads that take `labels` by their class names in
        # transformers' built-in model tables, where LLaVA's classes are listed. A remote-code model is not: list
        # LiteGPT's there the same way for the duration of each test.
        # `MODEL_MAPPING` is the Auto mapping built on the first table; `AutoModel.register` would add LiteGPT to
        # it for good, so the registration is made on its `_extra_content` and undone after the test.
        for table, entry in (
            (modeling_auto.MODEL_MAPPING_NAMES, {LiteGPTConfig.model_type: LiteGPTModel.__name__}),
            (
                modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                {LiteGPTConfig.model_type: LiteGPTForConditionalGeneration.__name__},
            ),
            (modeling_auto.MODEL_MAPPING._extra_content, {LiteGPTConfig: LiteGPTModel}),
        ):
            patcher = unittest.mock.patch.dict(table, entry)
            patcher.start()
            self.addCleanup(patcher.stop)
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

    # ---- counts of `get_image_features` outputs: both towers' hidden states, the CLIP tower's attentions
    def _image_features_get_expected_num_hidden_states(self, model_tester=None):
        config = self.model_tester.get_config()
        return sum(_tower_hidden_state_count(config, index) for index in range(len(config.vision_encoders)))

    def _image_features_get_expected_num_attentions(self, model_tester=None):
        config = self.model_tester.get_config()
        return sum(
            config.vision_encoder_config(index).num_hidden_layers
            for index, spec in enumerate(config.vision_encoders)
            if spec["kind"] == "clip"
        )


def _tower_hidden_state_count(config: LiteGPTConfig, index: int) -> int:
    """A timm tower returns one hidden state per block; a CLIP tower the embeddings and one per layer."""
    tower = config.vision_encoder_config(index)
    if config.vision_encoders[index]["kind"] == "timm":
        return tower.model_args["depth"]
    return tower.num_hidden_layers + 1


for _name, _reason in EXCLUDED.items():
    setattr(LiteGPTForConditionalGenerationModelTest, _name, unittest.skip(_reason)(lambda self: None))


def test_every_exclusion_names_a_common_test():
    """An exclusion that no longer names a test of the mixin would hide nothing and mislead the counts of docs/testing.md."""
    assert set(EXCLUDED) <= {name for name in dir(ModelTesterMixin) if name.startswith("test_")}


def test_excluded_init_check_differs_only_by_the_custom_code_guard(monkeypatch):
    """The reason given for excluding `test_can_init_all_missing_weights`, checked: the two initialisations differ
    in the CLIP tower only, and not at all once LiteGPT is counted as library code."""

    def differing_weights(config: LiteGPTConfig) -> set[str]:
        with modeling_common.seeded_weight_init():
            from_init = LiteGPTModel(copy.deepcopy(config)).state_dict()
            from_missing = LiteGPTModel.from_pretrained(None, config=copy.deepcopy(config), state_dict={}).state_dict()
        # timm's own init is not driven by transformers (the mixin ignores timm weights the same way)
        return {k for k in from_init if "timm_model." not in k and not torch.equal(from_init[k], from_missing[k])}

    config = LiteGPTModelTester(None).get_config()
    differing = differing_weights(config)
    assert differing and all(k.startswith("pubmed_vision_tower.encoder.") for k in differing)
    monkeypatch.setattr(LiteGPTModel, "is_custom_code", classmethod(lambda cls: False))
    assert differing_weights(config) == set()
