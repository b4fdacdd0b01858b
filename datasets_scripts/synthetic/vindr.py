"""The VinDr-CXR part of the sample: findings per image, three simulated readers per training image (misses,
near-duplicates, disagreements), the consensus test split, the annotation and label CSVs, DICOMs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from codec_litegpt import NO_FINDING, VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS, box_iou

from .common import VINDR_VERSION_DIR, _clip_box, _fmt, _force, _jitter, _near_duplicate, _write_csv
from .dicom import _dicom_specs, _to_stored, _write_dicom
from .pixels import _render_vindr

RADIOLOGISTS = tuple(f"R{i}" for i in range(1, 18))


_RAD_WEIGHTS = np.array([6.0 if r in ("R8", "R9", "R10") else 1.0 for r in RADIOLOGISTS]) / 32.0


OTHER_DISEASE_COLUMN = {"train": "Other diseases", "test": "Other disease"}


VINDR_USED_CLASSES = {
    "Aortic enlargement": (0.24, 1),
    "Cardiomegaly": (0.20, 1),
    "Pleural thickening": (0.14, 2),
    "Pulmonary fibrosis": (0.12, 2),
    "Nodule/Mass": (0.10, 3),
    "Lung Opacity": (0.10, 2),
    "Pleural effusion": (0.08, 2),
    "Other lesion": (0.07, 1),
}


_GLOBAL_FROM_LOCAL = {  # local class -> [(global label, probability)]
    "Nodule/Mass": [("Lung tumor", 0.7), ("Other diseases", 0.2)],
    "Lung Opacity": [("Pneumonia", 0.6), ("Other diseases", 0.25)],
    "Pulmonary fibrosis": [("Tuberculosis", 0.45), ("Other diseases", 0.35)],
    "Pleural thickening": [("Tuberculosis", 0.25), ("Other diseases", 0.3)],
    "Pleural effusion": [("Other diseases", 0.6)],
    "Aortic enlargement": [("Other diseases", 0.35)],
    "Cardiomegaly": [("Other diseases", 0.5)],
    "Other lesion": [("Other diseases", 0.6)],
}


_GLOBAL_DISEASES = tuple(g for g in VINDR_GLOBAL_LABELS if g != NO_FINDING)


P_NORMAL = 0.6  # share of "No finding" images (VinDr: ~70 %; a bit lower to keep small sets informative)


P_MISS = 0.1  # a reader misses a box


P_NEAR_DUP = 0.05  # a reader draws a second, near-identical box


P_KEEP_GLOBAL = 0.88  # a reader reports a global label of the image


def _plan_findings(rng, n, split):
    """Per image: {'classes': {cls: n}, 'globals': [...], 'copd': bool, 'special': str|None}."""
    plans = []
    names = list(VINDR_USED_CLASSES)
    weights = np.array([VINDR_USED_CLASSES[k][0] for k in names])
    weights = weights / weights.sum()
    for _ in range(n):
        plans.append(
            {"classes": {}, "globals": [], "copd": False, "special": None, "normal": bool(rng.random() < P_NORMAL)}
        )
    if n >= 2:  # at least one normal and one abnormal image
        _force(rng, plans, "normal", [True, False])
    if n >= 6 and sum(not p["normal"] for p in plans) < 2:
        plans[int(rng.choice([i for i, p in enumerate(plans) if p["normal"]]))]["normal"] = False
    for p in plans:
        if p["normal"]:
            continue
        k = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        for cls in rng.choice(names, size=k, replace=False, p=weights):
            cls = str(cls)
            maxn = VINDR_USED_CLASSES[cls][1]
            p["classes"][cls] = 1 + (int(rng.integers(0, maxn)) if maxn > 1 and rng.random() < 0.4 else 0)
        glob = set()
        for cls in p["classes"]:
            for g, prob in _GLOBAL_FROM_LOCAL[cls]:
                if rng.random() < prob:
                    glob.add(g)
        if rng.random() < 0.06:
            glob.add("COPD")
            p["copd"] = True
        p["globals"] = [g for g in _GLOBAL_DISEASES if g in glob]
    # Special cases on distinct images.
    normal_idx = [i for i, p in enumerate(plans) if p["normal"]]
    abnormal_idx = [i for i, p in enumerate(plans) if not p["normal"]]
    rng.shuffle(normal_idx)
    rng.shuffle(abnormal_idx)
    if len(normal_idx) >= 4 or (split == "test" and len(normal_idx) >= 3):
        i = normal_idx.pop()  # findings are global only: no box, No finding = 0
        plans[i].update(normal=False, special="global_only", globals=["Other diseases"])
    if split == "train":
        for special in ("near_duplicate", "conflict"):
            if abnormal_idx:
                plans[abnormal_idx.pop()]["special"] = special
        if len(normal_idx) >= 3:
            plans[normal_idx.pop()]["special"] = "false_positive"
        for i in abnormal_idx + normal_idx:  # a few more, at random
            r = rng.random()
            if not plans[i]["normal"] and r < 0.08:
                plans[i]["special"] = "conflict"
            elif plans[i]["normal"] and r < 0.03:
                plans[i]["special"] = "false_positive"
    return plans


def _reader_record(rad_id, boxes, globals_):
    local = [c for c in VINDR_LOCAL_LABELS if any(n == c for n, _ in boxes)]
    return {
        "rad_id": rad_id,
        "no_finding": int(not boxes and not globals_),
        "local_labels": local,
        "global_labels": list(globals_),
        "boxes": [{"class_name": n, "box": b} for n, b in boxes],
    }


def _simulate_readers(rng, truth, globals_, plan, W, H):
    rads = [str(r) for r in rng.choice(RADIOLOGISTS, size=3, replace=False, p=_RAD_WEIGHTS)]
    special = plan["special"]
    dissent = int(rng.integers(3)) if special == "conflict" else -1
    fp = int(rng.integers(3)) if special == "false_positive" else -1
    readers, cases = [], set()
    for k, rad in enumerate(rads):
        boxes, glob = [], []
        if k != dissent:
            for idx, (cls, box) in enumerate(truth):
                if rng.random() < P_MISS:
                    cases.add("missed_box")
                    continue
                b = _jitter(rng, box, W, H, rng.uniform(0.02, 0.09))
                boxes.append((cls, b))
                if rng.random() < P_NEAR_DUP or (special == "near_duplicate" and k == 0 and idx == 0):
                    boxes.append((cls, _near_duplicate(rng, b, W, H)))
            keep = 1.0 if special == "global_only" else P_KEEP_GLOBAL
            glob = [g for g in globals_ if rng.random() < keep]
        if k == fp:  # a reader sees something on a normal image
            cls = str(rng.choice(["Aortic enlargement", "Pleural thickening", "Other lesion"]))
            cx, cy = rng.uniform(0.3, 0.7) * W, rng.uniform(0.25, 0.65) * H
            half = rng.uniform(0.04, 0.08) * min(W, H)
            boxes.append((cls, _clip_box([cx - half, cy - half, cx + half, cy + half], W, H)))
            if rng.random() < 0.5:
                glob = ["Other diseases"]
        readers.append(_reader_record(rad, boxes, glob))
    nf = {r["no_finding"] for r in readers}
    if len(nf) == 2:
        cases.add("conflict")
    for r in readers:
        bs = r["boxes"]
        if any(
            a["class_name"] == b["class_name"] and box_iou(a["box"], b["box"]) > 0.5
            for i, a in enumerate(bs)
            for b in bs[i + 1 :]
        ):
            cases.add("near_duplicate")
    if special == "global_only":
        cases.add("global_only")
    if special == "false_positive":
        cases.add("false_positive")
    return readers, sorted(cases)


EDGE_CASES = ("conflict", "near_duplicate", "missed_box", "false_positive", "global_only", "monochrome1", "no_window",
              "multi_window", "big_endian", "implicit_vr", "rle_lossless")
# Transfer syntaxes other than the default that count as edge cases.
_SYNTAX_CASES = {"ExplicitVRBigEndian": "big_endian", "ImplicitVRLittleEndian": "implicit_vr", "RLELossless": "rle_lossless"}


def _image_ids(rng, n: int) -> list[str]:
    """`n` distinct 32-hex-digit image ids."""
    ids: list[str] = []
    while len(ids) < n:
        iid = rng.bytes(16).hex()
        if iid not in ids:
            ids.append(iid)
    return ids


def _write_vindr_dicom(out: Path, rel: str, iid: str, spec, img, irng) -> None:
    """One image as a DICOM with the spec's photometric interpretation, bits, window, rescale and transfer syntax."""
    stored, lo, hi = _to_stored(irng, img, spec["bits_stored"], spec["photometric"])
    extra = {"PatientID": iid[:12], "PatientSex": str(irng.choice(["M", "F", "O"], p=[0.5, 0.45, 0.05]))}
    if irng.random() < 0.7:
        extra["PatientAge"] = f"{int(irng.integers(18, 90)):03d}Y"
    _write_dicom(out / rel, stored, uid_key=iid, photometric=spec["photometric"], bits_stored=spec["bits_stored"],
                 window=spec["window"], rescale=spec["rescale"], ts=spec["transfer_syntax"], lo=lo, hi=hi, rng=irng,
                 extra=extra)  # fmt: skip


def _dicom_edge_cases(spec) -> list[str]:
    """The DICOM edge cases (keys of `EDGE_CASES`) an image's spec is an example of."""
    cases = []
    if spec["photometric"] == "MONOCHROME1":
        cases.append("monochrome1")
    if spec["window"] == "none":
        cases.append("no_window")
    if spec["window"] == "multi":
        cases.append("multi_window")
    if spec["transfer_syntax"] in _SYNTAX_CASES:
        cases.append(_SYNTAX_CASES[spec["transfer_syntax"]])
    return cases


def _csv_rows(split: str, iid: str, readers) -> tuple[list[list], list[list]]:
    """The annotation rows (one per box, one `No finding` row per normal reader) and the image-label rows (one per
    reader) of one image; test rows have no `rad_id`."""
    annotations, labels = [], []
    for r in readers:
        head = [iid, r["rad_id"]] if split == "train" else [iid]
        if r["no_finding"]:
            annotations.append(head + [NO_FINDING, "", "", "", ""])
        for b in r["boxes"]:
            annotations.append(head + [b["class_name"]] + [_fmt(x) for x in b["box"]])
        row = [int(c in r["local_labels"]) for c in VINDR_LOCAL_LABELS]
        row += [int(g in r["global_labels"]) for g in _GLOBAL_DISEASES] + [r["no_finding"]]
        labels.append(head + row)
    return annotations, labels


def _write_vindr_csvs(out: Path, ann: dict[str, list], lab: dict[str, list]) -> dict[str, str]:
    """The annotation and image-label CSVs of both splits (the test labels spell `Other disease`); returns their paths."""
    root = out / VINDR_VERSION_DIR
    ann_dir = root / "annotations"
    box_cols = ["class_name", "x_min", "y_min", "x_max", "y_max"]
    _write_csv(ann_dir / "annotations_train.csv", ["image_id", "rad_id"] + box_cols, ann["train"])
    _write_csv(ann_dir / "annotations_test.csv", ["image_id"] + box_cols, ann["test"])
    files = {
        "annotations_train": f"{VINDR_VERSION_DIR}/annotations/annotations_train.csv",
        "annotations_test": f"{VINDR_VERSION_DIR}/annotations/annotations_test.csv",
        "image_labels_train": f"{VINDR_VERSION_DIR}/annotations/image_labels_train.csv",
        "image_labels_test": f"{VINDR_VERSION_DIR}/annotations/image_labels_test.csv",
    }
    for split, head in (("train", ["image_id", "rad_id"]), ("test", ["image_id"])):
        globals_cols = [OTHER_DISEASE_COLUMN[split] if g == "Other diseases" else g for g in VINDR_GLOBAL_LABELS]
        _write_csv(out / files[f"image_labels_{split}"], head + list(VINDR_LOCAL_LABELS) + globals_cols, lab[split])
    return files


def _generate_vindr(out: Path, n_train, n_test, seed, image_size, bar):
    """The VinDr-CXR sample under `out`: returns its manifest part and the edge cases it holds."""
    images = {}
    edge = {key: [] for key in EDGE_CASES}
    ann = {"train": [], "test": []}
    lab = {"train": [], "test": []}
    for split, n, code in (("train", n_train, 1), ("test", n_test, 2)):
        rng = np.random.default_rng([seed, 10, code])
        ids = _image_ids(rng, n)
        specs = _dicom_specs(rng, n, image_size, split)
        plans = _plan_findings(rng, n, split)
        for i, (iid, spec, plan) in enumerate(zip(ids, specs, plans)):
            irng = np.random.default_rng([seed, 11, code, i])
            H, W = spec["rows"], spec["columns"]
            img, truth = _render_vindr(irng, H, W, plan["classes"], plan["copd"])
            globals_ = plan["globals"]
            if split == "train":
                readers, cases = _simulate_readers(irng, truth, globals_, plan, W, H)
            else:
                readers = [_reader_record(None, truth, globals_)]
                cases = ["global_only"] if plan["special"] == "global_only" else []
            rel = f"{VINDR_VERSION_DIR}/{split}/{iid}.dicom"
            _write_vindr_dicom(out, rel, iid, spec, img, irng)
            for case in [*cases, *_dicom_edge_cases(spec)]:
                edge[case].append(iid)
            annotations, labels = _csv_rows(split, iid, readers)
            ann[split] += annotations
            lab[split] += labels
            images[iid] = {
                "split": split,
                "path": rel,
                "rows": H,
                "columns": W,
                "dicom": {key: spec[key] for key in ("photometric", "bits_stored", "window", "rescale", "transfer_syntax")},
                "truth": {
                    "local": [{"class_name": n, "box": b} for n, b in truth],
                    "global_labels": list(globals_),
                    "no_finding": int(not truth and not globals_),
                    "copd_drawn": plan["copd"],
                },
                "readers": readers,
                "edge_cases": cases,
            }
            bar.update(1)
    files = _write_vindr_csvs(out, ann, lab)
    class_counts = Counter(b["class_name"] for im in images.values() for b in im["truth"]["local"])
    counts = {
        "train_images": n_train,
        "test_images": n_test,
        "annotations_train_rows": len(ann["train"]),
        "annotations_test_rows": len(ann["test"]),
        "image_labels_train_rows": len(lab["train"]),
        "image_labels_test_rows": len(lab["test"]),
        "no_finding_images": {
            s: sum(1 for im in images.values() if im["split"] == s and im["truth"]["no_finding"])
            for s in ("train", "test")
        },
        "truth_boxes_per_class": {c: class_counts[c] for c in VINDR_LOCAL_LABELS if class_counts[c]},
    }
    manifest = {"root": VINDR_VERSION_DIR, "files": files, "other_disease_column": dict(OTHER_DISEASE_COLUMN),
                "classes_used": list(VINDR_USED_CLASSES), "counts": counts, "images": images}  # fmt: skip
    return manifest, edge
