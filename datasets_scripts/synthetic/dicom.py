"""DICOM files as archives store them: MONOCHROME1/2, 12-16 stored bits, window tags single, multiple or absent,
rescale tags, four transfer syntaxes (one of them RLE Lossless, encapsulated)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import SOP_CLASS_DX, _force, _image_size

_TS_UIDS = {
    "ExplicitVRLittleEndian": "1.2.840.10008.1.2.1",
    "ImplicitVRLittleEndian": "1.2.840.10008.1.2",
    "ExplicitVRBigEndian": "1.2.840.10008.1.2.2",
    "RLELossless": "1.2.840.10008.1.2.5",
}


def _to_stored(rng, img, bits_stored, photometric):
    maxv = (1 << bits_stored) - 1
    lo = rng.uniform(0.0, 0.08) * maxv
    hi = rng.uniform(0.75, 1.0) * maxv
    d = 1.0 - img if photometric == "MONOCHROME1" else img
    stored = np.round(lo + d.astype(np.float64) * (hi - lo)).astype(np.uint16)
    return stored, lo, hi


def _write_dicom(
    path: Path,
    stored,
    *,
    uid_key: str,
    photometric,
    bits_stored,
    window,
    rescale,
    ts: str,
    lo,
    hi,
    rng,
    extra: dict | None = None,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, RLELossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS_DX
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sop", uid_key])
    ds.file_meta.TransferSyntaxUID = UID(_TS_UIDS["ExplicitVRLittleEndian" if ts == "RLELossless" else ts])
    ds.SOPClassUID = SOP_CLASS_DX
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", uid_key])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", uid_key])
    ds.Modality = "DX"
    ds.ConversionType = "WSD"
    ds.PatientOrientation = ""
    for k, val in (extra or {}).items():
        setattr(ds, k, val)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    if rescale:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    if window != "none":
        center = (lo + hi) / 2.0 + rng.uniform(-0.03, 0.03) * (hi - lo)
        width = (hi - lo) * rng.uniform(0.85, 1.05)
        if window == "multi":  # a second, narrower preset: builders must use the first value
            ds.WindowCenter = [round(center, 1), round(center * 1.05, 1)]
            ds.WindowWidth = [round(width, 1), round(width * 0.6, 1)]
        else:
            ds.WindowCenter = round(center, 1)
            ds.WindowWidth = round(width, 1)
    if ts == "ExplicitVRBigEndian":
        ds.PixelData = stored.astype(">u2").tobytes()
    else:
        ds.PixelData = stored.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    if ts == "RLELossless":
        ds.compress(RLELossless, stored, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=(ts == "ImplicitVRLittleEndian"),
        little_endian=(ts != "ExplicitVRBigEndian"),
    )


def _dicom_specs(rng, n, image_size, split):
    specs = []
    for _ in range(n):
        rows, cols = _image_size(rng, image_size)
        specs.append(
            {
                "rows": rows,
                "columns": cols,
                "photometric": "MONOCHROME1" if rng.random() < 0.2 else "MONOCHROME2",
                "bits_stored": int(rng.choice([12, 14, 16], p=[0.5, 0.3, 0.2])),
                "window": str(rng.choice(["single", "multi", "none"], p=[0.45, 0.15, 0.4])),
                "rescale": bool(rng.random() < 0.5),
                "transfer_syntax": "ExplicitVRLittleEndian",
            }
        )
    _force(rng, specs, "photometric", ["MONOCHROME2", "MONOCHROME1"])
    if split == "train":
        _force(rng, specs, "bits_stored", [12, 14, 16])
        _force(rng, specs, "window", ["single", "none", "multi"])
        _force(
            rng,
            specs,
            "transfer_syntax",
            ["ExplicitVRLittleEndian", "ExplicitVRBigEndian", "RLELossless", "ImplicitVRLittleEndian"],
        )
    else:
        _force(rng, specs, "window", ["single", "none"])
        _force(rng, specs, "transfer_syntax", ["ExplicitVRLittleEndian", "RLELossless"])
    return specs
