"""A two-class VinDr-CXR-layout toy set whose answers depend on the image alone: the data of the learning test.

    generate_toy_vindr(out_dir, n_train=48, n_test=16, seed=0)                       # the image tells the class
    generate_toy_vindr(out_dir, n_train=48, n_test=16, seed=0, constant_image=True)  # same labels, one image for all

Each image is a dark, noisy square with one bright block, either in the left half (class ``Nodule/Mass``) or in the
right half (class ``Pleural effusion``), always at the same place for its class, so each class has exactly one
grounded answer (``<p>label</p> {<x1><y1><x2><y2>}``). The classes alternate, so every split is balanced. Nothing
but the pixels tells the classes apart: the image ids are random, the rows are shuffled by the trainer, and the
prompt is the same for every image. With ``constant_image=True`` every DICOM holds the same pixels (no block) while
the CSVs keep the classes: a model trained and tested on that set can only be right by chance, which is what a
learning test compares against.

The tree follows the official layout exactly as ``datasets_scripts.synthetic`` writes it (DICOMs under
``vindr-cxr/1.0.0/{train,test}/``, the four annotation CSVs, three readers per training image), so the real builder
(``datasets_scripts.vindr_cxr.VinDrCXR``) and ``train_sft.py`` read it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codec_litegpt import VINDR_GLOBAL_LABELS, VINDR_LOCAL_LABELS

from .synthetic.common import VINDR_VERSION_DIR, _fmt, _write_csv
from .synthetic.dicom import _write_dicom
from .synthetic.vindr import OTHER_DISEASE_COLUMN

# Class -> block position as fractions of the image side (x1, y1, x2, y2).
TOY_CLASSES: dict[str, tuple[float, float, float, float]] = {
    "Nodule/Mass": (0.10, 0.30, 0.40, 0.70),
    "Pleural effusion": (0.60, 0.30, 0.90, 0.70),
}
TOY_READERS = ("R1", "R2", "R3")
BITS_STORED = 12


def toy_box(class_name: str, size: int) -> list[float]:
    """The pixel box of `class_name`'s block in a `size` x `size` toy image."""
    return [round(fraction * size, 2) for fraction in TOY_CLASSES[class_name]]


def toy_pixels(rng: np.random.Generator, class_name: str | None, size: int) -> np.ndarray:
    """Display-space pixels in [0, 1]: noise around 0.2, plus the class's block at 0.9 (none for `None`)."""
    image = np.clip(0.2 + 0.05 * rng.standard_normal((size, size)), 0.0, 1.0)
    if class_name is not None:
        x1, y1, x2, y2 = (round(v) for v in toy_box(class_name, size))
        image[y1:y2, x1:x2] = 0.9
    return image


def _stored(image: np.ndarray) -> np.ndarray:
    return np.round(image * ((1 << BITS_STORED) - 1)).astype(np.uint16)


def _label_row(class_name: str) -> list[int]:
    local = [int(label == class_name) for label in VINDR_LOCAL_LABELS]
    return local + [0] * len(VINDR_GLOBAL_LABELS)  # no global disease, and "No finding" = 0


def generate_toy_vindr(
    out_dir: str | Path,
    n_train: int = 48,
    n_test: int = 16,
    seed: int = 0,
    image_size: int = 64,
    constant_image: bool = False,
) -> dict:
    """Write the toy set under `out_dir` (VinDr layout) and return {image_id: (split, class_name)}."""
    if n_train < 2 or n_test < 2:
        raise ValueError(f"the toy set needs at least 2 images per split (one per class), got {n_train}/{n_test}")
    out = Path(out_dir)
    root = out / VINDR_VERSION_DIR
    if root.exists():
        raise FileExistsError(f"{root} already exists; the toy set is written into an empty folder")
    rng = np.random.default_rng(seed)
    classes = list(TOY_CLASSES)
    blank = toy_pixels(np.random.default_rng(seed), None, image_size)
    annotations: dict[str, list[list[str]]] = {"train": [], "test": []}
    labels: dict[str, list[list]] = {"train": [], "test": []}
    written: dict[str, tuple[str, str]] = {}
    for split, count in (("train", n_train), ("test", n_test)):
        for index in range(count):
            image_id = rng.bytes(16).hex()
            class_name = classes[index % len(classes)]
            pixels = blank if constant_image else toy_pixels(rng, class_name, image_size)
            stored = _stored(pixels)
            _write_dicom(
                root / split / f"{image_id}.dicom", stored, uid_key=image_id, photometric="MONOCHROME2",
                bits_stored=BITS_STORED, window="none", rescale=False, ts="ExplicitVRLittleEndian",
                lo=0, hi=(1 << BITS_STORED) - 1, rng=rng,
            )  # fmt: skip
            box = [_fmt(v) for v in toy_box(class_name, image_size)]
            readers = TOY_READERS if split == "train" else (None,)
            for reader in readers:
                head = [image_id, reader] if reader else [image_id]
                annotations[split].append([*head, class_name, *box])
                labels[split].append([*head, *_label_row(class_name)])
            written[image_id] = (split, class_name)
    box_columns = ["class_name", "x_min", "y_min", "x_max", "y_max"]
    annotation_dir = root / "annotations"
    _write_csv(annotation_dir / "annotations_train.csv", ["image_id", "rad_id", *box_columns], annotations["train"])
    _write_csv(annotation_dir / "annotations_test.csv", ["image_id", *box_columns], annotations["test"])
    for split, head in (("train", ["image_id", "rad_id"]), ("test", ["image_id"])):
        global_columns = [OTHER_DISEASE_COLUMN[split] if g == "Other diseases" else g for g in VINDR_GLOBAL_LABELS]
        _write_csv(
            annotation_dir / f"image_labels_{split}.csv",
            [*head, *VINDR_LOCAL_LABELS, *global_columns],
            labels[split],
        )
    return written


__all__ = ["TOY_CLASSES", "generate_toy_vindr", "toy_box", "toy_pixels"]
