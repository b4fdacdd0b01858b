"""MIMIC-CXR free-text reports: section parsing and rule-based entity triplets (pure text, no I/O).

Used by ``datasets_scripts/mimic_cxr.py``; everything here is a plain function of strings so that it can be tested on
hand-written reports.

Sections (the algorithm of MIT-LCP/mimic-cxr ``txt/section_parser.py``, re-implemented)
-----------------------------------------------------------------------------------------
* A header is an upper-case name at the start of a line after one space, followed by a colon and whitespace:
  ``SECTION_HEADER_RE = r'\\n ([A-Z ()/,-]+):\\s'``. Text before the first header is the ``preamble`` (this is
  where a ``WET READ`` at the very top of the file ends up); a report without any header is one ``full report``
  section. After a header, the search for the next header resumes after the end of the header's line (as MIT-LCP
  does, "to avoid some bad parses").
* Names are lower-cased and normalised (``normalize_section_name``): ``conclusion`` -> ``impression``,
  ``comparisons`` -> ``comparison``, ``findings and impression`` / ``findings/impression`` -> ``impression``,
  ``clinical history`` -> ``history``, ``reason for exam(ination)`` -> ``indication``, common misspellings, then
  any name containing ``impression``/``findings``/``history``/``comparison``/``addendum`` becomes that name and
  view-like titles (``chest``, ``portable``, ``pa and lateral``, ...) become ``findings``.
* Empty ``findings``/``impression`` sections are dropped (emptiness is judged after ``clean_section_text``, so a
  section holding only an underscore separator line is empty too).
* When neither ``findings`` nor ``impression`` remains, the last section is split at its first blank line
  (``"\\n \\n"``) and the part after it becomes ``last_paragraph`` (MIT-LCP's fallback).
* The **last** section of each name is kept (``ReportSections.sections``); the ordered list is ``.parts``.

Section text cleaning (``clean_section_text``, the documented preprocessing of report targets)
----------------------------------------------------------------------------------------------
1. cut at the first separator line (a line of >= 5 underscores and nothing else): in MIMIC-CXR addenda and wet reads
   follow such lines, so they never leak into the findings/impression text; the cut-off part is kept under
   ``addendum`` (appended to an ``ADDENDUM:`` section if the report has one);
2. every run of whitespace (including the report's hard line breaks at ~78 columns) becomes one space; strip.

PHI placeholders ``___`` are kept verbatim (they are the de-identified tokens the reports really contain).

Rule-based entity triplets (MedKLIP-style)
------------------------------------------
Entities (``ENTITIES``): Opacity, Pneumothorax, Cardiomegaly, Effusion, Consolidation, Atelectasis, found by their
synonyms (``ENTITY_PATTERNS``) at word boundaries, case-insensitively, in the sentences of findings + impression
(``last_paragraph`` when the report has neither). Sentences split at ``.``/``!``/``?`` followed by whitespace;
each sentence is split further into clauses at ``;`` and at the scope terminators ``but``, ``however``,
``although``, ``though``, ``whereas``, ``which``, ``except`` (NegEx-style). Commas do **not** end a scope, so
"No pleural effusion, pneumothorax or consolidation" negates all three.

Each mention gives one ``Triplet(entity, position, existence, cue)``; **existence is per mention**:

* ``1``  present   -- mentioned without a cue;
* ``0``  absent    -- nearest cue is a negation: before the mention ``no``, ``not``, ``without``, ``absent``,
  ``absence of``, ``free of``, ``negative for``, ``resolution of``, ``resolved``, ``clear of``; after it
  ``absent``, ``resolved`` (``has resolved``), ``not seen/identified/present/appreciated/...``,
  ``no longer seen/present/...``, ``cleared``, ``ruled out`` (but not ``cannot be ruled out``);
* ``-1`` uncertain -- nearest cue is an uncertainty cue: before the mention ``possible``, ``possibly``,
  ``probable``, ``probably``, ``questionable``, ``question of``, ``suspicious for``, ``suspected``, ``suspicion of``,
  ``concerning for``, ``concern for``, ``worrisome for``, ``suggestive of``, ``suggest(s/ing)``, ``borderline``,
  ``equivocal``, ``indeterminate``, ``presumed``, ``potential``, ``maybe``, ``cannot exclude``,
  ``cannot rule out``, ``rule out``, ``differential``, ``no new`` (the CheXpert labeler's convention: an old finding
  may persist); before *or* after it ``may``, ``might``, ``could``, ``versus``/``vs``, ``and/or``; after it
  ``cannot be excluded``, ``cannot be ruled out``, ``not excluded``, ``is possible``, ``is suspected``,
  ``questioned``, ``unlikely``, ``less likely``.
  ``likely`` / ``probably present``-type hedges of high confidence are **not** uncertainty cues: as in the CheXpert
  labeler, "likely atelectasis" is positive (only "less likely"/"unlikely" are uncertain).

Decision per mention: the nearest cue *before* it in its clause decides; if there is none, the nearest cue after it
(post cues only, e.g. "pneumothorax has resolved", "cardiomegaly cannot be excluded", "opacity is absent"); if there
is no cue at all, 1. Pseudo-negations (``no change``, ``no interval change``, ``no significant change``,
``without change``, ``not changed``, ``no increase``) are masked first, so "No change in the small left effusion" is
positive. Cues are matched longest-first, so ``cannot be excluded`` is one uncertainty cue, not a ``not``.
A "Pleural effusion" mention preceded by ``pericardial`` is not an Effusion.

Position words (stored, never scored): left, right, bilateral (``bilateral(ly)``, ``both``, ``bibasilar``), upper,
middle (``mid``, ``middle``), lower, base (``base(s)``, ``basilar``, ``basal``, ``bibasilar``), apex (``apex``,
``apices``, ``apical``), hilar (``hilar``, ``perihilar``), retrocardiac, lingula, found between the previous
mention in the clause and this one; when there are none, those after this mention up to the next mention or cue
("Patchy opacity in the right lower lobe" -> right, lower).

Study-level labels (``study_labels``) -- how {1, 0, -1} per mention and "not mentioned" are reconciled
-----------------------------------------------------------------------------------------------------------
Per entity: ``1`` if any mention is 1, else ``-1`` if any mention is uncertain, else ``0`` if any mention is 0,
else ``None`` (**not mentioned**). This is the CheXpert labeler's aggregation (positive > uncertain > negative), so
the rules labels have exactly CheXpert's four states (1.0 / -1.0 / 0.0 / blank) and the two can be compared one to
one. A single "−1 if not mentioned" state is thus split into ``-1`` (uncertain) and ``None`` (not mentioned); both
are "unknown" answers that are never trained or scored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from codec_litegpt import MIMIC_ENTITIES

__all__ = [
    "ABSENT",
    "ENTITIES",
    "ENTITY_CHEXPERT_COLUMN",
    "ENTITY_PATTERNS",
    "POSITION_WORDS",
    "PRESENT",
    "REPORT_SECTION_CHOICES",
    "SECTION_HEADER_RE",
    "UNCERTAIN",
    "ReportSections",
    "Triplet",
    "chexpert_value",
    "clean_section_text",
    "extract_triplets",
    "labeling_text",
    "normalize_section_name",
    "parse_sections",
    "report_labels",
    "report_target",
    "split_clauses",
    "split_sections",
    "split_sentences",
    "study_labels",
]

# ======================================================================================= sections

SECTION_HEADER_RE = re.compile(r"\n ([A-Z ()/,-]+):\s", re.DOTALL)

# name (lower case, stripped) -> normalised name; names not listed go through the substring rules below.
_SECTION_ALIASES = {
    "preamble": "preamble",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings/ impression": "impression",
    "impresson": "impression",
    "imprression": "impression",
    "impresion": "impression",
    "impession": "impression",
    "findings": "findings",
    "finding": "findings",
    "findngs": "findings",
    "finidngs": "findings",
    "reference findings": "findings",
    "chest, two views": "findings",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparision": "comparison",
    "comparsion": "comparison",
    "reference exam": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "indication": "indication",
    "idication": "indication",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "clinical indication": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "patient history": "history",
    "pfi": "history",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "technique": "technique",
    "notification": "notification",
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "addendum": "addendum",
    "wet read": "wet read",
    "wetread": "wet read",
    "date": "date",
    "comment": "comment",
}
_MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
_FINDINGS_LIKE_RE = re.compile(
    r"chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|frontal view|"
    r"pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|ribs|pa and lat"
)
_SEPARATOR_LINE_RE = re.compile(r"(?m)^[ \t]*_{5,}[ \t]*$")
_BLANK_LINE = "\n \n"


def normalize_section_name(name: str) -> str:
    """Lower-case a raw header and map it to its normalised name (``conclusion`` -> ``impression``, ...)."""
    lowered = " ".join(name.lower().split())
    if lowered in _SECTION_ALIASES:
        return _SECTION_ALIASES[lowered]
    for main in _MAIN_SECTIONS:
        if main in lowered:
            return main
    if _FINDINGS_LIKE_RE.search(lowered):
        return "findings"
    return lowered


def split_sections(text: str) -> list[tuple[str, str]]:
    """Ordered ``(normalised name, raw text)`` pairs of a report, as MIT-LCP's ``section_text`` (no cleaning, no
    dropping, no fallback). A report without headers is one ``("full report", text)`` pair."""
    parts: list[tuple[str, str]] = []
    match = SECTION_HEADER_RE.search(text)
    if match is None:
        return [("full report", text)]
    parts.append(("preamble", text[: match.start(1)]))
    while match is not None:
        name = match.group(1)
        start = match.end()
        newline = text.find("\n", start)
        resume = start if newline == -1 else newline
        match = SECTION_HEADER_RE.search(text, resume)
        end = len(text) if match is None else match.start()
        parts.append((normalize_section_name(name), text[start:end]))
    return parts


def _cut_separator(text: str) -> tuple[str, str]:
    """Split a section's raw text at its first underscore separator line: (before, after)."""
    match = _SEPARATOR_LINE_RE.search(text)
    if match is None:
        return text, ""
    return text[: match.start()], text[match.end():]


def _collapse(text: str) -> str:
    return " ".join(text.split())


def clean_section_text(text: str) -> str:
    """The documented preprocessing of a section: cut at the first underscore separator line, collapse whitespace."""
    return _collapse(_cut_separator(text)[0])


@dataclass
class ReportSections:
    """A parsed report. ``sections``: normalised name -> cleaned text of the **last** section of that name (non-empty
    ``findings``/``impression`` only); ``parts``: every section in order, cleaned (after dropping empty
    findings/impression, with the ``last_paragraph`` fallback appended)."""

    parts: list[tuple[str, str]] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.sections.get(name)

    @property
    def findings(self) -> str | None:
        return self.sections.get("findings")

    @property
    def impression(self) -> str | None:
        return self.sections.get("impression")

    @property
    def last_paragraph(self) -> str | None:
        return self.sections.get("last_paragraph")

    @property
    def has_target(self) -> bool:
        """True when the report has findings, impression or a last paragraph (something a target can come from)."""
        return any(self.sections.get(k) for k in ("findings", "impression", "last_paragraph"))


def parse_sections(text: str) -> ReportSections:
    """Parse a MIMIC-CXR report (see the module docstring for the exact rules)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    raw = split_sections(text)
    # Drop empty findings/impression (judged after cleaning), remember text after separator lines as addenda.
    kept: list[tuple[str, str]] = []
    addenda: list[str] = []
    for name, body in raw:
        before, after = _cut_separator(body)
        if after.strip() and name not in ("preamble", "addendum"):
            addenda.append(_collapse(after))
        if name in ("findings", "impression") and not _collapse(before):
            continue
        kept.append((name, body))
    names = {name for name, _ in kept}
    if "findings" not in names and "impression" not in names and kept:
        last_name, last_body = kept[-1]
        if _BLANK_LINE in last_body:
            head, _, tail = last_body.partition(_BLANK_LINE)
            kept[-1] = (last_name, head)
            kept.append(("last_paragraph", tail))
    parts = [(name, clean_section_text(body)) for name, body in kept]
    sections: dict[str, str] = {}
    for name, body in parts:
        if name == "last_paragraph" and not body:
            continue
        sections[name] = body  # later sections of the same name overwrite: the last one is kept
    if addenda:
        joined = " ".join(a for a in addenda if a)
        if joined:
            sections["addendum"] = f"{sections['addendum']} {joined}".strip() if sections.get("addendum") else joined
    return ReportSections(parts=parts, sections=sections)


REPORT_SECTION_CHOICES = ("findings", "impression", "findings+impression")


def report_target(
    sections: ReportSections, report_section: str = "findings", fallback_last_paragraph: bool = True
) -> tuple[str, str] | None:
    """The report-generation target and the section it came from, or None when the report has nothing usable.

    * ``"findings"`` (default): findings, else impression;
    * ``"impression"``: impression, else findings;
    * ``"findings+impression"``: ``"{findings} {impression}"`` when both exist, else whichever exists
      (source ``"findings+impression"`` only when both were used);
    * then, if ``fallback_last_paragraph``, the ``last_paragraph`` of a report with neither section.
    """
    if report_section not in REPORT_SECTION_CHOICES:
        raise ValueError(f"report_section must be one of {REPORT_SECTION_CHOICES}, got {report_section!r}")
    findings, impression = sections.findings, sections.impression
    if report_section == "findings+impression" and findings and impression:
        return f"{findings} {impression}", "findings+impression"
    order = ("impression", "findings") if report_section == "impression" else ("findings", "impression")
    for name in order:
        value = sections.get(name)
        if value:
            return value, name
    if fallback_last_paragraph and sections.last_paragraph:
        return sections.last_paragraph, "last_paragraph"
    return None


# ======================================================================================= entity triplets

PRESENT, ABSENT, UNCERTAIN = 1, 0, -1

ENTITIES = MIMIC_ENTITIES  # the label list lives with the others, in the codec

ENTITY_PATTERNS = {
    "Opacity": r"opaci(?:ty|ties|fication|fications|fied)",
    "Pneumothorax": r"pneumothora(?:x|ces)|ptx",
    "Cardiomegaly": (
        r"cardiomegaly|cardiac enlargement|enlarged (?:heart|cardiac silhouette)"
        r"|enlargement of the (?:heart|cardiac silhouette)"
    ),
    "Effusion": r"(?<!pericardial )effusions?",
    "Consolidation": r"consolidat(?:ion|ions|ive|ed)",
    "Atelectasis": r"atelecta(?:sis|ses|tic)",
}

# CheXpert / NegBio column of each entity (Opacity and Effusion have longer CheXpert names).
ENTITY_CHEXPERT_COLUMN = {
    "Opacity": "Lung Opacity",
    "Pneumothorax": "Pneumothorax",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Consolidation": "Consolidation",
    "Atelectasis": "Atelectasis",
}

_ENTITY_RE = re.compile(
    "|".join(rf"(?P<{name}>\b(?:{pattern})\b)" for name, pattern in ENTITY_PATTERNS.items()), re.IGNORECASE
)

# pattern -> canonical position words, in the order they are reported.
_POSITION_PATTERNS = (
    (r"bibasilar|bibasal", ("bilateral", "base")),
    (r"bilateral(?:ly)?|both", ("bilateral",)),
    (r"left", ("left",)),
    (r"right", ("right",)),
    (r"upper", ("upper",)),
    (r"mid|middle", ("middle",)),
    (r"lower", ("lower",)),
    (r"bases?|basilar|basal", ("base",)),
    (r"apex|apices|apical", ("apex",)),
    (r"(?:peri)?hilar", ("hilar",)),
    (r"retrocardiac", ("retrocardiac",)),
    (r"lingula(?:r)?", ("lingula",)),
)
POSITION_WORDS = tuple(dict.fromkeys(word for _, words in _POSITION_PATTERNS for word in words))
_POSITION_RE = re.compile("|".join(rf"(\b(?:{p})\b)" for p, _ in _POSITION_PATTERNS), re.IGNORECASE)

_PSEUDO_NEGATION_RE = re.compile(
    r"\b(?:no (?:significant |definite |appreciable )?(?:interval )?change|without (?:interval )?change|"
    r"not (?:significantly )?changed|no (?:significant )?(?:interval )?increase)\b",
    re.IGNORECASE,
)

_VIEW_VERBS = r"(?:seen|identified|present|appreciated|visualized|evident|demonstrated|detected|noted|visible|apparent)"
# (pattern, kind, direction) with kind "neg" / "unc" and direction "pre" (cue before the mention), "post" (after it)
# or "both". Matched longest-first at each position.
_CUES = (
    # uncertainty that wins over a contained negation word (matched as whole phrases)
    (r"can ?not be (?:excluded|ruled out)|can't be (?:excluded|ruled out)|could not be (?:excluded|ruled out)", "unc",
     "post"),
    (r"(?:is |are |was |were )?not (?:be )?(?:excluded|ruled out)", "unc", "post"),
    (r"can ?not (?:exclude|rule out)|can't (?:exclude|rule out)|could not (?:exclude|rule out)", "unc", "pre"),
    (r"no new", "unc", "pre"),
    (r"not suggest(?:ive of|s|ed)?|not concerning for|not consistent with", "neg", "pre"),
    # negation
    (r"no longer " + _VIEW_VERBS, "neg", "post"),
    (r"not (?:well|clearly|definitely) (?:seen|visualized|evaluated|assessed)", "unc", "post"),
    (r"not (?:\w+ly )?" + _VIEW_VERBS, "neg", "post"),
    (r"(?:has|have) (?:completely )?(?:resolved|cleared)|(?:has|have) been ruled out|ruled out|cleared", "neg",
     "post"),
    (r"absent|resolved", "neg", "both"),
    (r"absence of|free of|negative for|resolution of|clear of", "neg", "pre"),
    (r"no|not|without", "neg", "pre"),
    # uncertainty
    (r"(?:is|are|was|were) (?:possible|suspected|questioned)|questioned|less likely|unlikely", "unc", "post"),
    (r"may|might|could|versus|vs\.?|and/or", "unc", "both"),
    (
        (
            r"possible|possibly|probable|probably|questionable|question of|suspicious for|suspicious|suspected|"
            r"suspect|suspicion (?:of|for)|concerning for|concern for|worrisome for|suggestive of|suggests?|"
            r"suggesting|borderline|equivocal|indeterminate|presumed|presumably|potential|maybe|rule out|"
            r"differential(?: diagnosis)?(?: includes?)?"
        ),
        "unc",
        "pre",
    ),
)


def _cue_patterns() -> list[tuple[re.Pattern, int]]:
    """One compiled regex per top-level alternative of every cue (whole words, case-insensitive)."""
    return [
        (re.compile(rf"\b(?:{alternative})(?!\w)", re.IGNORECASE), index)
        for index, (pattern, _, _) in enumerate(_CUES)
        for alternative in _split_top_level(pattern)
    ]


def _split_top_level(pattern: str) -> list[str]:
    """Split a regex at its top-level ``|`` (outside parentheses)."""
    out, depth, current = [], 0, []
    for char in pattern:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "|" and depth == 0:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return out


_CUE_PATTERNS = _cue_patterns()
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=\S)")
_ABBREVIATION_END_RE = re.compile(r"\b(?:vs|e\.g|i\.e|approx|dr)\.$", re.IGNORECASE)
_CLAUSE_SPLIT_RE = re.compile(r";|\b(?:but|however|although|though|whereas|which|except)\b", re.IGNORECASE)


class Triplet(NamedTuple):
    """One entity mention: ``existence`` 1 present / 0 absent / -1 uncertain; ``position`` canonical position words
    (``POSITION_WORDS``) in text order; ``cue`` the deciding cue text (lower case) or None; ``sentence`` its text."""

    entity: str
    position: tuple[str, ...]
    existence: int
    cue: str | None
    sentence: str


class _Cue(NamedTuple):
    start: int
    end: int
    kind: str  # "neg" | "unc"
    direction: str  # "pre" | "post" | "both"
    text: str


def split_sentences(text: str) -> list[str]:
    """Whitespace-collapsed sentences: split after ``.``/``!``/``?`` followed by whitespace (so "1.5 cm" stays one
    token), except after the abbreviations ``vs.``, ``e.g.``, ``i.e.``, ``approx.``, ``Dr.``."""
    text = _collapse(text)
    sentences: list[str] = []
    for piece in _SENTENCE_SPLIT_RE.split(text) if text else []:
        if sentences and _ABBREVIATION_END_RE.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [s for s in sentences if s.strip()]


def split_clauses(sentence: str) -> list[str]:
    """Scopes of a sentence: split at ``;`` and the terminators but/however/although/though/whereas/which/except."""
    return [c for c in _CLAUSE_SPLIT_RE.split(sentence) if c.strip()]


def _find_cues(clause: str) -> list[_Cue]:
    """Non-overlapping cues of a clause, leftmost first and, at equal start, longest first (so "cannot be excluded"
    is one uncertainty cue, "no new" beats "no"); pseudo-negations are masked out first."""
    masked = _PSEUDO_NEGATION_RE.sub(lambda m: " " * len(m.group(0)), clause)
    candidates = sorted(
        ((m.start(), -(m.end() - m.start()), index) for regex, index in _CUE_PATTERNS for m in regex.finditer(masked)),
    )
    cues: list[_Cue] = []
    last_end = -1
    for start, negative_length, index in candidates:
        end = start - negative_length
        if start < last_end:
            continue
        _, kind, direction = _CUES[index]
        cues.append(_Cue(start, end, kind, direction, masked[start:end].lower()))
        last_end = end
    return cues


def _positions(segment: str) -> tuple[str, ...]:
    words: list[str] = []
    for match in _POSITION_RE.finditer(segment):
        for group_index, (_, canonical) in enumerate(_POSITION_PATTERNS, start=1):
            if match.group(group_index):
                for word in canonical:
                    if word not in words:
                        words.append(word)
                break
    return tuple(words)


def _decide(start: int, end: int, cues: list[_Cue]) -> tuple[int, str | None]:
    before = [c for c in cues if c.end <= start and c.direction in ("pre", "both")]
    if before:
        cue = max(before, key=lambda c: c.end)
        return (ABSENT if cue.kind == "neg" else UNCERTAIN), cue.text
    after = [c for c in cues if c.start >= end and c.direction in ("post", "both")]
    if after:
        cue = min(after, key=lambda c: c.start)
        return (ABSENT if cue.kind == "neg" else UNCERTAIN), cue.text
    return PRESENT, None


def extract_triplets(text: str) -> list[Triplet]:
    """All entity mentions of ``text`` (any number of sentences) as triplets, in text order."""
    triplets: list[Triplet] = []
    for sentence in split_sentences(text):
        for clause in split_clauses(sentence):
            mentions = [(m.lastgroup, m.start(), m.end()) for m in _ENTITY_RE.finditer(clause)]
            if not mentions:
                continue
            cues = _find_cues(clause)
            for i, (entity, start, end) in enumerate(mentions):
                previous_end = mentions[i - 1][2] if i else 0
                next_start = mentions[i + 1][1] if i + 1 < len(mentions) else len(clause)
                next_start = min([next_start] + [c.start for c in cues if c.start >= end])
                position = _positions(clause[previous_end:start]) or _positions(clause[end:next_start])
                existence, cue = _decide(start, end, cues)
                triplets.append(Triplet(entity, position, existence, cue, sentence))
    return triplets


def labeling_text(sections: ReportSections) -> str | None:
    """The text the rules read: findings + impression, else the last paragraph, else None."""
    pieces = [p for p in (sections.findings, sections.impression) if p]
    if not pieces and sections.last_paragraph:
        pieces = [sections.last_paragraph]
    return " ".join(pieces) if pieces else None


def study_labels(triplets: Iterable[Triplet], entities: Iterable[str] = ENTITIES) -> dict[str, int | None]:
    """Aggregate mentions per entity: 1 if any 1, else -1 if any -1, else 0 if any 0, else None (not mentioned)."""
    found: dict[str, set[int]] = {}
    for triplet in triplets:
        found.setdefault(triplet.entity, set()).add(triplet.existence)
    out: dict[str, int | None] = {}
    for entity in entities:
        values = found.get(entity, set())
        out[entity] = (
            PRESENT if PRESENT in values else UNCERTAIN if UNCERTAIN in values else ABSENT if ABSENT in values else None
        )
    return out


def report_labels(report_text: str) -> tuple[dict[str, int | None], list[Triplet]]:
    """Parse a whole report and return (study labels, triplets) of its findings + impression (or last paragraph)."""
    text = labeling_text(parse_sections(report_text))
    triplets = extract_triplets(text) if text else []
    return study_labels(triplets), triplets


def chexpert_value(value) -> int | None:
    """A CheXpert/NegBio CSV cell -> 1 (1.0), 0 (0.0), -1 (-1.0, uncertain) or None (blank: not mentioned).

    Accepts floats (NaN = blank), strings ("", "1.0", "-1"), None. Any other value raises ValueError.
    """
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped or stripped.lower() == "nan":
            return None
        value = stripped
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a CheXpert label value: {value!r}") from None
    if math.isnan(number):
        return None
    if number in (1.0, 0.0, -1.0):
        return int(number)
    raise ValueError(f"not a CheXpert label value: {value!r} (expected 1.0, 0.0, -1.0 or blank)")
