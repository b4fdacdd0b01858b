"""LiteGPT model: layout, image-token merge, grouping, generation, freezing, attention backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from configuration_litegpt import LiteGPTConfig, paper_vision_encoders
from modeling_litegpt import LiteGPTForConditionalGeneration, group_patch_tokens

IMAGE_TOKEN_ID = 98  # tiny preset


def _tiny_inputs(num_images: int = 2, seed: int = 0):
    """Two sequences with 4 image tokens each; the second is left-padded by one."""
    torch.manual_seed(seed)
    image = [IMAGE_TOKEN_ID] * 4
    input_ids = torch.tensor([[1, 5, 6, *image, 7, 8, 9], [0, 1, 5, *image, 7, 8][: 10] + [10]])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 0] = 0
    pixel_values = torch.randn(num_images, 3, 32, 32)
    return input_ids, attention_mask, pixel_values


def test_llava_layout_and_module_paths(tiny_model):
    children = dict(tiny_model.model.named_children())
    assert list(children) == ["biomed_vision_tower", "pubmed_vision_tower", "multi_modal_projector", "language_model"]
    assert type(children["biomed_vision_tower"]).__name__ == "TimmWrapperModel"
    assert type(children["pubmed_vision_tower"]).__name__ == "CLIPVisionModel"
    assert tiny_model.get_output_embeddings() is tiny_model.lm_head
    assert tiny_model.base_model_prefix == "model"


def test_paper_preset_dimensions_without_weights():
    config = LiteGPTConfig.from_preset("litegpt-7b")
    assert (config.num_patch_tokens, config.num_image_tokens, config.projector_input_size) == (245, 49, 3840)
    with torch.device("meta"):
        model = LiteGPTForConditionalGeneration(config)
    projector = model.model.multi_modal_projector
    assert tuple(projector.linear_1.weight.shape) == (5632, 3840)
    assert tuple(projector.linear_2.weight.shape) == (4096, 5632)
    assert sum(p.numel() for p in projector.parameters()) == 44_705_280  # ≈ 44.7 M, as the paper says
    assert model.config.text_config.hidden_size == 4096
    assert model.lm_head.weight.shape[0] == 32001


def test_paper_encoders_give_245_patch_tokens_and_49_visual_tokens():
    """Real-size BiomedCLIP ViT-B/16 + PubMedCLIP ViT-B/32 architectures (random weights) with a tiny LM."""
    config = LiteGPTConfig.from_preset("tiny", vision_encoders=paper_vision_encoders())
    model = LiteGPTForConditionalGeneration(config).eval()
    pixel_values = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        biomed, _, _ = model.model._run_tower(model.model.biomed_vision_tower, config.vision_encoders[0], pixel_values, False, False)
        pubmed, _, _ = model.model._run_tower(model.model.pubmed_vision_tower, config.vision_encoders[1], pixel_values, False, False)
        grouped = model.model.get_projector_inputs(pixel_values)
        features = model.get_image_features(pixel_values=pixel_values).pooler_output
    assert biomed.shape == (1, 196, 768) and pubmed.shape == (1, 49, 768)
    assert grouped.shape == (1, 49, 3840)
    assert features.shape == (1, 49, config.text_config.hidden_size)


def test_grouping_takes_consecutive_sequence_positions():
    """Group 39 of the paper layout is biomed[195] ‖ pubmed[0..3] (196 = 39·5 + 1)."""
    biomed = torch.arange(196).float().view(1, 196, 1).expand(1, 196, 2) * 10
    pubmed = (1000 + torch.arange(49)).float().view(1, 49, 1).expand(1, 49, 2)
    grouped = group_patch_tokens(torch.cat([biomed, pubmed], dim=1), 5)
    assert grouped.shape == (1, 49, 10)
    assert grouped[0, 39, ::2].tolist() == [1950.0, 1000.0, 1001.0, 1002.0, 1003.0]
    assert grouped[0, 0, ::2].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    with pytest.raises(ValueError, match="cannot be grouped"):
        group_patch_tokens(torch.zeros(1, 7, 2), 5)


def test_model_groups_biomed_first_then_pubmed(tiny_model, monkeypatch):
    """Through the model: towers' tokens are concatenated in config order, then grouped, norm switchable."""
    tiny_model.config.vision_feature_norm = False
    codes = {"biomed": 0.0, "pubmed": 100.0}

    def fake_tokens(tower, spec, pixel_values, output_hidden_states, output_attentions):
        n = (spec["image_size"] // spec["patch_size"]) ** 2
        values = codes[spec["name"]] + torch.arange(n).float()
        return values.view(1, n, 1).expand(pixel_values.shape[0], n, tiny_model.config.vision_hidden_size), None, None

    monkeypatch.setattr(tiny_model.model, "_run_tower", fake_tokens)
    grouped = tiny_model.model.get_projector_inputs(torch.zeros(1, 3, 32, 32))
    width = tiny_model.config.vision_hidden_size
    firsts = grouped[0, :, ::width]  # first channel of each of the 5 tokens in every group
    assert firsts.tolist() == [
        [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 100, 101, 102, 103]
    ]


def test_vision_feature_norm_is_parameter_free_layernorm(tiny_model):
    pixel_values = torch.randn(1, 3, 32, 32)
    grouped = tiny_model.model.get_projector_inputs(pixel_values)
    tokens = grouped.reshape(1, 20, tiny_model.config.vision_hidden_size)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(1, 20), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(1, 20), atol=1e-3, rtol=0)
    assert not any("norm" in n for n, _ in tiny_model.model.named_parameters() if n.startswith("multi_modal"))


def test_image_features_are_scattered_at_image_token_positions(tiny_model):
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    out = tiny_model.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
    features = tiny_model.get_image_features(pixel_values=pixel_values).pooler_output
    torch.testing.assert_close(out.image_hidden_states, features)
    # The embeddings fed to the LM: recompute and compare the image rows.
    embeds = tiny_model.get_input_embeddings()(input_ids)
    mask = tiny_model.model.get_placeholder_mask(input_ids, embeds, features)
    merged = embeds.masked_scatter(mask, features)
    torch.testing.assert_close(merged[0, 3:7], features[0])
    torch.testing.assert_close(merged[1, 3:7], features[1])
    torch.testing.assert_close(merged[0, :3], embeds[0, :3])


def test_token_feature_mismatch_raises_clear_error(tiny_model):
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    input_ids[0, 3] = 20  # one image token fewer than the 2 x 4 features
    with pytest.raises(ValueError, match="Image features and image tokens do not match, tokens: 7, features: 8"):
        tiny_model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)


def test_image_tokens_without_image_raise(tiny_model):
    input_ids, attention_mask, _ = _tiny_inputs()
    with pytest.raises(ValueError, match="neither pixel_values nor projector_inputs"):
        tiny_model(input_ids=input_ids, attention_mask=attention_mask)


def test_wrong_image_size_raises(tiny_model):
    input_ids, attention_mask, _ = _tiny_inputs()
    with pytest.raises(ValueError, match="spatial size"):
        tiny_model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=torch.randn(2, 3, 48, 48))


def test_cached_projector_inputs_give_identical_logits(tiny_model):
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    with torch.no_grad():
        from_pixels = tiny_model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
        cached = tiny_model.model.get_projector_inputs(pixel_values)
        from_cache = tiny_model(input_ids=input_ids, attention_mask=attention_mask, projector_inputs=cached).logits
    torch.testing.assert_close(from_pixels, from_cache, rtol=0, atol=0)


def test_loss_is_cross_entropy_on_shifted_unmasked_labels(tiny_model):
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    labels = input_ids.clone()
    labels[:, :7] = -100
    out = tiny_model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_vision_towers_are_frozen_and_stay_in_eval(tiny_model):
    tiny_model.train()
    for tower in tiny_model.model.vision_towers:
        assert not tower.training
        assert not any(p.requires_grad for p in tower.parameters())
    assert tiny_model.model.multi_modal_projector.training
    assert all(p.requires_grad for p in tiny_model.model.multi_modal_projector.parameters())


def test_towers_are_refrozen_after_from_pretrained(tiny_checkpoint):
    model = LiteGPTForConditionalGeneration.from_pretrained(tiny_checkpoint)
    assert not any(p.requires_grad for tower in model.model.vision_towers for p in tower.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())


def test_gradient_checkpointing_trains_projector_not_towers(tiny_model):
    tiny_model.gradient_checkpointing_enable()
    tiny_model.train()
    assert tiny_model.model.language_model.gradient_checkpointing
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    out = tiny_model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, labels=input_ids)
    out.loss.backward()
    assert tiny_model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for tower in tiny_model.model.vision_towers for p in tower.parameters())


def test_greedy_generation_with_cache_equals_without(tiny_model):
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, max_new_tokens=8, do_sample=False)
    cached = tiny_model.generate(**kwargs, use_cache=True)
    uncached = tiny_model.generate(**kwargs, use_cache=False)
    assert torch.equal(cached, uncached)


def test_batched_left_padded_generation_equals_one_at_a_time(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    images = [torch.rand(3, 40, 50).numpy().transpose(1, 2, 0), torch.rand(3, 64, 32).numpy().transpose(1, 2, 0)]
    prompts = [processor.task_prompt("grounding"), processor.task_prompt("diagnosis")]
    processor.tokenizer.padding_side = "left"
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    batched = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for i in range(2):
        single = processor(images=[images[i]], text=[prompts[i]], return_tensors="pt")
        out = model.generate(**single, max_new_tokens=6, do_sample=False)
        assert batched[i, -6:].tolist() == out[0, -6:].tolist()


def test_sdpa_and_eager_attention_agree(tiny_checkpoint):
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    logits = {}
    for impl in ("sdpa", "eager"):
        model = LiteGPTForConditionalGeneration.from_pretrained(tiny_checkpoint, attn_implementation=impl).eval()
        assert set(_attention_implementations(model).values()) == {impl}  # the LM and the towers too
        with torch.no_grad():
            logits[impl] = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
    torch.testing.assert_close(logits["sdpa"][0], logits["eager"][0], atol=1e-4, rtol=1e-4)


def test_config_rejects_ungroupable_or_mismatched_encoders():
    with pytest.raises(ValueError, match="cannot be grouped 3 at a time"):
        LiteGPTConfig.from_preset("tiny", tokens_per_group=3)
    encoders = paper_vision_encoders()
    encoders[1]["hidden_size"] = 512
    with pytest.raises(ValueError, match="share hidden_size"):
        LiteGPTConfig.from_preset("tiny", vision_encoders=encoders)
    with pytest.raises(ValueError, match="unknown LiteGPT preset"):
        LiteGPTConfig.from_preset("litegpt-13b")


def test_processor_inserts_exactly_the_tokens_the_model_consumes(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    image = (torch.rand(50, 70) * 255).to(torch.uint8).numpy()
    inputs = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == model.config.num_image_tokens == 4
    assert inputs["pixel_values"].shape == (1, 3, model.config.image_size, model.config.image_size)
    assert int((inputs["input_ids"] == processor.tokenizer.bos_token_id).sum()) == 1
    assert torch.isfinite(model(**inputs).logits).all()

    processor.num_image_tokens = 5  # a processor out of step with the model
    wrong = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    with pytest.raises(ValueError, match="tokens: 5, features: 4"):
        model(**wrong)


# ------------------------------------------------------------------ projector input standardization
def _standardizing_model(seed: int = 0) -> LiteGPTForConditionalGeneration:
    torch.manual_seed(seed)
    return LiteGPTForConditionalGeneration(LiteGPTConfig.from_preset("tiny", projector_input_standardization=True)).eval()


def test_unfitted_standardization_is_the_identity(tiny_model):
    """Same seed, same weights: the flag alone changes nothing until statistics are set."""
    standardizing = _standardizing_model()
    projector = standardizing.model.multi_modal_projector
    assert projector.input_mean.abs().max() == 0 and (projector.input_std == 1).all()
    inputs = tiny_model.model.get_projector_inputs(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(projector(inputs), tiny_model.model.multi_modal_projector(inputs), rtol=0, atol=0)


def test_fitted_standardization_feeds_standardized_inputs_to_the_first_layer():
    model = _standardizing_model()
    projector = model.model.multi_modal_projector
    inputs = torch.randn(3, *projector.input_mean.shape)
    mean, std = torch.randn(projector.input_mean.shape), torch.rand(projector.input_std.shape) + 0.5
    projector.set_input_standardization(mean, std)
    with torch.no_grad():
        expected = projector.linear_2(projector.act(projector.linear_1((inputs - mean) / std)))
        torch.testing.assert_close(projector(inputs), expected)
    projector.set_input_standardization(mean, torch.zeros_like(std))
    assert projector.input_std.min() == pytest.approx(1e-3), "a constant feature is floored, not divided by 0"


def test_standardization_statistics_are_checked():
    projector = _standardizing_model().model.multi_modal_projector
    shape = projector.input_mean.shape
    with pytest.raises(ValueError, match="input mean of shape"):
        projector.set_input_standardization(torch.zeros(shape[0] + 1, shape[1]), torch.ones(shape))
    with pytest.raises(ValueError, match="non-finite"):
        projector.set_input_standardization(torch.zeros(shape), torch.full(shape, float("nan")))
    with pytest.raises(ValueError, match="projector_input_standardization=False"):
        LiteGPTForConditionalGeneration(LiteGPTConfig.from_preset("tiny")).model.multi_modal_projector.set_input_standardization(
            torch.zeros(shape), torch.ones(shape)
        )


def test_standardization_statistics_survive_save_and_load(tmp_path, tiny_checkpoint):
    model = _standardizing_model()
    projector = model.model.multi_modal_projector
    projector.set_input_standardization(torch.randn(projector.input_mean.shape), torch.rand(projector.input_std.shape) + 0.5)
    model.save_pretrained(tmp_path / "fitted")
    loaded = LiteGPTForConditionalGeneration.from_pretrained(tmp_path / "fitted").model.multi_modal_projector
    torch.testing.assert_close(loaded.input_mean, projector.input_mean, rtol=0, atol=0)
    torch.testing.assert_close(loaded.input_std, projector.input_std, rtol=0, atol=0)
    # A checkpoint saved without the option loads into a standardizing config as the identity, not garbage.
    config = LiteGPTConfig.from_pretrained(tiny_checkpoint)
    config.projector_input_standardization = True
    fresh = LiteGPTForConditionalGeneration.from_pretrained(tiny_checkpoint, config=config).model.multi_modal_projector
    assert fresh.input_mean.abs().max() == 0 and (fresh.input_std == 1).all()



# ------------------------------------------------------------------ loaded and called the way transformers users do
def _all_floating_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    """Dtypes of the saved tensors (non-persistent buffers such as RoPE's `inv_freq` stay float32 by design)."""
    return {t.dtype for t in module.state_dict().values() if t.is_floating_point()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_pretrained_dtype_reaches_every_sub_model(tiny_checkpoint, dtype):
    """`dtype=` reaches the LM too (a sub-config), and the forward pass runs; under float16 the towers and the
    projector stay in float32 (`_keep_in_fp32_modules`), under bfloat16 everything is bfloat16."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=dtype).eval()
    assert _all_floating_dtypes(model.model.language_model) == {dtype}
    assert model.lm_head.weight.dtype == dtype
    vision_dtype = torch.float32 if dtype == torch.float16 else dtype
    for tower in model.model.vision_towers:
        assert _all_floating_dtypes(tower) == {vision_dtype}
    assert _all_floating_dtypes(model.model.multi_modal_projector) == {vision_dtype}
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()


def test_checkpoint_saved_in_bfloat16_loads_in_float32(tiny_model_and_processor, tmp_path):
    from litegpt_train.base import save_litegpt

    model, processor = tiny_model_and_processor
    save_litegpt(model.to(torch.bfloat16), processor, tmp_path / "bf16")
    model = LiteGPTForConditionalGeneration.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    assert _all_floating_dtypes(model) == {torch.float32}
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits).all()


def test_eval_loader_runs_in_bfloat16(tiny_checkpoint):
    """`eval.py --dtype bfloat16` loads through `load_model_and_processor`; its model must run."""
    from litegpt_eval.generation import load_model_and_processor

    model, processor = load_model_and_processor(str(tiny_checkpoint), dtype="bfloat16", device="cpu")
    image = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    inputs = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def _attention_implementations(model) -> dict[str, str]:
    """Attention implementation of the model and of every transformers sub-model in it."""
    return {
        name or "<top>": module.config._attn_implementation
        for name, module in model.named_modules()
        if isinstance(module, PreTrainedModel)
    }


@pytest.mark.parametrize("how", ["from_pretrained", "_from_config", "config_setter"])
def test_eager_attention_reaches_the_language_model_and_the_towers(tiny_checkpoint, how):
    if how == "from_pretrained":
        model = LiteGPTForConditionalGeneration.from_pretrained(tiny_checkpoint, attn_implementation="eager")
    elif how == "_from_config":
        model = LiteGPTForConditionalGeneration._from_config(LiteGPTConfig.from_preset("tiny"), attn_implementation="eager")
    else:
        config = LiteGPTConfig.from_preset("tiny")
        config._attn_implementation = "eager"
        model = LiteGPTForConditionalGeneration(config)
    implementations = _attention_implementations(model.eval())
    assert {"<top>", "model.language_model", "model.pubmed_vision_tower"} <= set(implementations)
    assert set(implementations.values()) == {"eager"}, implementations
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, output_attentions=True)
    text = model.config.text_config
    assert len(out.attentions) == text.num_hidden_layers
    assert out.attentions[0].shape == (2, text.num_attention_heads, input_ids.shape[1], input_ids.shape[1])
    # Causal and masked: row 1 starts with one pad position that no real position attends to.
    assert torch.all(out.attentions[0][1, :, 1:, 0] == 0) and torch.all(out.attentions[0][0, :, 0, 1:] == 0)


def test_return_dict_false_gives_tuples(tiny_model):
    input_ids, attention_mask, pixel_values = _tiny_inputs()
    labels = input_ids.clone()
    with torch.no_grad():
        full = tiny_model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, labels=labels)
        as_tuple = tiny_model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, labels=labels, return_dict=False
        )
        backbone = tiny_model.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(backbone, tuple)
    torch.testing.assert_close(as_tuple[0], full.loss)
    torch.testing.assert_close(as_tuple[1], full.logits)
    torch.testing.assert_close(backbone[0], tiny_model.model(input_ids=input_ids, attention_mask=attention_mask,
                                                             pixel_values=pixel_values).last_hidden_state)


def test_assisted_generation_equals_greedy_generation(tiny_model_and_processor):
    """The assistant (another LiteGPT of the same layout) proposes, the model verifies: greedy output unchanged."""
    from tiny_tokenizer import build_tiny_tokenizer

    from litegpt_train.base import assemble_litegpt

    model, processor = tiny_model_and_processor
    assistant, _ = assemble_litegpt(LiteGPTConfig.from_preset("tiny"), build_tiny_tokenizer(), seed=1)
    image = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    inputs = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assisted = model.generate(**inputs, assistant_model=assistant, max_new_tokens=8, do_sample=False)
    assert torch.equal(assisted, greedy)


class _ForceTokenAt:
    """Logits processor that forces `token_id` at the first generated position (to make the model emit it)."""

    def __init__(self, prompt_length: int, token_id: int):
        self.prompt_length, self.token_id = prompt_length, token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == self.prompt_length:
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.token_id] = 0.0
            return forced
        return scores


def test_an_image_token_generated_after_the_prompt_is_an_ordinary_token(tiny_model_and_processor):
    """Image features fill the prompt's placeholders only; if the model itself emits the placeholder id (the shipped
    generation config suppresses it, the model does not), decoding goes on with that id's embedding row."""
    from transformers import LogitsProcessorList

    model, processor = tiny_model_and_processor
    image = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    inputs = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    image_id = model.config.image_token_id
    force = LogitsProcessorList([_ForceTokenAt(prompt_length, image_id)])
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=[], logits_processor=force)
    assert out[0, prompt_length].item() == image_id and out.shape[1] == prompt_length + 4
    # Without a cache every step re-reads the prompt with its image, and an emitted placeholder can no longer be told
    # from the prompt's: the counts disagree and the forward says so.
    with pytest.raises(ValueError, match="tokens: 5, features: 4"):
        model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=[], logits_processor=force,
                       use_cache=False)


def test_get_image_features_follows_the_transformers_output_contract(tiny_model):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = tiny_model.get_image_features(pixel_values=pixel_values)
        as_tuple = tiny_model.get_image_features(pixel_values=pixel_values, return_dict=False)
        with_states = tiny_model.get_image_features(pixel_values=pixel_values, output_hidden_states=True)
        projected = tiny_model.model.multi_modal_projector(tiny_model.model.get_projector_inputs(pixel_values))
    assert isinstance(out, BaseModelOutputWithPooling)
    config = tiny_model.config
    assert out.last_hidden_state.shape == (2, config.num_patch_tokens, config.vision_hidden_size)
    torch.testing.assert_close(out.pooler_output, projected)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[1], projected)
    assert out.hidden_states is None
    # Hidden states of both towers, in config order: timm gives one per block, CLIP the embeddings + one per layer.
    assert len(with_states.hidden_states) == 2 + 3
    torch.testing.assert_close(with_states.pooler_output, projected)


def test_processor_output_with_image_sizes_goes_to_the_model_as_is(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    image = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    inputs = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt", return_image_sizes=True)
    assert inputs["image_sizes"] == [(50, 40)]
    plain = {k: v for k, v in inputs.items() if k != "image_sizes"}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, model(**plain).logits, rtol=0, atol=0)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, model.generate(**plain, max_new_tokens=4, do_sample=False))


def test_saved_processor_pads_left_so_batched_generation_is_right(tiny_checkpoint):
    """Loaded as a user would, without touching `padding_side`: each row of a batch answers as it would alone."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    assert processor.tokenizer.padding_side == "left"
    rng = np.random.default_rng(0)
    images = [(rng.random((40, 50)) * 255).astype(np.uint8), (rng.random((64, 32)) * 255).astype(np.uint8)]
    prompts = [processor.task_prompt("grounding"), processor.task_prompt("diagnosis")]  # different lengths
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][:, 0].tolist() != [1, 1], "the prompts should differ in length"
    batched = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for i in range(2):
        single = processor(images=[images[i]], text=[prompts[i]], return_tensors="pt")
        assert batched[i, -6:].tolist() == model.generate(**single, max_new_tokens=6, do_sample=False)[0, -6:].tolist()


def test_tower_configs_are_sub_configs_and_older_configs_still_load(tmp_path):
    """Each tower's config is the sub-config `{name}_vision_config` (not a copy inside `vision_encoders`); a
    config.json written before, with the encoder configs inline, loads to the same config."""
    import json

    config = LiteGPTConfig.from_preset("tiny")
    assert set(config.sub_configs) == {"text_config", "biomed_vision_config", "pubmed_vision_config"}
    assert all("config" not in spec for spec in config.vision_encoders)
    model = LiteGPTForConditionalGeneration(config)
    assert model.model.pubmed_vision_tower.config is config.pubmed_vision_config  # one object: dtype/attn reach it
    config.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    for spec in saved["vision_encoders"]:  # the layout of configs saved before sub-configs
        spec["config"] = saved.pop(f"{spec['name']}_vision_config")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    assert LiteGPTConfig.from_pretrained(tmp_path / "old").to_dict() == LiteGPTConfig.from_pretrained(tmp_path / "new").to_dict()
    broken = dict(saved, vision_encoders=[{k: v for k, v in spec.items() if k != "config"} for spec in saved["vision_encoders"]])
    with pytest.raises(ValueError, match="vision encoder 'biomed' has no config"):
        LiteGPTConfig(**{k: v for k, v in broken.items() if k != "model_type"})
