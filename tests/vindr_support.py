"""The VinDr-CXR builder tests' shared sample and helpers: the synthetic sample and the four default builds are
session fixtures (registered in conftest.py, built once for every test file that reads them)."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from datasets_scripts.synthetic import generate
from datasets_scripts.vindr_cxr import VinDrCXR
from processing_litegpt import VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

N_TRAIN, N_TEST = 24, 8
GROUNDING_PROMPT = (
    "[identify] Please describe the critical findings along with their localized bounding boxes in the radiological "
    "image of a chest as much detail as possible. If there are no findings, state that the chest radiograph shows no "
    "findings."
)
DIAGNOSIS_PROMPT = (
    "[vqa] Given the provided chest X-ray image, which of the following diagnoses are present (select all that "
    "apply): COPD, Lung Tumor, Pneumonia, Tuberculosis, Other Disease, or No Finding?"
)
GLOBAL_DISEASES = [g for g in VINDR_GLOBAL_LABELS if g != "No finding"]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    manifest = generate(out, n_train=N_TRAIN, n_test=N_TEST, mimic_studies=0, seed=0, image_size=96)
    return manifest, out / "vindr-cxr" / "1.0.0"


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_cache")


def build(data_dir, config, cache_dir, num_proc=1, **settings):
    builder = VinDrCXR(config_name=config, data_dir=str(data_dir), cache_dir=str(cache_dir), **settings)
    builder.download_and_prepare(num_proc=num_proc)
    return builder, builder.as_dataset()


@pytest.fixture(scope="session")
def built(synthetic, cache_root):
    """The four configs with default settings (num_proc=1)."""
    _, data_dir = synthetic
    return {name: build(data_dir, name, cache_root) for name in ("raw", "labels", "grounding", "diagnosis")}


def copy_vindr(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_csv(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_csv(frame, path):
    frame.to_csv(path, index=False)


def rows_by_id(dataset):
    return {row["image_id"]: row for row in dataset}


# ====================================================================================================== reference


def grid(value, size):
    return min(max(math.floor(100 * value / size + 0.5), 0), 100)


def iou(a, b):
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def keep_first(boxes):
    reps = []
    for box in boxes:
        if not any(iou(rep, box) > 0.5 for rep in reps):
            reps.append(box)
    return reps


def validation_member(image_id, fraction=0.05):
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 2**32 < fraction


def expected_training_rows(manifest):
    """image_id -> expected grounding/diagnosis content after the default preprocessing (drop / union / keep_first)."""
    out = {}
    for image_id, image in manifest["vindr"]["images"].items():
        readers, split = image["readers"], image["split"]
        width, height = image["columns"], image["rows"]
        flags = {r["no_finding"] for r in readers}
        if split == "train" and len(flags) > 1:
            continue  # conflict -> dropped
        normal = flags == {1}
        findings = []
        local, global_ = set(), set()
        if not normal:
            for r in readers:
                local |= set(r["local_labels"])
                global_ |= set(r["global_labels"])
            for label in VINDR_LOCAL_LABELS:
                # CSV order: readers in manifest order, their boxes in order; then sort by (rad_id, CSV position)
                group = [
                    ((r["rad_id"] or ""), pos, tuple(b["box"]))
                    for pos, (r, b) in enumerate((r, b) for r in readers for b in r["boxes"])
                    if b["class_name"] == label
                ]
                group.sort(key=lambda t: (t[0], t[1]))
                boxes = [t[2] for t in group]
                kept = keep_first(boxes) if split == "train" else boxes
                findings += [(label, box) for box in kept]
        keyed = []
        for label, box in findings:
            g = (grid(box[0], width), grid(box[1], height), grid(box[2], width), grid(box[3], height))
            keyed.append((VINDR_LOCAL_LABELS.index(label), g, box, label))
        keyed.sort()
        if normal:
            local_text, global_text = "No finding", "No finding"
        else:
            local_text = ",".join(f"<p>{lab}</p> {{<{g[0]}><{g[1]}><{g[2]}><{g[3]}>}}" for _, g, _, lab in keyed)
            local_text = local_text or "None"
            global_text = ", ".join(g for g in GLOBAL_DISEASES if g in global_) or "None"
        out[image_id] = {
            "split": "validation" if split == "train" and validation_member(image_id) else split,
            "width": width,
            "height": height,
            "no_finding": normal,
            "local_labels": [lab for lab in VINDR_LOCAL_LABELS if lab in local],
            "global_labels": ["No finding"] if normal else [g for g in GLOBAL_DISEASES if g in global_],
            "box_labels": [k[3] for k in keyed],
            "boxes": [list(k[2]) for k in keyed],
            "grid_boxes": [list(k[1]) for k in keyed],
            "grounding": f"Local diseases of this chest radiograph are {local_text}.",
            "diagnosis": f"Global diseases of this chest radiograph are {global_text}.",
        }
    return out


def text_of(messages):
    return "".join(block["text"] for block in messages[0]["content"] if block["type"] == "text")
