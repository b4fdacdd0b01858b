"""VinDr-CXR builder: DICOM files as archives store them or damage them, and the builders' shared export, command
line and skip log (`datasets_scripts/export.py`, `common.py`), on the synthetic sample of `vindr_support`."""

from __future__ import annotations

import glob
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import Image as ImageFeature
from datasets import List
from PIL import Image
from vindr_support import (
    N_TEST,
    N_TRAIN,
    build,
    copy_vindr,
    expected_training_rows,
    rows_by_id,
)

from datasets_scripts.common import SkipLog
from datasets_scripts.export import export_parquet, push_to_hub, run_builder_cli
from datasets_scripts.vindr_cxr import (
    PREPROCESSING_LOG,
    VinDrCXR,
)
from processing_litegpt import (
    DicomReadError,
    read_dicom,
)

# ====================================================================================================== DICOM edge cases


def _plain_le_image(manifest):
    return next(
        i
        for i, m in manifest["vindr"]["images"].items()
        if m["split"] == "test" and m["dicom"]["transfer_syntax"] == "ExplicitVRLittleEndian"
    )


def _reencode(path: Path, transfer_syntax, frame: bytes):
    from pydicom.encaps import encapsulate

    ds = read_dicom(path)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_compressed_transfer_syntaxes_convert_or_fail_clearly(synthetic, built, tmp_path):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    manifest, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path / "vindr")
    image_id = _plain_le_image(manifest)
    path = root / "test" / f"{image_id}.dicom"
    stored = read_dicom(path).pixel_array
    buffer = io.BytesIO()
    Image.fromarray(stored.astype(np.uint16)).save(buffer, "JPEG2000", irreversible=False, no_jp2=True)
    _reencode(path, JPEG2000Lossless, buffer.getvalue())  # JPEG 2000 lossless: decoded through Pillow/openjpeg
    _, ds = build(root, "grounding", tmp_path / "cache")
    ref = rows_by_id(built["grounding"][1]["test"])[image_id]["images"][0]
    assert np.array_equal(np.asarray(rows_by_id(ds["test"])[image_id]["images"][0]), np.asarray(ref))

    _reencode(path, JPEGLSLossless, b"\xff\xd8\xff\xf7 not a real codestream \xff\xd9")  # the decoder refuses it
    cache = tmp_path / "cache2"
    with pytest.raises(DicomReadError, match=f"{image_id}.dicom"):
        build(root, "grounding", cache)
    assert not glob.glob(str(cache / "**" / "*.incomplete"), recursive=True)


@pytest.fixture(scope="module")
def corrupt_tree(synthetic, tmp_path_factory):
    """A copy whose first train DICOM is truncated inside its pixel data and whose test DICOM is missing."""
    manifest, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path_factory.mktemp("corrupt") / "vindr")
    expected = expected_training_rows(manifest)
    truncated = next(i for i in expected if manifest["vindr"]["images"][i]["split"] == "train")
    path = root / "train" / f"{truncated}.dicom"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    return root, truncated, path


def test_truncated_dicom_raises_naming_the_file_and_leaves_no_cache(corrupt_tree, tmp_path):
    root, _, path = corrupt_tree
    cache = tmp_path / "cache"
    builder = VinDrCXR(config_name="grounding", data_dir=str(root), cache_dir=str(cache))
    with pytest.raises(DicomReadError, match=f"{path.name}.*(less than expected|on_bad_image)") as info:
        builder.download_and_prepare(num_proc=1)
    assert str(path) in str(info.value)
    assert not os.path.exists(builder.cache_dir)
    assert not glob.glob(str(cache / "**" / "*.incomplete"), recursive=True)
    assert not glob.glob(str(cache / "**" / "*.arrow"), recursive=True)


@pytest.fixture(scope="module")
def skipped_builds(corrupt_tree, tmp_path_factory):
    root, _, _ = corrupt_tree
    cache = tmp_path_factory.mktemp("skip_cache")
    one = build(root, "grounding", cache / "one", num_proc=1, on_bad_image="skip")
    two = build(root, "grounding", cache / "two", num_proc=2, on_bad_image="skip")
    return one, two


def test_on_bad_image_skip_counts_and_lists_the_file(corrupt_tree, skipped_builds, synthetic):
    manifest, _ = synthetic
    _, truncated, path = corrupt_tree
    (builder, ds), _ = skipped_builds
    assert builder.skipped["dicom_decode_failed"] == 1
    assert str(path) in builder.skipped["items"][0]["item"]
    assert truncated not in {r["image_id"] for s in ds for r in ds[s]}
    assert sum(len(ds[s]) for s in ds) == len(expected_training_rows(manifest)) - 1
    log = json.loads((Path(builder.cache_dir) / PREPROCESSING_LOG).read_text())
    assert log["skipped"] == builder.skipped and log["counts"]["decode_skipped"] == 1
    assert not (Path(builder.cache_dir) / "_vindr_skips").exists()


def test_two_processes_give_the_same_rows_and_skips(skipped_builds):
    (b1, d1), (b2, d2) = skipped_builds
    assert b1.skipped == b2.skipped
    assert list(d1) == list(d2)
    for split in d1:
        assert d1[split].num_rows == d2[split].num_rows
        assert d1[split].remove_columns("images").to_list() == d2[split].remove_columns("images").to_list()
        undecoded = List(ImageFeature(decode=False))
        raw1 = d1[split].cast_column("images", undecoded)["images"]
        raw2 = d2[split].cast_column("images", undecoded)["images"]
        assert [x[0]["bytes"] for x in raw1] == [x[0]["bytes"] for x in raw2]


def test_missing_and_unreadable_dicoms(synthetic, tmp_path):
    manifest, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path / "vindr")
    test_ids = [i for i, m in manifest["vindr"]["images"].items() if m["split"] == "test"]
    missing, stub = root / "test" / f"{test_ids[0]}.dicom", root / "test" / f"{test_ids[1]}.dicom"
    missing.unlink()
    stub.write_bytes(stub.read_bytes()[:100])
    with pytest.raises(FileNotFoundError, match=missing.name):
        build(root, "labels", tmp_path / "cache", include_image=False)
    builder, ds = build(root, "labels", tmp_path / "cache", include_image=False, on_bad_image="skip")
    assert builder.skipped["dicom_missing"] == 1 and builder.skipped["dicom_unreadable"] == 1
    items = " ".join(e["item"] for e in builder.skipped["items"])
    assert missing.name in items and stub.name in items
    assert {r["image_id"] for r in ds["test"]} == set(test_ids[2:])


# ====================================================================================================== export / CLI / common


def test_export_parquet_and_reload_give_the_same_rows(built, tmp_path):
    from datasets import load_dataset

    dd = {"grounding": built["grounding"][1], "raw": built["raw"][1]}
    builder = built["grounding"][0]
    out = export_parquet(
        dd,
        tmp_path / "export",
        "VinDr-CXR test",
        builder.settings,
        {"grounding": builder.counts},
        skipped={"grounding": builder.skipped},
    )
    for config, dataset_dict in dd.items():
        for split in dataset_dict:
            assert (out / config / f"{split}-00000-of-00001.parquet").is_file()
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    configs = {c["config_name"]: c["data_files"] for c in front["configs"]}
    assert configs["grounding"] == [
        {"split": s, "path": f"grounding/{s}-*.parquet"} for s in ("train", "validation", "test")
    ]
    assert (
        "do not redistribute" in card
        and '"dedup": "keep_first"' in card
        and "Nothing" not in card.split("## Skipped")[0]
    )
    assert json.loads((out / "skipped.json").read_text()) == {"grounding": builder.skipped}

    files = {s: str(out / "grounding" / f"{s}-00000-of-00001.parquet") for s in dd["grounding"]}
    reloaded = load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "pq_cache"))
    by_card = load_dataset(str(out), "grounding", cache_dir=str(tmp_path / "pq_cache2"))
    for again in (reloaded, by_card):
        for split, original in dd["grounding"].items():
            assert again[split].features == original.features
            a, b = original.to_list(), again[split].to_list()
            assert len(a) == len(b)
            for x, y in zip(a, b):
                assert {k: v for k, v in x.items() if k != "images"} == {k: v for k, v in y.items() if k != "images"}
                assert np.array_equal(np.asarray(x["images"][0]), np.asarray(y["images"][0]))
    raw = load_dataset(str(out), "raw", cache_dir=str(tmp_path / "pq_cache3"))
    assert raw["train"].to_list() == dd["raw"]["train"].to_list()


def test_cli_builds_exports_and_parses_settings(synthetic, tmp_path, capsys):
    _, data_dir = synthetic
    summary = run_builder_cli(
        VinDrCXR,
        "test",
        argv=[
            "--data_dir",
            str(data_dir),
            "--config",
            "diagnosis",
            "--config",
            "raw",
            "--cache_dir",
            str(tmp_path / "c"),
            "--export",
            str(tmp_path / "out"),
            "--set",
            "validation_fraction=0",
            "--set",
            "max_side=none",
            "--set",
            "image_wrapper=<image>,</image>",
            "--set",
            "include_image=false",
        ],
    )
    printed = json.loads(capsys.readouterr().out)
    conflicts = len(synthetic[0]["edge_cases"]["vindr"]["conflict"])
    assert printed["rows"]["diagnosis"] == {"train": N_TRAIN - conflicts, "test": N_TEST}
    assert set(printed["rows"]) == {"diagnosis", "raw"} and "validation" not in printed["rows"]["raw"]
    assert printed["skipped"]["diagnosis"] == {"items": []}
    assert printed["preprocessing"]["diagnosis"]["train"]["conflict_dropped"] == conflicts
    card = (tmp_path / "out" / "README.md").read_text()
    settings = json.loads(card.split("## Settings")[1].split("```json")[1].split("```")[0])
    assert settings["image_wrapper"] == ["<image>", "</image>"] and settings["max_side"] is None
    assert settings["validation_fraction"] == 0 and settings["include_image"] is False
    assert summary["export"] == str(tmp_path / "out")
    assert {c["config_name"] for c in yaml.safe_load(card.split("---")[1])["configs"]} == {"diagnosis", "raw"}
    with pytest.raises(SystemExit):
        run_builder_cli(VinDrCXR, "test", argv=["--data_dir", str(data_dir), "--set", "nonsense=1"])


def test_skiplog_and_push_refuses_public(tmp_path, caplog):
    log = SkipLog(name="t")
    with caplog.at_level("WARNING"):
        log.skip("a.dicom", "dicom_missing")
    assert "a.dicom" in caplog.text and "dicom_missing" in caplog.text
    other = SkipLog(quiet=True)
    other.skip("b.csv line 3", "unknown_label")
    other.skip("c.csv line 4", "unknown_label")
    log.extend(other).extend(other.summary())
    summary = log.summary()
    assert summary["dicom_missing"] == 1 and summary["unknown_label"] == 4 and len(summary["items"]) == 5
    assert summary["items"][0] == {"item": "a.dicom", "reason": "dicom_missing"}
    assert SkipLog.from_summary(summary).summary() == summary
    with pytest.raises(ValueError):
        log.skip("x", "items")
    (tmp_path / "README.md").write_text("---\n---\n")
    with pytest.raises(ValueError, match="public"):
        push_to_hub(tmp_path, "me/vindr", private=False)


def test_a_split_emptied_by_undecodable_images_is_left_out_and_listed(synthetic, tmp_path):
    """Every test DICOM has a readable header but truncated pixels: with on_bad_image="skip" the test split loses
    all its rows while generating, so it is left out (as a split empty in the plan is) and listed."""
    manifest, data_dir = synthetic
    root = copy_vindr(data_dir, tmp_path / "vindr")
    test_ids = [i for i, m in manifest["vindr"]["images"].items() if m["split"] == "test"]
    for image_id in test_ids:
        path = root / "test" / f"{image_id}.dicom"
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.7)])
    builder, ds = build(root, "grounding", tmp_path / "cache", on_bad_image="skip")
    assert "test" not in ds and len(ds["train"]) > 0
    assert builder.counts["empty_splits_omitted"] == ["test"]
    assert builder.skipped["dicom_decode_failed"] == len(test_ids)
    assert "test" not in builder.preprocessing_log["rows"]
