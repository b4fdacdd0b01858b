"""The repository documents itself: no citation of a document outside it, every repository path the README and
`docs/` name exists, and the files shipped with a checkpoint name no repository-only document."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "litegpt_eval" / "README.md"]
# Folders of the repository whose paths the documents may name (run-time folders such as runs/ are not checked).
TRACKED_FOLDERS = ("bench", "configs", "datasets_scripts", "docs", "litegpt_eval", "litegpt_train", "medklip", "scripts",
                   "tests")
ROOT_FILES = ("app.py", "eval.py", "train_sft.py", "train_medklip.py", "pyproject.toml", "README.md", "configuration_litegpt.py",
              "modeling_litegpt.py", "processing_litegpt.py", "codec_litegpt.py", "image_processing_litegpt.py")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    return [ROOT / name for name in listed.stdout.splitlines()]


def repository_paths(text: str) -> set[str]:
    """Paths in backticks that start in a tracked folder or are root files (bare file names are ambiguous: not
    checked), and the targets of relative markdown links."""
    paths = set()
    for candidate in re.findall(r"`([^`\s]+)`", text):
        path = candidate.split("::")[0].rstrip(".,;:")
        if path.split("/")[0] in TRACKED_FOLDERS or path in ROOT_FILES:
            paths.add(path)
    for target in re.findall(r"\]\(([^)\s#]+)", text):
        if not target.startswith(("http://", "https://")):
            paths.add(target)
    return paths


def test_no_file_cites_the_team_design_document():
    document = "DESIGN" + ".md"  # spelled in two parts so that this file does not cite it either
    pattern = re.compile(r"DESIGN(\.md)?\s*(§|section)")
    offenders = []
    for path in tracked_files():
        if path.suffix in (".py", ".md", ".yaml", ".toml", ".sh", ".txt") and path.is_file():
            offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                          if pattern.search(line) or document in line]  # fmt: skip
    assert offenders == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_a_document_names_exists(document):
    missing = []
    for path in sorted(repository_paths(document.read_text())):
        relative_to_document = (document.parent / path).resolve()
        if not (ROOT / path).exists() and not relative_to_document.exists():
            missing.append(path)
    assert missing == []


def test_the_path_check_sees_paths():
    """The extraction finds tracked paths in backticks and links, and ignores run folders and Hub ids."""
    found = repository_paths("see `docs/design.md`, [x](docs/experiments.md#top), `eval.py`, `runs/demo/base`, `org/name`, "
                             "`report.md`, [y](design.md)")
    assert found == {"docs/design.md", "docs/experiments.md", "eval.py", "design.md"}


def test_shipped_files_name_no_repository_document():
    """A checkpoint's remote code is read on the Hub, where the repository's docs/ folder is absent."""
    from litegpt_train.hub import remote_code_files

    shipped = [ROOT / name for name in remote_code_files(ROOT, ["modeling_litegpt.py", "processing_litegpt.py"])]
    shipped += [ROOT / "medklip" / name for name in remote_code_files(ROOT / "medklip", ["modeling_medklip.py"])]
    assert len(shipped) >= 7
    for path in shipped:
        text = path.read_text()
        assert "docs/" not in text and "DESIGN" not in text, path.name
