"""MedKLIP model: losses against hand computations, masking, frozen text encoder, attention maps, knowledge, saving
and loading through the Auto classes in a fresh process, and real-checkpoint loading on same-format stand-ins."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets_scripts.mimic_reports import ENTITIES
from medklip.checkpoint import (
    build_medklip,
    load_vision_weights,
    save_medklip,
    train_wordpiece_tokenizer,
)
from medklip.configuration_medklip import RESNET50_VISION_CONFIG, MedKLIPConfig
from medklip.knowledge import KnowledgeError, load_knowledge
from medklip.modeling_medklip import (
    MedKLIPModel,
    existence_loss,
    position_contrastive_loss,
    semantic_consistency_loss,
)
from medklip.training import MedKLIPScriptArguments, check_arguments


@pytest.fixture(scope="module")
def tiny():
    return build_medklip("tiny", seed=0)


def batch(tokenizer, size=64):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, size, size)
    labels = torch.tensor([[1, 0, -1, 1, 0, -1], [0, -1, 1, 1, -1, 0]])
    positions = torch.zeros(2, 6, 11)
    positions[0, 0, 2] = 1  # Opacity, left
    positions[0, 3, [3, 6]] = 1  # Effusion, right + lower
    positions[1, 2, 0] = 1  # Cardiomegaly, bilateral
    reports = tokenizer(["Patchy left opacity and a right lower effusion.", "Cardiomegaly."], padding=True,
                        return_tensors="pt")
    return pixels, labels, positions, reports


# ============================================================================================== losses


def test_existence_loss_averages_known_answers_only():
    logits = torch.tensor([[2.0, -1.0, 5.0], [0.5, 3.0, -2.0]], requires_grad=True)
    labels = torch.tensor([[1, 0, -1], [-1, 1, 0]])
    loss = existence_loss(logits, labels)
    known = [(2.0, 1), (-1.0, 0), (3.0, 1), (-2.0, 0)]
    expected = sum(-math.log(1 / (1 + math.exp(-z))) if y else -math.log(1 - 1 / (1 + math.exp(-z))) for z, y in known) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 2] == 0 and logits.grad[1, 0] == 0  # uncertain / unmentioned never trained
    assert logits.grad[0, 0] != 0
    nothing = existence_loss(logits, torch.full((2, 3), -1))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_position_infonce_by_hand():
    scores = torch.tensor([[[2.0, 1.0, 0.0], [0.3, 0.2, 0.1]]])  # (B=1, E=2, P=3)
    labels = torch.tensor([[1, 0]])
    one = torch.tensor([[[1, 0, 0], [1, 0, 0]]])  # entity 1 is absent: its position never counts
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + math.exp(0)))
    assert position_contrastive_loss(scores, one, labels).item() == pytest.approx(expected, rel=1e-6)
    # two true positions: each against the negatives only (the other true position is not a negative)
    two = torch.tensor([[[1, 1, 0], [0, 0, 0]]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1) / (math.exp(1) + 1))) / 2
    assert position_contrastive_loss(scores, two, labels).item() == pytest.approx(expected, rel=1e-6)
    # every position true: nothing to contrast, zero loss; no present entity with a position: zero
    assert position_contrastive_loss(scores, torch.ones(1, 2, 3), labels).item() == pytest.approx(0.0, abs=1e-7)
    assert position_contrastive_loss(scores, one, torch.tensor([[0, 0]])).item() == 0.0


def test_semantic_consistency_is_one_minus_cosine_on_rows_with_a_report():
    predicted = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    report = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [5.0, 5.0]])
    assert semantic_consistency_loss(predicted, report).item() == pytest.approx((0 + 1 + (1 - 1 / math.sqrt(2))) / 3)
    mask = torch.tensor([True, False, False])
    assert semantic_consistency_loss(predicted, report, mask).item() == pytest.approx(0.0, abs=1e-7)


# ============================================================================================== model


def test_forward_shapes_total_loss_and_frozen_text_encoder(tiny):
    model, tokenizer, _ = tiny
    pixels, labels, positions, reports = batch(tokenizer)
    model.config.position_loss_weight, model.config.semantic_loss_weight = 0.3, 2.0
    try:
        model.train()
        assert not model.text_model.training  # frozen encoder: no dropout even while the rest trains
        out = model(pixels, labels=labels, position_labels=positions, report_input_ids=reports["input_ids"],
                    report_attention_mask=reports["attention_mask"])
        assert out.logits.shape == (2, 6) and out.position_logits.shape == (2, 6, 11)
        assert out.loss.item() == pytest.approx((out.loss_cls + 0.3 * out.loss_pos + 2.0 * out.loss_sem).item(), rel=1e-6)
        assert out.loss_cls.item() == pytest.approx(existence_loss(out.logits, labels).item(), rel=1e-6)
        out.loss.backward()
        assert all(p.grad is None for p in model.text_model.parameters())
        for name in ("patch_projection", "text_projection", "existence_head", "position_head", "semantic_head"):
            assert getattr(model, name).weight.grad.abs().sum() > 0, name
        assert model.vision_model.timm_model.conv1.weight.grad.abs().sum() > 0  # the ResNet trains
    finally:
        model.zero_grad()
        model.config.position_loss_weight, model.config.semantic_loss_weight = 1.0, 1.0
        model.eval()


def test_attention_maps_are_distributions_over_the_feature_grid(tiny):
    model, _, _ = tiny
    pixels = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        out = model(pixels, output_attentions=True)
    assert len(out.cross_attentions) == model.config.decoder_layers
    for maps in out.cross_attentions:
        assert maps.shape == (2, 6, 3, 2)  # ResNet stride 32: 96 x 64 -> 3 x 2 patches
        torch.testing.assert_close(maps.sum((-1, -2)), torch.ones(2, 6))
    assert out.loss is None


def test_entity_queries_come_from_the_descriptions(tiny):
    """Changing one entity's description changes that entity's query: the knowledge enters the model."""
    model, tokenizer, _ = tiny
    with torch.no_grad():
        before = model.knowledge_embeddings()[0]
        saved = model.config.entity_token_ids[3]
        model.config.entity_token_ids[3] = tokenizer("fluid around the lung")["input_ids"]
        after = model.knowledge_embeddings()[0]
        model.config.entity_token_ids[3] = saved
    assert not torch.allclose(before[3], after[3])
    torch.testing.assert_close(before[:3], after[:3])
    cosine = F.cosine_similarity(before[:, None], before[None], dim=-1)
    assert cosine[~torch.eye(6, dtype=torch.bool)].max() < 0.95  # distinct queries (see checkpoint._small_bert)


def test_config_refuses_inconsistent_knowledge():
    with pytest.raises(ValueError, match="2 entity names but 1 descriptions"):
        MedKLIPConfig(entities=["A", "B"], entity_descriptions=["only one"])
    with pytest.raises(ValueError, match="no tokenised description"):
        MedKLIPModel(MedKLIPConfig(entities=["A"], entity_descriptions=["a"]))
    config = MedKLIPConfig()  # the default config (transformers builds one to diff against) stays constructible
    assert config.vision_config.architecture == "resnet50" and config.text_config.hidden_size == 768


# ============================================================================================== knowledge


def test_description_file_missing_an_entity_is_an_error_before_building(tmp_path):
    data = json.loads(Path("medklip/knowledge.json").read_text())
    del data["entities"]["Pneumothorax"]
    path = tmp_path / "knowledge.json"
    path.write_text(json.dumps(data))
    with pytest.raises(KnowledgeError, match=r"no description for the entity \['Pneumothorax'\]") as info:
        build_medklip("tiny", knowledge_file=path, entities=ENTITIES)
    assert str(path) in str(info.value)
    # train_medklip checks the entities the data asks about (the builder's six by default) before anything runs
    script_args = MedKLIPScriptArguments(preset="tiny", knowledge_file=str(path), mimic_data_dir=str(tmp_path))
    with pytest.raises(KnowledgeError, match="Pneumothorax"):
        check_arguments(script_args)
    check_arguments(MedKLIPScriptArguments(preset="tiny", knowledge_file=str(path), mimic_data_dir=str(tmp_path),
                                           mimic_settings={"entities": ["Opacity", "Effusion"]}))
    assert load_knowledge(path, entities=["Opacity", "Effusion"]).entities == ("Opacity", "Effusion")
    path.write_text('{"entities": {"Opacity": "  "}, "positions": {}}')
    with pytest.raises(KnowledgeError, match="empty"):
        load_knowledge(path)
    path.write_text("{not json")
    with pytest.raises(KnowledgeError, match="not valid JSON"):
        load_knowledge(path)


def test_shipped_knowledge_covers_the_builder_entities_and_positions():
    from datasets_scripts.mimic_reports import POSITION_WORDS

    knowledge = load_knowledge()
    assert knowledge.entities == ENTITIES and set(knowledge.positions) == set(POSITION_WORDS)
    assert all(len(text.split()) >= 10 for text in knowledge.entity_descriptions)  # descriptions, not names


# ============================================================================================== save / load

def imported_modules(path: Path) -> set[str]:
    """Top-level package of every import in a file (relative imports keep their dot)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or "").split(".")[0] if node.level else node.module.split(".")[0])
    return found


FRESH = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
    path, out = sys.argv[1], sys.argv[2]
    assert "medklip" not in sys.modules
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pixels = torch.load(path + "/../pixels.pt")
    with torch.no_grad():
        logits = model(pixels).logits
    frozen = not any(p.requires_grad for p in model.text_model.parameters())
    torch.save({"logits": logits, "module": type(model).__module__, "frozen": frozen,
                "size": processor.size, "ids": tokenizer("left effusion")["input_ids"]}, out)
    """
)


def test_saved_folder_loads_with_auto_classes_in_a_fresh_process(tiny, tmp_path):
    model, tokenizer, image_processor = tiny
    folder = save_medklip(model, tokenizer, image_processor, tmp_path / "medklip")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_medklip.py", "modeling_medklip.py",
            "preprocessor_config.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pth")) for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_medklip.MedKLIPConfig",
                                  "AutoModel": "modeling_medklip.MedKLIPModel"}
    assert config["entities"] == list(model.config.entities) and len(config["entity_token_ids"]) == 6
    # the remote code imports nothing from this repository: torch, transformers and its sibling only
    for name in ("configuration_medklip.py", "modeling_medklip.py"):
        assert imported_modules(folder / name) <= {"__future__", "typing", "dataclasses", "torch", "transformers",
                                                   ".configuration_medklip", "configuration_medklip"}, name
    pixels = torch.randn(1, 3, 64, 64)
    torch.save(pixels, tmp_path / "pixels.pt")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    (workdir / "run.py").write_text(FRESH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    result = subprocess.run([sys.executable, "-I", "run.py", str(folder), str(tmp_path / "out.pt")], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = torch.load(tmp_path / "out.pt", weights_only=False)
    assert fresh["module"].startswith("transformers_modules") and fresh["frozen"]
    assert fresh["size"] == {"height": 64, "width": 64}
    assert fresh["ids"] == tokenizer("left effusion")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(fresh["logits"], model(pixels).logits)  # same weights; float order may differ


# ============================================================================================== real checkpoints


def test_torchvision_resnet50_state_dict_loads_and_matches_torchvision(tmp_path):
    """A torchvision ResNet-50 state_dict file (the format of torchvision's ImageNet weights, classifier included)."""
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.resnet50().eval()
    path = tmp_path / "resnet50-stand-in.pth"
    torch.save(reference.state_dict(), path)
    model, _, _ = build_medklip("tiny", vision_config=dict(RESNET50_VISION_CONFIG), seed=0)
    report = load_vision_weights(model, path)
    assert report["dropped_classifier"] == ["fc.bias", "fc.weight"]
    model.eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(reference.children())[:-2])(pixels)  # last feature map, 2048 channels
        ours = model.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours, expected)
    assert model.patch_projection.in_features == 2048


def test_timm_checkpoint_folder_loads_and_wrong_weights_are_refused(tmp_path):
    import timm
    from safetensors.torch import save_file

    model, _, _ = build_medklip("tiny", seed=0)
    args = model.config.vision_config.model_args
    torch.manual_seed(4)
    source = timm.create_model("resnet18", pretrained=False, num_classes=5, **args)
    folder = tmp_path / "timm-resnet"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 5}))
    load_vision_weights(model, folder)
    torch.testing.assert_close(model.vision_model.timm_model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), wrong)  # full-width ResNet-18
    with pytest.raises(ValueError, match="wrong shape"):
        load_vision_weights(model, wrong)
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4")}
    torch.save(partial, wrong)
    with pytest.raises(ValueError, match=r"missing \['layer4"):
        load_vision_weights(model, wrong)


def test_clinicalbert_format_folder_becomes_the_text_encoder(tmp_path):
    """A BERT folder as ClinicalBERT ships it: config.json (BertForMaskedLM), pytorch_model.bin with `bert.*`/`cls.*`
    keys and a WordPiece vocab.txt, no tokenizer_config.json."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / "clinicalbert-stand-in"
    knowledge = load_knowledge()
    vocab_tokenizer = train_wordpiece_tokenizer(knowledge.entity_descriptions + knowledge.position_descriptions,
                                                vocab_size=300, out_dir=folder)
    torch.manual_seed(5)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(vocab_tokenizer), hidden_size=48, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=96, initializer_range=0.5))
    bert.config.save_pretrained(folder)
    torch.save(bert.state_dict(), folder / "pytorch_model.bin")  # transformers 5 writes only safetensors itself
    assert any(k.startswith("bert.") for k in bert.state_dict()) and any(k.startswith("cls.") for k in bert.state_dict())
    assert {p.name for p in folder.iterdir()} == {"config.json", "pytorch_model.bin", "vocab.txt"}
    model, tokenizer, _ = build_medklip("tiny", text_encoder=folder, seed=0)
    assert model.config.text_config.hidden_size == 48 and model.text_projection.in_features == 48
    torch.testing.assert_close(model.text_model.encoder.layer[1].output.dense.weight,
                               bert.bert.encoder.layer[1].output.dense.weight)
    assert model.config.entity_token_ids[0] == tokenizer(knowledge.entity_descriptions[0], truncation=True,
                                                         max_length=128)["input_ids"]
    assert tokenizer.tokenize("EFFUSION") == tokenizer.tokenize("effusion")  # BERT's default lower-casing
    expected = bert.eval().bert(**tokenizer(list(knowledge.entity_descriptions[:2]), padding=True,
                                     return_tensors="pt")).last_hidden_state[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(model.knowledge_embeddings()[0][:2], expected, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in model.text_model.parameters())
    with pytest.raises(FileNotFoundError, match="not a BERT checkpoint folder"):
        build_medklip("tiny", text_encoder=tmp_path)


def test_image_processor_resizes_squashes_and_normalises_with_imagenet_statistics(tiny):
    from PIL import Image

    _, _, processor = tiny
    image = Image.fromarray(np.full((30, 90), 255, dtype=np.uint8))
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)  # aspect not kept, no crop
    expected = [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    torch.testing.assert_close(pixels[0, :, 10, 10], torch.tensor(expected), rtol=1e-4, atol=1e-4)
