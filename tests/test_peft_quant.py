"""LoRA through PEFT (q/v of the LM only, projector trained in full) and bitsandbytes 8/4-bit on the CPU."""

from __future__ import annotations

import re

import pytest
import torch
from peft import PeftModel, get_peft_model

from configuration_litegpt import LiteGPTConfig
from modeling_litegpt import (
    LORA_TARGET_MODULES,
    LiteGPTForConditionalGeneration,
    bnb_quantization_config,
    non_quantized_modules,
)


def _inputs():
    torch.manual_seed(1)
    input_ids = torch.tensor([[1, 5, 6, 98, 98, 98, 98, 7, 8, 9]])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=torch.randn(1, 3, 32, 32))


def _perturb_lora(model) -> None:
    """LoRA B starts at zero; give every adapter weight a value so that save/load is really tested."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)


def test_lora_targets_only_language_model_q_and_v(tiny_model):
    peft_model = get_peft_model(tiny_model, LiteGPTForConditionalGeneration.lora_config(r=8))
    lora_modules = sorted({n.rsplit(".lora_", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_" in n})
    num_layers = tiny_model.config.text_config.num_hidden_layers
    assert len(lora_modules) == 2 * num_layers
    assert all(re.search(r"\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)$", n) for n in lora_modules)
    assert not any("vision_tower" in n for n, _ in peft_model.named_parameters() if ".lora_" in n)


def test_a_suffix_list_would_also_hit_pubmedclip_attention():
    """Why the target is a regex: PEFT suffix-matches lists, reaching the CLIP tower's q_proj/v_proj."""
    names = ["model.pubmed_vision_tower.encoder.layers.0.self_attn.q_proj",
             "model.language_model.layers.0.self_attn.q_proj"]
    assert [bool(re.fullmatch(LORA_TARGET_MODULES, n)) for n in names] == [False, True]
    assert all(n.endswith("q_proj") for n in names)


def test_trainable_parameters_are_projector_plus_lora(tiny_model):
    projector = sum(p.numel() for p in tiny_model.model.multi_modal_projector.parameters())
    peft_model = get_peft_model(tiny_model, LiteGPTForConditionalGeneration.lora_config(r=8))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all(".lora_" in n or "multi_modal_projector.modules_to_save" in n for n in trainable)
    counted = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad)
    hidden = tiny_model.config.text_config
    q_out = hidden.num_attention_heads * hidden.head_dim
    v_out = hidden.num_key_value_heads * hidden.head_dim
    lora = hidden.num_hidden_layers * 8 * ((hidden.hidden_size + q_out) + (hidden.hidden_size + v_out))
    assert counted == projector + lora


def test_paper_lora_size_is_33_6m():
    """r=64 on Llama-2-7b's q/v: 32 layers x 2 x 64 x (4096 + 4096) = 33.55 M."""
    config = LiteGPTConfig.from_preset("litegpt-7b")
    with torch.device("meta"):
        model = LiteGPTForConditionalGeneration(config)
        peft_model = get_peft_model(model, LiteGPTForConditionalGeneration.lora_config())
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
    assert lora == 32 * 2 * 64 * (4096 + 4096)


def test_adapter_save_and_reload_gives_identical_outputs(tmp_path, tiny_config):
    torch.manual_seed(0)
    base = LiteGPTForConditionalGeneration(tiny_config).eval()
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LiteGPTForConditionalGeneration.lora_config(r=8))
    _perturb_lora(peft_model)
    peft_model.eval()
    inputs = _inputs()
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    peft_model.save_pretrained(tmp_path / "adapter")

    saved_keys = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(
        tmp_path / "adapter" / "adapter_model.safetensors"))
    assert any("multi_modal_projector" in k for k in saved_keys)
    assert not any("embed_tokens" in k or "vision_tower" in k for k in saved_keys)

    fresh = LiteGPTForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    plain = LiteGPTForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        assert not torch.allclose(plain(**inputs).logits, expected), "the adapter changed nothing"


def test_skip_list_keeps_towers_projector_and_head_unquantised():
    config = LiteGPTConfig.from_preset("tiny")
    assert non_quantized_modules(config) == [
        "model.biomed_vision_tower", "model.pubmed_vision_tower", "model.multi_modal_projector", "lm_head"
    ]
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        bnb_quantization_config(config, 3)


def _saved_model_with_a_wider_lm(folder) -> LiteGPTConfig:
    """The tiny preset with a wider language model (hidden size 64), saved to `folder`."""
    config = LiteGPTConfig.from_preset("tiny", text_config=dict(
        model_type="llama", vocab_size=99, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    torch.manual_seed(0)
    LiteGPTForConditionalGeneration(config).save_pretrained(folder)
    return config


@pytest.mark.parametrize("bits,min_cosine", [(8, 0.995), (4, 0.95)])
def test_bitsandbytes_quantises_only_the_language_model(tmp_path, bits, min_cosine):
    pytest.importorskip("bitsandbytes")
    config = _saved_model_with_a_wider_lm(tmp_path)
    full = LiteGPTForConditionalGeneration.from_pretrained(tmp_path).eval()
    quantised = LiteGPTForConditionalGeneration.from_pretrained(
        tmp_path, quantization_config=bnb_quantization_config(config, bits, torch.float32), device_map="cpu"
    ).eval()
    kinds = {n: type(m).__name__ for n, m in quantised.named_modules()}
    expected_kind = "Linear8bitLt" if bits == 8 else "Linear4bit"
    assert kinds["model.language_model.layers.0.self_attn.q_proj"] == expected_kind
    assert kinds["model.language_model.layers.1.mlp.down_proj"] == expected_kind
    for name in ("model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2", "lm_head",
                 "model.pubmed_vision_tower.encoder.layers.0.self_attn.q_proj"):
        assert kinds[name] == "Linear", name
    assert quantised.model.multi_modal_projector.linear_1.weight.dtype == torch.float32
    inputs = _inputs()
    with torch.no_grad():
        reference = full(**inputs).logits
        got = quantised(**inputs).logits
    assert torch.isfinite(got).all()
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), reference.flatten(), dim=0)
    assert cosine > min_cosine
    assert not torch.equal(got, reference)  # it really ran quantised


def test_a_plain_8bit_config_leaves_towers_and_projector_in_float(tmp_path):
    """`BitsAndBytesConfig(load_in_8bit=True)` without a skip list: the model class declares what stays in float."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    _saved_model_with_a_wider_lm(tmp_path)
    quantised = LiteGPTForConditionalGeneration.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu"
    ).eval()
    kinds = {n: type(m).__name__ for n, m in quantised.named_modules()}
    assert kinds["model.language_model.layers.0.self_attn.q_proj"] == "Linear8bitLt"
    float_linears = [n for n in kinds if n.startswith(("model.multi_modal_projector.", "model.pubmed_vision_tower.",
                                                       "model.biomed_vision_tower.")) and kinds[n].startswith("Linear")]
    assert float_linears and all(kinds[n] == "Linear" for n in float_linears), [
        n for n in float_linears if kinds[n] != "Linear"]
    assert kinds["lm_head"] == "Linear"
    with torch.no_grad():
        assert torch.isfinite(quantised(**_inputs()).logits).all()


def test_the_paper_lora_scope_ships_with_the_checkpoint(tiny_checkpoint):
    """From the checkpoint's own remote code, without this repository: `lora_config()` targets the LM's q/v only and
    trains the projector in full; the naive suffix list would also wrap PubMedCLIP's q/v and freeze the projector."""
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText

    def wrapped_and_trainable(config):
        model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules")  # the shipped class, not the repo's
        peft_model = get_peft_model(model, config)
        wrapped = {n.rsplit(".lora_", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_" in n}
        trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad and ".lora_" not in n}
        return wrapped, trainable

    naive_wrapped, naive_trainable = wrapped_and_trainable(LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    assert any("pubmed_vision_tower" in n for n in naive_wrapped) and not naive_trainable

    model_class = type(AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, trust_remote_code=True))
    config = model_class.lora_config(r=8)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.05)
    assert model_class.lora_config().r == 64  # the paper's rank by default
    wrapped, trainable = wrapped_and_trainable(config)
    assert wrapped and all(re.search(r"\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)$", n) for n in wrapped)
    assert trainable and all(".multi_modal_projector.modules_to_save." in n for n in trainable)
    assert model_class.lora_config(train_projector=False).modules_to_save is None
