"""Offline tests of scripts/convert_litegpt.py on tiny stand-ins written in the real upstream formats.

Stand-ins (all random, every tensor perturbed so that a wrong mapping cannot go unnoticed):
* BiomedCLIP: an open_clip hub folder (`open_clip_config.json` + `open_clip_pytorch_model.bin`, keys
  `visual.trunk.*`, `visual.head.proj.weight`, `text.*`, `logit_scale`). The toy ViT is described with
  the converter's optional `vision_cfg.timm_model_kwargs` on top of `vit_base_patch16_224`
  (32 px, patch 8 -> 16 tokens, width 32, depth 2, 2 heads).
* PubMedCLIP: a transformers `CLIPModel` folder (`config.json` + `pytorch_model.bin`, including the
  old persistent `position_ids` buffers): 32 px, patch 16 -> 4 tokens, width 32, quick_gelu.
  16 + 4 = 20 patch tokens -> 4 visual tokens of 5 * 32 = 160.
* LM: a tiny `LlamaForCausalLM` folder (safetensors + tokenizer, 98 tokens, no `<ImageHere>` yet).
* MiniGPT-v2: `checkpoint_stage3.pth` = `{"model": {llama_proj, old-peft q/v LoRA of 2 layers (r=4),
  EVA / ln_vision / Q-Former keys}, "optimizer": ..., "config": ..., "epoch": ...}`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForImageTextToText,
    CLIPConfig,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from configuration_litegpt import paper_vision_encoders
from litegpt_train.hub import remote_code_files
from scripts import convert_litegpt as conv

IMAGE_SIZE = 32
WIDTH = 32
PROJ_HIDDEN = 48
LM_HIDDEN = 32
LORA_RANK = 4
BIOMED_KWARGS = {"patch_size": 8, "embed_dim": WIDTH, "depth": 2, "num_heads": 2}
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _perturb_(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


# ------------------------------------------------------------------------------------------ stand-ins
def write_biomedclip(folder: Path, mean=OPENAI_MEAN, std=OPENAI_STD) -> Path:
    folder.mkdir(parents=True)
    trunk = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=0, img_size=IMAGE_SIZE, **BIOMED_KWARGS
    )
    _perturb_(trunk, 1)
    head = torch.nn.Linear(WIDTH, 16, bias=False)
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    state["visual.head.proj.weight"] = head.weight.detach().clone()
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["text.proj.0.weight"] = torch.randn(16, 8)
    state["logit_scale"] = torch.tensor(4.6052)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    config = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {
                "timm_model_name": "vit_base_patch16_224",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": IMAGE_SIZE,
                "timm_model_kwargs": BIOMED_KWARGS,
            },
            "text_cfg": {
                "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 256,
            },
        },
        "preprocess_cfg": {"mean": mean, "std": std},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return folder


def write_pubmedclip(folder: Path) -> Path:
    folder.mkdir(parents=True)
    config = CLIPConfig(
        text_config={
            "vocab_size": 99,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
            "hidden_size": WIDTH,
            "intermediate_size": 4 * WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "hidden_act": "quick_gelu",
            "projection_dim": 16,
        },
        projection_dim=16,
    )
    torch.manual_seed(2)
    model = CLIPModel(config)
    _perturb_(model, 2)
    state = dict(model.state_dict())
    # Checkpoints from transformers < 4.31 stored these buffers.
    state["vision_model.embeddings.position_ids"] = torch.arange(5).unsqueeze(0)
    state["text_model.embeddings.position_ids"] = torch.arange(16).unsqueeze(0)
    config.save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    assert not (folder / "model.safetensors").exists()
    return folder


def build_lm_tokenizer() -> PreTrainedTokenizerFast:
    """tests/tiny_tokenizer.py's character tokenizer without `<ImageHere>` (98 tokens): the converter adds it."""
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>"])}
    for code in range(0x20, 0x7F):
        vocab[chr(code)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert len(tokenizer) == 98
    return tokenizer


def write_llm(folder: Path) -> Path:
    config = LlamaConfig(
        vocab_size=98,
        hidden_size=LM_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(3)
    model = LlamaForCausalLM(config)
    _perturb_(model, 3)
    model.half().save_pretrained(folder)  # stored in float16, like Llama-2-7b-chat-hf
    build_lm_tokenizer().save_pretrained(folder)
    return folder


def minigptv2_state(proj_shape=(LM_HIDDEN, PROJ_HIDDEN), layers=(0, 1)) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    state = {
        "llama_proj.weight": torch.randn(*proj_shape, generator=generator),
        "llama_proj.bias": torch.randn(proj_shape[0], generator=generator),
    }
    out_features = {"q_proj": LM_HIDDEN, "v_proj": 16}  # 2 kv heads * head_dim 8
    for layer in layers:
        for proj in ("q_proj", "v_proj"):
            prefix = f"llama_model.base_model.model.model.layers.{layer}.self_attn.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(LORA_RANK, LM_HIDDEN, generator=generator)
            state[f"{prefix}.lora_B.weight"] = torch.randn(out_features[proj], LORA_RANK, generator=generator)
    # Keys the converter must ignore (and count).
    state["visual_encoder.patch_embed.proj.weight"] = torch.randn(8, 3, 2, 2, generator=generator)
    state["visual_encoder.blocks.0.attn.qkv.weight"] = torch.randn(24, 8, generator=generator)
    state["ln_vision.weight"] = torch.ones(8)
    state["ln_vision.bias"] = torch.zeros(8)
    state["Qformer.bert.embeddings.LayerNorm.weight"] = torch.ones(8)
    return state


def write_minigptv2(path: Path, state: dict[str, torch.Tensor]) -> Path:
    checkpoint = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
        "config": {"run": {"lr_sched": "linear_warmup_cosine_lr", "init_lr": 1e-5}},
        "scaler": None,
        "epoch": 3,
    }
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    state = minigptv2_state()
    return {
        "biomedclip": write_biomedclip(root / "biomedclip"),
        "pubmedclip": write_pubmedclip(root / "pubmedclip"),
        "llm": write_llm(root / "llm"),
        "minigptv2": write_minigptv2(root / "checkpoint_stage3.pth", state),
        "minigptv2_state": state,
        "root": root,
    }


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "litegpt-tiny-base"
    conv.convert(
        biomedclip=sources["biomedclip"],
        pubmedclip=sources["pubmedclip"],
        llm=str(sources["llm"]),
        minigptv2=sources["minigptv2"],
        out=out,
        projector_hidden_size=PROJ_HIDDEN,
        seed=0,
    )
    return out


@pytest.fixture(scope="module")
def loaded(converted):
    return AutoModelForImageTextToText.from_pretrained(str(converted), trust_remote_code=True).eval()


# ------------------------------------------------------------------------------------------ tests
def test_checkpoint_loads_and_runs(converted, loaded):
    config = loaded.config
    assert type(loaded).__name__ == "LiteGPTForConditionalGeneration"
    assert [e["name"] for e in config.vision_encoders] == ["biomed", "pubmed"]
    assert config.num_patch_tokens == 20 and config.num_image_tokens == 4 and config.projector_input_size == 160
    assert config.text_config.vocab_size == 99 and config.image_token_id == 98
    assert loaded.generation_config.suppress_tokens == [98]
    assert not any(p.requires_grad for p in loaded.model.biomed_vision_tower.parameters())
    ids = torch.tensor([[1] + [98] * 4 + [40, 41, 2]])
    with torch.no_grad():
        out = loaded(input_ids=ids, pixel_values=torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert out.logits.shape == (1, 8, 99) and torch.isfinite(out.logits).all()


def test_processor_saved(converted):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(converted), trust_remote_code=True)
    assert processor.tokenizer.convert_tokens_to_ids("<ImageHere>") == 98
    assert processor.num_image_tokens == 4
    assert list(processor.image_processor.image_mean) == pytest.approx(OPENAI_MEAN)


def test_projector_weights(sources, loaded):
    state = sources["minigptv2_state"]
    projector = loaded.model.multi_modal_projector
    assert torch.equal(projector.linear_2.weight, state["llama_proj.weight"])
    assert torch.equal(projector.linear_2.bias, state["llama_proj.bias"])
    torch.manual_seed(0)
    reference = torch.nn.Linear(160, PROJ_HIDDEN)
    assert torch.equal(projector.linear_1.weight, reference.weight)
    assert torch.equal(projector.linear_1.bias, reference.bias)


def test_tower_parity(sources, loaded):
    report = conv.check_tower_parity(loaded, sources["biomedclip"], sources["pubmedclip"], atol=1e-5)
    assert set(report) == {"biomed", "pubmed"} and all(v <= 1e-5 for v in report.values())
    # PubMedCLIP's post_layernorm only feeds the pooled output: last_hidden_state is taken before it.
    towers = {"biomed": loaded.model.biomed_vision_tower, "pubmed": copy.deepcopy(loaded.model.pubmed_vision_tower)}
    with torch.no_grad():
        towers["pubmed"].post_layernorm.weight.zero_()
    conv.check_tower_parity(towers, sources["biomedclip"], sources["pubmedclip"], atol=1e-5)


@pytest.mark.parametrize(
    "tower, parameter",
    [
        ("biomed", "timm_model.norm.weight"),
        ("pubmed", "pre_layrnorm.weight"),
        ("biomed", "timm_model.blocks.1.attn.qkv.bias"),
    ],
)
def test_tower_parity_catches_a_changed_weight(sources, loaded, tower, parameter):
    towers = {name: copy.deepcopy(getattr(loaded.model, f"{name}_vision_tower")) for name in ("biomed", "pubmed")}
    with torch.no_grad():
        towers[tower].get_parameter(parameter).mul_(1.5)
    with pytest.raises(ValueError, match=f"parity failed.*{tower}"):
        conv.check_tower_parity(towers, sources["biomedclip"], sources["pubmedclip"], atol=1e-5)


def test_tower_weights_equal_sources(sources, loaded):
    bio = torch.load(sources["biomedclip"] / "open_clip_pytorch_model.bin", weights_only=True)
    ours = loaded.model.biomed_vision_tower.state_dict()
    trunk = {k[len("visual.trunk.") :]: v for k, v in bio.items() if k.startswith("visual.trunk.")}
    assert set(ours) == {f"timm_model.{k}" for k in trunk}
    assert all(torch.equal(ours[f"timm_model.{k}"], v) for k, v in trunk.items())
    pub = torch.load(sources["pubmedclip"] / "pytorch_model.bin", weights_only=True)
    ours = loaded.model.pubmed_vision_tower.state_dict()
    assert ours and all(torch.equal(v, pub[f"vision_model.{k}"]) for k, v in ours.items())


def test_lm_weights_equal_source(sources, loaded):
    source = LlamaForCausalLM.from_pretrained(str(sources["llm"])).float()  # float16 -> float32 is exact
    ours = loaded.model.language_model.state_dict()
    theirs = source.model.state_dict()
    # Default --dtype is float32 everywhere, and the LM's float16 source dtype must not leak into the config.
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert str(loaded.config.text_config.dtype).endswith("float32")
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if key == "embed_tokens.weight":
            assert ours[key].shape == (99, LM_HIDDEN)
            assert torch.equal(ours[key][:98], value)
        else:
            assert torch.equal(ours[key], value), key
    assert loaded.lm_head.weight.shape == (99, LM_HIDDEN)
    assert torch.equal(loaded.lm_head.weight[:98], source.lm_head.weight)


def test_init_adapter(sources, converted, loaded):
    from peft import PeftModel

    adapter_dir = converted / conv.INIT_ADAPTER_DIRNAME
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == LORA_RANK and adapter_config["lora_alpha"] == 16
    assert adapter_config["lora_dropout"] == 0.05 and adapter_config["bias"] == "none"
    assert adapter_config["task_type"] == "CAUSAL_LM"
    assert adapter_config["target_modules"] == r".*\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
    assert adapter_config["modules_to_save"] == ["multi_modal_projector"]
    assert adapter_config["base_model_name_or_path"] == str(converted)

    base = copy.deepcopy(loaded)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    state = sources["minigptv2_state"]
    lora_modules = {name for name, _ in model.named_modules() if name.endswith((".lora_A.default", ".lora_B.default"))}
    assert len(lora_modules) == 8  # 2 layers x {q,v} x {A,B}; none in the PubMedCLIP tower
    assert all(".language_model.layers." in name for name in lora_modules)
    for key, tensor in state.items():
        match = re.fullmatch(
            r"llama_model\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.(\w+)\.lora_(A|B)\.weight", key
        )
        if not match:
            continue
        layer, proj, ab = match.groups()
        linear = getattr(model.base_model.model.model.language_model.layers[int(layer)].self_attn, proj)
        assert torch.equal(getattr(linear, f"lora_{ab}")["default"].weight, tensor), key
    projector = model.base_model.model.model.multi_modal_projector
    trainable_projector = projector.modules_to_save["default"]
    assert torch.equal(trainable_projector.linear_2.weight, state["llama_proj.weight"])
    assert torch.equal(trainable_projector.linear_1.weight, loaded.model.multi_modal_projector.linear_1.weight)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or ("modules_to_save" in n) for n in trainable)


def test_init_adapter_loads_through_auto_class(sources, converted):
    """`base_model_name_or_path` points at the converted base, so the adapter folder alone loads (PEFT reads it)."""
    # transformers' PEFT integration: the base is loaded from the adapter's base_model_name_or_path, then the adapter.
    model = AutoModelForImageTextToText.from_pretrained(
        str(converted / conv.INIT_ADAPTER_DIRNAME), trust_remote_code=True
    )
    assert type(model).__name__ == "LiteGPTForConditionalGeneration"
    params = dict(model.named_parameters())
    lora_b = [v for k, v in params.items() if "language_model.layers.1.self_attn.q_proj.lora_B" in k]
    key = "llama_model.base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    assert len(lora_b) == 1 and torch.equal(lora_b[0], sources["minigptv2_state"][key])


def test_outputs_safetensors_only_and_manifest(sources, converted):
    files = [p for p in converted.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pth", ".pt", ".pkl")]
    assert (converted / "model.safetensors").is_file() or list(converted.glob("model-*.safetensors"))
    assert (converted / conv.INIT_ADAPTER_DIRNAME / "adapter_model.safetensors").is_file()
    for name in ["config.json", *remote_code_files(converted, ["modeling_litegpt.py", "processing_litegpt.py"])]:
        assert (converted / name).is_file(), name
    assert "open_clip" not in (converted / "modeling_litegpt.py").read_text()

    manifest = json.loads((converted / conv.MANIFEST_NAME).read_text())
    mg = manifest["inputs"]["minigptv2"]
    assert mg["sha256"] == hashlib.sha256(sources["minigptv2"].read_bytes()).hexdigest()
    assert mg["keys"]["llama_proj"] == 2 and mg["keys"]["lora"] == 8 and mg["keys"]["ignored"] == 5
    assert mg["keys"]["ignored_prefixes"] == {"Qformer": 1, "ln_vision": 2, "visual_encoder": 2}
    assert mg["lora_rank"] == LORA_RANK and mg["lora_layers"] == [0, 1]
    bio = manifest["inputs"]["biomedclip"]
    assert bio["keys"]["ignored_prefixes"] == {
        "logit_scale": 1,
        "text.proj": 1,
        "text.transformer": 1,
        "visual.head": 1,
    }
    assert (
        bio["files"]["open_clip_pytorch_model.bin"]
        == hashlib.sha256((sources["biomedclip"] / "open_clip_pytorch_model.bin").read_bytes()).hexdigest()
    )
    pub = manifest["inputs"]["pubmedclip"]
    assert pub["keys"]["ignored_prefixes"]["vision_model.*.position_ids"] == 1 and pub["keys"]["converted"] > 0
    assert set(pub["keys"]["ignored_prefixes"]) == {
        "logit_scale",
        "text_model",
        "text_model.*.position_ids",
        "text_projection",
        "vision_model.*.position_ids",
        "visual_projection",
    }
    assert set(manifest["inputs"]["llm"]["files"]) >= {"model.safetensors", "config.json"}
    assert manifest["parity_max_abs_diff"]["biomed"] <= 1e-4 and manifest["warnings"] == []


def test_wrong_llama_proj_shape_raises(sources, tmp_path):
    bad = write_minigptv2(tmp_path / "bad.pth", minigptv2_state(proj_shape=(LM_HIDDEN, PROJ_HIDDEN + 8)))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"llama_proj\.weight has shape \(32, 56\).*needs \(32, 48\)"):
        conv.convert(
            sources["biomedclip"],
            sources["pubmedclip"],
            str(sources["llm"]),
            out,
            minigptv2=bad,
            projector_hidden_size=PROJ_HIDDEN,
        )
    assert not out.exists()


class _NotATensor:
    pass


def test_pickled_objects_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": minigptv2_state(), "extra": _NotATensor()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        conv.read_minigptv2(path)


def test_normalisation_mismatch_warns(sources, tmp_path):
    from processing_litegpt import LiteGPTProcessor

    processor = LiteGPTProcessor.from_tokenizer(build_lm_tokenizer(), image_size=IMAGE_SIZE, num_image_tokens=4)
    pubmed = conv.read_pubmedclip(sources["pubmedclip"])
    assert conv.check_normalisation(processor, conv.read_biomedclip(sources["biomedclip"]), pubmed) == []
    odd = write_biomedclip(tmp_path / "odd", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    warnings = conv.check_normalisation(processor, conv.read_biomedclip(odd), pubmed)
    assert len(warnings) == 1 and "differ" in warnings[0]


def test_specs_of_the_real_configs_match_the_paper_preset():
    real_biomedclip = {
        "model_cfg": {
            "embed_dim": 512,
            "vision_cfg": {
                "timm_model_name": "vit_base_patch16_224",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 224,
            },
        }
    }
    biomed, pubmed = paper_vision_encoders()
    assert conv.biomedclip_encoder_spec(real_biomedclip) == biomed
    # PubMedCLIP ViT-B/32 = CLIPConfig's default vision config (quick_gelu).
    assert conv.pubmedclip_encoder_spec(CLIPConfig()) == pubmed


def test_float16_conversion(sources, tmp_path):
    from safetensors import safe_open

    out = conv.convert(
        sources["biomedclip"],
        sources["pubmedclip"],
        str(sources["llm"]),
        tmp_path / "fp16",
        projector_hidden_size=PROJ_HIDDEN,
        dtype="float16",
    )
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert dtypes == {"F16"}
    assert not (out / conv.INIT_ADAPTER_DIRNAME).exists()
    manifest = json.loads((out / conv.MANIFEST_NAME).read_text())
    assert manifest["inputs"]["minigptv2"] is None and manifest["dtype"] == "float16"
    model = AutoModelForImageTextToText.from_pretrained(str(out), trust_remote_code=True, dtype=torch.float32)
    # Without MiniGPT-v2 both projector layers are the seeded defaults.
    torch.manual_seed(0)
    linear_1, linear_2 = torch.nn.Linear(160, PROJ_HIDDEN), torch.nn.Linear(PROJ_HIDDEN, LM_HIDDEN)
    assert torch.equal(model.model.multi_modal_projector.linear_2.weight, linear_2.weight.half().float())
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, linear_1.weight.half().float())
    report = conv.check_tower_parity(model, sources["biomedclip"], sources["pubmedclip"], atol=5e-2)
    assert max(report.values()) > 0  # fp16 rounding is visible, but small
    # Deterministic: a second conversion writes identical weights (incl. the resized `<ImageHere>` rows).
    again = conv.convert(
        sources["biomedclip"],
        sources["pubmedclip"],
        str(sources["llm"]),
        tmp_path / "fp16-again",
        projector_hidden_size=PROJ_HIDDEN,
        dtype="float16",
        check_parity=False,
    )
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
