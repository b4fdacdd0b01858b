"""DICOM -> 8-bit (docs/design.md, "VinDr-CXR") and `load_image` on every input kind, with DICOMs written here by
pydicom."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from tiny_tokenizer import build_tiny_tokenizer

from processing_litegpt import (
    DicomReadError,
    LiteGPTProcessor,
    dicom_to_uint8,
    is_dicom_file,
    load_image,
    load_image_with_size,
    minmax_to_uint8,
)

# A 12-bit ramp 0, 16, ..., 4080 (256 values) on 8 rows x 32 columns: non-square to pin (width, height) order.
RAMP = (np.arange(256, dtype=np.uint16) * 16).reshape(8, 32)


def write_dicom(path, pixels, photometric="MONOCHROME2", center=None, width=None, slope=None, intercept=None):
    """A minimal uncompressed 16-bit secondary-capture DICOM file."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def expected_window(values, center, width):
    """Hand formula of the DICOM window: [c - w/2, c + w/2] -> 0..255, half-up."""
    low = center - width / 2
    return np.clip(np.floor(np.clip((values - low) / width, 0, 1) * 255 + 0.5), 0, 255).astype(np.uint8)


IDENTITY = np.arange(256, dtype=np.uint8).reshape(8, 32)  # min-max of the ramp: 16k * 255 / 4080 = k exactly


def test_no_window_tags_is_full_min_max_exact(tmp_path):
    out = dicom_to_uint8(pydicom.dcmread(write_dicom(tmp_path / "a.dcm", RAMP)))
    assert out.dtype == np.uint8 and out.shape == (8, 32)
    np.testing.assert_array_equal(out, IDENTITY)


def test_window_tags_give_the_linear_window_exact(tmp_path):
    out = dicom_to_uint8(pydicom.dcmread(write_dicom(tmp_path / "w.dcm", RAMP, center=2048, width=2048)))
    flat = out.reshape(-1)
    # Spot values: window [1024, 3072].
    assert flat[0] == 0 and flat[64] == 0  # 1024 -> 0
    assert flat[65] == 2  # 1040: 16/2048*255 = 1.99 -> 2
    assert flat[128] == 128  # 2048: 127.5 -> 128 (half up)
    assert flat[191] == 253  # 3056: 2032/2048*255 = 253.0
    assert flat[192] == 255 and flat[255] == 255  # >= 3072 saturates
    np.testing.assert_array_equal(out, expected_window(RAMP.astype(float), 2048, 2048))


def test_modality_lut_is_applied_before_the_window(tmp_path):
    # Stored v, HU = v - 1024; window centre 1024 / width 2048 in HU is [0, 2048] HU = [1024, 3072] stored.
    path = write_dicom(tmp_path / "r.dcm", RAMP, center=1024, width=2048, slope=1, intercept=-1024)
    np.testing.assert_array_equal(
        dicom_to_uint8(pydicom.dcmread(path)), expected_window(RAMP.astype(float), 2048, 2048)
    )


def test_multi_valued_window_uses_the_first_value(tmp_path):
    path = write_dicom(tmp_path / "m.dcm", RAMP, center=[2048, 500], width=[2048, 100])
    np.testing.assert_array_equal(
        dicom_to_uint8(pydicom.dcmread(path)), expected_window(RAMP.astype(float), 2048, 2048)
    )


def test_monochrome1_is_inverted(tmp_path):
    plain = write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1")
    np.testing.assert_array_equal(dicom_to_uint8(pydicom.dcmread(plain)), 255 - IDENTITY)
    windowed = write_dicom(tmp_path / "m1w.dcm", RAMP, photometric="MONOCHROME1", center=2048, width=2048)
    np.testing.assert_array_equal(
        dicom_to_uint8(pydicom.dcmread(windowed)), 255 - expected_window(RAMP.astype(float), 2048, 2048)
    )


def test_minmax_ignores_window_tags_and_voi_lut_is_monotone_full_range(tmp_path):
    ds = pydicom.dcmread(write_dicom(tmp_path / "v.dcm", RAMP, center=2048, width=2048))
    np.testing.assert_array_equal(dicom_to_uint8(ds, windowing="minmax"), IDENTITY)
    voi = dicom_to_uint8(ds, windowing="voi_lut").reshape(-1)
    assert voi.min() == 0 and voi.max() == 255
    assert np.all(np.diff(voi.astype(int)) >= 0)
    assert np.all(voi[:60] == 0) and np.all(voi[200:] == 255)  # saturated outside the window
    with pytest.raises(ValueError):
        dicom_to_uint8(ds, windowing="clahe")


def test_truncated_or_invalid_dicom_raises_an_error_naming_the_file(tmp_path):
    data = write_dicom(tmp_path / "ok.dcm", RAMP).read_bytes()
    cut_pixels = tmp_path / "cut_pixels.dcm"
    cut_pixels.write_bytes(data[:-100])
    cut_header = tmp_path / "cut_header.dcm"
    cut_header.write_bytes(data[:200])
    garbage = tmp_path / "garbage.dicom"
    garbage.write_bytes(b"this is not a dicom file" * 10)
    for path in (cut_pixels, cut_header, garbage):
        with pytest.raises(DicomReadError, match=path.name) as info:
            load_image(path)
        assert isinstance(info.value, ValueError)
        with pytest.raises(ValueError, match=path.name):
            dicom_to_uint8(path)


def test_load_image_dicom_by_path_suffix_magic_and_dataset(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", RAMP)
    no_suffix = tmp_path / "image_without_suffix"
    shutil.copy(path, no_suffix)
    dicom_suffix = tmp_path / "x.dicom"
    shutil.copy(path, dicom_suffix)
    assert is_dicom_file(no_suffix) and not is_dicom_file(tmp_path / "missing.png")
    for source in (path, str(no_suffix), dicom_suffix, pydicom.dcmread(path), path.read_bytes()):
        image, size = load_image_with_size(source)
        assert image.mode == "RGB" and size == (32, 8)  # (width, height) = (Columns, Rows)
        array = np.asarray(image)
        for channel in range(3):
            np.testing.assert_array_equal(array[..., channel], IDENTITY)


def test_16_bit_pil_and_png_are_rescaled_not_clipped(tmp_path):
    ramp16 = (np.arange(4096, dtype=np.uint16)).reshape(64, 64)
    pil16 = Image.fromarray(ramp16)
    assert pil16.mode.startswith("I;16")
    expected = minmax_to_uint8(ramp16)
    np.testing.assert_array_equal(np.asarray(load_image(pil16))[..., 0], expected)
    # PIL's own conversion clips almost everything to 255; ours keeps the ramp.
    assert (np.asarray(pil16.convert("L")) == 255).mean() > 0.9
    assert (np.asarray(load_image(pil16))[..., 0] == 255).mean() < 0.01
    pil16.save(tmp_path / "ramp16.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "ramp16.png"))[..., 0], expected)


def test_numpy_inputs(tmp_path):
    grey8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    image = load_image(grey8)
    assert image.size == (4, 3) and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image)[..., 1], grey8)  # uint8 kept as is
    np.testing.assert_array_equal(np.asarray(load_image(RAMP))[..., 0], IDENTITY)  # uint16 min-max
    floats = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    assert np.asarray(load_image(floats))[..., 0].tolist()[0][0] == 0
    assert np.asarray(load_image(floats))[..., 0].tolist()[-1][-1] == 255
    grey_5x6 = np.arange(30, dtype=np.uint8).reshape(5, 6)
    chw = np.stack([grey_5x6, grey_5x6, grey_5x6])  # channels-first, e.g. a tensor
    assert load_image(chw).size == (6, 5)
    np.testing.assert_array_equal(np.asarray(load_image(chw))[..., 0], grey_5x6)
    rgb = np.dstack([grey8, grey8 + 1, grey8 + 2])
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), rgb)
    Image.fromarray(grey8).save(tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "g.png")))[..., 2], grey8)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(TypeError):
        load_image(42)


def test_dicom_through_the_processor(tmp_path):
    processor = LiteGPTProcessor.from_tokenizer(build_tiny_tokenizer(), image_size=32, num_image_tokens=4)
    path = write_dicom(tmp_path / "p.dcm", RAMP, center=2048, width=2048)
    prompt = processor.task_prompt("grounding")
    out = processor(images=str(path), text=prompt, return_tensors="pt", return_image_sizes=True)
    assert tuple(out["pixel_values"].shape) == (1, 3, 32, 32)
    assert out["image_sizes"] == [(32, 8)]
    # Same pixels as feeding the expected 8-bit image by hand.
    expected_image = Image.fromarray(expected_window(RAMP.astype(float), 2048, 2048)).convert("RGB")
    reference = processor(images=expected_image, text=prompt, return_tensors="pt")
    assert (out["pixel_values"] == reference["pixel_values"]).all()
    # The call-level and processor-level windowing switches are honoured.
    minmax = processor(images=str(path), text=prompt, return_tensors="pt", windowing="minmax")
    assert not (minmax["pixel_values"] == out["pixel_values"]).all()
    by_hand = processor(images=Image.fromarray(IDENTITY), text=prompt, return_tensors="pt")
    assert (minmax["pixel_values"] == by_hand["pixel_values"]).all()
    with pytest.raises(DicomReadError):
        bad = tmp_path / "bad.dcm"
        bad.write_bytes(path.read_bytes()[:-50])
        processor(images=str(bad), text=prompt)


# ------------------------------------------------------------------ as hospitals store them: compressed transfer syntaxes
# pydicom's own test files (shipped in the pydicom wheel, found offline by `get_testdata_file`).
COMPRESSED_TEST_FILES = {
    "JPEGLSNearLossless_08.dcm": ("JPEG-LS Lossy (Near-Lossless) Image Compression", (10, 45)),
    "MR_small_jpeg_ls_lossless.dcm": ("JPEG-LS Lossless Image Compression", (64, 64)),
    "JPGExtended.dcm": ("JPEG Extended (Process 2 and 4)", (256, 1024)),
}


@pytest.mark.parametrize("name", sorted(COMPRESSED_TEST_FILES))
def test_jpeg_ls_and_12_bit_jpeg_extended_files_decode(name):
    """Decoded through the pylibjpeg plugins the project depends on (without them pydicom refuses all three)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    transfer_syntax, size = COMPRESSED_TEST_FILES[name]
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.name == transfer_syntax
    image, got_size = load_image_with_size(path)
    assert got_size == size and image.mode == "RGB"
    assert len(np.unique(np.asarray(image))) > 2, "decoded pixels, not a constant image"


def test_jpeg_ls_lossless_decodes_to_the_uncompressed_image():
    from pydicom.data import get_testdata_file

    compressed = dicom_to_uint8(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    np.testing.assert_array_equal(compressed, dicom_to_uint8(get_testdata_file("MR_small.dcm")))


def test_12_bit_jpeg_extended_keeps_its_12_bits():
    """Pillow decodes 8-bit JPEG only; the 12-bit values must survive to the window (no clipping at 255)."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    assert ds.BitsStored == 12 and ds.pixel_array.max() > 255
    np.testing.assert_array_equal(dicom_to_uint8(ds), minmax_to_uint8(ds.pixel_array))


# ------------------------------------------------------------------ what is not a DICOM image says so
def test_empty_or_non_dicom_file_named_dcm_is_refused_as_such(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(DicomReadError, match=r"empty\.dcm is empty \(0 bytes\): not a DICOM file"):
        load_image(empty)
    text = tmp_path / "notes.dcm"
    text.write_text("patient notes, not an image\n" * 20)
    with pytest.raises(DicomReadError, match=r"notes\.dcm is not a DICOM file: no 'DICM' preamble"):
        load_image(text)
    png = tmp_path / "scan.dcm"
    Image.fromarray(IDENTITY).save(png, format="PNG")
    with pytest.raises(DicomReadError, match=r"scan\.dcm is not a DICOM file.*PNG"):
        load_image(png)


def test_dicom_without_pixel_data_is_refused_as_such(tmp_path):
    from pydicom.data import get_testdata_file

    report = get_testdata_file("test-SR.dcm")  # a structured report: a DICOM file without an image
    with pytest.raises(DicomReadError, match=r"test-SR\.dcm holds no image: it has no Pixel Data element"):
        load_image(report)
    with pytest.raises(DicomReadError, match="holds no image"):
        load_image(pydicom.dcmread(report))  # a dataset, not a path
    header_only = pydicom.dcmread(write_dicom(tmp_path / "h.dcm", RAMP))
    del header_only.PixelData
    with pytest.raises(DicomReadError, match=r"h\.dcm holds no image"):
        load_image(header_only)


def test_bytes_that_are_no_image_are_refused_clearly():
    with pytest.raises(ValueError, match=r"cannot read image bytes \(29 bytes starting b'not an i'\): neither DICOM"):
        load_image(b"not an image, just some bytes")


def test_alpha_is_dropped_not_composited():
    """Documented behaviour: transparency is ignored, every pixel keeps its colour (no blending on black or white)."""
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere
    rgba[0, 0, 3] = 0  # one fully transparent pixel
    rgba[1, 1, 3] = 255
    for source in (Image.fromarray(rgba, mode="RGBA"), rgba):
        np.testing.assert_array_equal(np.asarray(load_image(source))[..., 0], np.full((2, 2), 200))
    grey_alpha = Image.fromarray(np.dstack([np.full((2, 2), 90, np.uint8), np.zeros((2, 2), np.uint8)]), mode="LA")
    np.testing.assert_array_equal(np.asarray(load_image(grey_alpha)), np.full((2, 2, 3), 90))
