"""The MIMIC-CXR builder (datasets_scripts/mimic_cxr.py) on the synthetic MIMIC-CXR / MIMIC-CXR-JPG sample.

Expected rows are re-derived here from `manifest.json` (what the generator wrote) with the documented
preprocessing only: frontal images (PA, AP), one per study for report/existence (PA before AP, then the smallest
dicom_id), official splits (validate -> validation), targets = whitespace-collapsed findings, else impression, else
last paragraph; rules labels follow the generator's sentences (positive > uncertain > negated > not mentioned, with
"Heart size is normal." not a cardiomegaly mention, as in its NegBio CSV).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import Image as ImageFeature
from datasets import List, load_dataset
from PIL import Image

from datasets_scripts import synthetic
from datasets_scripts.export import export_parquet
from datasets_scripts.mimic_cxr import MIMICCXR, MIMICDataError, MIMICImageError, main
from datasets_scripts.mimic_reports import ENTITY_CHEXPERT_COLUMN
from processing_litegpt import completion_messages, dicom_to_uint8, prompt_messages, read_dicom

N_STUDIES = 16
FRONTAL = ("PA", "AP")
SPLIT = {"train": "train", "validate": "validation", "test": "test"}
ENTITIES = tuple(ENTITY_CHEXPERT_COLUMN)


def collapse(text):
    return None if text is None else " ".join(text.split())


# ======================================================================================= fixtures


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic_synth")
    manifest = synthetic.generate(root, n_train=0, n_test=0, mimic_studies=N_STUDIES, seed=3, image_size=48)
    edges = manifest["edge_cases"]["mimic"]
    for case in ("impression_only", "no_sections", "two_frontal", "lateral_only", "conclusion_header"):
        assert edges[case], f"the sample lacks a {case} study"
    return root, manifest


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mimic_cache")


def build(data_dir, cache_dir, config_name, **settings):
    settings.setdefault("max_side", 0)  # keep the source size so pixels can be compared exactly
    builder = MIMICCXR(config_name=config_name, data_dir=str(data_dir), cache_dir=str(cache_dir), **settings)
    builder.download_and_prepare()
    return builder, builder.as_dataset()


@pytest.fixture(scope="session")
def built(synth, cache):
    root, _ = synth
    return {name: build(root, cache, name) for name in ("raw", "report", "existence")}


# ======================================================================================= expectations


def studies(manifest):
    return manifest["mimic"]["studies"].values()


def frontal_images(study):
    return sorted((im for im in study["images"] if im["view"] in FRONTAL),
                  key=lambda im: (FRONTAL.index(im["view"]), im["dicom_id"]))


def expected_target(study):
    s = study["sections"]
    for name in ("findings", "impression", "last_paragraph"):
        if s[name]:
            return collapse(s[name]), name
    return None


def expected_rules(study):
    out = {}
    for entity, column in ENTITY_CHEXPERT_COLUMN.items():
        if column in study["positives"]:
            out[entity] = 1
        elif column in study["uncertain"]:
            out[entity] = -1
        elif study["negbio"][column] == 0.0:
            out[entity] = 0
        else:
            out[entity] = None
    return out


def cell(value):
    return None if value is None else int(value)


def expected_skip_reasons(manifest, config_name, source="rules"):
    """{reason: count} of the studies the builder must skip and list on the intact sample: studies without a
    frontal image (every config) and, for existence, studies without any 1/0 answer."""
    reasons = Counter()
    for study in studies(manifest):
        if not frontal_images(study):
            reasons["study_without_selected_view"] += 1
            continue
        if config_name == "existence":
            labels = expected_rules(study) if source == "rules" else {
                e: cell(study[source][ENTITY_CHEXPERT_COLUMN[e]]) for e in ENTITIES}
            if not any(labels[e] in (0, 1) for e in ENTITIES):
                reasons["study_without_entity_answer"] += 1
    return dict(reasons)


def skip_reasons(skipped):
    return {k: v for k, v in skipped.items() if k != "items"}


def stored(messages):
    """Messages as Arrow returns them: every content block has both `type` and `text` (None when absent)."""
    return [{**m, "content": [{"type": b["type"], "text": b.get("text")} for b in m["content"]]} for m in messages]


def rows_of(dataset_dict):
    return {split: [dict(r) for r in ds] for split, ds in dataset_dict.items()}


# ======================================================================================= configs


def test_splits_and_features(built, synth):
    _, manifest = synth
    for name, (builder, ds) in built.items():
        assert list(ds) == ["train", "validation", "test"], name
        if name == "raw":
            assert "images" not in ds["train"].features
        else:
            assert ds["train"].features["images"] == List(ImageFeature())
        # nothing is dropped silently: the lateral-only study is skipped and named in every config
        assert skip_reasons(builder.skipped) == expected_skip_reasons(manifest, name), name
        assert expected_skip_reasons(manifest, name)["study_without_selected_view"] >= 1
        for entry in builder.skipped["items"]:
            if entry["reason"] == "study_without_selected_view":
                assert "(views: LATERAL)" in entry["item"] or "(views: LL)" in entry["item"]
        assert builder.settings["views"] == ["PA", "AP"]


def test_report_rows_equal_the_manifest(built, synth):
    root, manifest = synth
    builder, ds = built["report"]
    expected = {}
    for study in studies(manifest):
        images = frontal_images(study)
        if images:
            expected[images[0]["dicom_id"]] = (study, images[0])
    got = {r["dicom_id"]: (split, r) for split, rows in rows_of(ds).items() for r in rows}
    assert set(got) == set(expected)
    prompt = stored(prompt_messages("report"))
    sources = Counter()
    for dicom_id, (study, image) in expected.items():
        split, row = got[dicom_id]
        target, source = expected_target(study)
        sources[source] += 1
        assert split == SPLIT[study["split"]]
        assert (row["subject_id"], row["study_id"], row["view"]) == (study["subject_id"], study["study_id"],
                                                                      image["view"])
        assert row["prompt"] == prompt
        assert row["completion"] == stored(completion_messages(target))
        assert row["target_section"] == source
        assert row["findings"] == collapse(study["sections"]["findings"])
        assert row["impression"] == collapse(study["sections"]["impression"])
        assert (row["width"], row["height"]) == (image["columns"], image["rows"])
        # pixels: the processor's DICOM conversion, losslessly stored
        pixels = np.asarray(row["images"][0])
        assert np.array_equal(pixels, dicom_to_uint8(read_dicom(root / image["dicom"])))
    assert sources["last_paragraph"] == 1 and sources["impression"] >= 1
    counts = builder.counts
    assert counts["report_sections_used"] == dict(sorted(sources.items()))
    assert counts["images_not_selected_one_per_study"] == sum(
        max(0, len(frontal_images(s)) - 1) for s in studies(manifest))
    assert counts["images_view_filtered"] == dict(Counter(
        im["view"] for s in studies(manifest) for im in s["images"] if im["view"] not in FRONTAL))
    assert counts["studies_without_selected_image"] == sum(1 for s in studies(manifest) if not frontal_images(s))
    assert builder.preprocessing_log["rows"] == {k: len(v) for k, v in ds.items()}


def test_two_frontal_study_keeps_the_smallest_dicom_id(built, synth):
    _, manifest = synth
    _, ds = built["report"]
    ids = {r["study_id"]: r["dicom_id"] for rows in rows_of(ds).values() for r in rows}
    for study_id in manifest["edge_cases"]["mimic"]["two_frontal"]:
        study = manifest["mimic"]["studies"][str(study_id)]
        assert ids[study_id] == min(im["dicom_id"] for im in study["images"])
    for study_id in manifest["edge_cases"]["mimic"]["lateral_only"]:
        assert study_id not in ids


def expected_existence(manifest, source):
    out = {}
    for study in studies(manifest):
        images = frontal_images(study)
        if not images:
            continue
        rules = expected_rules(study)
        for entity in ENTITIES:
            column = ENTITY_CHEXPERT_COLUMN[entity]
            label = rules[entity] if source == "rules" else cell(study[source][column])
            if label in (0, 1):
                out[(images[0]["dicom_id"], entity)] = (study, label, rules[entity])
    return out


@pytest.mark.parametrize("source", ["rules", "chexpert"])
def test_existence_rows_equal_the_manifest(built, synth, cache, source):
    root, manifest = synth
    builder, ds = built["existence"] if source == "rules" else build(root, cache, "existence", label_source=source)
    expected = expected_existence(manifest, source)
    got = {(r["dicom_id"], r["entity"]): (split, r) for split, rows in rows_of(ds).items() for r in rows}
    assert set(got) == set(expected)
    for key, (study, label, rules_label) in expected.items():
        split, row = got[key]
        entity = key[1]
        column = ENTITY_CHEXPERT_COLUMN[entity]
        assert split == SPLIT[study["split"]]
        assert row["label"] == label and row["label_source"] == source
        assert row["rules_label"] == rules_label
        assert row["chexpert_label"] == cell(study["chexpert"][column])
        assert row["negbio_label"] == cell(study["negbio"][column])
        assert row["prompt"] == stored(prompt_messages("existence", entity=entity.lower()))
        assert row["prompt"][0]["content"][1]["text"] == (
            f"[vqa] Is there {entity.lower()} in this chest X-ray? Answer yes or no."
        )
        assert row["completion"] == stored(completion_messages("Yes" if label == 1 else "No"))
    # uncertain and unmentioned answers are counted, never trained
    counts = builder.counts
    for entity in ENTITIES:
        labels = []
        for study in studies(manifest):
            if frontal_images(study):
                column = ENTITY_CHEXPERT_COLUMN[entity]
                labels.append(expected_rules(study)[entity] if source == "rules" else cell(study[source][column]))
        assert counts["existence_not_trained"][entity] == {"uncertain": labels.count(-1),
                                                           "not_mentioned": labels.count(None)}
        assert counts["existence_answers"][entity] == {"Yes": labels.count(1), "No": labels.count(0)}


def test_uncertain_cases_are_present_and_agreement_is_reported(built, synth):
    _, manifest = synth
    builder, _ = built["existence"]
    counts = builder.counts
    assert sum(v["-1"] for v in counts["labels"]["rules"].values()) >= 1
    assert sum(v["-1"] for v in counts["labels"]["chexpert"].values()) >= 1
    agreement = counts["agreement"]
    # the rules reproduce the generator's NegBio labels exactly; CheXpert additionally reads "Heart size is normal."
    for entity in ENTITIES:
        assert agreement["negbio"][entity]["rate"] in (1.0, None)
        pairs = agreement["negbio"][entity]["pairs"]
        assert all(k.split(",")[0][6:] == k.split(",")[1][6:] for k in pairs), pairs
    assert agreement["chexpert"]["Cardiomegaly"]["pairs"].get("rules=missing,other=0", 0) == sum(
        1 for s in studies(manifest) if frontal_images(s)
        and s["chexpert"]["Cardiomegaly"] == 0.0 and s["negbio"]["Cardiomegaly"] is None
    )


def test_raw_rows_carry_sections_and_all_label_states(built, synth):
    _, manifest = synth
    builder, ds = built["raw"]
    got = {r["dicom_id"]: (split, r) for split, rows in rows_of(ds).items() for r in rows}
    expected = {im["dicom_id"]: (s, im) for s in studies(manifest) for im in frontal_images(s)}
    assert set(got) == set(expected)  # raw keeps every frontal image (one_image_per_study=False)
    assert builder.counts["images_not_selected_one_per_study"] == 0
    states = Counter()
    for dicom_id, (study, image) in expected.items():
        split, row = got[dicom_id]
        assert split == row["split"] == SPLIT[study["split"]]
        assert row["report"] == (Path(synth[0]) / study["report"]).read_text(encoding="utf-8")
        for name in ("findings", "impression", "last_paragraph"):
            assert row[name] == collapse(study["sections"][name]), name
        assert row["chexpert"] == {k: cell(v) for k, v in study["chexpert"].items()}
        assert row["negbio"] == {k: cell(v) for k, v in study["negbio"].items()}
        states.update(row["chexpert"].values())
        assert row["rules"] == expected_rules(study)
        for triplet in row["triplets"]:
            assert triplet["existence"] in (1, 0, -1)
            assert row["rules"][triplet["entity"]] is not None
        assert (row["width"], row["height"]) == (image["columns"], image["rows"])
        assert row["image_path"] == image["dicom"].split("/", 2)[2]
        assert row["report_path"] == study["report"].split("/", 2)[2]
    assert {1, 0, -1, None} <= set(states)  # CheXpert's four states stay distinct
    # sided mentions keep their position word
    effusions = [t for _, r in got.values() for t in r["triplets"] if t["entity"] == "Effusion" and t["existence"]]
    assert effusions and all(set(t["position"]) & {"left", "right"} for t in effusions)


def test_view_settings(synth, cache):
    root, manifest = synth
    _, ds = build(root, cache, "report", views=("AP",), include_image=False)
    rows = [r for rows in rows_of(ds).values() for r in rows]
    assert rows and all(r["view"] == "AP" for r in rows)
    assert len(rows) == sum(1 for s in studies(manifest) if any(im["view"] == "AP" for im in s["images"]))
    _, ds = build(root, cache, "report", views="all", one_image_per_study=False, include_image=False)
    rows = [r for rows in rows_of(ds).values() for r in rows]
    assert len(rows) == sum(len(s["images"]) for s in studies(manifest))
    # max_side bounds the stored PNG only; width/height stay the source size
    _, ds = build(root, cache, "report", views=("PA",), max_side=32)
    sizes = {im["dicom_id"]: (im["columns"], im["rows"]) for s in studies(manifest) for im in s["images"]}
    for row in (r for rows in rows_of(ds).values() for r in rows):
        assert (row["width"], row["height"]) == sizes[row["dicom_id"]]
        assert max(row["images"][0].size) == 32
    with pytest.raises(ValueError, match="label_source"):
        MIMICCXR(config_name="existence", data_dir=str(root), cache_dir=str(cache), label_source="bogus")


# ======================================================================================= JPG layout


@pytest.fixture(scope="session")
def jpg_only(synth, tmp_path_factory):
    """MIMIC-CXR-JPG only (its CSVs and JPGs) + the reports archive of MIMIC-CXR, as a JPG user has them."""
    root, manifest = synth
    out = tmp_path_factory.mktemp("mimic_jpg_only")
    shutil.copytree(root / manifest["mimic"]["jpg_root"], out / "mimic-cxr-jpg" / "2.1.0")
    dicom_root = root / manifest["mimic"]["dicom_root"]
    with zipfile.ZipFile(out / "mimic-cxr-jpg" / "2.1.0" / "mimic-cxr-reports.zip", "w") as archive:
        for path in sorted((dicom_root / "files").rglob("*.txt")):
            archive.write(path, path.relative_to(dicom_root).as_posix())
    return out


def test_jpg_layout_gives_the_same_texts_and_the_jpg_pixels(built, synth, jpg_only, cache):
    root, manifest = synth
    builder, ds = build(jpg_only, cache, "report")
    assert builder.preprocessing_log["layout"]["image_format"] == "jpg"
    assert builder.preprocessing_log["layout"]["reports_archive"].endswith("mimic-cxr-reports.zip")
    dicom_rows = {r["dicom_id"]: r for rows in rows_of(built["report"][1]).values() for r in rows}
    jpg_rows = {r["dicom_id"]: r for rows in rows_of(ds).values() for r in rows}
    assert set(jpg_rows) == set(dicom_rows)
    images = {im["dicom_id"]: im for s in studies(manifest) for im in s["images"]}
    for dicom_id, row in jpg_rows.items():
        assert row["completion"] == dicom_rows[dicom_id]["completion"]
        with Image.open(root / images[dicom_id]["jpg"]) as jpg:
            assert np.array_equal(np.asarray(row["images"][0]), np.asarray(jpg))
        assert (row["width"], row["height"]) == (images[dicom_id]["columns"], images[dicom_id]["rows"])
    # both trees present: image_format="jpg" picks the JPGs, "auto" the DICOMs
    builder, _ = build(root, cache, "report", image_format="jpg", include_image=False)
    assert builder.preprocessing_log["layout"]["image_format"] == "jpg"
    assert built["report"][0].preprocessing_log["layout"]["image_format"] == "dicom"


# ======================================================================================= export


def test_parquet_export_round_trip(built, synth, cache, tmp_path):
    datasets_by_config = {name: ds for name, (_, ds) in built.items()}
    out = export_parquet(datasets_by_config, tmp_path / "export", "MIMIC-CXR test", built["report"][0].settings,
                         {name: b.counts for name, (b, _) in built.items()})
    for name, ds in datasets_by_config.items():
        files = {split: str(out / name / f"{split}-*.parquet") for split in ds if len(ds[split])}
        reloaded = load_dataset("parquet", data_files=files)
        for split in files:
            a, b = ds[split], reloaded[split]
            if "images" in a.features:
                a = a.cast_column("images", List(ImageFeature(decode=False)))
                b = b.cast_column("images", List(ImageFeature(decode=False)))
            assert a.to_list() == b.to_list(), (name, split)
    # the card's YAML `configs:` makes the folder loadable by config name, script-free
    report = load_dataset(str(out), "report")
    assert report["train"]["completion"] == built["report"][1]["train"]["completion"]


def test_cli_builds_and_exports(synth, cache, tmp_path):
    root, _ = synth
    out = tmp_path / "cli_export"
    main(["--data_dir", str(root), "--config", "existence", "--cache_dir", str(cache), "--export", str(out),
          "--set", "label_source=negbio", "--set", "include_image=false", "--set", "views=PA,AP"])
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "config_name: existence" in card and '"label_source": "negbio"' in card
    reloaded = load_dataset(str(out), "existence")
    assert set(reloaded["train"]["label_source"]) == {"negbio"}
    exported = json.loads((out / "skipped.json").read_text())["existence"]
    assert skip_reasons(exported) == expected_skip_reasons(synth[1], "existence", "negbio")


# ======================================================================================= bad input


@pytest.fixture()
def damaged(synth, tmp_path):
    """A copy of the sample with one corrupt DICOM, one missing DICOM and one report without sections, in three
    different studies whose first frontal image is used by `report`."""
    root, manifest = synth
    out = tmp_path / "damaged"
    shutil.copytree(root, out)
    chosen = [s for s in studies(manifest) if frontal_images(s) and s["report_variant"] == "full"][:3]
    assert len(chosen) == 3
    corrupt = out / frontal_images(chosen[0])[0]["dicom"]
    corrupt.write_bytes(corrupt.read_bytes()[:400])  # truncated: header survives, pixels do not
    missing = out / frontal_images(chosen[1])[0]["dicom"]
    missing.unlink()
    bad_report = out / chosen[2]["report"]
    bad_report.write_text("Normal chest radiograph.\n", encoding="utf-8")
    return out, manifest, chosen, {"corrupt": corrupt, "missing": missing, "report": bad_report}


def assert_no_prepared_cache(cache_dir: Path):
    assert not list(cache_dir.rglob("dataset_info.json")), "a failed build left a prepared dataset"
    assert not list(cache_dir.rglob("*.incomplete")), "a failed build left an .incomplete folder"


def test_corrupt_image_raises_naming_the_file_and_leaves_no_cache(damaged, tmp_path):
    root, _, _, paths = damaged
    cache_dir = tmp_path / "cache_raise"
    builder = MIMICCXR(config_name="report", data_dir=str(root), cache_dir=str(cache_dir), max_side=0,
                       on_bad_report="skip")
    with pytest.raises(MIMICImageError) as info:
        builder.download_and_prepare()
    assert str(paths["corrupt"]) in str(info.value) or str(paths["missing"]) in str(info.value)
    assert "on_bad_image='skip'" in str(info.value) and "(nothing was written to the cache)" in str(info.value)
    # surfaced from datasets' wrapper with its skip reason
    assert info.value.reason == ("image_missing" if str(paths["missing"]) in str(info.value) else "image_unreadable")
    assert_no_prepared_cache(cache_dir)


def test_report_without_sections_raises_naming_the_file(damaged, tmp_path):
    root, _, _, paths = damaged
    cache_dir = tmp_path / "cache_report"
    builder = MIMICCXR(config_name="report", data_dir=str(root), cache_dir=str(cache_dir), on_bad_report="raise",
                       on_bad_image="skip")
    with pytest.raises(MIMICDataError, match="no FINDINGS or IMPRESSION") as info:
        builder.download_and_prepare()
    assert str(paths["report"]) in str(info.value)
    assert_no_prepared_cache(cache_dir)


def test_bad_input_is_skipped_counted_and_listed(damaged, built, tmp_path):
    root, _, chosen, paths = damaged
    builder, ds = build(root, tmp_path / "cache_skip", "report", on_bad_image="skip", on_bad_report="skip")
    skipped = builder.skipped
    assert skip_reasons(skipped) == {
        "image_missing": 1, "image_unreadable": 1, "report_without_sections": 1, "study_without_selected_view": 1
    }
    items = {entry["reason"]: entry["item"] for entry in skipped["items"]}
    assert str(paths["corrupt"]) in items["image_unreadable"]
    assert str(paths["missing"]) in items["image_missing"]
    assert str(paths["report"]) in items["report_without_sections"]
    dropped = {frontal_images(s)[0]["dicom_id"] for s in chosen}
    full = {r["dicom_id"] for rows in rows_of(built["report"][1]).values() for r in rows}
    got = {r["dicom_id"] for rows in rows_of(ds).values() for r in rows}
    assert got == full - dropped
    assert builder.counts["studies_dropped_report"] == 1
    assert builder.counts["images_skipped_unreadable"] == 2
    assert builder.preprocessing_log["rows"] == {k: len(v) for k, v in ds.items()}
    # the log survives a reload from the cache
    again = MIMICCXR(config_name="report", data_dir=str(root), cache_dir=str(tmp_path / "cache_skip"), max_side=0,
                     on_bad_image="skip", on_bad_report="skip")
    again.download_and_prepare()
    assert again.skipped == skipped
    # raw does not need the text: the study stays, counted
    raw, raw_ds = build(root, tmp_path / "cache_skip", "raw")
    assert raw.counts["reports_without_sections"] == 1
    assert skip_reasons(raw.skipped) == {"study_without_selected_view": 1}
    row = next(r for rows in rows_of(raw_ds).values() for r in rows if r["study_id"] == chosen[2]["study_id"])
    assert row["findings"] is None and row["impression"] is None and row["report"] == "Normal chest radiograph.\n"


def test_missing_report_and_missing_csv(synth, tmp_path):
    root, manifest = synth
    out = tmp_path / "no_report"
    shutil.copytree(root, out)
    study = next(s for s in studies(manifest) if frontal_images(s))
    (out / study["report"]).unlink()
    builder, ds = build(out, tmp_path / "cache", "report", include_image=False)
    assert builder.skipped["report_missing"] == 1
    missing = [e["item"] for e in builder.skipped["items"] if e["reason"] == "report_missing"]
    assert str(out / study["report"]) in missing[0]
    assert study["study_id"] not in {r["study_id"] for rows in rows_of(ds).values() for r in rows}
    (out / manifest["mimic"]["files"]["split"]).unlink()
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-split"):
        MIMICCXR(config_name="report", data_dir=str(out), cache_dir=str(tmp_path / "cache2")).download_and_prepare()
    assert_no_prepared_cache(tmp_path / "cache2")


def test_malformed_chexpert_cell_names_file_and_line(synth, tmp_path):
    root, manifest = synth
    out = tmp_path / "bad_csv"
    shutil.copytree(root, out)
    path = out / manifest["mimic"]["files"]["chexpert"]
    import gzip

    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    header = lines[0].split(",")
    fields = lines[3].split(",")
    fields[header.index("Pneumothorax")] = "2.0"
    lines[3] = ",".join(fields)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    builder = MIMICCXR(config_name="existence", data_dir=str(out), cache_dir=str(tmp_path / "cache"),
                       label_source="chexpert")
    with pytest.raises(MIMICDataError, match=r"chexpert\.csv\.gz:4: column 'Pneumothorax'"):
        builder.download_and_prepare()


def test_a_split_emptied_by_skipped_images_is_left_out_and_listed(synth, tmp_path):
    """Only some splits' images downloaded (here: none of validation's): the split has no rows, so it is left out of
    the dataset and listed in counts["empty_splits"], as a split empty in the plan is; the images are named."""
    root, manifest = synth
    out = tmp_path / "no_validation_images"
    shutil.copytree(root, out)
    removed = []
    for study in studies(manifest):
        if study["split"] == "validate":
            for image in study["images"]:
                (out / image["dicom"]).unlink()
                removed.append(str(out / image["dicom"]))
    assert removed
    builder, ds = build(out, tmp_path / "cache", "report", on_bad_image="skip", on_bad_report="skip")
    assert list(ds) == ["train", "test"]
    assert builder.counts["empty_splits"] == ["validation"]
    assert builder.preprocessing_log["rows"] == {"train": len(ds["train"]), "test": len(ds["test"])}
    missing = [entry["item"] for entry in builder.skipped["items"] if entry["reason"] == "image_missing"]
    assert missing and all(any(path in item for path in removed) for item in missing)
    # Read back from the cache, the dataset still has no validation split and loads.
    again = MIMICCXR(config_name="report", data_dir=str(out), cache_dir=str(tmp_path / "cache"), max_side=0,
                     on_bad_image="skip", on_bad_report="skip")
    again.download_and_prepare()
    assert list(again.as_dataset()) == ["train", "test"] and again.counts["empty_splits"] == ["validation"]


def test_existence_study_without_any_answer_is_skipped_and_named(synth, tmp_path):
    """A report that mentions none of the entities, and one that mentions one only uncertainly: no existence row,
    each study skipped with its report named and what its answers were."""
    root, manifest = synth
    out = tmp_path / "no_answers"
    shutil.copytree(root, out)
    chosen = [s for s in studies(manifest) if frontal_images(s) and s["report_variant"] == "full"][:2]
    texts = ["FINDINGS: The lungs are well expanded. The osseous structures are intact.\n",
             "FINDINGS: Possible small left effusion. Nothing else.\n"]
    for study, text in zip(chosen, texts):
        (out / study["report"]).write_text("\n" + " " + text.replace("FINDINGS:", "FINDINGS: ") + "\n", encoding="utf-8")
    builder, ds = build(out, tmp_path / "cache", "existence", include_image=False)
    items = {e["item"]: e["reason"] for e in builder.skipped["items"] if e["reason"] == "study_without_entity_answer"}
    for study, unknown in zip(chosen, ({"not mentioned": 6}, {"not mentioned": 5, "uncertain": 1})):
        named = [item for item in items if f"study {study['study_id']} " in item]
        assert len(named) == 1, items
        assert str(out / study["report"]) in named[0] and str(unknown) in named[0]
        assert study["study_id"] not in {r["study_id"] for rows in rows_of(ds).values() for r in rows}
    assert builder.counts["studies_without_entity_answer"] == len(items) >= 2
