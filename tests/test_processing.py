"""LiteGPTProcessor: image-token expansion, validation, chat template properties, TRL compatibility,
save/load as remote code and post-processing of generated answers (docs/design.md, "Prompts and targets")."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_tokenizer import build_tiny_tokenizer
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoProcessor, CLIPImageProcessor, PreTrainedTokenizerFast

from configuration_litegpt import CLIP_IMAGE_MEAN, LiteGPTConfig
from litegpt_train.hub import remote_code_files
from processing_litegpt import (
    DIAGNOSIS_INSTRUCTION,
    EXISTENCE_INSTRUCTION,
    GROUNDING_INSTRUCTION,
    REPORT_INSTRUCTION,
    SPAN_CONTEXT_TOKENS,
    LiteGPTProcessor,
    build_chat_template,
    completion_messages,
    prefix_token_spans,
    prompt_messages,
    task_instruction,
    token_spans,
)

ROOT = Path(__file__).resolve().parent.parent
S = 32  # image side of the tiny preset
N = 4  # visual tokens per image of the tiny preset
IMAGE_ID, BOS, EOS, PAD = 98, 1, 2, 0
ANSWER = (
    "Local diseases of this chest radiograph are <p>Aortic enlargement</p> {<53><28><65><36>},"
    "<p>Cardiomegaly</p> {<38><49><82><63>}."
)


def bos_adding_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer, made to prepend `<s>` by default like Llama's, so that a second BOS would show."""
    tokenizer = build_tiny_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    assert tokenizer("a")["input_ids"] == [BOS, 68]
    return tokenizer


@pytest.fixture(scope="module")
def processor() -> LiteGPTProcessor:
    return LiteGPTProcessor.from_tokenizer(bos_adding_tiny_tokenizer(), image_size=S, num_image_tokens=N)


def random_image(seed: int = 0, size=(40, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8))


def ids_of(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------------------- construction


def bare_char_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny char-level tokenizer without `<ImageHere>` and without a pad token."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for code in range(0x20, 0x7F):
        vocab[chr(code)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_from_tokenizer_adds_image_token_and_pad():
    bare = bare_char_tokenizer()
    assert bare.pad_token is None and "<ImageHere>" not in bare.get_vocab()
    processor = LiteGPTProcessor.from_tokenizer(bare, image_size=S, num_image_tokens=N)
    assert processor.image_token_id == 98 and processor.tokenizer.pad_token_id == 0
    assert processor.tokenizer.encode("<ImageHere>", add_special_tokens=False) == [98]
    assert bare.pad_token is None  # the caller's tokenizer is not modified
    with pytest.raises(ValueError, match="ImageHere"):
        LiteGPTProcessor(image_processor=CLIPImageProcessor(), tokenizer=bare)


def test_image_processor_is_squash_resize_without_crop(processor):
    ip = processor.image_processor
    assert isinstance(ip, CLIPImageProcessor)
    assert ip.size == {"height": S, "width": S} and ip.do_center_crop is False and int(ip.resample) == 3
    assert tuple(ip.image_mean) == CLIP_IMAGE_MEAN and processor.image_size == S
    # A wide image is squashed, not cropped: its right-hand edge survives.
    wide = np.zeros((20, 200), dtype=np.uint8)
    wide[:, -20:] = 255
    pixels = processor.image_processor(Image.fromarray(wide).convert("RGB"), return_tensors="pt")["pixel_values"]
    assert pixels[0, 0, :, -1].mean() > 1.0


def test_from_tokenizer_reads_a_config():
    config = LiteGPTConfig.from_preset(
        "tiny",
        task_tokens={"grounding": "[grounding]", "diagnosis": "[vqa]", "report": "[caption]", "existence": "[vqa]"},
    )
    processor = LiteGPTProcessor.from_tokenizer(build_tiny_tokenizer(), config=config)
    assert processor.num_image_tokens == config.num_image_tokens == 4 and processor.image_size == config.image_size
    assert processor.task_prompt("grounding").startswith("<s>[INST] <Img><ImageHere></Img> [grounding] Please")


# ----------------------------------------------------------------------------------------- calling


def test_image_tokens_are_expanded_per_image(processor):
    prompt = processor.task_prompt("grounding")
    out = processor(images=[random_image(0), random_image(1)], text=[prompt, prompt], return_tensors="pt", padding=True)
    assert tuple(out["pixel_values"].shape) == (2, 3, S, S)
    assert (out["input_ids"] == IMAGE_ID).sum(dim=1).tolist() == [N, N]
    assert (out["input_ids"] == BOS).sum(dim=1).tolist() == [1, 1]
    two_images = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "compare"}]}],
        add_generation_prompt=True,
    )
    out = processor(images=[[random_image(0), random_image(1)]], text=[two_images], return_tensors="pt")
    assert int((out["input_ids"] == IMAGE_ID).sum()) == 2 * N and tuple(out["pixel_values"].shape) == (2, 3, S, S)
    # The expanded block sits between the wrapper texts.
    text = processor.tokenizer.decode(out["input_ids"][0])
    assert "<Img>" + "<ImageHere>" * N + "</Img> <Img>" + "<ImageHere>" * N + "</Img> compare [/INST]" in text


def test_texts_are_not_given_a_second_bos(processor):
    out = processor(images=random_image(), text=processor.task_prompt("diagnosis"))
    assert out["input_ids"][0][0] == BOS and out["input_ids"][0].count(BOS) == 1
    plain = processor(text="hello")
    assert plain["input_ids"][0] == ids_of(processor, "hello") and BOS not in plain["input_ids"][0]


def test_mismatched_images_and_tokens_raise(processor):
    prompt = processor.task_prompt("grounding")
    with pytest.raises(ValueError, match="ImageHere"):
        processor(images=[random_image(0), random_image(1)], text=prompt)
    with pytest.raises(ValueError, match="ImageHere"):
        processor(images=random_image(0), text="no placeholder here")
    with pytest.raises(ValueError, match="no images"):
        processor(text=prompt)


def test_images_only_and_image_sizes(processor):
    out = processor(
        images=[random_image(0, (40, 50)), random_image(1, (64, 16))], return_tensors="pt", return_image_sizes=True
    )
    assert tuple(out["pixel_values"].shape) == (2, 3, S, S) and out["image_sizes"] == [(40, 50), (64, 16)]


# ----------------------------------------------------------------------------------------- chat template


def test_rendered_sequence_matches_design(processor):
    full = processor.task_prompt("grounding", answer=ANSWER)
    assert full == f"<s>[INST] <Img><ImageHere></Img> [identify] {GROUNDING_INSTRUCTION} [/INST] {ANSWER}</s>"
    assert (
        processor.task_prompt("grounding")
        == f"<s>[INST] <Img><ImageHere></Img> [identify] {GROUNDING_INSTRUCTION} [/INST]"
    )


@pytest.mark.parametrize(
    "task, entity, text",
    [
        ("grounding", None, f"[identify] {GROUNDING_INSTRUCTION}"),
        ("diagnosis", None, f"[vqa] {DIAGNOSIS_INSTRUCTION}"),
        ("report", None, f"[caption] {REPORT_INSTRUCTION}"),
        ("existence", "pleural effusion", "[vqa] Is there pleural effusion in this chest X-ray? Answer yes or no."),
    ],
)
def test_task_prompts(processor, task, entity, text):
    assert processor.task_prompt(task, entity=entity) == f"<s>[INST] <Img><ImageHere></Img> {text} [/INST]"
    assert prompt_messages(task, entity=entity, task_tokens=processor.task_tokens) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
    ]


def test_task_prompt_errors_and_custom_tokens(processor):
    assert "{entity}" in EXISTENCE_INSTRUCTION
    with pytest.raises(ValueError, match="entity"):
        processor.task_prompt("existence")
    with pytest.raises(ValueError, match="unknown task"):
        processor.task_prompt("segmentation")
    custom = LiteGPTProcessor.from_tokenizer(
        build_tiny_tokenizer(),
        image_size=S,
        num_image_tokens=N,
        task_tokens={**processor.task_tokens, "grounding": "[grounding]"},
    )
    assert "[/INST]" in custom.task_prompt("grounding") and " [grounding] Please describe" in custom.task_prompt(
        "grounding"
    )
    assert (
        processor.task_prompt("report", instruction="Describe it.")
        == "<s>[INST] <Img><ImageHere></Img> [caption] Describe it. [/INST]"
    )


def test_completion_messages():
    assert completion_messages("Yes") == [
        {"role": "assistant", "content": [{"type": "text", "text": "Yes"}]}
    ]


def test_generation_prompt_ids_are_a_prefix_and_one_bos(processor):
    prompt = prompt_messages("grounding", task_tokens=processor.task_tokens)
    completion = completion_messages(ANSWER)
    prompt_text = processor.apply_chat_template(prompt, add_generation_prompt=True)
    full_text = processor.apply_chat_template(prompt + completion)
    prompt_ids, full_ids = ids_of(processor, prompt_text), ids_of(processor, full_text)
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert full_ids.count(BOS) == 1 and full_ids[0] == BOS
    assert full_ids[-1] == EOS and full_ids.count(EOS) == 1
    assert processor.tokenizer.decode(full_ids[len(prompt_ids) :]) == f" {ANSWER}</s>"
    # Same through the processor, with the image tokens expanded.
    processed = processor(images=random_image(), text=[prompt_text])["input_ids"][0]
    processed_full = processor(images=random_image(), text=[full_text])["input_ids"][0]
    assert processed_full[: len(processed)] == processed and processed_full.count(BOS) == 1


def test_string_content_system_and_multi_turn(processor):
    image_text = "<Img><ImageHere></Img> "
    as_string = processor.apply_chat_template([{"role": "user", "content": "[vqa] Hi"}], add_generation_prompt=True)
    assert as_string == "<s>[INST] [vqa] Hi [/INST]"
    with_system = processor.apply_chat_template(
        [
            {"role": "system", "content": "You are a radiologist."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "[vqa] Q1"}]},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": [{"type": "text", "text": "Q2"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A2"}]},
        ]
    )
    assert with_system == (
        f"<s>[INST] <<SYS>>\nYou are a radiologist.\n<</SYS>>\n\n{image_text}[vqa] Q1 [/INST] A1</s>"
        "<s>[INST] Q2 [/INST] A2</s>"
    )
    with pytest.raises(Exception, match="alternate"):
        processor.apply_chat_template([{"role": "assistant", "content": "A"}])
    with pytest.raises(Exception, match="unsupported role"):
        processor.apply_chat_template([{"role": "tool", "content": "A"}])


def test_chat_template_follows_wrapper_and_token():
    template = build_chat_template("<image>", ("<image_start>", "<image_end>"))
    assert '"<image_start><image><image_end> "' in template


def test_apply_chat_template_tokenizes_with_images(processor):
    image = random_image(3)
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "[vqa] Q"}]}
    ]
    out = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    expected = processor(
        images=image, text=processor.apply_chat_template(conversation, add_generation_prompt=True), return_tensors="pt"
    )
    assert torch.equal(out["input_ids"], expected["input_ids"]) and torch.equal(
        out["pixel_values"], expected["pixel_values"]
    )
    assert int((out["input_ids"] == BOS).sum()) == 1


def test_trl_prompt_completion_collator(processor):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    answers = [ANSWER, "Local diseases of this chest radiograph are No finding."]
    examples = [
        # Block form (our builders' rows) and the string form (TRL inserts the image block).
        {
            "images": [random_image(0)],
            "prompt": prompt_messages("grounding", task_tokens=processor.task_tokens),
            "completion": completion_messages(answers[0]),
        },
        {
            "images": [random_image(1)],
            "prompt": [{"role": "user", "content": task_instruction("grounding", task_tokens=processor.task_tokens)}],
            "completion": [{"role": "assistant", "content": answers[1]}],
        },
    ]
    batch = collator(examples)
    assert tuple(batch["pixel_values"].shape) == (2, 3, S, S)
    for row, answer in enumerate(answers):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        assert int((ids[mask.bool()] == BOS).sum()) == 1 and int((ids == IMAGE_ID).sum()) == N
        trained = labels[labels != -100].tolist()
        assert processor.tokenizer.decode(trained) == f" {answer}</s>"
        kept = ids[mask.bool()].tolist()
        assert processor.tokenizer.decode(kept).startswith(
            "<s>[INST] <Img>" + "<ImageHere>" * N + "</Img> [identify] Please"
        )


# ----------------------------------------------------------------------------------------- save / load


def test_save_pretrained_and_auto_processor_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    # The processor's file and every sibling it imports relatively (the shipped remote code).
    assert {"processor_config.json", "chat_template.jinja", *remote_code_files(ROOT, ["processing_litegpt.py"])} <= files
    assert {"codec_litegpt.py", "image_processing_litegpt.py", "configuration_litegpt.py"} <= files
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_litegpt.LiteGPTProcessor"}
    assert saved["num_image_tokens"] == N and saved["image_wrapper"] == ["<Img>", "</Img>"]
    image_config = saved["image_processor"]
    assert image_config["image_processor_type"] == "LiteGPTImageProcessor" and image_config["windowing"] == "window"
    assert image_config["auto_map"]["AutoImageProcessor"] == "image_processing_litegpt.LiteGPTImageProcessor"

    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "LiteGPTProcessor" and type(loaded).__module__.startswith("transformers_modules")
    assert type(loaded.image_processor).__name__ == "LiteGPTImageProcessor"
    assert loaded.chat_template == processor.chat_template and loaded.task_tokens == processor.task_tokens
    image = random_image(5)
    a = processor(images=image, text=processor.task_prompt("grounding", answer=ANSWER), return_tensors="pt")
    b = loaded(images=image, text=loaded.task_prompt("grounding", answer=ANSWER), return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


# ----------------------------------------------------------------------------------------- post-processing


def generated_ids(processor, answer: str, with_prompt: bool = True) -> list[int]:
    prompt = (
        processor(images=random_image(), text=processor.task_prompt("grounding"))["input_ids"][0] if with_prompt else []
    )
    return prompt + ids_of(processor, answer) + [EOS]


def test_post_process_grounding_from_ids(processor):
    results = processor.post_process_grounding(
        torch.tensor([generated_ids(processor, ANSWER)]), image_size=(2000, 1000)
    )
    assert len(results) == 1
    result = results[0]
    assert result["text"].strip() == ANSWER and result["failures"] == [] and not result["no_finding"]
    assert [(f["label"], f["grid_box"], f["box"], f["score"]) for f in result["findings"]] == [
        ("Aortic enlargement", (53, 28, 65, 36), (1060.0, 280.0, 1300.0, 360.0), None),
        ("Cardiomegaly", (38, 49, 82, 63), (760.0, 490.0, 1640.0, 630.0), None),
    ]


def test_post_process_grounding_batch_left_padded_sizes_and_failures(processor):
    rows = [
        generated_ids(processor, ANSWER),
        generated_ids(processor, "<p>mild</p> {<1><2><3><4>},<p>Edema</p> {<10><20><30>"),
    ]
    width = max(len(r) for r in rows)
    padded = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    results = processor.post_process_grounding(padded, image_size=[(100, 100), (200, 50)])
    assert len(results[0]["findings"]) == 2 and results[0]["findings"][1]["box"] == (38.0, 49.0, 82.0, 63.0)
    assert results[1]["findings"] == [] and len(results[1]["failures"]) == 2
    normal = processor.post_process_grounding(["Local diseases of this chest radiograph are No finding."], (10, 10))[0]
    assert normal["no_finding"] and normal["failures"] == []
    with pytest.raises(ValueError):
        processor.post_process_grounding(padded, image_size=[(1, 1), (2, 2), (3, 3)])


def step_logits(token: int, prob: float, vocab: int = 99) -> np.ndarray:
    """Logits (1, vocab) giving `token` probability `prob` (all other logits 0)."""
    logits = np.zeros((1, vocab), dtype=np.float32)
    logits[0, token] = math.log(prob * (vocab - 1) / (1 - prob))
    return logits


def test_post_process_grounding_scores(processor):
    answer_ids = ids_of(processor, ANSWER) + [EOS]
    first = ANSWER.index("<p>Aortic")
    second = ANSWER.index("<p>Cardiomegaly")
    first_end = ANSWER.index("},") + 1
    probs = []
    for position in range(len(answer_ids)):  # char-level tokenizer: token k = character k
        if first <= position < first_end:
            probs.append(0.5)
        elif second <= position < len(ANSWER) - 1:
            probs.append(0.25)
        else:
            probs.append(0.9)
    scores = tuple(torch.tensor(step_logits(t, p)) for t, p in zip(answer_ids, probs))
    sequences = torch.tensor([generated_ids(processor, ANSWER)])
    # What generate(..., output_scores=True, return_dict_in_generate=True) returns.
    output = SimpleNamespace(sequences=sequences, scores=scores)
    findings = processor.post_process_grounding(output, image_size=(1000, 1000))[0]["findings"]
    assert [round(f["score"], 6) for f in findings] == [0.5, 0.25]
    # Per-token log-probs (compute_transition_scores form) give the same.
    logprobs = torch.tensor([[math.log(p) for p in probs]])
    findings = processor.post_process_grounding(sequences, image_size=(1000, 1000), scores=logprobs)[0]["findings"]
    assert [round(f["score"], 6) for f in findings] == [0.5, 0.25]


def test_post_process_diagnosis(processor):
    answer = "Global diseases of this chest radiograph are Lung tumor, no Pneumonia, Other disease."
    ids = (
        processor(images=random_image(), text=processor.task_prompt("diagnosis"))["input_ids"][0]
        + ids_of(processor, answer)
        + [EOS]
    )
    result = processor.post_process_diagnosis(torch.tensor([ids]))[0]
    assert result["positive"] == ["Lung tumor", "Other diseases"] and result["negative"] == ["Pneumonia"]
    assert result["failures"] == [] and not result["contradiction"] and result["text"].strip() == answer
    plain = processor.post_process_diagnosis(ids_of(processor, "No finding, Pneumonia"))[0]
    assert plain["contradiction"] and plain["no_finding"]


def test_a_config_saved_with_a_plain_clip_image_processor_still_loads_and_processes_the_same(processor, tmp_path):
    """Processors saved before `LiteGPTImageProcessor` held a `CLIPImageProcessor` and kept `windowing` themselves
    (their folders carry their own, older remote code). This processor class reads such a config: the image
    processor becomes a `LiteGPTImageProcessor` with the same settings, the windowing is kept, and the pixel values
    are unchanged."""
    processor.save_pretrained(tmp_path)
    config_path = tmp_path / "processor_config.json"
    saved = json.loads(config_path.read_text())
    old_image_config = {key: value for key, value in saved["image_processor"].items() if key not in ("auto_map", "windowing")}
    saved["image_processor"] = {**old_image_config, "image_processor_type": "CLIPImageProcessor"}
    saved["windowing"] = "minmax"
    config_path.write_text(json.dumps(saved))

    loaded = LiteGPTProcessor.from_pretrained(tmp_path)
    assert type(loaded.image_processor).__name__ == "LiteGPTImageProcessor" and loaded.windowing == "minmax"
    image = random_image(7)
    a = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    b = loaded(images=image, text=loaded.task_prompt("grounding"), return_tensors="pt")
    assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_image_processor_alone_loads_any_input_and_reports_sizes(processor):
    """`LiteGPTImageProcessor` is usable on its own, as transformers' image processors are: same pixel values as the
    processor, original sizes on request, windowing per call, a clear error for a bad mode."""
    image = (np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 7)  # 16-bit: min-max scaled, never clipped
    alone = processor.image_processor(images=image, return_tensors="pt", return_image_sizes=True)
    through = processor(images=image, text=processor.task_prompt("grounding"), return_tensors="pt")
    assert torch.equal(alone["pixel_values"], through["pixel_values"]) and alone["image_sizes"] == [(60, 40)]
    assert tuple(alone["pixel_values"].shape) == (1, 3, S, S)
    with pytest.raises(ValueError, match="windowing must be one of"):
        processor.image_processor(images=image, windowing="bone")


# ----------------------------------------------------------------------------------------- token spans


def trained_bpe(kind: str, corpus: list[str]) -> Tokenizer:
    """A small BPE trained here: `metaspace` (SentencePiece's leading-space rule, as Llama) or `byte_level` (byte
    tokens, as SmolLM2/GPT-2: a character outside the merges spans several tokens)."""
    from tokenizers import trainers

    if kind == "metaspace":
        backend = Tokenizer(models.BPE(unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        backend.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = sorted(set("".join(corpus)))
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=3, special_tokens=["<unk>"], initial_alphabet=alphabet)
    backend.train_from_iterator(corpus, trainer=trainer)
    return backend


@pytest.mark.parametrize("kind", ["metaspace", "byte_level"])
def test_token_spans_equal_the_decoded_prefixes_with_two_short_decodes_per_token(kind):
    """The linear spans are the exact prefix-length spans, from 2 decodes of at most `SPAN_CONTEXT_TOKENS + 1` ids
    per token (the prefix method decodes every prefix: quadratic in the answer's length)."""
    text = ANSWER + " Prix 12 € ; déjà vu."
    backend = trained_bpe(kind, [ANSWER] * 20 + [text])
    ids = backend.encode(text).ids
    calls: list[int] = []

    def decode(token_ids: list[int]) -> str:
        calls.append(len(token_ids))
        return backend.decode(token_ids, skip_special_tokens=False)

    decoded = decode(ids)
    assert len(ids) > 30 and "€" in decoded
    calls.clear()
    spans = token_spans(decode, ids, decoded)
    assert len(calls) == 2 * len(ids) and max(calls) <= SPAN_CONTEXT_TOKENS + 1
    assert spans == prefix_token_spans(decode, ids, decoded)
    assert spans[0][0] == 0 and spans[-1][1] == len(decoded)


def test_token_spans_fall_back_to_prefixes_when_decoding_is_not_local():
    """A decoder that strips the whole text's trailing spaces: short decodes do not add up, the prefix spans are used."""
    pieces = ["a", " ", "b", " ", " ", "c", " "]

    def decode(token_ids: list[int]) -> str:
        return "".join(pieces[i] for i in token_ids).rstrip()

    ids = list(range(len(pieces)))
    text = decode(ids)
    assert token_spans(decode, ids, text) == prefix_token_spans(decode, ids, text)
    assert prefix_token_spans(decode, ids, text)[-1] == (len(text), len(text))
