"""Stage-1 label confidences: phrase slots, cached teacher forcing == plain teacher forcing, per-label AUC."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from litegpt_eval.confidence import (
    GROUNDING_CANDIDATE,
    _split_context,
    continuation_logprobs,
    diagnosis_slots,
    grounding_slots,
    image_conditioning,
    label_slot_probabilities,
    shared_prefix_logprobs,
    yes_probability,
)
from litegpt_eval.generation import DecodingSettings, generate_batch, rows_to_items
from litegpt_eval.scoring import score_records
from processing_litegpt import LOCAL_PREFIX, VINDR_LOCAL_LABELS, format_grounding_answer, prompt_messages


def test_grounding_slots_are_where_a_phrase_begins():
    answer = format_grounding_answer([("Cardiomegaly", (100, 200, 500, 600)), ("Nodule/Mass", (10, 20, 50, 60))], 1000, 800)
    first = f"{LOCAL_PREFIX} <p>Cardiomegaly</p> {{<10><25><50><75>}}"
    assert answer == f"{first},<p>Nodule/Mass</p> {{<1><3><5><8>}}."
    assert grounding_slots(answer) == [
        (LOCAL_PREFIX, " "),  # after the prefix: " <p>label</p>"
        (first + ",", ""),  # after the separator: "<p>label</p>", no space, as the targets
        (answer[:-1] + ",", ""),  # appended after the last item
    ]
    normal = f"{LOCAL_PREFIX} No finding."
    assert grounding_slots(normal) == [(LOCAL_PREFIX, " "), (f"{LOCAL_PREFIX} No finding,", "")]
    assert grounding_slots("<p>garbage") == [(LOCAL_PREFIX, " ")]  # no prefix: the prefix is forced, one slot
    assert grounding_slots("  x") == [("  " + LOCAL_PREFIX, " ")]
    # the stage-2 slots are unchanged
    assert [c for c, _ in diagnosis_slots("Global diseases of this chest radiograph are COPD.")][-1].endswith("COPD,")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_tokenizer import build_tiny_tokenizer

    from configuration_litegpt import LiteGPTConfig
    from litegpt_train.base import assemble_litegpt

    model, processor = assemble_litegpt(LiteGPTConfig.from_preset("tiny"), build_tiny_tokenizer(), seed=0)
    processor.tokenizer.padding_side = "left"
    return model.eval(), processor


def _image(seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(48, 64) * 255).astype("uint8"))


def _prompt(model, processor, task="grounding"):
    inputs = processor(images=[[_image()]], text=[processor.task_prompt(task)], return_tensors="pt")
    return inputs["input_ids"][0].tolist(), image_conditioning(model, inputs["pixel_values"]), inputs


def test_cached_teacher_forcing_equals_plain_teacher_forcing(tiny):
    model, processor = tiny
    prompt_ids, cond, _ = _prompt(model, processor)
    tok = processor.tokenizer
    answer = format_grounding_answer([("Cardiomegaly", (100, 200, 500, 600)), ("Nodule/Mass", (10, 20, 50, 60))], 1000, 800)
    pairs = [_split_context(tok, context, joiner + GROUNDING_CANDIDATE.format(label=label))
             for context, joiner in grounding_slots(answer) for label in VINDR_LOCAL_LABELS[:6]]  # fmt: skip
    # also contexts that are not nested (cache cropped back) and single-token continuations
    pairs += [(tok("Loc", add_special_tokens=False)["input_ids"], tok("a", add_special_tokens=False)["input_ids"]),
              ([], tok("Yes", add_special_tokens=False)["input_ids"]), ([], tok("No", add_special_tokens=False)["input_ids"])]  # fmt: skip
    # same-length contexts that diverge after a shared token: the cache is cropped back by a (negative) token count
    pairs += [(tok(ctx, add_special_tokens=False)["input_ids"], tok("b", add_special_tokens=False)["input_ids"])
              for ctx in ("Qa", "Qz")]  # fmt: skip
    plain = continuation_logprobs(model, prompt_ids, cond, pairs, tok.pad_token_id or 0)
    cached = shared_prefix_logprobs(model, prompt_ids, cond, pairs, batch_size=4)
    assert cached == pytest.approx(plain, abs=1e-4)
    assert len({round(v, 3) for v in plain}) > 10  # the values differ: the comparison means something


def test_label_slot_probability_is_the_max_over_slots_of_the_phrase_probability(tiny):
    model, processor = tiny
    prompt_ids, cond, _ = _prompt(model, processor)
    tok = processor.tokenizer
    answer = format_grounding_answer([("Cardiomegaly", (100, 200, 500, 600))], 1000, 800)
    labels = ("Cardiomegaly", "Edema", "ILD")
    got = label_slot_probabilities(model, tok, prompt_ids, cond, answer, labels, task="grounding")
    for label in labels:
        per_slot = [continuation_logprobs(model, prompt_ids, cond, [_split_context(tok, c, j + f"<p>{label}</p>")])[0]
                    for c, j in grounding_slots(answer)]  # fmt: skip
        assert len(per_slot) == 2  # after the prefix, appended after the only phrase
        assert got[label] == pytest.approx(math.exp(max(per_slot)), rel=1e-4)
    p_yes = yes_probability(model, tok, prompt_ids, cond, " Yes")
    lp = continuation_logprobs(model, prompt_ids, cond, [_split_context(tok, "", " Yes"), _split_context(tok, "", " No")])
    assert p_yes == pytest.approx(1 / (1 + math.exp(lp[1] - lp[0])), rel=1e-4)


def test_generation_records_local_label_confidences_and_the_same_boxes_as_the_processor(tiny):
    model, processor = tiny
    rows = [{"image_id": f"g{i}", "images": [_image(i)], "width": 1000, "height": 800, "no_finding": True,
             "local_labels": [], "box_labels": [], "boxes": [], "prompt": prompt_messages("grounding")} for i in range(2)]  # fmt: skip
    records = generate_batch(model, processor, rows_to_items(rows), DecodingSettings(max_new_tokens={"grounding": 10}))
    for record in records:
        assert set(record["scores"]["labels"]) == set(VINDR_LOCAL_LABELS)
        assert all(0.0 <= p <= 1.0 for p in record["scores"]["labels"].values())
        ids, lps = record["tokens"]["ids"], record["tokens"]["logprobs"]
        post = processor.post_process_grounding([ids], image_size=(1000, 800), scores=np.array([lps]))[0]
        assert record["parsed"]["failures"] == post["failures"]
        assert [f["grid_box"] for f in record["parsed"]["findings"]] == [f["grid_box"] for f in post["findings"]]
    # a hand-made answer with phrases: the fast path scores phrases exactly as post_process_grounding
    from litegpt_eval.confidence import token_char_spans
    from litegpt_eval.generation import _grounding_parse

    tok = processor.tokenizer
    text = format_grounding_answer([("Cardiomegaly", (100, 200, 500, 600)), ("Edema", (0, 0, 400, 400))], 1000, 800)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    lps = list(np.linspace(-2.0, -0.1, len(ids)))
    decoded, spans = token_char_spans(tok, ids)
    fast = _grounding_parse(processor, ids, lps, decoded, spans, rows_to_items(rows)[0])
    post = processor.post_process_grounding([ids], image_size=(1000, 800), scores=np.array([lps]))[0]
    assert [(f["label"], f["grid_box"]) for f in fast["findings"]] == [(f["label"], f["grid_box"]) for f in post["findings"]]
    assert [f["score"] for f in fast["findings"]] == pytest.approx([f["score"] for f in post["findings"]])
    assert len({round(f["score"], 6) for f in fast["findings"]}) == 2


def _grounding_record(rid, labels, scores, text=None):
    boxes = [(label, (100.0, 100.0, 300.0, 300.0)) for label in labels]
    ref = {"width": 1000, "height": 1000, "local_labels": labels, "box_labels": labels,
           "boxes": [list(b[1]) for b in boxes], "no_finding": not labels}  # fmt: skip
    return {"id": rid, "task": "grounding", "reference": ref,
            "text": text or format_grounding_answer(boxes, 1000, 1000, no_finding=not labels),
            "scores": {"labels": {label: scores.get(label, 0.01) for label in VINDR_LOCAL_LABELS}}}  # fmt: skip


def test_local_label_auc_from_hand_made_confidences(tmp_path):
    records = [
        _grounding_record("a", ["Cardiomegaly"], {"Cardiomegaly": 0.9, "Edema": 0.2}),
        _grounding_record("b", ["Cardiomegaly", "Edema"], {"Cardiomegaly": 0.4, "Edema": 0.7}),
        _grounding_record("c", [], {"Cardiomegaly": 0.5, "Edema": 0.1}),
        _grounding_record("d", [], {"Cardiomegaly": 0.3, "Edema": 0.2}),
    ]
    metrics, _ = score_records(records, bootstrap=0, text_metrics=False)
    auc = metrics["tasks"]["grounding"]["auc"]
    # Cardiomegaly: positives 0.9, 0.4 vs negatives 0.5, 0.3 -> pairs won 2 + 1 of 4 = 0.75
    assert auc["labels"]["Cardiomegaly"] == pytest.approx(0.75)
    # Edema: positive 0.7 vs negatives 0.2, 0.1, 0.2 -> 1.0
    assert auc["labels"]["Edema"] == pytest.approx(1.0)
    assert auc["macro"] == pytest.approx(0.875) and auc["n_labels"] == 2
    no_pos = [label for label in VINDR_LOCAL_LABELS if label not in ("Cardiomegaly", "Edema")]
    assert auc["no_positive_labels"] == no_pos and all(auc["labels"][label] is None for label in no_pos)
    assert "tasks.grounding.auc.ILD" in metrics["unavailable"]
    # without confidences in one record: unavailable as a whole, never a number
    del records[0]["scores"]
    metrics, _ = score_records(records, bootstrap=0, text_metrics=False)
    assert metrics["tasks"]["grounding"]["auc"]["macro"] is None
    assert "tasks.grounding.auc.all" in metrics["unavailable"]
    json.dumps(metrics)
