"""Benchmark: VinDr builder throughput against a bare pydicom decode loop on the same files (not a timed test).

    python bench/bench_vindr_builder.py [--n-train 40] [--n-test 8] [--image-size 1024] [--scenarios native,jpeg2000]

Writes a synthetic VinDr sample (`datasets_scripts.synthetic`) to a temporary folder, then for each scenario prints

* bare loop: `pydicom.dcmread(path).pixel_array` over every DICOM the builder converts (file cache warmed first);
* builder, 1 process: `VinDrCXR("grounding").download_and_prepare(num_proc=1)` end to end (CSV parsing, header scan,
  conversion, PNG, Arrow writing), images/s and the ratio to the bare loop (target >= 0.8 per process);
* builder, 2 processes: images/s and the 1 -> 2 process speed-up;
* the per-image cost of each stage of the conversion (decode, `dicom_to_uint8`, PNG encode).

Scenarios: `native` - the files as the generator writes them (mostly uncompressed Explicit VR Little Endian, plus
big-endian, implicit-VR and RLE files); `jpeg2000` - the same pixels re-encoded as JPEG 2000 lossless (decoded by
Pillow/openjpeg), the compressed case where decoding dominates (VinDr's own DICOMs are JPEG 2000 compressed for at
least part of the set: see pydicom issue #1440, "Keep in mind I am reading VinBig Dataset").
`conflict_policy="union"` keeps every train image, so the builder converts exactly the files of the bare loop.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _quiet():
    import logging

    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("datasets_scripts").setLevel(logging.ERROR)


def reencode_jpeg2000(tree: Path) -> None:
    """Re-encode every DICOM under `tree` as JPEG 2000 lossless (same stored values)."""
    import numpy as np
    from PIL import Image
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    from image_processing_litegpt import read_dicom

    for path in sorted(glob.glob(str(tree / "*" / "*.dicom"))):
        ds = read_dicom(path)
        stored = ds.pixel_array.astype(np.uint16)
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, "JPEG2000", irreversible=False, no_jp2=True)
        out = Dataset()  # a fresh dataset: big-endian / implicit-VR sources become explicit little endian
        for element in ds:
            if element.tag != 0x7FE00010:
                out.add(DataElement(element.tag, element.VR, element.value))
        out.file_meta = FileMetaDataset(ds.file_meta)
        out.file_meta.TransferSyntaxUID = JPEG2000Lossless
        out.PixelData = encapsulate([buffer.getvalue()])
        out["PixelData"].VR = "OB"
        out.save_as(path, enforce_file_format=True)


def bare_loop(files: list[str]) -> float:
    import pydicom

    start = time.perf_counter()
    for path in files:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - the decode is the point
    return time.perf_counter() - start


def run_builder(data_dir: Path, cache: Path, num_proc: int) -> tuple[float, int]:
    from datasets_scripts.vindr_cxr import VinDrCXR

    shutil.rmtree(cache, ignore_errors=True)
    builder = VinDrCXR(config_name="grounding", data_dir=str(data_dir), cache_dir=str(cache), conflict_policy="union")
    start = time.perf_counter()
    builder.download_and_prepare(num_proc=num_proc)
    elapsed = time.perf_counter() - start
    rows = sum(split.num_examples for split in builder.info.splits.values())
    if builder.skipped.get("items"):
        raise RuntimeError(f"unexpected skips: {builder.skipped}")
    return elapsed, rows


def stage_costs(files: list[str], max_side: int = 1024, level: int = 1) -> dict[str, float]:
    """Mean ms per image of decode, dicom_to_uint8 (beyond decode) and PNG encoding."""
    import pydicom

    from datasets_scripts.common import encode_png
    from image_processing_litegpt import dicom_to_uint8

    decode = convert = png = 0.0
    for path in files:
        t0 = time.perf_counter()
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        t1 = time.perf_counter()
        ds._pixel_array = pixels  # reuse the decoded array: time the conversion alone
        array = dicom_to_uint8(ds)
        t2 = time.perf_counter()
        encode_png(array, max_side, level)
        t3 = time.perf_counter()
        decode, convert, png = decode + t1 - t0, convert + t2 - t1, png + t3 - t2
    n = len(files)
    return {"decode": 1e3 * decode / n, "dicom_to_uint8": 1e3 * convert / n, f"png(level {level})": 1e3 * png / n}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=1024, help="typical side of the synthetic DICOMs")
    parser.add_argument("--scenarios", default="native,jpeg2000")
    parser.add_argument("--workdir", default=None, help="keep the sample here (default: a temporary folder)")
    args = parser.parse_args(argv)
    _quiet()

    from datasets_scripts.synthetic import generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_vindr_"))
    try:
        start = time.perf_counter()
        generate(
            work / "sample",
            n_train=args.n_train,
            n_test=args.n_test,
            mimic_studies=0,
            seed=0,
            image_size=args.image_size,
            overwrite=True,
        )
        print(
            f"synthetic sample: {args.n_train}+{args.n_test} DICOMs, ~{args.image_size}px, written in "
            f"{time.perf_counter() - start:.1f}s; CPUs: {os.cpu_count()}"
        )
        results = []
        for scenario in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            data_dir = work / scenario / "vindr-cxr" / "1.0.0"
            shutil.rmtree(work / scenario, ignore_errors=True)
            shutil.copytree(work / "sample" / "vindr-cxr" / "1.0.0", data_dir)
            if scenario == "jpeg2000":
                reencode_jpeg2000(data_dir)
            elif scenario != "native":
                raise SystemExit(f"unknown scenario {scenario!r}")
            files = sorted(glob.glob(str(data_dir / "*" / "*.dicom")))
            bare_loop(files)  # warm the page cache and pydicom's imports
            bare = bare_loop(files)
            t1, rows1 = run_builder(data_dir, work / "cache1", 1)
            t2, rows2 = run_builder(data_dir, work / "cache2", 2)
            assert rows1 == rows2 == len(files), (rows1, rows2, len(files))
            stages = stage_costs(files)
            mb = sum(os.path.getsize(f) for f in files) / len(files) / 1e6
            results.append((scenario, len(files), mb, len(files) / bare, rows1 / t1, rows2 / t2, stages))

        print()
        print(
            f"{'scenario':<10} {'images':>6} {'MB/file':>8} {'bare img/s':>11} {'builder 1p':>11} {'ratio':>6} "
            f"{'builder 2p':>11} {'1->2 speed-up':>14}"
        )
        for scenario, n, mb, bare, one, two, _ in results:
            print(
                f"{scenario:<10} {n:>6} {mb:>8.2f} {bare:>11.1f} {one:>11.1f} {one / bare:>6.2f} {two:>11.1f} "
                f"{two / one:>13.2f}x"
            )
        print()
        print("per-image stage costs (ms, one process):")
        for scenario, *_, stages in results:
            print(f"  {scenario:<10} " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        print("\nratio = builder images/s (1 process, end to end) / bare pydicom decode images/s; target >= 0.8")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
