"""Text metrics on fixed texts against the reference libraries (sacrebleu, nltk, rouge_score, pycocoevalcap)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from litegpt_eval import text_metrics as tm

PREDS = [
    "Local diseases of this chest radiograph are <p>Aortic enlargement</p> ,<p>Cardiomegaly</p> .",
    "The heart is normal. No effusion.",
    "Mild cardiomegaly with small left effusion. Dr. Smith was notified.",
    "",
]
REFS = [
    "Local diseases of this chest radiograph are <p>Aortic enlargement</p> .",
    "Heart size is normal. There is no pleural effusion.",
    "Cardiomegaly. Small left pleural effusion.",
    "No acute cardiopulmonary process.",
]


def test_box_removal_variants():
    text = "Local diseases of this chest radiograph are <p>Aortic enlargement</p> {<53><28><65><36>},<p>Cardiomegaly</p> {<38><49><82><63>}."
    assert tm.remove_boxes_paper(text) == "Local diseases of this chest radiograph are <p>Aortic enlargement</p> ,<p>Cardiomegaly</p> ."
    assert tm.remove_boxes_and_tags(text) == "Local diseases of this chest radiograph are Aortic enlargement, Cardiomegaly."


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_bleu_equals_sacrebleu_13a_without_smoothing(order):
    from sacrebleu.metrics import BLEU

    ours = tm.bleu(PREDS, REFS, max_orders=(order,))[f"bleu{order}"]["value"]
    ref = BLEU(tokenize="13a", smooth_method="none", max_ngram_order=order).corpus_score(PREDS, [REFS]).score
    assert ours == pytest.approx(ref, abs=1e-9)


def test_bleu_equals_nltk_corpus_bleu_on_13a_tokens():
    from nltk.translate.bleu_score import corpus_bleu

    hyps = [tm.tokenize_13a(p) for p in PREDS[:3]]
    refs = [[tm.tokenize_13a(r)] for r in REFS[:3]]
    for order in (1, 2, 4):
        ref = corpus_bleu(refs, hyps, weights=tuple([1 / order] * order)) * 100
        assert tm.bleu(PREDS[:3], REFS[:3], max_orders=(order,))[f"bleu{order}"]["value"] == pytest.approx(ref, abs=1e-9)


def test_bleu_resampling_from_statistics():
    result = tm.bleu(PREDS, REFS)["bleu4"]
    assert tm.resample_text_metric("bleu4", result, np.ones(len(PREDS))) == pytest.approx(result["value"])
    doubled = tm.bleu(PREDS + PREDS[:1], REFS + REFS[:1])["bleu4"]["value"]
    assert tm.resample_text_metric("bleu4", result, np.array([2, 1, 1, 1])) == pytest.approx(doubled)


def test_rouge_equals_rouge_score_with_stemmer_and_sentence_newlines():
    from rouge_score import rouge_scorer

    out = tm.rouge(PREDS, REFS)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    try:
        split, _ = tm.load_sentence_splitter()
    except tm.MetricUnavailable:
        split = None
        assert "unavailable" in out["rougeLsum"]  # reported, never a number
    for key in ("rouge1", "rouge2", "rougeL") + (("rougeLsum",) if split else ()):
        pairs = [("\n".join(split(p.strip())), "\n".join(split(r.strip()))) if split else (p, r) for p, r in zip(PREDS, REFS)]
        expected = np.mean([scorer.score(r, p)[key].fmeasure for p, r in pairs]) * 100
        assert out[key]["value"] == pytest.approx(expected)
    assert out["rouge1"]["value"] == pytest.approx(52.0, abs=1e-9)  # frozen (rouge_score 0.1.2)
    if split:  # the Punkt model knows "Dr." is an abbreviation: 2 sentences, not 3
        assert split(PREDS[2]) == ["Mild cardiomegaly with small left effusion.", "Dr. Smith was notified."]


def test_cider_d_equals_pycocoevalcap_both_argument_orders():
    preds, refs = PREDS[:3], REFS[:3]
    ours = tm.cider_d(preds, [[r] for r in refs])
    swapped_ours = tm.cider_d(refs, [[p] for p in preds])
    # values of pycocoevalcap 1.2's Cider on these texts (frozen, so the test bites without the package)
    assert ours["value"] == pytest.approx(3.3932411723159066, abs=1e-9)
    assert swapped_ours["value"] == pytest.approx(3.256399623791063, abs=1e-9)
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [p] for i, p in enumerate(preds)}
    expected, per_sample = Cider().compute_score(gts, res)
    assert ours["value"] == pytest.approx(expected, abs=1e-12)
    assert ours["per_sample"] == pytest.approx(np.asarray(per_sample), abs=1e-12)
    swapped, _ = Cider().compute_score(res, gts)  # [C]'s call: predictions passed as references
    assert swapped_ours["value"] == pytest.approx(swapped, abs=1e-12)


def test_cider_d_hand_case_identical_corpus_has_zero_idf():
    # every n-gram occurs in every reference -> idf log(N/df) = 0 -> score 0
    assert tm.cider_d(["a b c", "a b c"], [["a b c"], ["a b c"]])["value"] == 0.0


def test_meteor_nltk_matches_nltk_or_reports_unavailable():
    from nltk.translate.meteor_score import single_meteor_score

    try:
        result = tm.meteor_nltk(PREDS[:3], REFS[:3])
    except tm.MetricUnavailable as err:
        pytest.skip(f"WordNet/Punkt not on this machine: {err}")
    wordnet, _ = tm.load_wordnet()
    expected = [single_meteor_score(tm.word_tokenize(r), tm.word_tokenize(p), wordnet=wordnet) * 100 for p, r in zip(PREDS, REFS[:3])]
    assert result["per_sample"] == pytest.approx(expected)
    assert wordnet.synsets("effusion")  # a real WordNet, not an empty stub
    # synonym matching through WordNet: "sick" ~ "ill"
    assert single_meteor_score(["he", "is", "ill"], ["he", "is", "sick"], wordnet=wordnet) > single_meteor_score(
        ["he", "is", "ill"], ["he", "is", "blue"], wordnet=wordnet
    )


def test_missing_resources_are_reported_unavailable_never_a_number(monkeypatch):
    def missing():
        raise tm.MetricUnavailable("WordNet 3.0 not found (test)")

    monkeypatch.setattr(tm, "load_wordnet", missing)
    monkeypatch.setattr(tm, "load_sentence_splitter", lambda: (_ for _ in ()).throw(tm.MetricUnavailable("no punkt (test)")))
    monkeypatch.setattr(tm, "coco_meteor_available", lambda: "java is not installed (test)")
    out = tm.compute_text_metrics(PREDS, REFS)
    assert "meteor" not in out["values"] and "WordNet" in out["unavailable"]["meteor"]
    assert "rougeLsum" not in out["values"] and "no punkt" in out["unavailable"]["rougeLsum"]
    assert "meteor_coco" not in out["values"] and "java" in out["unavailable"]["meteor_coco"]
    assert {"rouge1", "bleu4", "cider", "cider_paper"} <= set(out["values"])


@pytest.mark.skipif(shutil.which("java") is None, reason="java not installed")
def test_coco_meteor_matches_pycocoevalcap_values():
    pytest.importorskip("pycocoevalcap")
    result = tm.meteor_coco(["a cat sat on the mat", "no pleural effusion"], ["the cat sat on a mat", "there is no pleural effusion"])
    # values of pycocoevalcap 1.2's own Meteor().compute_score on the same pairs
    assert result["value"] == pytest.approx(42.82308834827498, abs=1e-6)
    assert result["per_sample"] == pytest.approx([44.67352531109634, 41.70672920237967], abs=1e-6)
