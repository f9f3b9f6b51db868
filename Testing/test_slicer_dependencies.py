"""The packages the module installs in Slicer, and what it must never replace."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from GraTaSegmenterLib.slicer_support import dependencies as deps


def test_missing_packages_are_found_by_import_name_and_torch_is_never_one():
    missing = deps.missing_packages(lambda name: None if name in ("monai", "PIL") else object())
    assert missing == ["monai>=1.3", "pillow>=10"]
    assert not any(r.lower().startswith(("torch", "simpleitk", "numpy")) for r in deps.REQUIREMENTS.values())


def test_installed_slicer_packages_are_pinned_by_constraints(tmp_path):
    versions = {"SimpleITK": "2.5.0", "numpy": "2.1.0"}

    def version(dist):
        if dist not in versions:
            raise importlib.metadata.PackageNotFoundError(dist)
        return versions[dist]

    assert deps.constraints_text(version) == "SimpleITK==2.5.0\nnumpy==2.1.0\n"
    args = deps.pip_arguments(["monai>=1.3"], tmp_path / "c.txt")
    assert args == ["-c", str(tmp_path / "c.txt"), "monai>=1.3"]
    assert "monai>=1.3" in deps.confirmation_text(["monai>=1.3"]) and "SimpleITK" in deps.confirmation_text([])


def test_pip_arguments_keep_a_windows_path_whole():
    # slicer.util.pip_install(list) hands the items to pip as they are (5.10 and 5.12)
    path = r"C:\Users\A User\AppData\Local\Temp\tmp1\constraints.txt"
    assert deps.pip_arguments(["monai>=1.3", "tqdm>=4.60"], path) == ["-c", path, "monai>=1.3", "tqdm>=4.60"]


def test_requirements_mirror_pyproject_and_the_torch_minimum_matches():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {re.split(r"[<>=!~ ]", req, maxsplit=1)[0].lower(): req for req in project["dependencies"]}
    assert declared.pop("torch") == f"torch>={deps.MINIMUM_TORCH},<3"
    for name in ("numpy", "simpleitk"):
        declared.pop(name)
    assert sorted(declared.values()) == sorted(deps.REQUIREMENTS.values())


@pytest.mark.parametrize("installed, too_old", [("2.3.1", True), ("1.13.0+cu117", True), ("2.4.0", False),
                                                 ("2.13.0", False), ("2.5.1+cu124", False), (None, False)])
def test_torch_older_than_the_minimum_gets_one_message_saying_what_to_do(installed, too_old):
    def version(dist):
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(dist)
        return installed

    problem = deps.torch_version_problem(version)
    if too_old:
        assert installed in problem and deps.torch_requirement() == ">=2.4" and "'>=2.4'" in problem
    else:
        assert problem is None
