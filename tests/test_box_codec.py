"""Labels, the 0-100 box grid codec, target formatting and the tolerant answer parsers (docs/design.md,
"Prompts and targets" and "Label lists")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from processing_litegpt import (
    GLOBAL_PREFIX,
    LOCAL_PREFIX,
    NO_FINDING,
    VINDR_GLOBAL_LABELS,
    VINDR_LOCAL_LABELS,
    box_to_grid,
    canonical_label,
    format_diagnosis_answer,
    format_grounding_answer,
    from_grid,
    grid_to_box,
    parse_diagnosis_answer,
    parse_grounding_answer,
    parse_yes_no,
    to_grid,
)

DOCUMENTED_EXAMPLE = (
    "Local diseases of this chest radiograph are <p>Aortic enlargement</p> {<53><28><65><36>},"
    "<p>Cardiomegaly</p> {<38><49><82><63>}."
)


# ----------------------------------------------------------------------------------------- labels


def test_label_lists_have_design_sizes_and_prefix_constants():
    assert len(VINDR_LOCAL_LABELS) == 22 and len(VINDR_GLOBAL_LABELS) == 6
    assert VINDR_LOCAL_LABELS.index("ILD") == 9 and VINDR_GLOBAL_LABELS[-1] == NO_FINDING
    assert LOCAL_PREFIX == "Local diseases of this chest radiograph are"
    assert GLOBAL_PREFIX == "Global diseases of this chest radiograph are"


@pytest.mark.parametrize(
    "variant, canonical",
    [
        ("Other disease", "Other diseases"),
        ("Other Disease", "Other diseases"),
        ("Lung Tumor", "Lung tumor"),
        ("No Finding", "No finding"),
        ("Pulmonary Fibrosis", "Pulmonary fibrosis"),
        ("Lung opacity", "Lung Opacity"),
        ("Nodule / Mass", "Nodule/Mass"),
        ("  aortic   ENLARGEMENT ", "Aortic enlargement"),
        ("ild", "ILD"),
        ("Enlarged PA", "Enlarged PA"),
    ],
)
def test_canonical_label_aliases(variant, canonical):
    assert canonical_label(variant) == canonical


@pytest.mark.parametrize("name", ["mild", "Mild ILD", "ILD mild", "Cardiomegalyy", "Pneumonias", "opacity", ""])
def test_canonical_label_never_matches_substrings(name):
    with pytest.raises(ValueError, match="unknown label"):
        canonical_label(name)


def test_canonical_label_error_names_the_label_and_respects_vocabulary():
    with pytest.raises(ValueError, match="'Mild fibrosis'"):
        canonical_label("Mild fibrosis")
    with pytest.raises(ValueError):
        canonical_label("Cardiomegaly", VINDR_GLOBAL_LABELS)
    assert canonical_label("other disease", VINDR_GLOBAL_LABELS) == "Other diseases"
    # Aliases only apply when their target belongs to the vocabulary.
    with pytest.raises(ValueError):
        canonical_label("Other disease", VINDR_LOCAL_LABELS)


# ----------------------------------------------------------------------------------------- grid


@pytest.mark.parametrize(
    "value, size, grid",
    [
        (0, 1000, 0),
        (284.9, 1000, 28),
        (285, 1000, 29),
        (1000, 1000, 100),
        (-7, 1000, 0),
        (1200, 1000, 100),
        (5, 1000, 1),
        (4.99, 1000, 0),
    ],
)
def test_to_grid_is_half_up_and_clamped(value, size, grid):
    assert to_grid(value, size) == grid


def test_grid_rejects_bad_sizes_and_nan():
    with pytest.raises(ValueError):
        to_grid(10, 0)
    with pytest.raises(ValueError):
        to_grid(float("nan"), 100)
    with pytest.raises(ValueError):
        from_grid(10, -1)


def test_from_grid():
    assert from_grid(29, 1000) == 290.0
    assert from_grid(100, 2048) == 2048.0
    assert grid_to_box((10, 20, 30, 40), 2000, 1000) == (200.0, 200.0, 600.0, 400.0)


def test_round_trip_random_boxes_and_sizes_within_one_grid_step():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        width, height = (float(v) for v in rng.integers(64, 4096, size=2))
        xs = np.sort(rng.uniform(0, width, size=2))
        ys = np.sort(rng.uniform(0, height, size=2))
        box = (xs[0], ys[0], xs[1], ys[1])
        back = grid_to_box(box_to_grid(box, width, height), width, height)
        for original, decoded, size in zip(box, back, (width, height, width, height)):
            # Half-up rounding: at most half a step, hence within one grid step (size / 100).
            assert abs(original - decoded) <= size / 200 + 1e-9
            assert abs(original - decoded) <= size / 100


def test_round_trip_through_answer_text():
    rng = np.random.default_rng(1)
    for _ in range(50):
        width, height = (float(v) for v in rng.integers(100, 3000, size=2))
        findings = []
        for _ in range(int(rng.integers(1, 6))):
            label = VINDR_LOCAL_LABELS[int(rng.integers(0, 22))]
            xs, ys = np.sort(rng.uniform(0, width, 2)), np.sort(rng.uniform(0, height, 2))
            findings.append((label, (xs[0], ys[0], xs[1], ys[1])))
        parsed = parse_grounding_answer(format_grounding_answer(findings, width, height), width, height)
        assert parsed.ok and not parsed.no_finding
        assert len(parsed.findings) == len(findings)
        expected = sorted((label, box_to_grid(box, width, height)) for label, box in findings)
        assert sorted((f.label, f.grid_box) for f in parsed.findings) == expected
        for finding in parsed.findings:
            assert finding.box == grid_to_box(finding.grid_box, width, height)


# ----------------------------------------------------------------------------------------- formatting


def test_format_grounding_answer_design_example_and_sort_order():
    findings = [("Cardiomegaly", (380, 490, 820, 630)), ("Aortic enlargement", (530, 280, 650, 360))]
    assert format_grounding_answer(findings, 1000, 1000) == DOCUMENTED_EXAMPLE


def test_format_grounding_answer_uses_width_for_x_and_height_for_y():
    text = format_grounding_answer([("ILD", (500, 100, 1000, 400))], width=2000, height=1000)
    assert text == "Local diseases of this chest radiograph are <p>ILD</p> {<25><10><50><40>}."


def test_format_grounding_answer_sorts_by_label_index_then_grid_box_and_canonicalises():
    findings = [
        ("Other lesion", (0, 0, 10, 10)),
        ("Pulmonary Fibrosis", (50, 50, 60, 60)),
        ("Lung opacity", (30, 0, 40, 10)),
        ("Lung opacity", (10, 20, 40, 30)),
        ("Lung opacity", (10, 0, 40, 10)),
        ("Nodule / Mass", (0, 0, 5, 5)),
        ("Aortic enlargement", (90, 90, 100, 100)),
    ]
    text = format_grounding_answer(findings, 100, 100)
    assert text == (
        "Local diseases of this chest radiograph are <p>Aortic enlargement</p> {<90><90><100><100>},"
        "<p>Lung Opacity</p> {<10><0><40><10>},<p>Lung Opacity</p> {<10><20><40><30>},"
        "<p>Lung Opacity</p> {<30><0><40><10>},<p>Nodule/Mass</p> {<0><0><5><5>},"
        "<p>Pulmonary fibrosis</p> {<50><50><60><60>},<p>Other lesion</p> {<0><0><10><10>}."
    )


def test_format_grounding_answer_normal_abnormal_empty_and_errors():
    assert (
        format_grounding_answer([], 10, 10, no_finding=True)
        == "Local diseases of this chest radiograph are No finding."
    )
    assert format_grounding_answer([], 10, 10) == "Local diseases of this chest radiograph are None."
    with pytest.raises(ValueError):
        format_grounding_answer([("Cardiomegaly", (1, 1, 2, 2))], 10, 10, no_finding=True)
    with pytest.raises(ValueError, match="unknown label"):
        format_grounding_answer([("mild", (1, 1, 2, 2))], 10, 10)


def test_format_diagnosis_answer():
    assert (
        format_diagnosis_answer(["Tuberculosis", "Lung Tumor", "Pneumonia"])
        == "Global diseases of this chest radiograph are Lung tumor, Pneumonia, Tuberculosis."
    )
    assert format_diagnosis_answer(["No Finding"]) == "Global diseases of this chest radiograph are No finding."
    assert format_diagnosis_answer([]) == "Global diseases of this chest radiograph are None."
    assert format_diagnosis_answer(["Other disease", "COPD", "COPD"]) == (
        "Global diseases of this chest radiograph are COPD, Other diseases."
    )
    with pytest.raises(ValueError):
        format_diagnosis_answer(["No finding", "Pneumonia"])
    with pytest.raises(ValueError):
        format_diagnosis_answer(["Cardiomegaly"])


# ----------------------------------------------------------------------------------------- grounding parser


def test_parse_grounding_design_example():
    parsed = parse_grounding_answer(DOCUMENTED_EXAMPLE, width=2000, height=1000)
    assert parsed.ok and not parsed.no_finding and not parsed.contradiction
    assert [(f.label, f.grid_box) for f in parsed.findings] == [
        ("Aortic enlargement", (53, 28, 65, 36)),
        ("Cardiomegaly", (38, 49, 82, 63)),
    ]
    assert parsed.findings[1].box == (760.0, 490.0, 1640.0, 630.0)
    span = parsed.findings[0].span
    assert DOCUMENTED_EXAMPLE[span[0] : span[1]] == "<p>Aortic enlargement</p> {<53><28><65><36>}"


def test_parse_grounding_truncated_answer_keeps_complete_phrases_and_counts_the_rest():
    text = "Local diseases of this chest radiograph are <p>Aortic enlargement</p> {<53><28><65><36>},<p>Cardiomegaly</p> {<38><49>"
    parsed = parse_grounding_answer(text, 100, 100)
    assert [f.label for f in parsed.findings] == ["Aortic enlargement"]
    assert len(parsed.failures) == 1 and "Cardiomegaly" in parsed.failures[0]


def test_parse_grounding_unknown_label_mild_is_not_ild():
    parsed = parse_grounding_answer("<p>mild</p> {<1><2><3><4>},<p>ILD</p> {<5><6><7><8>}", 100, 100)
    assert [f.label for f in parsed.findings] == ["ILD"]
    assert len(parsed.failures) == 1 and "mild" in parsed.failures[0]


def test_parse_grounding_coordinates_above_100_and_inverted_boxes_are_failures():
    text = (
        "<p>Cardiomegaly</p> {<38><49><182><63>},"  # > 100
        "<p>Cardiomegaly</p> {<50><49><40><63>},"  # x2 < x1
        "<p>Cardiomegaly</p> {<38><70><82><63>},"  # y2 < y1
        "<p>Cardiomegaly</p> {<38><49><38><49>},"  # degenerate but not inverted: kept
        "<p>Cardiomegaly</p> {<38><49><1000><63>}"  # 4 digits: unparseable
    )
    parsed = parse_grounding_answer(text, 100, 100)
    assert [f.grid_box for f in parsed.findings] == [(38, 49, 38, 49)]
    assert len(parsed.failures) == 4
    assert sum("coordinate > 100" in f for f in parsed.failures) == 1
    assert sum("inverted" in f for f in parsed.failures) == 2
    assert sum("unparseable" in f for f in parsed.failures) == 1


def test_parse_grounding_delim_multi_box_and_tolerant_spacing():
    text = (
        "Local diseases of this chest radiograph are <p> Nodule / Mass </p>{ <10> <20> <30> <40> <delim><50><60><70><80>}"
        " and <P>lung opacity</P> {<1><2><3><4>}."
    )
    parsed = parse_grounding_answer(text, 200, 100)
    assert parsed.ok, parsed.failures
    assert [(f.label, f.grid_box) for f in parsed.findings] == [
        ("Nodule/Mass", (10, 20, 30, 40)),
        ("Nodule/Mass", (50, 60, 70, 80)),
        ("Lung Opacity", (1, 2, 3, 4)),
    ]
    assert parsed.findings[1].box == (100.0, 60.0, 140.0, 80.0)


def test_parse_grounding_normal_none_and_contradiction():
    normal = parse_grounding_answer("Local diseases of this chest radiograph are No finding.", 10, 10)
    assert normal.ok and normal.no_finding and not normal.findings
    none = parse_grounding_answer("Local diseases of this chest radiograph are None.", 10, 10)
    assert none.ok and none.none_listed and not none.no_finding and not none.findings
    both = parse_grounding_answer("No finding,<p>Edema</p> {<1><2><3><4>}", 10, 10)
    assert both.contradiction and both.no_finding and len(both.findings) == 1


@pytest.mark.parametrize(
    "text",
    [
        "Local diseases of this chest radiograph are no Cardiomegaly.",
        "Local diseases of this chest radiograph are Cardiomegaly.",  # a label without a box is not a box
        "There is mild cardiomegaly.",
        "",
        "Local diseases of this chest radiograph are",
    ],
)
def test_parse_grounding_free_text_is_a_failure_never_a_guess(text):
    parsed = parse_grounding_answer(text, 100, 100)
    assert not parsed.findings and not parsed.no_finding
    assert len(parsed.failures) == 1


def test_parse_grounding_counts_every_bad_fragment():
    text = "<p>Edema</p> {<1><2><3><4>}, maybe something, <p>foo</p> {<1><2><3><4>}, <p>Edema</p> {<1><2>"
    parsed = parse_grounding_answer(text, 100, 100)
    assert len(parsed.findings) == 1
    assert len(parsed.failures) == 3


# ----------------------------------------------------------------------------------------- diagnosis parser


def test_parse_diagnosis_target_form():
    parsed = parse_diagnosis_answer("Global diseases of this chest radiograph are Tuberculosis, Lung tumor, Pneumonia.")
    assert parsed.ok and parsed.positive == ["Lung tumor", "Pneumonia", "Tuberculosis"] and parsed.negative == []
    assert not parsed.no_finding and not parsed.contradiction


def test_parse_diagnosis_aliases_and_conjunctions():
    parsed = parse_diagnosis_answer("Lung Tumor, Other Disease and COPD")
    assert parsed.ok and parsed.positive == ["COPD", "Lung tumor", "Other diseases"]


@pytest.mark.parametrize(
    "text",
    [
        "no Pneumonia",
        "not Pneumonia",
        "without Pneumonia",
        "absent Pneumonia",
        "negative for Pneumonia",
        "Pneumonia absent",
        "NO pneumonia",
    ],
)
def test_parse_diagnosis_negation_cues(text):
    parsed = parse_diagnosis_answer(f"Global diseases of this chest radiograph are COPD, {text}.")
    assert parsed.ok, parsed.failures
    assert parsed.positive == ["COPD"] and parsed.negative == ["Pneumonia"]


def test_parse_diagnosis_negation_scope_is_the_clause():
    parsed = parse_diagnosis_answer("no Pneumonia or Tuberculosis, COPD")
    assert parsed.ok and parsed.negative == ["Pneumonia", "Tuberculosis"] and parsed.positive == ["COPD"]


def test_parse_diagnosis_no_finding_is_a_label_not_a_negation():
    parsed = parse_diagnosis_answer("Global diseases of this chest radiograph are No finding.")
    assert parsed.ok and parsed.no_finding and parsed.positive == [NO_FINDING] and not parsed.contradiction


def test_parse_diagnosis_contradictions():
    mixed = parse_diagnosis_answer("No finding, Pneumonia")
    assert mixed.contradiction and mixed.no_finding and mixed.positive == ["Pneumonia", NO_FINDING]
    both = parse_diagnosis_answer("Pneumonia, no Pneumonia")
    assert both.contradiction and both.positive == [] and both.negative == [] and len(both.failures) == 1


def test_parse_diagnosis_unknown_fragments_are_failures():
    parsed = parse_diagnosis_answer("Pneumonia, mild fibrosis, Pneumonias")
    assert parsed.positive == ["Pneumonia"]
    assert len(parsed.failures) == 2 and "mild fibrosis" in parsed.failures[0]


def test_parse_diagnosis_none_and_empty():
    none = parse_diagnosis_answer("Global diseases of this chest radiograph are None.")
    assert none.ok and none.none_listed and none.positive == [] and none.negative == []
    empty = parse_diagnosis_answer("Global diseases of this chest radiograph are")
    assert not empty.ok


def test_parse_diagnosis_round_trips_format():
    for labels in (["COPD"], ["Lung tumor", "Tuberculosis", "Other diseases"], [NO_FINDING], []):
        parsed = parse_diagnosis_answer(format_diagnosis_answer(labels))
        assert parsed.ok and parsed.positive == [l for l in VINDR_GLOBAL_LABELS if l in labels]


def test_parse_yes_no():
    assert parse_yes_no("Yes") == 1 and parse_yes_no(" no, there is not.") == 0
    assert parse_yes_no("Maybe") is None and parse_yes_no("Nodule") is None
    assert math.isclose(from_grid(50, 3), 1.5)
