"""Peer test suites from PyPI source distributions, fetched at test time and cached outside the repository.

Other projects' tests never enter this repository: a test that runs them downloads the peer's source distribution
with pip (the ordinary PyPI client, so the machine's index, proxy and certificate settings apply), checks its
sha256, and extracts the files it needs into a cache directory (`$LITEGPT_SDIST_CACHE`, default
`~/.cache/litegpt-cxr/sdists`). Offline, `SdistUnavailable` says why, so the caller can skip with that message.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from filelock import FileLock

CACHE_ENV = "LITEGPT_SDIST_CACHE"
DOWNLOAD_TIMEOUT_SECONDS = 20  # per network operation; pip's default (180 s, 5 retries) would hang an offline run


class SdistUnavailable(RuntimeError):
    """The source distribution could not be downloaded (offline, index unreachable, version missing)."""


def sdist_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "litegpt-cxr" / "sdists")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(name: str, version: str, dest: Path, extra_pip_args: tuple[str, ...]) -> Path:
    command = [
        # pip prepares an sdist's metadata after downloading it, in an isolated build environment (its build
        # backend comes from the index too), so a fresh venv needs nothing preinstalled.
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--timeout", str(DOWNLOAD_TIMEOUT_SECONDS), "--retries", "1", "--dest", str(dest), *extra_pip_args,
        f"{name}=={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(dest.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        last_lines = " | ".join((result.stderr or result.stdout).strip().splitlines()[-2:])
        raise SdistUnavailable(f"pip could not download the {name}=={version} source distribution: {last_lines}")
    return archives[0]


def fetch_sdist(
    name: str, version: str, sha256: str, cache_dir: Path | None = None, extra_pip_args: tuple[str, ...] = ()
) -> Path:
    """Path of the cached `{name}-{version}.tar.gz`, downloaded once (under a lock, for parallel test workers).

    Raises `SdistUnavailable` when it cannot be downloaded and `ValueError` when the download's sha256 is not
    `sha256` (a changed or tampered file is an error, never a skip).
    """
    cache_dir = Path(cache_dir or sdist_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / f"{name}-{version}.tar.gz"
    with FileLock(str(archive) + ".lock"):
        if archive.is_file() and _sha256(archive) == sha256:
            return archive
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            downloaded = _pip_download(name, version, Path(tmp), extra_pip_args)
            got = _sha256(downloaded)
            if got != sha256:
                raise ValueError(f"{downloaded.name}: sha256 {got}, expected {sha256}")
            os.replace(downloaded, archive)
    return archive


def extract_folder(archive: Path, folder: str, dest: Path) -> Path:
    """Extract the regular files under `folder` (a path inside the archive's top directory) to `dest`, once.

    Returns `dest / folder`. Links and paths leaving the folder are refused; a marker file makes a half-finished
    extraction (interrupted run) start over.
    """
    target = dest / folder
    marker = dest / f".{folder.replace('/', '_')}.complete"
    with FileLock(str(marker) + ".lock"):
        if marker.is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                top, _, inner = member.name.partition("/")
                if not (inner == folder or inner.startswith(folder + "/")) or not member.isfile():
                    continue
                if ".." in Path(inner).parts:
                    raise ValueError(f"{archive.name}: unsafe member path {member.name}")
                out = dest / inner
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink)
        marker.touch()
    return target
