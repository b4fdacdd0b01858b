"""What `pip install` puts into site-packages: the remote-code files and the library packages, never the root
scripts (`eval.py` would shadow nothing in the standard library, but a top-level module named `eval` or a package
named `scripts` would collide with other projects)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from litegpt_train.hub import remote_code_files

ROOT = Path(__file__).resolve().parent.parent


def test_installed_modules_are_the_remote_code_and_the_library_packages():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    remote_code = {name.removesuffix(".py") for name in remote_code_files(ROOT, ["modeling_litegpt.py", "processing_litegpt.py"])}
    assert set(setuptools["py-modules"]) == remote_code
    assert not {"eval", "train_sft", "train_medklip", "app"} & set(setuptools["py-modules"])
    packages = setuptools["packages"]["find"]["include"]
    assert sorted(packages) == ["datasets_scripts*", "litegpt_eval*", "litegpt_train*", "medklip*"]
    for package in packages:
        assert (ROOT / package.rstrip("*") / "__init__.py").is_file(), package
