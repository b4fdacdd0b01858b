"""VinDr-CXR builder (`datasets_scripts/vindr_cxr.py`, `vindr_csv.py`, `vindr_plan.py`): rows and preprocessing rules.

Everything runs on the synthetic sample of `datasets_scripts.synthetic` (official layout + `manifest.json` with what
every reader wrote). Expected rows are recomputed from the manifest with independent code (grid, IoU, dedup, target
strings written out literally, in `vindr_support.py` with the sample and its default builds), following the documented
preprocessing. DICOM edge cases and the export / command line are in `test_vindr_builder_files.py`.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vindr_support import (
    DIAGNOSIS_PROMPT,
    GLOBAL_DISEASES,
    GROUNDING_PROMPT,
    N_TEST,
    N_TRAIN,
    build,
    copy_vindr,
    expected_training_rows,
    grid,
    iou,
    read_csv,
    rows_by_id,
    text_of,
    validation_member,
    write_csv,
)

from datasets_scripts.common import grey_png_bytes
from datasets_scripts.vindr_cxr import (
    PREPROCESSING_LOG,
    VinDrCXR,
    VinDrDataError,
    dedup_boxes,
    fuse_labels,
    is_validation_image,
    resolve_no_finding,
)
from processing_litegpt import (
    VINDR_LOCAL_LABELS,
    dicom_to_uint8,
    read_dicom,
)

# ====================================================================================================== synthetic sample


def test_grounding_and_diagnosis_equal_the_generator_truth(synthetic, built):
    manifest, _ = synthetic
    expected = expected_training_rows(manifest)
    conflicts = set(manifest["edge_cases"]["vindr"]["conflict"])
    assert conflicts and all(manifest["vindr"]["images"][i]["split"] == "train" for i in conflicts)
    assert len(expected) == N_TRAIN + N_TEST - len(conflicts)
    some_boxes = False
    for config, prompt in (("grounding", GROUNDING_PROMPT), ("diagnosis", DIAGNOSIS_PROMPT)):
        builder, ds = built[config]
        got = {}
        for split in ds:
            for row in ds[split]:
                got[row["image_id"]] = (split, row)
        assert set(got) == set(expected)
        for image_id, exp in expected.items():
            split, row = got[image_id]
            assert split == exp["split"], image_id
            for key in ("width", "height", "no_finding", "local_labels", "global_labels", "box_labels", "grid_boxes"):
                assert row[key] == exp[key], (config, image_id, key)
            assert np.allclose(np.array(row["boxes"]).reshape(-1, 4), np.array(exp["boxes"]).reshape(-1, 4), atol=1e-9)
            some_boxes |= bool(row["boxes"])
            assert text_of(row["completion"]) == exp[config], (config, image_id)
            assert row["completion"][0]["role"] == "assistant"
            assert row["prompt"][0]["role"] == "user"
            assert [b["type"] for b in row["prompt"][0]["content"]] == ["image", "text"]
            assert text_of(row["prompt"]) == prompt
            assert len(row["images"]) == 1
        assert builder.counts["train"]["conflict_dropped"] == len(conflicts)
        assert builder.skipped == {"items": []}
    assert some_boxes


def test_texts_cover_normal_abnormal_and_none(built):
    _, ds = built["grounding"]
    texts = [text_of(r["completion"]) for split in ds for r in ds[split]]
    assert "Local diseases of this chest radiograph are No finding." in texts
    assert any(t.startswith("Local diseases of this chest radiograph are <p>") for t in texts)
    # 'global_only' images: abnormal, nothing to list for stage 1
    assert "Local diseases of this chest radiograph are None." in texts
    _, dg = built["diagnosis"]
    gtexts = [text_of(r["completion"]) for split in dg for r in dg[split]]
    assert "Global diseases of this chest radiograph are No finding." in gtexts
    assert any("Other diseases" in t for t in gtexts)  # test CSV spells the column 'Other disease'


def test_near_duplicates_were_collapsed(synthetic, built):
    manifest, _ = synthetic
    _, ds = built["grounding"]
    rows = {r["image_id"]: r for split in ("train", "validation") for r in ds[split]}
    for image_id in manifest["edge_cases"]["vindr"]["near_duplicate"]:
        if image_id not in rows:
            continue  # also a conflict
        row = rows[image_id]
        for i in range(len(row["boxes"])):
            for j in range(i + 1, len(row["boxes"])):
                if row["box_labels"][i] == row["box_labels"][j]:
                    assert iou(row["boxes"][i], row["boxes"][j]) <= 0.5


def test_labels_config_is_per_reader_by_column_name(synthetic, built):
    manifest, _ = synthetic
    _, ds = built["labels"]
    images = manifest["vindr"]["images"]
    rows = [r for split in ds for r in ds[split]]
    assert len(rows) == N_TRAIN * 3 + N_TEST
    for row in rows:
        image = images[row["image_id"]]
        reader = next(r for r in image["readers"] if r["rad_id"] == row["rad_id"])
        assert (row["rad_id"] is None) == (image["split"] == "test")
        for label in VINDR_LOCAL_LABELS:
            assert row[label] == int(label in reader["local_labels"]), (row["image_id"], label)
        for label in GLOBAL_DISEASES:
            assert row[label] == int(label in reader["global_labels"])
        assert row["No finding"] == reader["no_finding"] == int(row["no_finding"])
        expected = sorted(
            (
                VINDR_LOCAL_LABELS.index(b["class_name"]),
                tuple(grid(v, s) for v, s in zip(b["box"], (image["columns"], image["rows"]) * 2)),
                tuple(b["box"]),
                b["class_name"],
            )
            for b in reader["boxes"]
        )
        assert row["box_labels"] == [e[3] for e in expected]
        assert row["grid_boxes"] == [list(e[1]) for e in expected]
        assert np.allclose(np.array(row["boxes"]).reshape(-1, 4), np.array([e[2] for e in expected]).reshape(-1, 4))
        assert row["width"] == image["columns"] and row["height"] == image["rows"]


def test_raw_config_keeps_every_csv_row(synthetic, built):
    manifest, data_dir = synthetic
    _, ds = built["raw"]
    assert "images" not in ds["train"].column_names
    counts = manifest["counts"]["vindr"]
    rows = [r for split in ds for r in ds[split]]
    assert len(rows) == counts["annotations_train_rows"] + counts["annotations_test_rows"]
    train_csv = read_csv(data_dir / "annotations" / "annotations_train.csv")
    by_line = {(r["split"], r["row"]): r for r in rows}
    for offset, csv_row in train_csv.iterrows():
        row = by_line[("train", offset + 2)]
        assert row["image_id"] == csv_row["image_id"] and row["rad_id"] == csv_row["rad_id"]
        assert row["class_name"] == row["class_name_raw"] == csv_row["class_name"]
        if csv_row["class_name"] == "No finding":
            assert row["box"] is None and row["grid_box"] is None
        else:
            box = [float(csv_row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
            assert row["box"] == box
            assert row["grid_box"] == [grid(v, s) for v, s in zip(box, (row["width"], row["height"]) * 2)]
    assert all(r["rad_id"] is None for r in rows if r["split"] == "test")
    assert {r["image_id"] for r in ds["validation"]} <= {i for i in manifest["vindr"]["images"] if validation_member(i)}


def test_images_are_the_processors_uint8_conversion(synthetic, built):
    manifest, data_dir = synthetic
    _, ds = built["grounding"]
    edge = manifest["edge_cases"]["vindr"]
    seen = set()
    for split in ds:
        for row in ds[split]:
            image = row["images"][0]
            assert image.mode == "L" and image.format == "PNG"
            meta = manifest["vindr"]["images"][row["image_id"]]
            expected = dicom_to_uint8(read_dicom(data_dir.parent.parent / meta["path"]))
            assert image.size == (row["width"], row["height"])
            assert np.array_equal(np.asarray(image), expected), row["image_id"]
            seen.add(row["image_id"])
    for case in ("monochrome1", "big_endian", "implicit_vr", "rle_lossless", "multi_window", "no_window"):
        assert set(edge[case]) & seen, case
    # MONOCHROME1 is inverted: bright stored values become dark.
    mono1 = next(i for i in edge["monochrome1"] if i in seen)
    path = data_dir.parent.parent / manifest["vindr"]["images"][mono1]["path"]
    raw = read_dicom(path).pixel_array.astype(float)
    img = np.asarray(next(r for s in ds for r in ds[s] if r["image_id"] == mono1)["images"][0], dtype=float)
    assert np.corrcoef(raw.ravel(), img.ravel())[0, 1] < -0.9


@pytest.mark.parametrize("level", [0, 1, 6])
def test_png_encoder_round_trips_exactly(level):
    rng = np.random.default_rng(level)
    for shape in ((1, 1), (1, 7), (5, 1), (37, 53), (64, 64)):
        array = rng.integers(0, 256, size=shape, dtype=np.uint8)
        array[0, 0], array[-1, -1] = 255, 0  # extremes exercise the filter's wrap-around
        image = Image.open(io.BytesIO(grey_png_bytes(array, level)))
        assert image.format == "PNG" and image.mode == "L" and image.size == (shape[1], shape[0])
        assert np.array_equal(np.asarray(image), array)
    smooth = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    assert len(grey_png_bytes(smooth, 1)) < smooth.size / 10
    with pytest.raises(ValueError):
        grey_png_bytes(np.zeros((4, 4), np.uint16))


def test_max_side_resizes_the_stored_png_only(synthetic, built, tmp_path):
    _, data_dir = synthetic
    _, small = build(data_dir, "grounding", tmp_path, max_side=40)
    base = {r["image_id"]: r for s in built["grounding"][1] for r in built["grounding"][1][s]}
    for split in small:
        for row in small[split]:
            ref = base[row["image_id"]]
            assert max(row["images"][0].size) == 40
            assert (row["width"], row["height"]) == (ref["width"], ref["height"])
            assert row["grid_boxes"] == ref["grid_boxes"] and row["completion"] == ref["completion"]


def test_preprocessing_log_is_in_the_cache_and_reused(synthetic, built, cache_root):
    builder, _ = built["grounding"]
    log_path = Path(builder.cache_dir) / PREPROCESSING_LOG
    log = json.loads(log_path.read_text())
    assert log["skipped"] == {"items": []} and log["settings"]["dedup"] == "keep_first"
    assert log["counts"]["train"]["boxes_dropped_dedup"] > 0
    assert "skipped" in builder.info.description
    _, data_dir = synthetic
    again = VinDrCXR(config_name="grounding", data_dir=str(data_dir), cache_dir=str(cache_root))
    again.download_and_prepare()  # cache hit
    assert again.counts == builder.counts and again.skipped == builder.skipped


def test_rows_render_through_the_processor_chat_template(built):
    from tiny_tokenizer import build_tiny_tokenizer

    from processing_litegpt import LiteGPTProcessor

    processor = LiteGPTProcessor.from_tokenizer(build_tiny_tokenizer(), image_size=32, num_image_tokens=2)
    _, ds = built["grounding"]
    row = next(r for r in ds["train"] if r["boxes"])
    rendered = processor.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert rendered == f"<s>[INST] <Img><ImageHere></Img> {GROUNDING_PROMPT} [/INST] {text_of(row['completion'])}</s>"


# ====================================================================================================== rules on hand-made rows


def test_dedup_rules_on_hand_made_boxes():
    a = (0, 0, 10, 10)
    b = (1, 0, 11, 10)  # IoU(a, b) = 9/11 > 0.5
    c = (3, 0, 13, 10)  # IoU(a, c) = 7/13 > 0.5
    d = (5, 0, 15, 10)  # IoU(a, d) = 1/3, IoU(b, d) = 6/14, IoU(c, d) = 8/12 > 0.5
    far = (50, 50, 60, 60)
    assert dedup_boxes([a, b, far], "keep_first") == [a, far]
    # d does not join a's group (representative a, IoU 1/3) although it overlaps c > 0.5: a new group.
    assert dedup_boxes([a, c, d], "keep_first") == [a, d]
    assert dedup_boxes([a, b], "mean") == [(0.5, 0.0, 10.5, 10.0)]
    assert dedup_boxes([a, c, d], "mean") == [(1.5, 0.0, 11.5, 10.0), d]
    # wbf compares with the running mean box: after a, c the cluster box is (1.5,0,11.5,10), IoU with d = 6.5/13.5
    assert dedup_boxes([a, c, d], "wbf") == [(1.5, 0.0, 11.5, 10.0), d]
    e = (4, 0, 14, 10)  # IoU with (1.5,0,11.5,10) = 7.5/12.5 > 0.5 joins under wbf; IoU with a = 6/14 -> not keep_first
    assert dedup_boxes([a, c, e], "wbf") == [tuple(np.mean([a, c, e], axis=0))]
    assert dedup_boxes([a, c, e], "keep_first") == [a, e]
    assert dedup_boxes([a, b, far], "none") == [a, b, far]
    exactly_half = (0, 0, 10, 10), (0, 0, 20, 10)  # IoU = 0.5, not > 0.5
    assert dedup_boxes(list(exactly_half), "keep_first") == list(exactly_half)
    with pytest.raises(ValueError):
        dedup_boxes([a], "nms")


def test_conflict_and_fusion_rules_on_hand_made_votes():
    assert resolve_no_finding([1, 1, 1]) is True and resolve_no_finding([0, 0, 0]) is False
    assert resolve_no_finding([1, 0, 0], "drop") is None
    assert resolve_no_finding([1, 1, 0], "majority") is True
    assert resolve_no_finding([1, 0, 0], "majority") is False
    assert resolve_no_finding([1, 0], "majority") is False  # tie -> abnormal
    assert resolve_no_finding([1, 1, 0], "union") is False
    votes = [{"Cardiomegaly", "Nodule/Mass"}, {"Cardiomegaly"}, set()]
    assert fuse_labels(votes, "union") == {"Cardiomegaly", "Nodule/Mass"}
    assert fuse_labels(votes, "majority") == {"Cardiomegaly"}
    assert fuse_labels([{"COPD"}, {"COPD"}, {"Pneumonia"}], "majority") == {"COPD"}
    with pytest.raises(ValueError):
        resolve_no_finding([1, 0], "vote")


def test_validation_split_is_deterministic_sha1():
    ids = [hashlib.md5(str(i).encode()).hexdigest() for i in range(4000)]
    members = [i for i in ids if is_validation_image(i)]
    assert members == [i for i in ids if validation_member(i)]
    assert 0.04 < len(members) / len(ids) < 0.06
    assert not any(is_validation_image(i, 0.0) for i in ids)


def test_conflict_policies_and_majority_fusion_through_the_builder(synthetic, cache_root):
    manifest, data_dir = synthetic
    images = manifest["vindr"]["images"]
    conflicts = [i for i in manifest["edge_cases"]["vindr"]["conflict"]]
    for policy in ("majority", "union"):
        builder, ds = build(data_dir, "diagnosis", cache_root, conflict_policy=policy, include_image=False)
        rows = {r["image_id"]: r for s in ds for r in ds[s]}
        assert set(conflicts) <= set(rows)
        assert builder.counts["train"]["conflict_dropped"] == 0
        for image_id in conflicts:
            flags = [r["no_finding"] for r in images[image_id]["readers"]]
            normal = (sum(flags) * 2 > len(flags)) if policy == "majority" else False
            assert rows[image_id]["no_finding"] == normal
            if normal:
                assert rows[image_id]["global_labels"] == ["No finding"] and rows[image_id]["boxes"] == []
    builder, ds = build(data_dir, "grounding", cache_root, global_fusion="majority", include_image=False)
    rows = {r["image_id"]: r for s in ds for r in ds[s]}
    for image_id, row in rows.items():
        image = images[image_id]
        if image["split"] != "train" or row["no_finding"]:
            continue
        votes = {lab: sum(lab in r["local_labels"] for r in image["readers"]) for lab in VINDR_LOCAL_LABELS}
        assert row["local_labels"] == [lab for lab in VINDR_LOCAL_LABELS if 2 * votes[lab] > 3]
        assert set(row["box_labels"]) <= set(row["local_labels"])
        gvotes = {g: sum(g in r["global_labels"] for r in image["readers"]) for g in GLOBAL_DISEASES}
        assert row["global_labels"] == [g for g in GLOBAL_DISEASES if 2 * gvotes[g] > 3]


def test_settings_stage1_target_task_token_and_dedup_none(synthetic, cache_root):
    manifest, data_dir = synthetic
    _, ds = build(
        data_dir,
        "grounding",
        cache_root,
        stage1_target="global+local",
        task_token="[grounding]",
        dedup="none",
        validation_fraction=0.0,
        include_image=False,
    )
    assert set(ds) == {"train", "test"}
    expected = expected_training_rows(manifest)
    for row in ds["train"]:
        text = text_of(row["completion"])
        exp = expected[row["image_id"]]
        assert text.startswith(exp["diagnosis"] + " Local diseases of this chest radiograph are ")
        assert text_of(row["prompt"]).startswith("[grounding] Please describe")
        assert len(row["boxes"]) >= len(exp["boxes"])
    builder, ds = build(data_dir, "diagnosis", cache_root, validation_fraction=1e-9, include_image=False)
    assert list(ds) == ["train", "test"] and builder.counts["empty_splits_omitted"] == ["validation"]
    _, raw = build(data_dir, "raw", cache_root, include_image=True, max_side=32)
    assert all(max(r["images"][0].size) == 32 for r in raw["test"])
    with pytest.raises(ValueError, match="dedup"):
        VinDrCXR(config_name="grounding", data_dir=str(data_dir), cache_dir=str(cache_root), dedup="nms")
    with pytest.raises(ValueError, match="doesn't have a 'dedupe' key"):
        VinDrCXR(config_name="grounding", data_dir=str(data_dir), cache_dir=str(cache_root), dedupe="none")


def test_paper_settings_stage1_with_boxes_only_and_appendix_windowing(synthetic, built, cache_root):
    """`stage1_images="with_boxes"` keeps only stage-1 training images whose target lists a box (validation and test
    keep every image); `windowing="paper_appendix"` stores the appendix's conversion of each DICOM."""
    manifest, data_dir = synthetic
    builder, ds = build(data_dir, "grounding", cache_root, stage1_images="with_boxes", windowing="paper_appendix")
    expected = expected_training_rows(manifest)
    kept = {row["image_id"] for row in ds["train"]}
    train_ids = {i for i, e in expected.items() if e["split"] == "train"}
    assert kept == {i for i in train_ids if expected[i]["boxes"]}
    assert all(row["boxes"] for row in ds["train"])
    assert builder.counts["train"]["stage1_images_without_boxes"] == len(train_ids - kept) > 0
    _, default = built["grounding"]
    for split in ("validation", "test"):
        assert {r["image_id"] for r in ds[split]} == {r["image_id"] for r in default[split]}
    assert any(not row["boxes"] for split in ("validation", "test") for row in ds[split])
    converted = 0
    for split in ds:
        for row in ds[split]:
            path = data_dir.parent.parent / manifest["vindr"]["images"][row["image_id"]]["path"]
            expected_pixels = dicom_to_uint8(read_dicom(path), windowing="paper_appendix")
            assert np.array_equal(np.asarray(row["images"][0]), expected_pixels), row["image_id"]
            converted += not np.array_equal(expected_pixels, dicom_to_uint8(read_dicom(path)))
    assert converted > 0  # the two conversions differ on these DICOMs
    # The diagnosis (stage 2) config ignores the setting: every training image stays.
    _, diagnosis = build(data_dir, "diagnosis", cache_root, stage1_images="with_boxes", include_image=False)
    assert {r["image_id"] for r in diagnosis["train"]} == train_ids
    with pytest.raises(ValueError, match="stage1_images"):
        VinDrCXR(config_name="grounding", data_dir=str(data_dir), cache_dir=str(cache_root), stage1_images="boxed")


# ====================================================================================================== bad CSV input


def _first_box_row(frame):
    return next(i for i, r in frame.iterrows() if r["class_name"] != "No finding")


@pytest.mark.parametrize(
    "mutation, reason",
    [
        ("unknown_label", "unknown_label"),
        ("box_missing", "box_missing"),
        ("box_inverted", "box_inverted"),
        ("box_outside_image", "box_outside_image"),
        ("no_finding_with_box", "no_finding_with_box"),
    ],
)
def test_bad_annotation_rows_raise_naming_the_line_or_are_skipped(synthetic, tmp_path, mutation, reason):
    _, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path / "vindr")
    path = root / "annotations" / "annotations_train.csv"
    frame = read_csv(path)
    i = _first_box_row(frame)
    if mutation == "unknown_label":
        frame.loc[i, "class_name"] = "Mild opacity"
    elif mutation == "box_missing":
        frame.loc[i, "x_max"] = ""
    elif mutation == "box_inverted":
        frame.loc[i, ["x_min", "x_max"]] = [frame.loc[i, "x_max"], frame.loc[i, "x_min"]]
    elif mutation == "box_outside_image":
        frame.loc[i, "x_max"] = "100000.0"
    elif mutation == "no_finding_with_box":
        i = next(k for k, r in frame.iterrows() if r["class_name"] == "No finding")
        frame.loc[i, ["x_min", "y_min", "x_max", "y_max"]] = ["1", "1", "5", "5"]
    write_csv(frame, path)
    image_id = frame.loc[i, "image_id"]
    cache = tmp_path / "cache"
    with pytest.raises(VinDrDataError, match=f"annotations_train.csv line {i + 2} .*{image_id}"):
        build(root, "grounding", cache, include_image=False)
    assert not glob.glob(str(cache / "**" / "*.incomplete"), recursive=True)

    builder, ds = build(root, "grounding", cache, include_image=False, on_bad_row="skip_row")
    summary = builder.skipped
    assert summary[reason] == 1 and len(summary["items"]) == 1
    assert f"line {i + 2}" in summary["items"][0]["item"] and summary["items"][0]["reason"] == reason
    assert (
        image_id in {r["image_id"] for s in ds for r in ds[s]}
        or image_id in builder.preprocessing_log["dropped"]["conflict"]
    )

    builder, ds = build(root, "grounding", cache, include_image=False, on_bad_row="skip_image")
    assert builder.skipped[reason] == 1
    assert image_id not in {r["image_id"] for s in ds for r in ds[s]}
    assert builder.counts["train"]["images_skipped"] == 1


def test_label_spelling_variants_and_column_order_do_not_matter(synthetic, built, tmp_path):
    _, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path / "vindr")
    ann = root / "annotations" / "annotations_train.csv"
    frame = read_csv(ann)
    variants = {
        "Pulmonary fibrosis": "Pulmonary Fibrosis",
        "Nodule/Mass": "Nodule / Mass",
        "Lung Opacity": "lung  opacity",
    }
    frame["class_name"] = frame["class_name"].map(lambda n: variants.get(n, n))
    frame = frame[["y_max", "class_name", "x_min", "rad_id", "image_id", "y_min", "x_max"]]  # columns by name
    write_csv(frame, ann)
    labels = root / "annotations" / "image_labels_train.csv"
    lab = read_csv(labels)
    lab = lab.rename(columns={"Other diseases": "Other disease", "Pulmonary fibrosis": "Pulmonary Fibrosis"})
    lab = lab[list(reversed(lab.columns))]
    write_csv(lab, labels)
    for name in ("image_labels_test.csv", "annotations_test.csv"):  # a rad_id column in test is ignored (consensus)
        test_csv = read_csv(root / "annotations" / name)
        test_csv.insert(1, "rad_id", "R99")
        write_csv(test_csv, root / "annotations" / name)
    _, ds = build(root, "grounding", tmp_path / "cache")
    _, ref = built["grounding"]
    for split in ref:
        a, b = ref[split].remove_columns("images").to_list(), ds[split].remove_columns("images").to_list()
        assert a == b
    _, raw = build(root, "raw", tmp_path / "cache")
    names = {(r["class_name"], r["class_name_raw"]) for s in raw for r in raw[s]}
    assert ("Nodule/Mass", "Nodule / Mass") in names or ("Lung Opacity", "lung  opacity") in names


def test_reader_contradiction_raises_or_drops_the_reader(synthetic, tmp_path):
    _, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path / "vindr")
    labels = root / "annotations" / "image_labels_train.csv"
    lab = read_csv(labels)
    i = next(
        k for k, r in lab.iterrows() if r["No finding"] == "0" and r["Cardiomegaly"] + r["Aortic enlargement"] != "00"
    )
    image_id, rad_id = lab.loc[i, "image_id"], lab.loc[i, "rad_id"]
    lab.loc[i, "No finding"] = "1"
    write_csv(lab, labels)
    with pytest.raises(VinDrDataError, match=f"image_labels_train.csv line {i + 2} .*{rad_id}.*'No finding'=1"):
        build(root, "grounding", tmp_path / "cache", include_image=False)
    builder, ds = build(root, "labels", tmp_path / "cache", include_image=False, on_bad_row="skip_row")
    assert builder.skipped["reader_contradiction"] == 1
    assert builder.counts["train"]["readers_per_image"] == {"2": 1, "3": N_TRAIN - 1}
    readers = {r["rad_id"] for s in ds for r in ds[s] if r["image_id"] == image_id}
    assert rad_id not in readers and len(readers) == 2


def test_unknown_label_column_and_missing_column_raise_naming_the_file(synthetic, tmp_path):
    _, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path / "vindr")
    labels = root / "annotations" / "image_labels_test.csv"
    lab = read_csv(labels).rename(columns={"Rib fracture": "Rib fractures (old)"})
    write_csv(lab, labels)
    with pytest.raises(VinDrDataError, match="image_labels_test.csv: unknown label column 'Rib fractures"):
        build(root, "labels", tmp_path / "cache", include_image=False)
    shutil.copy(data_dir / "annotations" / "image_labels_test.csv", labels)
    ann = root / "annotations" / "annotations_test.csv"
    write_csv(read_csv(ann).drop(columns=["y_max"]), ann)
    with pytest.raises(VinDrDataError, match=r"annotations_test.csv: missing column\(s\) \['y_max'\]"):
        build(root, "raw", tmp_path / "cache")


def test_kaggle14_taxonomy_drops_the_missing_classes(synthetic, tmp_path):
    _, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path / "vindr")
    ann = root / "annotations" / "annotations_test.csv"
    frame = read_csv(ann)
    i = _first_box_row(frame)
    frame.loc[i, "class_name"] = "Rib fracture"
    write_csv(frame, ann)
    image_id = frame.loc[i, "image_id"]
    labels = root / "annotations" / "image_labels_test.csv"
    lab = read_csv(labels)
    lab.loc[lab["image_id"] == image_id, "Rib fracture"] = "1"
    write_csv(lab, labels)
    _, ds = build(root, "grounding", tmp_path / "cache", include_image=False)
    row = rows_by_id(ds["test"])[image_id]
    assert "Rib fracture" in row["box_labels"] and "<p>Rib fracture</p>" in text_of(row["completion"])
    builder, ds = build(root, "grounding", tmp_path / "cache", include_image=False, taxonomy="kaggle14")
    row = rows_by_id(ds["test"])[image_id]
    assert "Rib fracture" not in row["box_labels"] + row["local_labels"]
    assert "Rib fracture" not in text_of(row["completion"])
    assert builder.counts["test"]["boxes_dropped_taxonomy"] == 1
    _, lab_ds = build(root, "labels", tmp_path / "cache", include_image=False, taxonomy="kaggle14")
    assert "Rib fracture" not in lab_ds["test"].column_names and "Nodule/Mass" in lab_ds["test"].column_names
