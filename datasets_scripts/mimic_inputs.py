"""Reading the MIMIC-CXR inputs: where the release folders are (DICOM or JPG trees, reports as files or the zip
archive), the metadata, split and CheXpert/NegBio CSVs, each row validated and every bad row named with its file and
line."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codec_litegpt import CHEXPERT_LABELS
from datasets_scripts.common import read_csv_strings
from datasets_scripts.mimic_reports import (
    chexpert_value,
)

IMAGE_FORMATS = ("auto", "dicom", "jpg")


SPLIT_NAMES = {"train": "train", "validate": "validation", "test": "test"}


CSV_NAMES = {
    "metadata": "mimic-cxr-2.0.0-metadata",
    "split": "mimic-cxr-2.0.0-split",
    "chexpert": "mimic-cxr-2.0.0-chexpert",
    "negbio": "mimic-cxr-2.0.0-negbio",
}


REPORTS_ARCHIVES = ("mimic-cxr-reports.zip",)


_METADATA_OPTIONAL = (
    "StudyDate", "StudyTime", "PerformedProcedureStepDescription", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)


_REPORT_PATH_RE = re.compile(r"p(\d+)/s(\d+)\.txt$")


class MIMICDataError(ValueError):
    """The MIMIC-CXR files do not match the official layout; the message names the file (and CSV line)."""


@dataclass
class MimicLayout:
    """Where everything was found (absolute paths)."""

    roots: list[Path]
    csv: dict[str, Path | None]
    image_root: Path | None
    image_format: str | None
    report_roots: list[Path]
    reports_archive: Path | None

    def describe(self) -> dict[str, Any]:
        return {
            "roots": [str(r) for r in self.roots],
            "csv": {k: (str(v) if v else None) for k, v in self.csv.items()},
            "image_root": str(self.image_root) if self.image_root else None,
            "image_format": self.image_format,
            "report_roots": [str(r) for r in self.report_roots],
            "reports_archive": str(self.reports_archive) if self.reports_archive else None,
        }


def _version_dirs(folder: Path) -> list[Path]:
    """Version sub-folders (`2.1.0`, ...) newest first, then the folder itself."""
    if not folder.is_dir():
        return []
    subs = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d+(\.\d+)*", p.name)]
    subs.sort(key=lambda p: tuple(int(x) for x in p.name.split(".")), reverse=True)
    return subs + [folder]


def candidate_roots(data_dir: str | os.PathLike) -> list[Path]:
    """`data_dir` and the MIMIC-CXR(-JPG) release folders below it (also under `physionet.org/files/`)."""
    base = Path(data_dir).expanduser().resolve()
    roots = [base]
    for parent in (base, base / "physionet.org" / "files", base / "files"):
        for name in ("mimic-cxr-jpg", "mimic-cxr"):
            roots += _version_dirs(parent / name)
    seen, out = set(), []
    for root in roots:
        if root.is_dir() and root not in seen:
            seen.add(root)
            out.append(root)
    return out


def find_csv(roots: Sequence[Path], stem: str) -> Path | None:
    for root in roots:
        for suffix in (".csv.gz", ".csv"):
            path = root / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def image_relpath(subject_id: str, study_id: str, dicom_id: str, ext: str) -> str:
    """`files/pXX/p<subject>/s<study>/<dicom_id>.<ext>` (pXX = first 3 characters of the patient folder)."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.{ext}"


def report_relpath(subject_id: str, study_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


def _detect_format(root: Path, probes: Sequence[tuple[str, str, str]]) -> str | None:
    """"dicom"/"jpg" when `root/files` holds images of the metadata (probed), else None."""
    files = root / "files"
    if not files.is_dir():
        return None
    for ext, fmt in (("dcm", "dicom"), ("jpg", "jpg")):
        if any((root / image_relpath(s, st, d, ext)).is_file() for s, st, d in probes):
            return fmt
    for ext, fmt in (("dcm", "dicom"), ("jpg", "jpg")):
        if next(files.glob(f"p*/p*/s*/*.{ext}"), None) is not None:
            return fmt
    return None


def find_layout(data_dir: str | os.PathLike, image_format: str = "auto",
                probes: Sequence[tuple[str, str, str]] = ()) -> MimicLayout:
    """Locate the CSVs, the image tree of `image_format` and the reports under `data_dir`.

    `probes`: a few (subject_id, study_id, dicom_id) of the metadata used to tell a DICOM tree from a JPG tree.
    Raises `MIMICDataError` when the requested image tree is absent.
    """
    roots = candidate_roots(data_dir)
    if not roots:
        raise FileNotFoundError(f"MIMIC-CXR data_dir {data_dir} does not exist")
    csv = {key: find_csv(roots, stem) for key, stem in CSV_NAMES.items()}
    formats = {root: _detect_format(root, probes) for root in roots}
    image_root, found_format = None, None
    wanted = ("dicom", "jpg") if image_format == "auto" else (image_format,)
    for fmt in wanted:
        for root in roots:
            if formats[root] == fmt:
                image_root, found_format = root, fmt
                break
        if image_root is not None:
            break
    report_roots = [r for r in roots if (r / "files").is_dir()]
    archive = None
    for root in roots:
        for name in REPORTS_ARCHIVES:
            if (root / name).is_file():
                archive = root / name
                break
        if archive:
            break
    return MimicLayout(roots, csv, image_root, found_format, report_roots, archive)


class ReportStore:
    """Report texts by (subject_id, study_id): loose `files/pXX/pS/sST.txt` in any root, else the zip archive."""

    def __init__(self, layout: MimicLayout):
        self.layout = layout
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[tuple[str, str], str] = {}
        # roots that hold loose reports first (the MIMIC-CXR tree): missing reports are named there
        self._roots = sorted(layout.report_roots,
                             key=lambda r: next((r / "files").glob("p*/p*/s*.txt"), None) is None)
        if layout.reports_archive is not None:
            self._zip = zipfile.ZipFile(layout.reports_archive)
            for name in self._zip.namelist():
                match = _REPORT_PATH_RE.search(name)
                if match:
                    self._members[(match.group(1), match.group(2))] = name

    def locate(self, subject_id: str, study_id: str) -> str:
        """A printable location of the report (first existing, else the expected loose path)."""
        rel = report_relpath(subject_id, study_id)
        for root in self._roots:
            if (root / rel).is_file():
                return str(root / rel)
        member = self._members.get((subject_id, study_id))
        if member is not None:
            return f"{self.layout.reports_archive}:{member}"
        if self._roots:
            return str(self._roots[0] / rel)
        if self.layout.reports_archive is not None:
            return f"{self.layout.reports_archive}:{rel}"
        return str(self.layout.roots[0] / rel)

    def read(self, subject_id: str, study_id: str) -> tuple[str | None, str]:
        """(text or None when missing, location). Unreadable files raise MIMICDataError naming them."""
        rel = report_relpath(subject_id, study_id)
        for root in self._roots:
            path = root / rel
            if path.is_file():
                try:
                    return path.read_text(encoding="utf-8"), str(path)
                except (OSError, UnicodeDecodeError) as err:
                    raise MIMICDataError(f"cannot read report {path}: {type(err).__name__}: {err}") from err
        member = self._members.get((subject_id, study_id))
        if member is not None and self._zip is not None:
            where = f"{self.layout.reports_archive}:{member}"
            try:
                return self._zip.read(member).decode("utf-8"), where
            except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as err:
                raise MIMICDataError(f"cannot read report {where}: {type(err).__name__}: {err}") from err
        return None, self.locate(subject_id, study_id)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def _require_columns(frame, path: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise MIMICDataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")


def _digits(value: str, path: Path, line: int, column: str) -> str:
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():  # ids written as floats by some tools
        text = text[:-2]
    if not text.isdigit():
        raise MIMICDataError(f"{path}:{line}: column {column!r} must be a number, got {value!r}")
    return str(int(text))


def _int_or_none(value: str, path: Path, line: int, column: str) -> int | None:
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        raise MIMICDataError(f"{path}:{line}: column {column!r} must be a number, got {value!r}") from None


@dataclass
class MimicImage:
    dicom_id: str
    subject_id: str
    study_id: str
    view: str
    rows: int | None
    columns: int | None
    line: int
    extra: dict[str, str] = field(default_factory=dict)
    split: str | None = None


def read_metadata(path: Path) -> list[MimicImage]:
    frame = read_csv_strings(path, MIMICDataError)
    _require_columns(frame, path, ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    images = []
    seen: dict[str, int] = {}
    has = {c: c in frame.columns for c in ("Rows", "Columns", *_METADATA_OPTIONAL)}
    for line, record in _frame_records(frame):
        dicom_id = str(record["dicom_id"]).strip()
        if not dicom_id:
            raise MIMICDataError(f"{path}:{line}: empty dicom_id")
        if dicom_id in seen:
            raise MIMICDataError(f"{path}:{line}: duplicate dicom_id {dicom_id} (first on line {seen[dicom_id]})")
        seen[dicom_id] = line
        images.append(MimicImage(
            dicom_id=dicom_id,
            subject_id=_digits(record["subject_id"], path, line, "subject_id"),
            study_id=_digits(record["study_id"], path, line, "study_id"),
            view=str(record["ViewPosition"]).strip().upper(),
            rows=_int_or_none(record["Rows"], path, line, "Rows") if has["Rows"] else None,
            columns=_int_or_none(record["Columns"], path, line, "Columns") if has["Columns"] else None,
            line=line,
            extra={c: str(record[c]) for c in _METADATA_OPTIONAL if has[c]},
        ))
    return images


def _frame_records(frame):
    columns = list(frame.columns)
    for index, values in enumerate(frame.itertuples(index=False, name=None)):
        yield index + 2, dict(zip(columns, values))


def read_split(path: Path) -> dict[str, tuple[str, int]]:
    """dicom_id -> (official split, line)."""
    frame = read_csv_strings(path, MIMICDataError)
    _require_columns(frame, path, ["dicom_id", "split"])
    out: dict[str, tuple[str, int]] = {}
    for line, record in _frame_records(frame):
        split = str(record["split"]).strip()
        if split not in SPLIT_NAMES:
            raise MIMICDataError(f"{path}:{line}: split must be one of {tuple(SPLIT_NAMES)}, got {split!r}")
        out[str(record["dicom_id"]).strip()] = (split, line)
    return out


def read_labels(path: Path) -> dict[tuple[str, str], dict[str, int | None]]:
    """CheXpert/NegBio CSV -> {(subject_id, study_id): {label: 1 | 0 | -1 | None}} (blank -> None)."""
    frame = read_csv_strings(path, MIMICDataError)
    _require_columns(frame, path, ["subject_id", "study_id", *CHEXPERT_LABELS])
    out: dict[tuple[str, str], dict[str, int | None]] = {}
    for line, record in _frame_records(frame):
        key = (_digits(record["subject_id"], path, line, "subject_id"),
               _digits(record["study_id"], path, line, "study_id"))
        values = {}
        for label in CHEXPERT_LABELS:
            try:
                values[label] = chexpert_value(record[label])
            except ValueError as err:
                raise MIMICDataError(f"{path}:{line}: column {label!r}: {err}") from None
        if key in out:
            raise MIMICDataError(f"{path}:{line}: duplicate row for subject {key[0]}, study {key[1]}")
        out[key] = values
    return out
