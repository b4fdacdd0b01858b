"""MIMIC-CXR report parsing (sections) and rule-based entity triplets (datasets_scripts/mimic_reports.py).

Hand-written reports in the MIMIC-CXR text layout (a space before every header line, blank lines written as " ").
"""

from __future__ import annotations

import math

import pytest

from datasets_scripts.mimic_reports import (
    ENTITIES,
    POSITION_WORDS,
    SECTION_HEADER_RE,
    Triplet,
    chexpert_value,
    clean_section_text,
    extract_triplets,
    labeling_text,
    normalize_section_name,
    parse_sections,
    report_labels,
    report_target,
    split_sections,
    split_sentences,
    study_labels,
)


def report(*lines: str) -> str:
    return "\n".join(lines) + "\n"


FULL = report(
    "                                 FINAL REPORT",
    " EXAMINATION:  CHEST (PA AND LAT)",
    " ",
    " INDICATION:  ___ with cough and fever, evaluate for pneumonia.",
    " ",
    " COMPARISON:  Chest radiograph from ___.",
    " ",
    " FINDINGS: ",
    " ",
    " Compared to ___, there is a small left pleural effusion.  No pneumothorax.",
    " The heart size is normal.",
    " ",
    " IMPRESSION: ",
    " ",
    " Small left pleural effusion.",
)


# ======================================================================================= sections


def test_full_report_sections_and_phi_kept():
    sections = parse_sections(FULL)
    assert sections.findings == (
        "Compared to ___, there is a small left pleural effusion. No pneumothorax. The heart size is normal."
    )
    assert sections.impression == "Small left pleural effusion."
    assert sections.get("indication") == "___ with cough and fever, evaluate for pneumonia."
    assert sections.get("comparison") == "Chest radiograph from ___."
    assert sections.get("examination") == "CHEST (PA AND LAT)"
    assert sections.last_paragraph is None
    assert [name for name, _ in sections.parts] == [
        "preamble", "examination", "indication", "comparison", "findings", "impression"
    ]
    assert report_target(sections) == (sections.findings, "findings")
    assert report_target(sections, "impression") == ("Small left pleural effusion.", "impression")
    both, source = report_target(sections, "findings+impression")
    assert source == "findings+impression" and both == f"{sections.findings} {sections.impression}"


def test_header_regex_is_mit_lcp():
    assert SECTION_HEADER_RE.pattern == r"\n ([A-Z ()/,-]+):\s"
    # no leading space -> not a header (e.g. a WET READ at the very top of the file)
    assert [n for n, _ in split_sections("WET READ: ___\n FINDINGS: x\n")] == ["preamble", "findings"]
    assert split_sections("no headers at all") == [("full report", "no headers at all")]


def test_missing_findings_falls_back_to_impression():
    text = report(
        "                                 FINAL REPORT",
        " EXAMINATION:  CHEST (PORTABLE AP)",
        " ",
        " IMPRESSION: ",
        " ",
        " Endotracheal tube terminates 4 cm above the carina.  No pneumothorax.",
    )
    sections = parse_sections(text)
    assert sections.findings is None
    assert report_target(sections) == (
        "Endotracheal tube terminates 4 cm above the carina. No pneumothorax.", "impression"
    )
    assert report_target(sections, "findings+impression")[1] == "impression"


def test_missing_impression_for_impression_target_uses_findings():
    text = report(" FINDINGS: ", " ", " Mild cardiomegaly.")
    sections = parse_sections("FINAL REPORT\n" + text)
    assert report_target(sections, "impression") == ("Mild cardiomegaly.", "findings")


def test_conclusion_is_impression_and_comparisons_is_comparison():
    text = report(
        "                                 FINAL REPORT",
        " COMPARISONS:  None.",
        " ",
        " FINDINGS: ",
        " ",
        " The lungs are clear.",
        " ",
        " CONCLUSION: ",
        " ",
        " No acute cardiopulmonary process.",
    )
    sections = parse_sections(text)
    assert sections.impression == "No acute cardiopulmonary process."
    assert sections.get("comparison") == "None."
    assert "conclusion" not in sections.sections and "comparisons" not in sections.sections


@pytest.mark.parametrize(
    "raw, name",
    [
        ("CONCLUSION", "impression"),
        ("COMPARISONS", "comparison"),
        ("FINDINGS AND IMPRESSION", "impression"),
        ("FINDINGS/IMPRESSION", "impression"),
        ("CLINICAL HISTORY", "history"),
        ("REASON FOR EXAMINATION", "indication"),
        ("FINAL ADDENDUM", "addendum"),
        ("PA AND LATERAL VIEWS OF THE CHEST", "findings"),
        ("WET READ", "wet read"),
        ("NOTIFICATION", "notification"),
    ],
)
def test_section_name_normalisation(raw, name):
    assert normalize_section_name(raw) == name


def test_repeated_sections_keep_the_last_and_empty_ones_are_dropped():
    text = report(
        "                                 FINAL REPORT",
        " FINDINGS: ",
        " ",
        " First findings paragraph.",
        " ",
        " IMPRESSION: ",
        " ",
        " First impression.",
        " ",
        " FINDINGS: ",
        " ",
        " Second findings paragraph.",
        " ",
        " IMPRESSION: ",
        " ",
    )
    sections = parse_sections(text)
    assert sections.findings == "Second findings paragraph."
    # the last IMPRESSION is empty: dropped, so the earlier non-empty one is the last one left
    assert sections.impression == "First impression."
    assert [n for n, _ in sections.parts].count("impression") == 1


def test_addendum_after_underscore_line_is_not_part_of_the_impression():
    text = report(
        "                                 FINAL REPORT",
        " FINDINGS: ",
        " ",
        " Small right pleural effusion.",
        " ",
        " IMPRESSION: ",
        " ",
        " Small right pleural effusion.",
        " ______________________________________________________________________________",
        " Addendum: the effusion was discussed with Dr. ___ at 3 pm.",
    )
    sections = parse_sections(text)
    assert sections.impression == "Small right pleural effusion."
    assert sections.get("addendum") == "Addendum: the effusion was discussed with Dr. ___ at 3 pm."
    assert clean_section_text(" a\n b\n _______\n c") == "a b"
    assert clean_section_text(" ___ was here") == "___ was here"  # PHI is not a separator line


def test_wet_read_on_top_is_preamble():
    text = report(
        "WET READ: ___ ___ ___ 10:40 PM",
        "  Possible small left effusion.",
        "______________________________________________________________________________",
        "",
        "                                 FINAL REPORT",
        " FINDINGS: ",
        " ",
        " No pleural effusion.",
    )
    sections = parse_sections(text)
    assert sections.findings == "No pleural effusion."
    assert "effusion" not in (sections.impression or "")
    assert report_labels(text)[0]["Effusion"] == 0  # the wet read is not labelled


def test_no_sections_falls_back_to_last_paragraph():
    text = report(
        "                                 FINAL REPORT",
        " CHEST (PA AND LAT) PERFORMED ON ___",
        " ",
        " COMPARISON:  None.",
        " ",
        " CLINICAL HISTORY:  ___ with chest pain.",
        " ",
        " Small left pleural effusion.  No pneumothorax.",
    )
    sections = parse_sections(text)
    assert sections.findings is None and sections.impression is None
    assert sections.last_paragraph == "Small left pleural effusion. No pneumothorax."
    assert sections.get("history") == "___ with chest pain."
    assert report_target(sections) == ("Small left pleural effusion. No pneumothorax.", "last_paragraph")
    assert report_target(sections, fallback_last_paragraph=False) is None
    assert labeling_text(sections) == "Small left pleural effusion. No pneumothorax."


def test_report_without_any_usable_text():
    sections = parse_sections("Normal chest radiograph.")
    assert not sections.has_target
    assert report_target(sections) is None
    assert labeling_text(sections) is None
    assert report_labels("Normal chest radiograph.") == ({e: None for e in ENTITIES}, [])


def test_report_target_rejects_unknown_section():
    with pytest.raises(ValueError, match="report_section"):
        report_target(parse_sections(FULL), "history")


# ======================================================================================= triplets


def one(sentence: str) -> Triplet:
    triplets = extract_triplets(sentence)
    assert len(triplets) == 1, triplets
    return triplets[0]


@pytest.mark.parametrize(
    "sentence, entity, existence, position",
    [
        ("No pneumothorax.", "Pneumothorax", 0, ()),
        ("Lungs are clear without effusion.", "Effusion", 0, ()),
        ("The left pneumothorax has resolved.", "Pneumothorax", 0, ("left",)),
        ("Possible left basilar atelectasis.", "Atelectasis", -1, ("left", "base")),
        ("Cardiomegaly cannot be excluded.", "Cardiomegaly", -1, ()),
        ("The previously seen opacity is absent.", "Opacity", 0, ()),
        ("Mild cardiomegaly.", "Cardiomegaly", 1, ()),
        ("Lungs are free of consolidation.", "Consolidation", 0, ()),
        ("Patchy opacity in the right lower lobe.", "Opacity", 1, ("right", "lower")),
        ("Small right apical pneumothorax.", "Pneumothorax", 1, ("right", "apex")),
        ("Bibasilar atelectasis.", "Atelectasis", 1, ("bilateral", "base")),
        ("Hazy opacity at the left base may reflect overlying soft tissue.", "Opacity", -1, ("left", "base")),
        ("Consolidation at the right base cannot be ruled out.", "Consolidation", -1, ("right", "base")),
        ("Borderline cardiomegaly.", "Cardiomegaly", -1, ()),
        ("No new consolidation.", "Consolidation", -1, ()),  # CheXpert labeler: an old one may persist
        ("Likely left lower lobe atelectasis.", "Atelectasis", 1, ("left", "lower")),  # "likely" is not a hedge
        ("Pneumothorax is unlikely.", "Pneumothorax", -1, ()),
        ("No change in the small left pleural effusion.", "Effusion", 1, ("left",)),  # pseudo-negation
        ("The effusion is no longer seen.", "Effusion", 0, ()),
        ("A right effusion is not seen.", "Effusion", 0, ("right",)),
        ("Findings do not suggest pneumothorax.", "Pneumothorax", 0, ()),
        ("Enlarged cardiac silhouette.", "Cardiomegaly", 1, ()),
        ("NO PNEUMOTHORAX.", "Pneumothorax", 0, ()),  # any case
    ],
)
def test_negation_uncertainty_position(sentence, entity, existence, position):
    triplet = one(sentence)
    assert (triplet.entity, triplet.existence, triplet.position) == (entity, existence, position)
    assert triplet.sentence == sentence
    assert all(word in POSITION_WORDS for word in triplet.position)


def test_cues_are_whole_words_and_pericardial_effusion_is_not_pleural():
    assert one("Known pneumothorax.").existence == 1  # "know" is not "no"
    assert one("Nonspecific opacity.").existence == 1  # "non..." is not "no"
    assert extract_triplets("No pericardial effusion.") == []
    assert extract_triplets("The heart size is normal.") == []  # not a cardiomegaly mention (as NegBio)


def test_negation_spreads_over_a_comma_list():
    triplets = extract_triplets("No pleural effusion, pneumothorax, or focal consolidation.")
    assert [(t.entity, t.existence) for t in triplets] == [("Effusion", 0), ("Pneumothorax", 0), ("Consolidation", 0)]


def test_nearest_cue_and_scope_terminators():
    t = extract_triplets("Possible small effusion, no pneumothorax.")
    assert [(x.entity, x.existence) for x in t] == [("Effusion", -1), ("Pneumothorax", 0)]
    t = extract_triplets("No pneumothorax, possible small right effusion.")
    assert [(x.entity, x.existence, x.position) for x in t] == [("Pneumothorax", 0, ()), ("Effusion", -1, ("right",))]
    t = extract_triplets("No pneumothorax, but there is a moderate left effusion.")
    assert [(x.entity, x.existence) for x in t] == [("Pneumothorax", 0), ("Effusion", 1)]
    t = extract_triplets("No effusion; mild cardiomegaly.")
    assert [(x.entity, x.existence) for x in t] == [("Effusion", 0), ("Cardiomegaly", 1)]
    t = extract_triplets("Small right pleural effusion and left basilar atelectasis.")
    assert [(x.entity, x.existence, x.position) for x in t] == [
        ("Effusion", 1, ("right",)), ("Atelectasis", 1, ("left", "base"))
    ]


def test_sentences_do_not_split_numbers_or_vs():
    assert split_sentences("Tube is 4.5 cm above the carina.  Atelectasis vs. pneumonia.\n New line.") == [
        "Tube is 4.5 cm above the carina.", "Atelectasis vs. pneumonia.", "New line."
    ]
    assert one("Left lower lobe atelectasis vs. pneumonia.").existence == -1


def test_study_aggregation_keeps_four_states():
    text = "Possible small left effusion. Small right effusion. No pneumothorax. Possible atelectasis. No atelectasis."
    labels = study_labels(extract_triplets(text))
    assert labels == {
        "Opacity": None,  # not mentioned
        "Pneumothorax": 0,
        "Cardiomegaly": None,
        "Effusion": 1,  # present beats uncertain
        "Consolidation": None,
        "Atelectasis": -1,  # uncertain beats absent (CheXpert labeler order)
    }
    assert list(labels) == list(ENTITIES)


def test_report_labels_read_findings_and_impression_only():
    labels, triplets = report_labels(FULL)
    assert labels["Effusion"] == 1 and labels["Pneumothorax"] == 0 and labels["Cardiomegaly"] is None
    assert {t.sentence for t in triplets} >= {"No pneumothorax.", "Small left pleural effusion."}
    indication_only = report(" INDICATION:  evaluate for pneumothorax.", " ", " IMPRESSION: ", " ", " Normal.")
    assert report_labels("x\n" + indication_only)[0]["Pneumothorax"] is None


# ======================================================================================= CheXpert cells


@pytest.mark.parametrize(
    "cell, value",
    [("1.0", 1), ("0.0", 0), ("-1.0", -1), ("", None), (" ", None), ("nan", None), (None, None), (float("nan"), None),
     (1.0, 1), (-1, -1), ("1", 1)],
)
def test_chexpert_value_keeps_four_states(cell, value):
    assert chexpert_value(cell) == value


@pytest.mark.parametrize("cell", ["2.0", "yes", "0.5", math.inf])
def test_chexpert_value_rejects_other_values(cell):
    with pytest.raises(ValueError, match="CheXpert"):
        chexpert_value(cell)
