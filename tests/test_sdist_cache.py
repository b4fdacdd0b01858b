"""tests/sdist_cache.py: peer source distributions are fetched once, checked, extracted safely, and skipped offline."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile

import pytest
import sdist_cache
from sdist_cache import SdistUnavailable, extract_folder, fetch_sdist


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_unreachable_index_is_reported_as_unavailable_not_as_a_failure(tmp_path):
    """What an offline machine sees: pip cannot find the file, and the caller gets a reason to skip with."""
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    with pytest.raises(SdistUnavailable, match=r"pip could not download the transformers==5\.23\.0 source distribution"):
        fetch_sdist("transformers", "5.23.0", "0" * 64, cache_dir=tmp_path / "cache",
                    extra_pip_args=("--no-index", "--find-links", str(empty_index)))
    assert not list((tmp_path / "cache").glob("*.tar.gz"))


def test_a_cached_archive_with_the_right_hash_is_used_without_pip(tmp_path, monkeypatch):
    archive = tmp_path / "peer-1.0.tar.gz"
    _tar(archive, {"peer-1.0/tests/test_a.py": b"x = 1\n"})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run when the cache is valid"))
    assert fetch_sdist("peer", "1.0", digest, cache_dir=tmp_path) == archive


def test_a_download_with_another_hash_is_an_error(tmp_path, monkeypatch):
    def fake_download(name, version, dest, extra_pip_args):
        path = dest / f"{name}-{version}.tar.gz"
        _tar(path, {f"{name}-{version}/README": b"changed upstream"})
        return path

    monkeypatch.setattr(sdist_cache, "_pip_download", fake_download)
    with pytest.raises(ValueError, match="sha256"):
        fetch_sdist("peer", "1.0", "0" * 64, cache_dir=tmp_path)
    assert not (tmp_path / "peer-1.0.tar.gz").exists()


def test_extract_folder_takes_only_that_folder_and_refuses_escaping_paths(tmp_path):
    archive = tmp_path / "peer-1.0.tar.gz"
    _tar(archive, {"peer-1.0/tests/test_a.py": b"a", "peer-1.0/tests/sub/b.py": b"b", "peer-1.0/src/peer.py": b"c"})
    folder = extract_folder(archive, "tests", tmp_path / "out")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["sub/b.py", "test_a.py"]
    assert not (tmp_path / "out" / "src").exists()

    evil = tmp_path / "evil-1.0.tar.gz"
    _tar(evil, {"evil-1.0/tests/../../escaped.py": b"x"})
    with pytest.raises(ValueError, match="unsafe member path"):
        extract_folder(evil, "tests", tmp_path / "evil_out")
    assert not (tmp_path / "escaped.py").exists()
