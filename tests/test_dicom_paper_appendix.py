"""`windowing="paper_appendix"`: the paper's Appendix A.1 conversion, checked on pixels computed by hand.

The appendix maps `(v - WindowCenter) / WindowWidth` (stored values, no rescale) clipped to +-1 through
`n * flip * 127.5 + 127.5` and truncates to uint8; without window tags it uses `(v - mean) / (max - min)`.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from test_dicom import write_dicom

from processing_litegpt import dicom_to_uint8

# Stored values, window centre 1000 / width 500: n = (v - 1000) / 500.
WINDOWED = np.array([[400, 500, 880, 1000, 1040, 1500, 1600]], dtype=np.uint16)
# n:  -1.2 -> -1: 0;  -1: 0;  -0.24: 127.5 - 30.6 = 96.9 -> 96 (rounding would give 97);  0: 127.5 -> 127;
#     0.08: 127.5 + 10.2 = 137.7 -> 137 (rounding: 138);  1: 255;  1.2 -> 1: 255.
WINDOWED_MONOCHROME2 = [[0, 0, 96, 127, 137, 255, 255]]
# flip = -1 before truncation: -0.24 -> 158.1 -> 158 (255 - 96 = 159 would be the flip after); 0.08 -> 117.3 -> 117.
WINDOWED_MONOCHROME1 = [[255, 255, 158, 127, 117, 0, 0]]

# No window tags: mean 187.5, max - min 400, n = (v - 187.5) / 400 = -0.46875, -0.21875, 0.15625, 0.53125
NO_WINDOW = np.array([[0, 100, 250, 400]], dtype=np.uint16)
# 127.5 + 127.5 n = 67.734375, 99.609375, 147.421875, 195.234375 -> truncated
NO_WINDOW_MONOCHROME2 = [[67, 99, 147, 195]]
# 127.5 - 127.5 n = 187.265625, 155.390625, 107.578125, 59.765625 -> truncated
NO_WINDOW_MONOCHROME1 = [[187, 155, 107, 59]]


def convert(tmp_path, pixels, windowing="paper_appendix", **tags):
    return dicom_to_uint8(pydicom.dcmread(write_dicom(tmp_path / "x.dcm", pixels, **tags)), windowing=windowing)


@pytest.mark.parametrize(("photometric", "expected"), [("MONOCHROME2", WINDOWED_MONOCHROME2), ("MONOCHROME1", WINDOWED_MONOCHROME1)])
def test_window_tags_map_twice_the_window_and_truncate(tmp_path, photometric, expected):
    out = convert(tmp_path, WINDOWED, photometric=photometric, center=1000, width=500)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("photometric", "expected"), [("MONOCHROME2", NO_WINDOW_MONOCHROME2), ("MONOCHROME1", NO_WINDOW_MONOCHROME1)])
def test_without_window_tags_the_mean_centred_fallback(tmp_path, photometric, expected):
    np.testing.assert_array_equal(convert(tmp_path, NO_WINDOW, photometric=photometric), expected)
    # Our default differs here: full min-max, 0 .. 255.
    np.testing.assert_array_equal(convert(tmp_path, NO_WINDOW, windowing="window", photometric="MONOCHROME2"), [[0, 64, 159, 255]])


def test_no_modality_lut_and_not_the_dicom_window(tmp_path):
    # A rescale slope / intercept is ignored: the window applies to the stored values.
    rescaled = convert(tmp_path, WINDOWED, center=1000, width=500, slope=2, intercept=-1000)
    np.testing.assert_array_equal(rescaled, WINDOWED_MONOCHROME2)
    # Our "window" mode maps the DICOM window [750, 1250] instead: 880 -> 130 / 500 * 255 = 66.3 -> 66.
    ours = convert(tmp_path, WINDOWED, windowing="window", center=1000, width=500)
    np.testing.assert_array_equal(ours, [[0, 0, 66, 128, 148, 255, 255]])


def test_multi_valued_or_unusable_window_tags(tmp_path):
    # Several windows: the first one (the appendix's float(...) would fail on the list).
    first = convert(tmp_path, WINDOWED, center=[1000, 3000], width=[500, 10])
    np.testing.assert_array_equal(first, WINDOWED_MONOCHROME2)
    # A zero width cannot divide: the no-window fallback (mean-centred), as if the tags were missing.
    np.testing.assert_array_equal(convert(tmp_path, NO_WINDOW, center=100, width=0), NO_WINDOW_MONOCHROME2)
    # A constant image: n = 0 everywhere -> 127 (the appendix's 0 / 0 would be NaN).
    np.testing.assert_array_equal(convert(tmp_path, np.full((2, 3), 700, dtype=np.uint16)), np.full((2, 3), 127))
