"""What `pip install` puts into site-packages: the remote-code files and the library packages, never the root
scripts (`eval.py` would shadow nothing in the standard library, but a top-level module named `eval` or a package
named `scripts` would collide with other projects)."""

from __future__ import annotations

import tomllib
import warnings
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


def test_a_wheel_installs_no_root_script_and_no_scripts_package(monkeypatch):
    """setuptools' own reading of pyproject.toml (what `pip install` / a wheel gets): the remote-code modules and the
    library packages with their subpackages and data, nothing else at the top level."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)  # package discovery runs from the project folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools' deprecation notices about the license table
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    top_level = set(dist.py_modules) | {package.split(".")[0] for package in dist.packages}
    assert top_level == {"configuration_litegpt", "modeling_litegpt", "processing_litegpt", "codec_litegpt",
                         "image_processing_litegpt", "datasets_scripts", "litegpt_eval", "litegpt_train", "medklip"}
    assert {"datasets_scripts.synthetic", "litegpt_eval.scoring", "litegpt_eval.report"} <= set(dist.packages)
    assert dist.package_data == {"medklip": ["knowledge.json"]}
    for name in ("eval", "train_sft", "train_medklip", "app", "scripts", "tests", "bench"):
        assert name not in top_level, name
