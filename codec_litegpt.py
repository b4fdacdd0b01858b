"""The text side of LiteGPT's tasks: label lists, the 0-100 box grid, answer formatters and parsers, task prompts.

Shipped as remote code next to the weights, with `processing_litegpt.py`, which re-exports every public name here.
Imports only the standard library and its sibling `configuration_litegpt.py`.

* Label lists (VinDr-CXR local 22 and global 6, CheXpert 14, Kaggle VinBigData 14, the MIMIC existence entities) and
  `canonical_label`: a whole-name match after normalisation and a short alias table, never a substring match.
* The box grid: a pixel coordinate `v` of an image side `S` becomes `clamp(floor(100 v / S + 0.5), 0, 100)`,
  written `{<x1><y1><x2><y2>}`; `S` is the DICOM `Columns` (x) or `Rows` (y), whatever size the image is stored at.
* Targets of the two VinDr stages: `Local diseases of this chest radiograph are <p>label</p> {<x1><y1><x2><y2>},...`
  (one phrase per box, canonical label order, then grid box) and `Global diseases of this chest radiograph are A, B.`;
  `No finding` for a normal image, `None` for an abnormal one with nothing to list.
* Parsers of generated answers that never guess: every fragment that is not a known label, a valid box or a
  separator is a counted failure.
* Task prompts (`[identify]` grounding, `[vqa]` diagnosis, `[caption]` report, `[vqa]` existence) as TRL
  prompt-completion messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

try:
    from .configuration_litegpt import DEFAULT_TASK_TOKENS
except ImportError:  # imported as a plain module (tests, repository scripts)
    from configuration_litegpt import DEFAULT_TASK_TOKENS


# ======================================================================================= labels

# fmt: off
# VinDr-CXR local labels (22), exact spelling, CSV column order = canonical index.
VINDR_LOCAL_LABELS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
)
# VinDr-CXR global labels (6), CSV order.
VINDR_GLOBAL_LABELS = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
NO_FINDING = "No finding"
# CheXpert / NegBio labels of MIMIC-CXR (14), CSV order.
CHEXPERT_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
# Kaggle VinBigData's 14 classes in class-id order (0-13; 14 is "No finding"). Map by name, never by id: the 8
# VinDr local labels it lacks are `KAGGLE14_MISSING`.
KAGGLE14_LABELS = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis",
)
# MIMIC-CXR entities of the existence task (MedKLIP's six), in report-labelling order; `Opacity` is CheXpert's
# `Lung Opacity`, `Effusion` its `Pleural Effusion`.
MIMIC_ENTITIES = ("Opacity", "Pneumothorax", "Cardiomegaly", "Effusion", "Consolidation", "Atelectasis")
# fmt: on
KAGGLE14_MISSING = tuple(label for label in VINDR_LOCAL_LABELS if label not in KAGGLE14_LABELS)
# Every VinDr label, local first: the default vocabulary of `canonical_label`.
VINDR_LABELS = VINDR_LOCAL_LABELS + VINDR_GLOBAL_LABELS

# Spelling variants that normalisation (casefold, whitespace collapse, spaces around "/") does not already
# reconcile, keyed by their normalised form. Case-only variants (`Lung Tumor`, `No Finding`,
# `Pulmonary Fibrosis`, `Lung opacity`) need no entry. Keep this table explicit: anything absent raises.
LABEL_ALIASES = {
    "other disease": "Other diseases",  # the two VinDr files disagree; the released LiteGPT code and we use the plural
    "nodule / mass": "Nodule/Mass",  # already reconciled by normalisation; listed for the record
    "no findings": "No finding",  # the stage-1 instruction itself says "shows no findings"
}


def normalize_label_name(name: str) -> str:
    """Normal form used to compare label spellings: casefold, collapse whitespace, no spaces around `/`."""
    text = " ".join(str(name).split()).casefold()
    return re.sub(r"\s*/\s*", "/", text)


@lru_cache(maxsize=64)
def _label_lookup(labels: tuple[str, ...]) -> dict[str, str]:
    """Normalised spelling -> canonical label, for one label vocabulary (aliases included when their target is in it)."""
    lookup = {normalize_label_name(label): label for label in labels}
    for alias, target in LABEL_ALIASES.items():
        if target in labels:
            lookup.setdefault(normalize_label_name(alias), target)
    return lookup


def canonical_label(name: str, labels: Sequence[str] = VINDR_LABELS) -> str:
    """Map a label spelling to its canonical form in `labels`.

    The whole name must match a label or an alias after `normalize_label_name`; there is no substring
    matching (the released LiteGPT code's defect: "mild" contains "ild"). Raises `ValueError` naming the unknown label.
    """
    key = normalize_label_name(name)
    canonical = _label_lookup(tuple(labels)).get(key)
    if canonical is None:
        raise ValueError(f"unknown label {name!r} (normalised {key!r}); expected one of {list(labels)}")
    return canonical


def label_index(name: str, labels: Sequence[str] = VINDR_LABELS) -> int:
    """Canonical index of a label (its CSV column order), the sort key of every target list."""
    return tuple(labels).index(canonical_label(name, labels))


# ======================================================================================= box grid codec

GRID_MAX = 100
LOCAL_PREFIX = "Local diseases of this chest radiograph are"
GLOBAL_PREFIX = "Global diseases of this chest radiograph are"
NONE_ANSWER = "None"

Box = tuple[float, float, float, float]
GridBox = tuple[int, int, int, int]


def _check_size(size: float) -> float:
    size = float(size)
    if not size > 0 or not math.isfinite(size):
        raise ValueError(f"image size must be a positive number, got {size!r}")
    return size


def to_grid(value: float, size: float) -> int:
    """Pixel coordinate -> integer 0..100: `clamp(floor(100 v / size + 0.5), 0, 100)` (half up: np.rint would round half to even)."""
    size = _check_size(size)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"box coordinate must be finite, got {value!r}")
    return min(max(math.floor(GRID_MAX * value / size + 0.5), 0), GRID_MAX)


def from_grid(grid: float, size: float) -> float:
    """Grid integer -> pixel coordinate `g / 100 * size` (at most half a grid step from the original)."""
    return float(grid) / GRID_MAX * _check_size(size)


def box_to_grid(box: Sequence[float], width: float, height: float) -> GridBox:
    """Pixel `(x1, y1, x2, y2)` -> grid box; x on `width` (DICOM Columns), y on `height` (Rows)."""
    x1, y1, x2, y2 = box
    return (to_grid(x1, width), to_grid(y1, height), to_grid(x2, width), to_grid(y2, height))


def grid_to_box(grid_box: Sequence[float], width: float, height: float) -> Box:
    """Grid box -> pixel `(x1, y1, x2, y2)` floats."""
    x1, y1, x2, y2 = grid_box
    return (from_grid(x1, width), from_grid(y1, height), from_grid(x2, width), from_grid(y2, height))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Continuous IoU of two `(x1, y1, x2, y2)` boxes in the same space (pixels or normalised); 0 when they do not
    overlap or the union is empty. The released code's grid IoU with its +1 pixel convention is another measure."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def format_grounding_phrase(label: str, grid_box: Sequence[int]) -> str:
    """`<p>{label}</p> {<x1><y1><x2><y2>}` (the MiniGPT-v2 grounding phrase)."""
    x1, y1, x2, y2 = (int(v) for v in grid_box)
    return f"<p>{label}</p> {{<{x1}><{y1}><{x2}><{y2}>}}"


def format_grounding_answer(
    findings: Iterable[tuple[str, Sequence[float]]],
    width: float,
    height: float,
    no_finding: bool = False,
    labels: Sequence[str] = VINDR_LOCAL_LABELS,
) -> str:
    """Stage-1 target: one phrase per box, sorted by canonical label index then grid box.

    `findings` are `(label, (x1, y1, x2, y2))` in original pixels. Normal images give
    `"Local diseases of this chest radiograph are No finding."`; abnormal images with nothing to list give
    `"... are None."`. Labels are canonicalised (unknown names raise).
    """
    grid_findings = [(canonical_label(label, labels), box_to_grid(box, width, height)) for label, box in findings]
    if no_finding and grid_findings:
        raise ValueError(f"an image marked 'No finding' cannot list boxes: {grid_findings}")
    order = {label: index for index, label in enumerate(labels)}
    grid_findings.sort(key=lambda item: (order[item[0]], item[1]))
    phrases = [format_grounding_phrase(label, grid_box) for label, grid_box in grid_findings]
    return grounding_answer_text(phrases, no_finding=no_finding)


def grounding_answer_text(phrases: Sequence[str], no_finding: bool = False) -> str:
    """A stage-1 answer around phrases already formatted (`format_grounding_phrase`), in the given order: joined by
    `,`, after the prefix; `No finding` for a normal image, `None` when there is nothing to list."""
    body = NO_FINDING if no_finding else (",".join(phrases) if phrases else NONE_ANSWER)
    return f"{LOCAL_PREFIX} {body}."


def format_diagnosis_answer(labels: Iterable[str], vocabulary: Sequence[str] = VINDR_GLOBAL_LABELS) -> str:
    """Stage-2 target: canonical global labels in canonical order joined by `", "` (`None` when empty).

    `"No finding"` must stand alone.
    """
    canonical = {canonical_label(label, vocabulary) for label in labels}
    if NO_FINDING in canonical and len(canonical) > 1:
        raise ValueError(f"'No finding' cannot be combined with other labels: {sorted(canonical)}")
    ordered = [label for label in vocabulary if label in canonical]
    body = ", ".join(ordered) if ordered else NONE_ANSWER
    return f"{GLOBAL_PREFIX} {body}."


# ----------------------------------------------------------------------------------------- parsing

_NUM = r"<\s*(\d{1,3})\s*>"
_BOX_RE = re.compile(r"\s*".join([_NUM] * 4))
_BOX_NC = r"\s*".join([r"<\s*\d{1,3}\s*>"] * 4)
# A tolerant phrase regex (spaces allowed around every part), extended to MiniGPT-v2's `{<..><..><..><..><delim><..>...}` multi-box form.
_PHRASE_RE = re.compile(
    r"<p>\s*([^<]*?)\s*</p>\s*\{\s*(" + _BOX_NC + r"(?:\s*<delim>\s*" + _BOX_NC + r")*)\s*\}",
    re.IGNORECASE,
)
_PREFIX_RE = re.compile(
    r"^\s*(?:local\s+|global\s+)?diseases?\s+of\s+(?:this|the)\s+chest\s+radiograph\s+(?:are|is)\b\s*:?",
    re.IGNORECASE,
)
_SEPARATOR_RE = re.compile(r"[,;]|\band\b", re.IGNORECASE)
_STRIP_CHARS = " \t\r\n.:"


@dataclass
class GroundingFinding:
    """One parsed box: canonical `label`, `grid_box` (0-100 ints), `box` (pixels, float xyxy), `span` in the text."""

    label: str
    grid_box: GridBox
    box: Box
    span: tuple[int, int]
    raw_label: str = ""


@dataclass
class AnswerParse:
    """What every parse of a generated answer reports: the `text`, whether it says "No finding" or "None" (a valid
    empty list), a `contradiction`, and one message per fragment that could not be used (`failures`)."""

    text: str
    no_finding: bool = False
    none_listed: bool = False
    contradiction: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every fragment of the answer was understood."""
        return not self.failures


@dataclass
class GroundingParse(AnswerParse):
    """Result of `parse_grounding_answer`.

    `no_finding`: the answer says "No finding"; `none_listed`: it says "None" (a valid empty list);
    `contradiction`: "No finding" together with boxes; `failures`: one message per fragment that could not be
    used (unparseable text, unknown label, coordinate > 100, inverted box). Nothing is guessed.
    """

    findings: list[GroundingFinding] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """Distinct labels with at least one box, in first-seen order."""
        return list(dict.fromkeys(f.label for f in self.findings))


def _strip_prefix(text: str) -> tuple[str, int]:
    """Remove the `Local/Global diseases of this chest radiograph are` prefix; return the body and its offset."""
    match = _PREFIX_RE.match(text)
    return (text[match.end() :], match.end()) if match else (text, 0)


def _leftover_pieces(text: str, start: int, end: int) -> list[str]:
    """Non-empty pieces of an unmatched stretch, split on the list separators."""
    return [piece.strip(_STRIP_CHARS) for piece in _SEPARATOR_RE.split(text[start:end]) if piece.strip(_STRIP_CHARS)]


def _parse_phrase_boxes(
    match: re.Match, offset: int, width: float, height: float, labels: Sequence[str], result: GroundingParse
) -> None:
    raw_label = match.group(1)
    phrase = match.group(0)
    try:
        label = canonical_label(raw_label, labels)
    except ValueError:
        result.failures.append(f"unknown label {raw_label!r} in {phrase!r}")
        return
    for box_match in _BOX_RE.finditer(match.group(2)):
        grid_box = tuple(int(v) for v in box_match.groups())
        if any(v > GRID_MAX for v in grid_box):
            result.failures.append(f"coordinate > {GRID_MAX} in {phrase!r}")
            continue
        x1, y1, x2, y2 = grid_box
        if x2 < x1 or y2 < y1:
            result.failures.append(f"inverted box (x2 < x1 or y2 < y1) in {phrase!r}")
            continue
        result.findings.append(
            GroundingFinding(
                label=label,
                grid_box=grid_box,
                box=grid_to_box(grid_box, width, height),
                span=(offset + match.start(), offset + match.end()),
                raw_label=raw_label,
            )
        )


def parse_grounding_answer(
    text: str, width: float, height: float, labels: Sequence[str] = VINDR_LOCAL_LABELS
) -> GroundingParse:
    """Parse a stage-1 answer into boxes in grid and pixel space.

    Phrases are found with the tolerant regex `<p> label </p> {<x1><y1><x2><y2>}` (also the `<delim>` multi-box
    form); the text between phrases may only hold separators, the prefix, "No finding" or "None". Everything
    else is a counted failure: unparseable/truncated fragments, unknown labels (whole-label match only),
    coordinates > 100, inverted boxes. `width`/`height` are the original image size (DICOM Columns/Rows).
    """
    result = GroundingParse(text=text)
    body, offset = _strip_prefix(text)
    cursor = 0
    leftovers: list[str] = []
    for match in _PHRASE_RE.finditer(body):
        leftovers += _leftover_pieces(body, cursor, match.start())
        _parse_phrase_boxes(match, offset, width, height, labels, result)
        cursor = match.end()
    leftovers += _leftover_pieces(body, cursor, len(body))

    for piece in leftovers:
        if normalize_label_name(piece) in ("none", "none listed"):
            result.none_listed = True
            continue
        try:
            if canonical_label(piece, (NO_FINDING,)) == NO_FINDING:
                result.no_finding = True
                continue
        except ValueError:
            pass
        result.failures.append(f"unparseable fragment {piece!r}")

    if not body.strip(_STRIP_CHARS):
        result.failures.append("empty answer")
    result.contradiction = result.no_finding and bool(result.findings)
    return result


# Negation cues of diagnosis answers; "negative for" is tried before the single words.
_NEGATION_CUE_RE = re.compile(r"^(?:negative\s+for|without|absent|not|no)\b\s*", re.IGNORECASE)
_TRAILING_ABSENT_RE = re.compile(r"\s+(?:(?:is|are)\s+)?absent$", re.IGNORECASE)
_CLAUSE_SPLIT_RE = re.compile(r"[,;.]")
_CONJUNCTION_SPLIT_RE = re.compile(r"\s+(?:and|or|nor)\s+|^\s*(?:and|or|nor)\s+", re.IGNORECASE)


@dataclass
class DiagnosisParse(AnswerParse):
    """Result of `parse_diagnosis_answer`.

    `positive`/`negative`: canonical labels in canonical order; `no_finding`: "No finding" asserted;
    `contradiction`: "No finding" plus other positive labels, or a label both asserted and negated (such labels
    are dropped from both lists and reported in `failures`); `failures`: unknown fragments.
    """

    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)


def _match_label_or_none(piece: str, labels: Sequence[str]) -> str | None:
    try:
        return canonical_label(piece, labels)
    except ValueError:
        return None


def parse_diagnosis_answer(text: str, labels: Sequence[str] = VINDR_GLOBAL_LABELS) -> DiagnosisParse:
    """Parse a stage-2 answer.

    The prefix is stripped, the rest split into clauses on `,`/`;`/`.` and within a clause on `and`/`or`; each
    piece must be a whole label (after normalisation/aliases). A negation cue (`no`, `not`, `without`, `absent`,
    `negative for`) at the start of a piece makes that label and the following labels of the same clause
    negative ("no Pneumonia or Tuberculosis"); a trailing "absent" negates its own piece. "No finding" is a
    label, not a negation. Unknown pieces are failures, never guessed.
    """
    result = DiagnosisParse(text=text)
    body, _ = _strip_prefix(text)
    if not body.strip(_STRIP_CHARS):
        result.failures.append("empty answer")
        return result

    positive: set[str] = set()
    negative: set[str] = set()
    for clause in _CLAUSE_SPLIT_RE.split(body):
        negated = False
        for raw_piece in _CONJUNCTION_SPLIT_RE.split(clause):
            piece = raw_piece.strip(_STRIP_CHARS)
            if not piece:
                continue
            if normalize_label_name(piece) == "none":
                result.none_listed = True
                continue
            label = _match_label_or_none(piece, labels)
            piece_negated = negated
            if label is None:
                cue = _NEGATION_CUE_RE.match(piece)
                if cue:
                    negated = piece_negated = True
                    piece = piece[cue.end() :]
                trailing = _TRAILING_ABSENT_RE.search(piece)
                if trailing:
                    piece_negated = True
                    piece = piece[: trailing.start()]
                label = _match_label_or_none(piece.strip(_STRIP_CHARS), labels)
            if label is None:
                result.failures.append(f"unknown fragment {raw_piece.strip()!r}")
            elif piece_negated:
                negative.add(label)
            else:
                positive.add(label)

    both = positive & negative
    for label in sorted(both):
        result.failures.append(f"label {label!r} both asserted and negated")
    positive -= both
    negative -= both
    result.positive = [label for label in labels if label in positive]
    result.negative = [label for label in labels if label in negative]
    result.no_finding = NO_FINDING in positive
    result.contradiction = bool(both) or (result.no_finding and len(positive) > 1)
    return result


def parse_yes_no(text: str) -> int | None:
    """Existence answers: 1 for a leading "yes", 0 for a leading "no", None otherwise (counted as a failure by callers)."""
    match = re.match(r"^\W*(yes|no)\b", text.strip(), re.IGNORECASE)
    if not match:
        return None
    return 1 if match.group(1).lower() == "yes" else 0


# ======================================================================================= prompts

GROUNDING_INSTRUCTION = (
    "Please describe the critical findings along with their localized bounding boxes in the radiological image of a "
    "chest as much detail as possible. If there are no findings, state that the chest radiograph shows no findings."
)
DIAGNOSIS_INSTRUCTION = (
    "Given the provided chest X-ray image, which of the following diagnoses are present (select all that apply): "
    "COPD, Lung Tumor, Pneumonia, Tuberculosis, Other Disease, or No Finding?"
)
REPORT_INSTRUCTION = "Please write the findings section of the radiology report for this chest X-ray."
EXISTENCE_INSTRUCTION = "Is there {entity} in this chest X-ray? Answer yes or no."

TASK_INSTRUCTIONS = {
    "grounding": GROUNDING_INSTRUCTION,
    "diagnosis": DIAGNOSIS_INSTRUCTION,
    "report": REPORT_INSTRUCTION,
    "existence": EXISTENCE_INSTRUCTION,
}


def task_instruction(
    task: str,
    instruction: str | None = None,
    entity: str | None = None,
    task_tokens: dict[str, str] | None = None,
) -> str:
    """The user text of a task: `"{task_token} {instruction}"`, e.g. `"[identify] Please describe ..."`.

    `instruction` overrides the task's sentence (`TASK_INSTRUCTIONS`); `{entity}` in it is filled from `entity` (required for
    `existence`).
    """
    tokens = dict(DEFAULT_TASK_TOKENS) if task_tokens is None else dict(task_tokens)
    if task not in TASK_INSTRUCTIONS or task not in tokens:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_INSTRUCTIONS)}")
    text = TASK_INSTRUCTIONS[task] if instruction is None else instruction
    if "{entity}" in text:
        if not entity:
            raise ValueError(f"task {task!r} needs an `entity` (its instruction is {text!r})")
        text = text.replace("{entity}", entity)
    token = tokens[task]
    return f"{token} {text}" if token else text


def prompt_messages(
    task: str,
    instruction: str | None = None,
    entity: str | None = None,
    task_tokens: dict[str, str] | None = None,
    system: str | None = None,
    image_block: bool = True,
) -> list[dict[str, Any]]:
    """TRL `prompt` column: `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}]`.

    With `image_block=False` the content is the plain string and TRL's `prepare_multimodal_messages` inserts the
    image block itself. An optional `system` message is prepended.
    """
    text = task_instruction(task, instruction=instruction, entity=entity, task_tokens=task_tokens)
    content: Any = [{"type": "image"}, {"type": "text", "text": text}] if image_block else text
    messages = [{"role": "user", "content": content}]
    if system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}] if image_block else system})
    return messages


def completion_messages(answer: str) -> list[dict[str, Any]]:
    """TRL `completion` column: `[{"role": "assistant", "content": [{"type": "text", "text": answer}]}]`."""
    return [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def messages_text(messages: Any) -> str:
    """The text of TRL messages (content as a string or a list of blocks), blocks joined by a space; `""` for None."""
    if messages is None:
        return ""
    if isinstance(messages, str):
        return messages
    parts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(block.get("text") or "" for block in content if isinstance(block, dict))
    return " ".join(p for p in parts if p)


__all__ = [
    "CHEXPERT_LABELS",
    "DIAGNOSIS_INSTRUCTION",
    "EXISTENCE_INSTRUCTION",
    "GLOBAL_PREFIX",
    "GRID_MAX",
    "GROUNDING_INSTRUCTION",
    "KAGGLE14_LABELS",
    "KAGGLE14_MISSING",
    "LABEL_ALIASES",
    "LOCAL_PREFIX",
    "MIMIC_ENTITIES",
    "NONE_ANSWER",
    "NO_FINDING",
    "REPORT_INSTRUCTION",
    "TASK_INSTRUCTIONS",
    "VINDR_GLOBAL_LABELS",
    "VINDR_LABELS",
    "VINDR_LOCAL_LABELS",
    "AnswerParse",
    "DiagnosisParse",
    "GroundingFinding",
    "GroundingParse",
    "box_iou",
    "box_to_grid",
    "canonical_label",
    "completion_messages",
    "format_diagnosis_answer",
    "format_grounding_answer",
    "format_grounding_phrase",
    "from_grid",
    "grid_to_box",
    "grounding_answer_text",
    "label_index",
    "messages_text",
    "normalize_label_name",
    "parse_diagnosis_answer",
    "parse_grounding_answer",
    "parse_yes_no",
    "prompt_messages",
    "task_instruction",
    "to_grid",
]
