"""The packages the module installs in Slicer, and what it must never replace."""

from __future__ import annotations

import importlib.metadata

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
    assert args == f'-c "{tmp_path / "c.txt"}" "monai>=1.3"'
    assert "monai>=1.3" in deps.confirmation_text(["monai>=1.3"]) and "SimpleITK" in deps.confirmation_text([])
