"""Small synthetic VinDr-CXR and MIMIC-CXR / MIMIC-CXR-JPG datasets, written in the official PhysioNet layouts.

    python -m datasets_scripts.synthetic --out DIR --n-train 60 --n-test 20 --seed 0 [--mimic-studies 20] [--image-size 256]

or from Python: ``generate(out_dir, n_train=60, n_test=20, mimic_studies=20, seed=0, image_size=256) -> manifest``.
Everything is a function of the arguments (same seed => byte-identical CSVs, reports, DICOMs and JPGs with the same
pydicom / Pillow versions). The builders' tests read these trees exactly as they would read the real downloads
(docs/design.md, "Datasets") and compare what they build with ``DIR/manifest.json``.

What is written
---------------
``DIR/vindr-cxr/1.0.0/``
    ``train/{image_id}.dicom``, ``test/{image_id}.dicom`` (image_id = 32 hex characters);
    ``annotations/annotations_train.csv`` (``image_id,rad_id,class_name,x_min,y_min,x_max,y_max``),
    ``annotations/annotations_test.csv`` (no ``rad_id``), ``annotations/image_labels_train.csv`` (``image_id,rad_id`` +
    22 local + 6 global 0/1 columns, in the label lists' order), ``annotations/image_labels_test.csv`` (no ``rad_id``).
    Train: 3 readers per image drawn from R1..R17; test: one consensus label set.
``DIR/mimic-cxr/2.0.0/``
    ``files/pXX/p{subject_id}/s{study_id}/{dicom_id}.dcm``, reports ``files/pXX/p{subject_id}/s{study_id}.txt``,
    ``cxr-record-list.csv.gz`` and ``cxr-study-list.csv.gz`` (as in the real release).
``DIR/mimic-cxr-jpg/2.1.0/``
    ``files/pXX/p{subject_id}/s{study_id}/{dicom_id}.jpg`` and ``mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz``.
``DIR/manifest.json``
    Paths (relative to DIR), counts, the DICOM variant of every image, the ground truth drawn into the pixels
    (``truth``) and what every reader wrote (``readers``: labels and pixel boxes exactly as in the CSVs), MIMIC report
    sections and labels, and ``edge_cases`` (ids per case). ``generate`` returns the same dict plus ``out_dir``.

Spelling choices (docs/design.md, "Label lists")
----------------------------
Annotation CSVs use canonical spellings only. The labels CSVs reproduce the real files' inconsistency in the global
column: ``image_labels_train.csv`` has ``Other diseases`` and ``image_labels_test.csv`` has ``Other disease`` (as
reported by several public loaders that rename the test column; see ``OTHER_DISEASE_COLUMN``). Annotation CSVs hold
local classes and ``No finding`` only (global labels are image-level, in the labels CSVs).

Edge cases included on purpose (ids in ``manifest["edge_cases"]``)
-----------------------------------------------------------------
VinDr train: reader misses a box; jittered boxes between readers; near-duplicate same-class boxes (IoU > 0.5) by one
reader; conflicts (one reader ``No finding``, another findings: a dissenting reader on an abnormal image and a
false-positive reader on a normal image); images whose findings are global only (``No finding`` = 0, no box, hence no
annotation row for that reader). VinDr/MIMIC DICOMs: MONOCHROME1 and MONOCHROME2; BitsStored 12/14/16; single-valued,
multi-valued and absent WindowCenter/WindowWidth; Rescale tags present/absent; transfer syntaxes Explicit VR Little
Endian (default), Explicit VR Big Endian, Implicit VR Little Endian and RLE Lossless (encapsulated, pydicom-native
encoder: no extra plugin needed to read). MIMIC: 1-2 images per study (PA/AP/LATERAL/LL), a study with two AP images,
a lateral-only study, subjects with several studies, reports with FINDINGS+IMPRESSION, IMPRESSION only, FINDINGS only,
CONCLUSION instead of IMPRESSION, one with neither (last-paragraph fallback), WET READ headers, PHI as ``___``,
negated ("No pneumothorax.") and uncertain ("Possible small left effusion.") mentions. The CheXpert CSV follows the
report sentences (1.0 / 0.0 / -1.0 / blank, No Finding 1.0 when nothing but support devices is positive/uncertain);
NegBio is identical except that it ignores "Heart size is normal." (no cardiomegaly term), leaving Cardiomegaly blank
where that sentence is the only mention.

Pixels
------
Chest-like frontal images (body, two dark lung fields, mediastinum, heart, aortic knob, ribs, clavicles, diaphragm,
vascular texture, noise, random gain/gamma); each VinDr class used is drawn inside its ``truth`` box with a distinctive
pattern: Nodule/Mass = soft round blob, Lung Opacity = patchy textured haze, Pulmonary fibrosis = reticular net,
Other lesion = ring, Pleural effusion = bright fluid at the lung base with a meniscus, Pleural thickening = bright band
along the pleura, Cardiomegaly = enlarged heart (box = heart), Aortic enlargement = enlarged aortic knob (box = knob).
COPD (global) = darker, larger lungs. Readers' boxes are jittered copies of the truth boxes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from codec_litegpt import CHEXPERT_LABELS

from .common import MIMIC_DICOM_DIR, MIMIC_JPG_DIR, VINDR_VERSION_DIR
from .mimic import _generate_mimic
from .vindr import OTHER_DISEASE_COLUMN, RADIOLOGISTS, VINDR_USED_CLASSES, _generate_vindr

__all__ = [
    "CHEXPERT_LABELS",
    "MIMIC_DICOM_DIR",
    "MIMIC_JPG_DIR",
    "OTHER_DISEASE_COLUMN",
    "RADIOLOGISTS",
    "VINDR_USED_CLASSES",
    "VINDR_VERSION_DIR",
    "generate",
    "main",
]


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def generate(
    out_dir,
    n_train: int = 60,
    n_test: int = 20,
    mimic_studies: int = 20,
    seed: int = 0,
    image_size: int = 256,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the synthetic VinDr-CXR and MIMIC-CXR(-JPG) trees under ``out_dir`` and return the manifest.

    ``image_size``: typical side; Rows and Columns are drawn per image in [0.78, 1.25] x image_size.
    ``progress``: tqdm bar (default: only when more than 300 images are written).
    ``overwrite``: remove this generator's previous output under ``out_dir`` first (else refuse to mix runs).
    """
    if n_train < 0 or n_test < 0 or mimic_studies < 0:
        raise ValueError("counts must be >= 0")
    if image_size < 32:
        raise ValueError("image_size must be >= 32")
    out = Path(out_dir)
    ours = [out / "vindr-cxr", out / "mimic-cxr", out / "mimic-cxr-jpg", out / "manifest.json"]
    if any(p.exists() for p in ours):
        if not overwrite:
            raise FileExistsError(f"{out} already holds synthetic data; pass overwrite=True (--overwrite)")
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    total = n_train + n_test + round(mimic_studies * 1.55)
    if progress is None:
        progress = total > 300
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="synthetic CXR", unit="img")
    else:
        bar = _NoBar()
    try:
        vindr, vedge = _generate_vindr(out, n_train, n_test, seed, image_size, bar)
        mimic, medge = _generate_mimic(out, mimic_studies, seed, image_size, bar)
    finally:
        bar.close()
    manifest = {
        "generator": "datasets_scripts.synthetic",
        "format_version": 1,
        "params": {
            "n_train": n_train,
            "n_test": n_test,
            "mimic_studies": mimic_studies,
            "seed": seed,
            "image_size": image_size,
        },
        "counts": {"vindr": vindr["counts"], "mimic": mimic["counts"]},
        "edge_cases": {"vindr": vedge, "mimic": medge},
        "vindr": vindr,
        "mimic": mimic,
    }
    with open(out / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return {**manifest, "out_dir": str(out.resolve())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets_scripts.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mimic-studies", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=256, help="typical side; each image is 0.78-1.25x this")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous synthetic tree in --out")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    a = ap.parse_args(argv)
    m = generate(
        a.out,
        n_train=a.n_train,
        n_test=a.n_test,
        mimic_studies=a.mimic_studies,
        seed=a.seed,
        image_size=a.image_size,
        progress=a.progress,
        overwrite=a.overwrite,
    )
    summary = {
        "out_dir": m["out_dir"],
        "counts": m["counts"],
        "edge_cases": {ds: {k: len(v) for k, v in e.items()} for ds, e in m["edge_cases"].items()},
    }
    print(json.dumps(summary, indent=1))
    return 0

