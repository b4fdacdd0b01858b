"""Tests of the synthetic VinDr-CXR / MIMIC-CXR generator (datasets_scripts/synthetic.py).

The checks re-derive everything from the written files (CSVs, DICOM headers, pixels, report text) with code of their
own, and compare with the manifest only where the manifest is what builders' tests will rely on.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from datasets_scripts import synthetic
from processing_litegpt import CHEXPERT_LABELS, NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

N_TRAIN, N_TEST, N_MIMIC = 60, 20, 20
VINDR = "vindr-cxr/1.0.0"
MIMIC = "mimic-cxr/2.0.0"
MIMIC_JPG = "mimic-cxr-jpg/2.1.0"
METADATA_COLUMNS = [
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
]
CHEXPERT = list(CHEXPERT_LABELS)  # the CSV order


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    manifest = synthetic.generate(out, n_train=N_TRAIN, n_test=N_TEST, mimic_studies=N_MIMIC, seed=0)
    return out, manifest


def _read(out, rel, **kw):
    return pd.read_csv(out / rel, **kw)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _display(ds):
    """The default DICOM conversion, written independently: modality LUT, first window or min-max, MONOCHROME1."""
    a = ds.pixel_array.astype(np.float64)
    a = a * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    if "WindowCenter" in ds:
        c, w = ds.WindowCenter, ds.WindowWidth
        c = float(c[0] if isinstance(c, pydicom.multival.MultiValue) else c)
        w = float(w[0] if isinstance(w, pydicom.multival.MultiValue) else w)
        a = np.clip((a - (c - w / 2.0)) / w, 0.0, 1.0)
    else:
        a = (a - a.min()) / (a.max() - a.min())
    return 1.0 - a if ds.PhotometricInterpretation == "MONOCHROME1" else a


# ------------------------------------------------------------------------------------------------ determinism


def _tree(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(tmp_path):
    kw = {"n_train": 10, "n_test": 5, "mimic_studies": 6, "image_size": 96}
    synthetic.generate(tmp_path / "a", seed=3, **kw)
    synthetic.generate(tmp_path / "b", seed=3, **kw)
    synthetic.generate(tmp_path / "c", seed=4, **kw)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a.keys() == b.keys()
    for rel in a:  # CSVs, gz CSVs, reports, DICOMs, JPGs and the manifest: byte-identical
        assert a[rel] == b[rel], rel
    for rel in [
        f"{VINDR}/annotations/annotations_train.csv",
        f"{VINDR}/annotations/image_labels_test.csv",
        f"{MIMIC_JPG}/mimic-cxr-2.0.0-metadata.csv.gz",
        f"{MIMIC_JPG}/mimic-cxr-2.0.0-chexpert.csv.gz",
    ]:
        assert a[rel] != c[rel], rel
    assert a["manifest.json"] != c["manifest.json"]


def test_refuses_to_mix_runs_and_cli(tmp_path):
    assert (
        synthetic.main(
            ["--out", str(tmp_path), "--n-train", "3", "--n-test", "2", "--mimic-studies", "2", "--image-size", "64"]
        )
        == 0
    )
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["params"] == {"n_train": 3, "n_test": 2, "mimic_studies": 2, "seed": 0, "image_size": 64}
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path, n_train=2, n_test=1, mimic_studies=1)
    synthetic.generate(tmp_path, n_train=2, n_test=1, mimic_studies=1, overwrite=True)
    assert len(list((tmp_path / VINDR / "train").glob("*.dicom"))) == 2


# ------------------------------------------------------------------------------------------------ VinDr layout


def test_vindr_layout_and_columns(synth):
    out, manifest = synth
    ann = out / VINDR / "annotations"
    assert sorted(p.name for p in ann.iterdir()) == [
        "annotations_test.csv",
        "annotations_train.csv",
        "image_labels_test.csv",
        "image_labels_train.csv",
    ]
    box = ["class_name", "x_min", "y_min", "x_max", "y_max"]
    assert (ann / "annotations_train.csv").read_text().splitlines()[0] == ",".join(["image_id", "rad_id"] + box)
    assert (ann / "annotations_test.csv").read_text().splitlines()[0] == ",".join(["image_id"] + box)
    glob_train = list(VINDR_GLOBAL_LABELS)
    glob_test = ["Other disease" if g == "Other diseases" else g for g in VINDR_GLOBAL_LABELS]
    assert (
        list(pd.read_csv(ann / "image_labels_train.csv", nrows=0).columns)
        == ["image_id", "rad_id"] + list(VINDR_LOCAL_LABELS) + glob_train
    )
    assert (
        list(pd.read_csv(ann / "image_labels_test.csv", nrows=0).columns)
        == ["image_id"] + list(VINDR_LOCAL_LABELS) + glob_test
    )
    assert len(VINDR_LOCAL_LABELS) == 22 and len(VINDR_GLOBAL_LABELS) == 6

    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        files = sorted((out / VINDR / split).iterdir())
        assert len(files) == n and all(p.suffix == ".dicom" for p in files)
        ids = {p.stem for p in files}
        assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
        a = pd.read_csv(ann / f"annotations_{split}.csv")
        lab = pd.read_csv(ann / f"image_labels_{split}.csv")
        assert set(lab.image_id) == ids and set(a.image_id) <= ids
        assert set(a.class_name) <= set(VINDR_LOCAL_LABELS) | {NO_FINDING}
        nf = a.class_name == NO_FINDING
        assert a.loc[nf, ["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
        assert a.loc[~nf, ["x_min", "y_min", "x_max", "y_max"]].notna().all().all()
        assert set(np.unique(lab.drop(columns=[c for c in ("image_id", "rad_id") if c in lab]).to_numpy())) <= {0, 1}
        assert {i for i, im in manifest["vindr"]["images"].items() if im["split"] == split} == ids
    test_lab = pd.read_csv(ann / "image_labels_test.csv")
    assert test_lab.image_id.is_unique and "rad_id" not in test_lab
    # Frequencies: most images are normal, several classes occur.
    train_lab = pd.read_csv(ann / "image_labels_train.csv")
    per_image_nf = train_lab.groupby("image_id")[NO_FINDING].min()
    assert 0.4 <= per_image_nf.mean() <= 0.8
    assert len(set(pd.read_csv(ann / "annotations_train.csv").class_name) - {NO_FINDING}) >= 6


def test_vindr_labels_agree_with_annotations_and_manifest(synth):
    out, manifest = synth
    ann = out / VINDR / "annotations"
    for split in ("train", "test"):
        a = pd.read_csv(ann / f"annotations_{split}.csv")
        lab = pd.read_csv(ann / f"image_labels_{split}.csv")
        other = "Other diseases" if split == "train" else "Other disease"
        key = ["image_id", "rad_id"] if split == "train" else ["image_id"]
        boxes = defaultdict(list)
        for r in a.itertuples(index=False):
            k = (r.image_id, r.rad_id) if split == "train" else (r.image_id,)
            boxes[k].append(
                (r.class_name, None if r.class_name == NO_FINDING else [r.x_min, r.y_min, r.x_max, r.y_max])
            )
        for _, row in lab.iterrows():
            k = tuple(row[c] for c in key)
            rows = boxes.get(k, [])
            classes = {c for c, _ in rows}
            local = {c for c in VINDR_LOCAL_LABELS if row[c] == 1}
            glob = {g for g in ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis") if row[g] == 1}
            glob |= {"Other diseases"} if row[other] == 1 else set()
            if row[NO_FINDING] == 1:
                assert classes == {NO_FINDING} and not local and not glob
            else:
                assert NO_FINDING not in classes and classes == local and (local or glob)
            # The manifest records exactly what was written.
            readers = manifest["vindr"]["images"][row["image_id"]]["readers"]
            rec = next(r for r in readers if split == "test" or r["rad_id"] == row["rad_id"])
            assert rec["no_finding"] == row[NO_FINDING]
            assert set(rec["local_labels"]) == local and set(rec["global_labels"]) == glob
            assert sorted(map(tuple, (b["box"] for b in rec["boxes"]))) == sorted(
                tuple(b) for _, b in rows if b is not None
            )


def test_train_readers_and_edge_cases(synth):
    out, manifest = synth
    ann = out / VINDR / "annotations"
    lab = pd.read_csv(ann / "image_labels_train.csv")
    a = pd.read_csv(ann / "annotations_train.csv")
    per = lab.groupby("image_id").rad_id.agg(list)
    assert (per.map(len) == 3).all() and (per.map(lambda r: len(set(r))) == 3).all()
    assert set(lab.rad_id) <= {f"R{i}" for i in range(1, 18)} and lab.rad_id.nunique() >= 8
    # Conflicts: one reader says No finding, another does not.
    nf = lab.groupby("image_id")[NO_FINDING].agg(lambda s: set(s))
    conflicts = set(nf[nf.map(len) == 2].index)
    assert len(conflicts) >= 2 and conflicts == set(manifest["edge_cases"]["vindr"]["conflict"])
    # Near-duplicate same-class boxes by one reader (IoU > 0.5).
    dups = set()
    for (iid, rad, cls), g in a[a.class_name != NO_FINDING].groupby(["image_id", "rad_id", "class_name"]):
        b = g[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
        if any(_iou(b[i], b[j]) > 0.5 for i in range(len(b)) for j in range(i + 1, len(b))):
            dups.add(iid)
    assert dups and dups == set(manifest["edge_cases"]["vindr"]["near_duplicate"])
    # Disagreement: readers' boxes differ (jitter) and some readers miss a class another one boxed.
    jittered = missed = 0
    for iid, g in a[a.class_name != NO_FINDING].groupby("image_id"):
        missed += any(0 < gg.rad_id.nunique() < 3 for _, gg in g.groupby("class_name"))
        jittered += (
            g.drop_duplicates(["class_name", "x_min", "y_min", "x_max", "y_max"]).shape[0]
            > g.drop_duplicates(["class_name"]).shape[0]
        )
    assert missed >= 3 and jittered >= 5
    # Global-only readers: No finding = 0 and no annotation row at all.
    annotated = set(zip(a.image_id, a.rad_id))
    unannotated = np.array([(i, r) not in annotated for i, r in zip(lab.image_id, lab.rad_id)])
    global_only = lab[(lab[NO_FINDING] == 0).to_numpy() & unannotated]
    assert len(global_only) >= 1


def test_boxes_inside_image_bounds(synth):
    out, manifest = synth
    for split in ("train", "test"):
        a = pd.read_csv(out / VINDR / "annotations" / f"annotations_{split}.csv").dropna(subset=["x_min"])
        assert len(a) > 0
        for iid, g in a.groupby("image_id"):
            ds = pydicom.dcmread(out / VINDR / split / f"{iid}.dicom", stop_before_pixels=True)
            assert (g.x_min >= 0).all() and (g.y_min >= 0).all()
            assert (g.x_min < g.x_max).all() and (g.y_min < g.y_max).all()
            assert (g.x_max <= ds.Columns).all() and (g.y_max <= ds.Rows).all()
    for im in manifest["vindr"]["images"].values():
        for b in im["truth"]["local"]:
            x1, y1, x2, y2 = b["box"]
            assert 0 <= x1 < x2 <= im["columns"] and 0 <= y1 < y2 <= im["rows"]


# ------------------------------------------------------------------------------------------------ DICOM


def test_dicom_variants(synth):
    out, manifest = synth
    seen = defaultdict(set)
    for iid, im in manifest["vindr"]["images"].items():
        ds = pydicom.dcmread(out / im["path"])
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "DX" and ds.SamplesPerPixel == 1 and ds.BitsAllocated == 16
        assert ds.HighBit == ds.BitsStored - 1 and ds.PixelRepresentation == 0
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns) == (im["rows"], im["columns"])
        assert 200 <= ds.Rows <= 320 and 200 <= ds.Columns <= 320
        assert int(arr.max()) <= 2**ds.BitsStored - 1 and arr.std() > 0
        ts = ds.file_meta.TransferSyntaxUID
        d = _display(ds)  # decoded the right way (byte order, RLE): neighbouring pixels are strongly correlated
        assert np.corrcoef(d[:, 1:].ravel(), d[:, :-1].ravel())[0, 1] > 0.8, (iid, ts.name)
        seen["ts"].add(ts.name)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["bits"].add(int(ds.BitsStored))
        if "WindowCenter" in ds:
            multi = isinstance(ds.WindowCenter, pydicom.multival.MultiValue)
            assert multi == isinstance(ds.WindowWidth, pydicom.multival.MultiValue)
            seen["window"].add("multi" if multi else "single")
        else:
            assert "WindowWidth" not in ds
            seen["window"].add("none")
        seen["rescale"].add("RescaleSlope" in ds)
        assert im["dicom"]["photometric"] == ds.PhotometricInterpretation
        assert im["dicom"]["bits_stored"] == ds.BitsStored
        if ts.is_compressed:
            assert ts == pydicom.uid.RLELossless and ds["PixelData"].is_undefined_length
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["bits"] == {12, 14, 16}
    assert seen["window"] == {"single", "multi", "none"}
    assert seen["rescale"] == {True, False}
    assert seen["ts"] == {
        "Explicit VR Little Endian",
        "Explicit VR Big Endian",
        "Implicit VR Little Endian",
        "RLE Lossless",
    }
    big = [
        i for i, im in manifest["vindr"]["images"].items() if im["dicom"]["transfer_syntax"] == "ExplicitVRBigEndian"
    ]
    assert len(big) == 1 and manifest["edge_cases"]["vindr"]["big_endian"] == big
    # Both splits have an inverted (MONOCHROME1) image.
    mono1 = {manifest["vindr"]["images"][i]["split"] for i in manifest["edge_cases"]["vindr"]["monochrome1"]}
    assert mono1 == {"train", "test"}


def test_lesions_are_learnable_from_pixels(synth):
    """Mean display intensity inside each truth box beats the same (relative) box on the split's normal images."""
    out, manifest = synth
    images = manifest["vindr"]["images"]
    disp = {i: _display(pydicom.dcmread(out / im["path"])) for i, im in images.items()}
    normals = defaultdict(list)
    for i, im in images.items():
        if im["truth"]["no_finding"]:
            normals[im["split"]].append(i)
    assert min(len(v) for v in normals.values()) >= 5

    def box_mean(img, rel):
        H, W = img.shape
        x1, y1, x2, y2 = int(rel[0] * W), int(rel[1] * H), int(np.ceil(rel[2] * W)), int(np.ceil(rel[3] * H))
        return float(img[y1:y2, x1:x2].mean())

    diffs = defaultdict(list)
    for i, im in images.items():
        for b in im["truth"]["local"]:
            x1, y1, x2, y2 = b["box"]
            rel = (x1 / im["columns"], y1 / im["rows"], x2 / im["columns"], y2 / im["rows"])
            ref = np.mean([box_mean(disp[j], rel) for j in normals[im["split"]]])
            diffs[b["class_name"]].append(box_mean(disp[i], rel) - ref)
    alld = np.concatenate([np.array(v) for v in diffs.values()])
    assert len(diffs) >= 6 and len(alld) >= 40
    assert alld.mean() > 0.06 and (alld > 0).mean() >= 0.85, {k: np.round(v, 3).tolist() for k, v in diffs.items()}
    for cls, v in diffs.items():
        if len(v) >= 2:
            assert np.mean(v) > 0.02, (cls, v)
    # ... but not trivially: the same box on the same image class varies (noise, anatomy, windowing).
    assert np.std(alld) > 0.02


# ------------------------------------------------------------------------------------------------ MIMIC


def _gz_csv(out, rel):
    with gzip.open(out / rel, "rt") as f:
        text = f.read()
    return text, pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def test_mimic_layout_and_columns(synth):
    out, _ = synth
    jroot = out / MIMIC_JPG
    text, meta = _gz_csv(out, f"{MIMIC_JPG}/mimic-cxr-2.0.0-metadata.csv.gz")
    assert text.splitlines()[0] == ",".join(METADATA_COLUMNS)
    text, split = _gz_csv(out, f"{MIMIC_JPG}/mimic-cxr-2.0.0-split.csv.gz")
    assert text.splitlines()[0] == "dicom_id,study_id,subject_id,split"
    for name in ("chexpert", "negbio"):
        text, lab = _gz_csv(out, f"{MIMIC_JPG}/mimic-cxr-2.0.0-{name}.csv.gz")
        assert text.splitlines()[0] == ",".join(["subject_id", "study_id"] + CHEXPERT)
        assert not lab.duplicated(["subject_id", "study_id"]).any() and len(lab) == N_MIMIC
        assert set(np.unique(lab[CHEXPERT].to_numpy())) <= {"1.0", "0.0", "-1.0", ""}
    assert set(split.split) == {"train", "validate", "test"}
    assert split.groupby("subject_id").split.nunique().max() == 1  # split by patient
    assert meta.dicom_id.is_unique and set(meta.dicom_id) == set(split.dicom_id)
    assert all(re.fullmatch(r"1\d{7}", s) for s in meta.subject_id)
    assert all(re.fullmatch(r"5\d{7}", s) for s in meta.study_id)
    assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", d) for d in meta.dicom_id)
    assert set(meta.ViewPosition) <= {"PA", "AP", "LATERAL", "LL"} and {"PA", "AP", "LATERAL"} <= set(meta.ViewPosition)
    per_study = meta.groupby("study_id").size()
    assert per_study.between(1, 2).all() and (per_study == 2).any() and (per_study == 1).any()
    assert meta.study_id.nunique() == N_MIMIC and meta.subject_id.nunique() < N_MIMIC
    for r in meta.itertuples(index=False):
        rel = f"files/p{r.subject_id[:2]}/p{r.subject_id}/s{r.study_id}"
        jpg, dcm = jroot / rel / f"{r.dicom_id}.jpg", out / MIMIC / rel / f"{r.dicom_id}.dcm"
        assert (out / MIMIC / f"{rel}.txt").is_file()
        ds = pydicom.dcmread(dcm)
        with Image.open(jpg) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (int(r.Columns), int(r.Rows))
            j = np.asarray(im, dtype=np.float64) / 255.0
        assert (ds.Rows, ds.Columns) == (int(r.Rows), int(r.Columns)) and ds.ViewPosition == r.ViewPosition
        assert str(ds.PatientID) == r.subject_id
        corr = np.corrcoef(j.ravel(), _display(ds).ravel())[0, 1]  # JPG = the DICOM shown the right way up
        assert corr > 0.95, (r.dicom_id, corr)
    assert {p.name for p in (out / MIMIC).iterdir()} == {"files", "cxr-record-list.csv.gz", "cxr-study-list.csv.gz"}
    assert {p.name for p in (out / MIMIC / "files").iterdir()} <= {f"p1{i}" for i in range(10)}


_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")  # MIT-LCP section_parser's header


def _sections(text):
    """Minimal independent section split: {name: text}, last occurrence wins, conclusion -> impression."""
    body = text.split("FINAL REPORT", 1)[1]
    out = {}
    parts = list(_HEADER.finditer(body))
    for k, m in enumerate(parts):
        end = parts[k + 1].start() if k + 1 < len(parts) else len(body)
        name = m.group(1).strip().lower()
        name = {"conclusion": "impression", "comparisons": "comparison"}.get(name, name)
        out[name] = " ".join(body[m.end() : end].split())
    return out


def _last_paragraph(text):
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    return paras[-1]


def test_mimic_reports_sections(synth):
    out, manifest = synth
    studies = manifest["mimic"]["studies"]
    n_no_findings = n_neither = 0
    for sid, st in studies.items():
        text = (out / st["report"]).read_text()
        assert st["report"].endswith(f"p{st['subject_id']}/s{sid}.txt") and "FINAL REPORT" in text
        sec = _sections(text)
        n_no_findings += "findings" not in sec
        if "findings" not in sec and "impression" not in sec:
            n_neither += 1
            assert " ".join(st["sections"]["last_paragraph"].split()) == _last_paragraph(text)
        else:
            assert "EXAMINATION" in text and "INDICATION:  ___" in text and "COMPARISON:" in text
            for name in ("findings", "impression"):
                expected = st["sections"][name]
                assert sec.get(name) == (" ".join(expected.split()) if expected else None), (sid, name)
    assert n_neither == 1 and n_no_findings >= 2
    assert any("CONCLUSION:" in (out / st["report"]).read_text() for st in studies.values())
    assert any((out / st["report"]).read_text().startswith("WET READ") for st in studies.values())


_KEYWORDS = {
    "Atelectasis": r"atelectasis",
    "Cardiomegaly": r"cardiomegaly|heart size",
    "Consolidation": r"consolidation",
    "Edema": r"edema",
    "Enlarged Cardiomediastinum": r"cardiomediastinal silhouette|mediastinal contours",
    "Fracture": r"fracture",
    "Lung Lesion": r"nodule",
    "Lung Opacity": r"opacity",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"pleural thickening",
    "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothorax",
    "Support Devices": r"tube|catheter|pacemaker",
}
_UNCERTAIN = re.compile(r"\b(possible|possibly|may|cannot be excluded|borderline|questionable)\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(no|without|normal)\b", re.IGNORECASE)


def _rule_labels(text, negbio=False):
    sec = _sections(text)
    parts = [sec[k] for k in ("findings", "impression") if k in sec] or [_last_paragraph(text)]
    votes = defaultdict(set)
    for sent in re.split(r"(?<=\.)\s+", " ".join(parts)):
        for lab, kw in _KEYWORDS.items():
            if negbio and lab == "Cardiomegaly":
                kw = r"cardiomegaly"
            if re.search(kw, sent, re.IGNORECASE):
                votes[lab].add(-1.0 if _UNCERTAIN.search(sent) else 0.0 if _NEGATION.search(sent) else 1.0)
    res = {lab: "" for lab in CHEXPERT}
    for lab, v in votes.items():
        res[lab] = "1.0" if 1.0 in v else "-1.0" if -1.0 in v else "0.0"
    sick = [lab for lab in CHEXPERT if lab not in ("No Finding", "Support Devices") and res[lab] in ("1.0", "-1.0")]
    res["No Finding"] = "" if sick else "1.0"
    return res


def test_report_sentences_agree_with_chexpert_and_negbio(synth):
    out, manifest = synth
    _, chex = _gz_csv(out, f"{MIMIC_JPG}/mimic-cxr-2.0.0-chexpert.csv.gz")
    _, negbio = _gz_csv(out, f"{MIMIC_JPG}/mimic-cxr-2.0.0-negbio.csv.gz")
    seen = defaultdict(set)
    n_differ = 0
    for c, n in zip(chex.to_dict("records"), negbio.to_dict("records")):
        assert (c["subject_id"], c["study_id"]) == (n["subject_id"], n["study_id"])
        st = manifest["mimic"]["studies"][c["study_id"]]
        text = (out / st["report"]).read_text()
        assert {k: c[k] for k in CHEXPERT} == _rule_labels(text), c["study_id"]
        assert {k: n[k] for k in CHEXPERT} == _rule_labels(text, negbio=True), c["study_id"]
        n_differ += c != n
        for k in CHEXPERT:
            seen[k].add(c[k])
        assert set(st["positives"]) == {k for k in CHEXPERT if k != "No Finding" and c[k] == "1.0"}
    values = set().union(*seen.values())
    assert values == {"1.0", "0.0", "-1.0", ""}
    assert "1.0" in seen["No Finding"] and "" in seen["No Finding"]
    assert n_differ >= 1  # "Heart size is normal." is a CheXpert negative but no NegBio mention
    texts = [(out / st["report"]).read_text() for st in manifest["mimic"]["studies"].values()]
    for phrase in (
        "No pneumothorax.",
        "Heart size is normal.",
        "There is no pleural effusion.",
        "Possible small left effusion.",
    ):
        assert any(phrase in " ".join(t.split()) for t in texts), phrase


def test_mimic_view_edge_cases(synth):
    _, manifest = synth
    edge = manifest["edge_cases"]["mimic"]
    for k in (
        "impression_only",
        "no_sections",
        "conclusion_header",
        "two_frontal",
        "lateral_only",
        "multi_study_subject",
        "wet_read",
    ):
        assert edge[k], k
    for sid in edge["two_frontal"]:
        assert [im["view"] for im in manifest["mimic"]["studies"][str(sid)]["images"]] == ["AP", "AP"]
