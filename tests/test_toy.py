"""The learning test's toy set (datasets_scripts/toy.py): balanced, image-only classes, read by the real builder."""

from __future__ import annotations

import pydicom
import pytest

from datasets_scripts.toy import TOY_CLASSES, generate_toy_vindr, toy_box
from datasets_scripts.vindr_cxr import VinDrCXR

SIZE = 64


def pixels(root, split, image_id):
    return pydicom.dcmread(root / split / f"{image_id}.dicom").pixel_array


@pytest.mark.parametrize("constant_image", [False, True])
def test_the_builder_reads_a_balanced_toy_set(tmp_path, constant_image):
    written = generate_toy_vindr(tmp_path / "toy", n_train=8, n_test=4, image_size=SIZE, constant_image=constant_image)
    root = tmp_path / "toy" / "vindr-cxr" / "1.0.0"
    for split, count in (("train", 8), ("test", 4)):
        classes = [c for s, c in written.values() if s == split]
        assert len(classes) == count and sorted(set(classes)) == sorted(TOY_CLASSES)
        assert all(classes.count(c) == count // 2 for c in TOY_CLASSES)

    builder = VinDrCXR(config_name="grounding", data_dir=str(root), cache_dir=str(tmp_path / "cache"), max_side=SIZE,
                       validation_fraction=0.0)
    builder.download_and_prepare()
    test = builder.as_dataset("test")
    assert len(test) == 4
    for row in test:
        label = written[row["image_id"]][1]
        x1, y1, x2, y2 = (round(v * 100 / SIZE) for v in toy_box(label, SIZE))
        assert row["completion"][0]["content"][0]["text"].endswith(f"<p>{label}</p> {{<{x1}><{y1}><{x2}><{y2}>}}.")

    arrays = {image_id: pixels(root, split, image_id) for image_id, (split, _) in written.items()}
    distinct = {a.tobytes() for a in arrays.values()}
    if constant_image:
        assert len(distinct) == 1, "one image for all"
    else:
        assert len(distinct) == len(arrays)
        for image_id, (_, label) in written.items():  # the block is bright where the class says, dark elsewhere
            x1, y1, x2, y2 = (round(v) for v in toy_box(label, SIZE))
            image = arrays[image_id].astype(float)
            inside = image[y1:y2, x1:x2].mean()
            other = toy_box(next(c for c in TOY_CLASSES if c != label), SIZE)
            outside = image[round(other[1]):round(other[3]), round(other[0]):round(other[2])].mean()
            assert inside > 3 * outside


def test_the_toy_set_refuses_a_used_folder_and_tiny_splits(tmp_path):
    generate_toy_vindr(tmp_path, n_train=2, n_test=2)
    with pytest.raises(FileExistsError):
        generate_toy_vindr(tmp_path, n_train=2, n_test=2)
    with pytest.raises(ValueError, match="at least 2"):
        generate_toy_vindr(tmp_path / "other", n_train=1, n_test=2)
