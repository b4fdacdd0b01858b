"""The MIMIC-CXR part of the sample: studies with 1-2 views, reports with their section variants and hedged
findings, the CheXpert and NegBio CSVs that follow the report sentences, metadata and split CSVs, DICOMs and JPGs."""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from codec_litegpt import CHEXPERT_LABELS

from .common import MIMIC_DICOM_DIR, MIMIC_JPG_DIR, _force, _image_size, _write_csv_gz
from .dicom import _to_stored, _write_dicom
from .pixels import _render_mimic

MIMIC_METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)


_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


_POS = {
    "Atelectasis": ["Mild {side} basilar atelectasis.", "Linear atelectasis at the {side} lung base."],
    "Cardiomegaly": ["Moderate cardiomegaly.", "Mild cardiomegaly is again noted."],
    "Consolidation": ["Focal consolidation in the {side} lower lobe.", "Dense consolidation at the {side} base."],
    "Edema": ["Mild pulmonary edema.", "Moderate interstitial pulmonary edema with perihilar haziness."],
    "Enlarged Cardiomediastinum": ["The cardiomediastinal silhouette is widened."],
    "Fracture": ["Displaced fracture of the {side} seventh rib."],
    "Lung Lesion": ["A 12 mm nodule projects over the {side} upper lobe.", "A {side} mid lung nodule is seen."],
    "Lung Opacity": ["Patchy opacity in the {side} lower lobe.", "Increased opacity at the {side} lung base."],
    "Pleural Effusion": ["Small {side} pleural effusion.", "There is a moderate {side} pleural effusion."],
    "Pleural Other": ["{Side} apical pleural thickening."],
    "Pneumonia": ["Findings are compatible with {side} lower lobe pneumonia."],
    "Pneumothorax": ["Small {side} apical pneumothorax.", "There is a tiny {side} apical pneumothorax."],
    "Support Devices": [
        "Endotracheal tube terminates 4 cm above the carina.",
        "Right internal jugular central venous catheter terminates in the mid SVC.",
        "Left chest wall pacemaker leads terminate in the right atrium and right ventricle.",
    ],
}


_IMPRESSION_POS = {
    "Atelectasis": "{Side} basilar atelectasis.",
    "Cardiomegaly": "Cardiomegaly.",
    "Consolidation": "{Side} lower lobe consolidation.",
    "Edema": "Pulmonary edema.",
    "Enlarged Cardiomediastinum": "Widened cardiomediastinal silhouette.",
    "Fracture": "{Side} rib fracture.",
    "Lung Lesion": "{Side} pulmonary nodule, CT recommended.",
    "Lung Opacity": "{Side} basilar opacity.",
    "Pleural Effusion": "{Side} pleural effusion.",
    "Pleural Other": "{Side} pleural thickening.",
    "Pneumonia": "{Side} lower lobe pneumonia.",
    "Pneumothorax": "{Side} apical pneumothorax.",
    "Support Devices": None,  # devices are described in FINDINGS only
}


_UNC = {
    "Atelectasis": "Possible {side} basilar atelectasis.",
    "Cardiomegaly": "Borderline cardiomegaly.",
    "Consolidation": "Consolidation at the {side} base cannot be excluded.",
    "Edema": "Possible mild interstitial edema.",
    "Enlarged Cardiomediastinum": "Mediastinal contours are possibly widened.",
    "Fracture": "Possible nondisplaced {side} rib fracture.",
    "Lung Lesion": "Questionable small nodule in the {side} mid lung.",
    "Lung Opacity": "Hazy opacity at the {side} base may reflect overlying soft tissue.",
    "Pleural Effusion": "Possible small {side} effusion.",
    "Pleural Other": "Possible {side} apical pleural thickening.",
    "Pneumonia": "Pneumonia cannot be excluded.",
    "Pneumothorax": "Possible tiny {side} apical pneumothorax.",
}


_NEG = {
    "Atelectasis": ["No atelectasis."],
    "Cardiomegaly": ["Heart size is normal.", "No cardiomegaly."],
    "Consolidation": ["No focal consolidation.", "There is no focal consolidation."],
    "Edema": ["No pulmonary edema.", "There is no pulmonary edema."],
    "Enlarged Cardiomediastinum": ["The cardiomediastinal silhouette is normal.", "Mediastinal contours are normal."],
    "Fracture": ["No acute displaced rib fracture."],
    "Lung Lesion": ["No suspicious pulmonary nodule."],
    "Lung Opacity": ["No focal opacity."],
    "Pleural Effusion": ["There is no pleural effusion.", "No pleural effusion."],
    "Pneumonia": ["No evidence of pneumonia."],
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
}


_NEGBIO_BLIND = {"Heart size is normal."}  # NegBio finds no cardiomegaly term in it


_NEUTRAL_LUNG = ["The lungs are clear.", "Lungs are well expanded and clear."]


_NEUTRAL_BONE = ["The osseous structures are unremarkable.", "No acute osseous abnormality is seen."]


_NORMAL_IMPRESSION = ["No acute cardiopulmonary process.", "No acute intrathoracic process."]


_INDICATIONS = [
    "___ with cough and fever, evaluate for pneumonia.",
    "___ with shortness of breath.",
    "___ with chest pain.",
    "___-year-old woman with hypoxia, assess for interval change.",
    "___M s/p line placement, assess position.",
]


_MIMIC_POS_WEIGHTS = {
    "Pleural Effusion": 0.2,
    "Lung Opacity": 0.15,
    "Atelectasis": 0.14,
    "Cardiomegaly": 0.12,
    "Edema": 0.1,
    "Support Devices": 0.12,
    "Consolidation": 0.06,
    "Pneumonia": 0.05,
    "Pneumothorax": 0.05,
    "Lung Lesion": 0.04,
    "Enlarged Cardiomediastinum": 0.03,
    "Fracture": 0.02,
    "Pleural Other": 0.02,
}


_LUNG_ORDER = (
    "Lung Opacity",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Edema",
    "Lung Lesion",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
)


_HEART_ORDER = ("Cardiomegaly", "Enlarged Cardiomediastinum")


def _sentence(text, chex: dict, negbio: dict | None = None):
    return {"text": text, "chexpert": chex, "negbio": chex if negbio is None else negbio}


def _plan_report(rng, normal: bool, canonical: str | None = None):
    """canonical: "normal" forces "No pneumothorax." / "There is no pleural effusion." / "Heart size is normal.";
    "uncertain_effusion" forces "Possible small left effusion." (so small sets always contain these forms)."""
    names = list(_MIMIC_POS_WEIGHTS)
    w = np.array([_MIMIC_POS_WEIGHTS[k] for k in names])
    pos, unc = set(), set()
    if not normal:
        k = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        pos = {str(x) for x in rng.choice(names, size=k, replace=False, p=w / w.sum())}
        if rng.random() < 0.35:
            rest = [n for n in _UNC if n not in pos]
            unc = {str(rng.choice(rest))}
    if normal and rng.random() < 0.2:  # a normal study with a line in place
        pos = {"Support Devices"}
    sides = {lab: str(rng.choice(["left", "right"])) for lab in CHEXPERT_LABELS}
    fixed = {}
    if canonical == "uncertain_effusion":
        pos.discard("Pleural Effusion")
        pos = pos or {"Atelectasis"}
        unc = {"Pleural Effusion"}
        sides["Pleural Effusion"] = "left"
    negs = [
        lab
        for lab in _NEG
        if lab not in pos
        and lab not in unc
        and rng.random()
        < (0.75 if lab in ("Pneumothorax", "Pleural Effusion", "Consolidation", "Cardiomegaly") else 0.2)
    ]
    if canonical == "normal":
        fixed = {
            "Pneumothorax": "No pneumothorax.",
            "Pleural Effusion": "There is no pleural effusion.",
            "Cardiomegaly": "Heart size is normal.",
        }
        negs = sorted(set(negs) | set(fixed), key=list(_NEG).index)
    if "Cardiomegaly" in pos or "Cardiomegaly" in unc:  # keep the mediastinum sentence coherent with a big heart
        negs = [n for n in negs if n != "Enlarged Cardiomediastinum"]

    def fill(t, lab):
        side = sides[lab]
        return t.format(side=side, Side=side.capitalize())

    findings = {"devices": [], "lungs": [], "heart": [], "bones": []}
    for lab in sorted(pos):
        group = (
            "devices"
            if lab == "Support Devices"
            else "heart"
            if lab in _HEART_ORDER
            else "bones"
            if lab == "Fracture"
            else "lungs"
        )
        findings[group].append(_sentence(fill(str(rng.choice(_POS[lab])), lab), {lab: 1}))
    for lab in sorted(unc):
        group = "heart" if lab in _HEART_ORDER else "bones" if lab == "Fracture" else "lungs"
        findings[group].append(_sentence(fill(_UNC[lab], lab), {lab: -1}))
    neg_lung = [n for n in negs if n in _LUNG_ORDER]
    if {"Pleural Effusion", "Pneumothorax"} <= set(neg_lung) and rng.random() < 0.5 and not fixed:
        neg_lung = [n for n in neg_lung if n not in ("Pleural Effusion", "Pneumothorax")]
        findings["lungs"].append(
            _sentence("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0})
        )
    for lab in neg_lung:
        findings["lungs"].append(_sentence(fixed.get(lab) or str(rng.choice(_NEG[lab])), {lab: 0}))
    for lab in negs:
        if lab in _HEART_ORDER or lab == "Fracture":
            t = fixed.get(lab) or str(rng.choice(_NEG[lab]))
            findings["heart" if lab in _HEART_ORDER else "bones"].append(
                _sentence(t, {lab: 0}, {} if t in _NEGBIO_BLIND else None)
            )
    if not any(lab in _LUNG_ORDER for lab in pos | unc):
        findings["lungs"].insert(0, _sentence(str(rng.choice(_NEUTRAL_LUNG)), {}))
    if rng.random() < 0.4:
        findings["bones"].append(_sentence(str(rng.choice(_NEUTRAL_BONE)), {}))
    findings_sents = findings["devices"] + findings["lungs"] + findings["heart"] + findings["bones"]

    impression = []
    for lab in sorted(pos):
        if _IMPRESSION_POS[lab]:
            impression.append(_sentence(fill(_IMPRESSION_POS[lab], lab), {lab: 1}))
    for lab in sorted(unc):
        impression.append(_sentence(fill(_UNC[lab], lab), {lab: -1}))
    if not impression:
        impression.append(_sentence(str(rng.choice(_NORMAL_IMPRESSION)), {}))
    return {"positives": sorted(pos), "uncertain": sorted(unc), "findings": findings_sents, "impression": impression}


def _wrap(sents) -> str:
    return textwrap.fill("  ".join(s["text"] for s in sents), width=78, initial_indent=" ", subsequent_indent=" ")


def _procedure(views) -> str:
    if "AP" in views:
        return "CHEST (PORTABLE AP)"
    return "CHEST (SINGLE VIEW)" if views == ("PA",) else "CHEST (PA AND LAT)"


def _report_text(rng, plan, variant, views, wet_read):
    """Returns (text, {'findings': str|None, 'impression': str|None, 'last_paragraph': str|None}, sentences used)."""
    exam = _procedure(views)
    find, imp = plan["findings"], plan["impression"]
    lines = []
    if wet_read:
        lines.append(f"WET READ: ___ ___ ___ {int(rng.integers(1, 12))}:{int(rng.integers(10, 60))} PM")
        lines.append("  " + " ".join(s["text"] for s in imp))
        lines.append("_" * 78)
        lines.append("")
    lines.append(" " * 33 + "FINAL REPORT")
    sections = {"findings": None, "impression": None, "last_paragraph": None}
    if variant == "no_sections":
        used = find
        lines += [
            f" {exam} PERFORMED ON ___",
            " ",
            " COMPARISON:  None.",
            " ",
            f" CLINICAL HISTORY:  {rng.choice(_INDICATIONS)}",
            " ",
            _wrap(used),
            "",
        ]
        sections["last_paragraph"] = "  ".join(s["text"] for s in used)
        return "\n".join(lines), sections, used
    lines += [f" EXAMINATION:  {exam}", " ", f" INDICATION:  {rng.choice(_INDICATIONS)}", " "]
    if rng.random() < 0.6:
        technique = "portable AP" if "AP" in views else "PA" if views == ("PA",) else "PA and lateral"
        lines += [f" TECHNIQUE:  Chest {technique}", " "]
    lines += [f" COMPARISON:  {rng.choice(['___', 'None.', 'Chest radiograph from ___.'])}", " "]
    used = []
    if variant in ("full", "findings_only", "conclusion"):
        lines += [" FINDINGS: ", " ", _wrap(find), " "]
        sections["findings"] = "  ".join(s["text"] for s in find)
        used += find
    if variant == "impression_only":  # devices and negations move to the impression
        devices = [s for s in find if "Support Devices" in s["chexpert"]]
        negations = [s for s in find if s["chexpert"] and all(v == 0 for v in s["chexpert"].values())]
        imp = devices + imp + negations
    if variant != "findings_only":
        head = "CONCLUSION" if variant == "conclusion" else "IMPRESSION"
        lines += [f" {head}: ", " ", _wrap(imp)]
        sections["impression"] = "  ".join(s["text"] for s in imp)
        used += imp
    lines.append("")
    return "\n".join(lines), sections, used


def _aggregate_labels(sents, key):
    vals = {}
    for s in sents:
        for lab, v in s[key].items():
            vals.setdefault(lab, []).append(v)
    out = {}
    for lab in CHEXPERT_LABELS:
        vs = vals.get(lab, [])
        out[lab] = 1.0 if 1 in vs else -1.0 if -1 in vs else 0.0 if 0 in vs else None
    abnormal = [
        lab for lab in CHEXPERT_LABELS if lab not in ("No Finding", "Support Devices") and out[lab] in (1.0, -1.0)
    ]
    out["No Finding"] = None if abnormal else 1.0
    return out


def _fmt_label(v):
    return "" if v is None else repr(float(v))


_VIEW_SETS = [("PA", "LATERAL"), ("AP",), ("PA",), ("AP", "LATERAL"), ("PA", "LL"), ("AP", "AP"), ("LATERAL",)]


_VIEW_P = [0.45, 0.27, 0.1, 0.06, 0.04, 0.04, 0.04]


_VARIANTS = ["full", "impression_only", "findings_only", "conclusion"]


_VARIANT_P = [0.65, 0.2, 0.07, 0.08]


EDGE_CASES = ("impression_only", "findings_only", "conclusion_header", "no_sections", "wet_read", "two_frontal",
              "lateral_only", "multi_study_subject", "monochrome1")


@dataclass
class _MimicTables:
    """The rows of the MIMIC CSVs, filled study by study."""

    metadata: list = field(default_factory=list)
    split: list = field(default_factory=list)
    chexpert: list = field(default_factory=list)
    negbio: list = field(default_factory=list)
    records: list = field(default_factory=list)
    studies: list = field(default_factory=list)


def _study_folder(subject_id: int, study_id: int) -> str:
    """`files/pXX/p<subject_id>/s<study_id>`, `pXX` being the first three characters of the patient folder."""
    patient = f"p{subject_id}"
    return f"files/{patient[:3]}/{patient}/s{study_id}"


def _plan_studies(rng, n_studies):
    """Subjects (about 0.7 per study, so that some have several studies), their official split, and per study its
    views, report variant, wet read, normality and canonical case; rare cases are forced when the sample is large
    enough to hold them."""
    n_subj = max(1, round(n_studies * 0.7)) if n_studies else 0
    subjects = []
    while len(subjects) < n_subj:
        s = int(rng.integers(10_000_000, 20_000_000))
        if s not in subjects:
            subjects.append(s)
    splits = {s: str(rng.choice(["train", "validate", "test"], p=[0.8, 0.1, 0.1])) for s in subjects}
    if n_subj >= 3:
        sp = [{"split": splits[s]} for s in subjects]
        _force(rng, sp, "split", ["train", "validate", "test"])
        splits = {s: d["split"] for s, d in zip(subjects, sp)}
    studies = []
    for i in range(n_studies):
        subj = subjects[i] if i < n_subj else subjects[int(rng.integers(n_subj))]
        while True:
            st = int(rng.integers(50_000_000, 60_000_000))
            if all(st != d["study_id"] for d in studies):
                break
        vi = int(rng.choice(len(_VIEW_SETS), p=_VIEW_P))
        studies.append(
            {
                "subject_id": subj,
                "study_id": st,
                "views": _VIEW_SETS[vi],
                "variant": str(rng.choice(_VARIANTS, p=_VARIANT_P)),
                "wet_read": bool(rng.random() < 0.2),
                "normal": bool(rng.random() < 0.35),
            }
        )
    if n_studies >= 2:  # "no_sections" is never drawn at random: exactly one such report
        variants = ["full", "impression_only", "no_sections"] + (["conclusion"] if n_studies >= 6 else [])
        _force(rng, studies, "variant", variants)
    if n_studies >= 6:
        _force(rng, studies, "normal", [True, False])
    for s in studies:
        s["canonical"] = None
    for want, normal in (("normal", True), ("uncertain_effusion", False)):
        cands = sorted((s for s in studies if s["normal"] == normal), key=lambda s: s["variant"] == "no_sections")
        if cands:
            cands[0]["canonical"] = want
    if n_studies >= 8:
        _force(rng, studies, "views", [("PA", "LATERAL"), ("AP",), ("AP", "AP"), ("LATERAL",)])
    return subjects, splits, studies


def _write_study_images(out: Path, st, plan, srng, image_size, when, split, tables: _MimicTables, edge, bar):
    """One study's images: a DICOM (12 or 16 bits, MONOCHROME1 one time in ten, a window or none) and the JPG of the
    same pixels per view, with their metadata, split and record-list rows. Returns the manifest entries."""
    subj, sid = st["subject_id"], st["study_id"]
    date, time_ = when
    study_rel = _study_folder(subj, sid)
    procedure = _procedure(st["views"])
    imgs = []
    for view in st["views"]:
        dicom_id = "-".join(srng.bytes(4).hex() for _ in range(5))
        H, W = _image_size(srng, image_size)
        img = _render_mimic(srng, H, W, view, set(plan["positives"]))
        photometric = "MONOCHROME1" if srng.random() < 0.1 else "MONOCHROME2"
        bits = int(srng.choice([12, 16], p=[0.8, 0.2]))
        window = str(srng.choice(["single", "none"], p=[0.8, 0.2]))
        stored, lo, hi = _to_stored(srng, img, bits, photometric)
        dcm_rel = f"{MIMIC_DICOM_DIR}/{study_rel}/{dicom_id}.dcm"
        jpg_rel = f"{MIMIC_JPG_DIR}/{study_rel}/{dicom_id}.jpg"
        orient = "Erect" if view != "AP" else str(srng.choice(["Erect", "Recumbent", ""]))
        extra = {
            "PatientID": str(subj),
            "StudyID": str(sid),
            "StudyDate": str(date),
            "StudyTime": f"{time_:010.3f}",
            "ViewPosition": view,
            "PerformedProcedureStepDescription": procedure,
        }
        _write_dicom(out / dcm_rel, stored, uid_key=dicom_id, photometric=photometric, bits_stored=bits, window=window,
                     rescale=False, ts="ExplicitVRLittleEndian", lo=lo, hi=hi, rng=srng, extra=extra)  # fmt: skip
        (out / jpg_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img * 255.0).astype(np.uint8)).save(out / jpg_rel, format="JPEG", quality=95)
        if photometric == "MONOCHROME1":
            edge["monochrome1"].append(dicom_id)
        tables.metadata.append(
            [dicom_id, subj, sid, procedure, view, H, W, date, repr(time_), procedure, _VIEW_MEANING[view], orient]
        )
        tables.split.append([dicom_id, sid, subj, split])
        tables.records.append([subj, sid, dicom_id, f"{study_rel}/{dicom_id}.dcm"])
        imgs.append({"dicom_id": dicom_id, "view": view, "rows": H, "columns": W, "dicom": dcm_rel, "jpg": jpg_rel,
                     "photometric": photometric, "bits_stored": bits, "window": window})  # fmt: skip
        bar.update(1)
    return imgs


def _study_edge_cases(st, studies_of_subject: int) -> list[str]:
    """The edge cases (keys of `EDGE_CASES`) a study is an example of."""
    v = st["variant"]
    cases = (
        ("impression_only", v == "impression_only"),
        ("findings_only", v == "findings_only"),
        ("conclusion_header", v == "conclusion"),
        ("no_sections", v == "no_sections"),
        ("wet_read", st["wet_read"]),
        ("two_frontal", st["views"] == ("AP", "AP")),
        ("lateral_only", st["views"] in (("LATERAL",), ("LL",))),
        ("multi_study_subject", studies_of_subject > 1),
    )
    return [key for key, holds in cases if holds]


def _write_mimic_csvs(out: Path, tables: _MimicTables) -> dict[str, str]:
    """The metadata, split, CheXpert and NegBio CSVs (MIMIC-CXR-JPG) and the record and study lists (MIMIC-CXR), all
    gzipped; returns their paths."""
    files = {
        "metadata": f"{MIMIC_JPG_DIR}/mimic-cxr-2.0.0-metadata.csv.gz",
        "split": f"{MIMIC_JPG_DIR}/mimic-cxr-2.0.0-split.csv.gz",
        "chexpert": f"{MIMIC_JPG_DIR}/mimic-cxr-2.0.0-chexpert.csv.gz",
        "negbio": f"{MIMIC_JPG_DIR}/mimic-cxr-2.0.0-negbio.csv.gz",
        "record_list": f"{MIMIC_DICOM_DIR}/cxr-record-list.csv.gz",
        "study_list": f"{MIMIC_DICOM_DIR}/cxr-study-list.csv.gz",
    }
    _write_csv_gz(out / files["metadata"], MIMIC_METADATA_COLUMNS, tables.metadata)
    _write_csv_gz(out / files["split"], ["dicom_id", "study_id", "subject_id", "split"], tables.split)
    _write_csv_gz(out / files["chexpert"], ["subject_id", "study_id", *CHEXPERT_LABELS], tables.chexpert)
    _write_csv_gz(out / files["negbio"], ["subject_id", "study_id", *CHEXPERT_LABELS], tables.negbio)
    _write_csv_gz(out / files["record_list"], ["subject_id", "study_id", "dicom_id", "path"], tables.records)
    _write_csv_gz(out / files["study_list"], ["subject_id", "study_id", "path"], tables.studies)
    (out / MIMIC_JPG_DIR).mkdir(parents=True, exist_ok=True)
    (out / MIMIC_DICOM_DIR).mkdir(parents=True, exist_ok=True)
    return files


def _generate_mimic(out: Path, n_studies, seed, image_size, bar):
    """The MIMIC-CXR sample under `out`: returns its manifest part and the edge cases it holds."""
    _subjects, splits, studies = _plan_studies(np.random.default_rng([seed, 20]), n_studies)
    tables = _MimicTables()
    out_studies = {}
    edge = {key: [] for key in EDGE_CASES}
    subj_counts = Counter(s["subject_id"] for s in studies)
    order = sorted(range(n_studies), key=lambda i: (studies[i]["subject_id"], studies[i]["study_id"]))
    for i in order:
        st = studies[i]
        srng = np.random.default_rng([seed, 21, i])
        subj, sid = st["subject_id"], st["study_id"]
        plan = _plan_report(srng, st["normal"], st["canonical"])
        text, sections, used = _report_text(srng, plan, st["variant"], st["views"], st["wet_read"])
        chex = _aggregate_labels(used, "chexpert")
        negbio = _aggregate_labels(used, "negbio")
        study_rel = _study_folder(subj, sid)
        report_rel = f"{MIMIC_DICOM_DIR}/{study_rel}.txt"
        (out / report_rel).parent.mkdir(parents=True, exist_ok=True)
        (out / report_rel).write_text(text, encoding="utf-8")
        date = int(f"{int(srng.integers(2110, 2200))}{int(srng.integers(1, 13)):02d}{int(srng.integers(1, 29)):02d}")
        time_ = round(
            float(srng.integers(0, 24) * 10000 + srng.integers(0, 60) * 100 + srng.integers(0, 60))
            + float(srng.integers(0, 1000)) / 1000.0,
            3,
        )
        imgs = _write_study_images(out, st, plan, srng, image_size, (date, time_), splits[subj], tables, edge, bar)
        tables.studies.append([subj, sid, f"{study_rel}.txt"])
        tables.chexpert.append([subj, sid] + [_fmt_label(chex[lab]) for lab in CHEXPERT_LABELS])
        tables.negbio.append([subj, sid] + [_fmt_label(negbio[lab]) for lab in CHEXPERT_LABELS])
        for key in _study_edge_cases(st, subj_counts[subj]):
            edge[key].append(sid)
        out_studies[str(sid)] = {
            "subject_id": subj,
            "study_id": sid,
            "split": splits[subj],
            "report": report_rel,
            "report_variant": st["variant"],
            "wet_read": st["wet_read"],
            "sections": sections,
            "positives": plan["positives"],
            "uncertain": plan["uncertain"],
            "chexpert": {lab: chex[lab] for lab in CHEXPERT_LABELS},
            "negbio": {lab: negbio[lab] for lab in CHEXPERT_LABELS},
            "images": imgs,
        }
    files = _write_mimic_csvs(out, tables)
    counts = {
        "subjects": len({s["subject_id"] for s in studies}),
        "studies": n_studies,
        "images": len(tables.metadata),
        "splits_by_image": dict(sorted(Counter(r[3] for r in tables.split).items())),
        "views": dict(sorted(Counter(r[4] for r in tables.metadata).items())),
        "report_variants": dict(sorted(Counter(s["variant"] for s in studies).items())),
    }
    manifest = {"dicom_root": MIMIC_DICOM_DIR, "jpg_root": MIMIC_JPG_DIR, "files": files, "counts": counts,
                "studies": out_studies}  # fmt: skip
    return manifest, edge
