"""Peer box conventions: known conversions and round trips through the canonical form."""

from __future__ import annotations

import pytest

from litegpt_eval.box_formats import BOX_FORMATS, PeerBox, convert, get_format, to_litegpt_answer
from litegpt_eval.scoring import score_records
from processing_litegpt import format_grounding_answer

W, H = 1200, 1000
BOXES = [PeerBox("Cardiomegaly", (0.30, 0.45, 0.72, 0.66)), PeerBox("Nodule/Mass", (0.101, 0.2, 0.155, 0.26))]
# one quantisation step of each format, in normalised units (MAIRA-2: a bin of the cropped square + 1 pixel)
TOLERANCE = {"litegpt": 0.005, "maira2": 0.01 + 1 / W, "chexagent": 0.005, "florence2": 0.0005, "radvlm": 0.005,
             "medgemma": 0.0005, "vindr_csv": 1e-6, "kaggle": 1e-6}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BOX_FORMATS))
def test_round_trip_canonical_text_canonical(name):
    fmt = get_format(name)
    text = fmt.format(BOXES, W, H)
    back = fmt.parse(text, W, H, label="Cardiomegaly")
    assert len(back) == len(BOXES)
    for original, parsed in zip(BOXES, back):
        assert parsed.box == pytest.approx(original.box, abs=TOLERANCE[name] + 1e-9)
        if name != "radvlm":  # RadVLM answers carry no label (the prompt names the class)
            assert parsed.label == original.label
    # text -> canonical -> text is exact for every quantised format
    assert fmt.format(back, W, H) == text


def test_known_conversions():
    # MAIRA-2: bins of the centre-cropped square (side 1000, x offset 100), bin centre, int() pixels
    (box,) = get_format("maira2").parse("<obj>Cardiomegaly<box><x50><y10><x60><y20></box></obj>", W, H)
    assert box.box == pytest.approx((int(0.505 * 1000 + 100) / W, 0.105, int(0.605 * 1000 + 100) / W, 0.205))
    # Florence-2 / AG-KD: bin centres of 1000 bins; <loc_0> x 4 means "no box"
    boxes = get_format("florence2").parse("Edema<loc_0><loc_0><loc_0><loc_0>Atelectasis<loc_100><loc_200><loc_300><loc_400>", W, H)
    assert boxes[0].box is None and boxes[1].box == pytest.approx((0.1005, 0.2005, 0.3005, 0.4005))
    # MedGemma: y first, 0-1000
    (box,) = get_format("medgemma").parse("[100, 200, 300, 400]", W, H, label="Edema")
    assert box.box == pytest.approx((0.2, 0.1, 0.4, 0.3))
    # CheXagent (both spellings)
    for text in ("<|ref|>Edema<|/ref|><|box|>(10,20),(30,40)<|/box|>", "<ref>Edema</ref><box>(10,20),(30,40)</box>"):
        (box,) = get_format("chexagent").parse(text, W, H)
        assert box.label == "Edema" and box.box == pytest.approx((0.1, 0.2, 0.3, 0.4))
    # Kaggle: class 14 is No finding; pixel boxes
    boxes = get_format("kaggle").parse("3 0.9 120 100 240 300 14 0.2 0 0 1 1", W, H)
    assert boxes[0].label == "Cardiomegaly" and boxes[0].box == pytest.approx((0.1, 0.1, 0.2, 0.3))
    assert boxes[1].label == "No finding" and boxes[1].box is None
    # VinDr CSV with an empty No finding row
    csv_text = "image_id,class_name,x_min,y_min,x_max,y_max\nx,No finding,,,,\nx,Edema,120,100,240,300\n"
    boxes = get_format("vindr_csv").parse(csv_text, W, H)
    assert boxes[0].box is None and boxes[1].box == pytest.approx((0.1, 0.1, 0.2, 0.3))


def test_cross_format_conversion_and_litegpt_answer():
    text = convert("<|ref|>Edema<|/ref|><|box|>(10,20),(30,40)<|/box|>", "chexagent", "litegpt", W, H)
    assert text == "Local diseases of this chest radiograph are <p>Edema</p> {<10><20><30><40>}."
    assert to_litegpt_answer("14 1 0 0 1 1", "kaggle", W, H) == "Local diseases of this chest radiograph are No finding."
    assert to_litegpt_answer("", "radvlm", W, H) == "Local diseases of this chest radiograph are None."


def test_peer_outputs_are_scored_by_the_same_code():
    ref_boxes = [("Cardiomegaly", (360, 450, 864, 660))]
    reference = {"width": W, "height": H, "box_labels": ["Cardiomegaly"], "boxes": [list(ref_boxes[0][1])],
                 "local_labels": ["Cardiomegaly"], "no_finding": False, "text": format_grounding_answer(ref_boxes, W, H)}
    good = {"id": "a", "task": "grounding", "reference": reference,
            "text": "<|ref|>Cardiomegaly<|/ref|><|box|>(30,45),(72,66)<|/box|>"}
    unknown = {"id": "b", "task": "grounding", "reference": reference,
               "text": "<|ref|>Enlarged heart<|/ref|><|box|>(30,45),(72,66)<|/box|>"}
    metrics, _ = score_records([good, unknown], box_format="chexagent", bootstrap=0, text_metrics=False)
    g = metrics["tasks"]["grounding"]
    assert g["parse"]["failed_ids"] == ["b"]  # a label outside the list is a failure, never guessed
    assert g["localization"]["acc_iou"]["matched"]["0.5"]["overall"]["tp"] == 1
    assert g["classification"]["strict"]["labels"]["Cardiomegaly"]["recall"] == 0.5
