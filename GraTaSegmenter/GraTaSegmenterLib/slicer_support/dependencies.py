"""Which Python packages the engine still needs inside Slicer, and how to install them.

torch comes from Slicer's PyTorch extension (``PyTorchUtils``), never from
pip here. SimpleITK and numpy ship with Slicer and must not be replaced: the
pip command pins them (and torch) with a constraints file to the installed
versions, so that installing e.g. monai cannot upgrade them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Callable

# import name -> pip requirement (mirrors pyproject.toml, minus torch/numpy/SimpleITK)
REQUIREMENTS = {
    "safetensors": "safetensors>=0.4",
    "monai": "monai>=1.3",
    "scipy": "scipy>=1.10",
    "PIL": "pillow>=10",
    "matplotlib": "matplotlib>=3.7",
    "tqdm": "tqdm>=4.60",
    "packaging": "packaging>=23",
    "yaml": "pyyaml>=6",  # MONAI bundles with a YAML inference config
}
PROTECTED = ("SimpleITK", "numpy", "torch")
MINIMUM_TORCH = "2.4"  # the lower bound of torch in pyproject.toml (a test keeps the two equal)


def torch_requirement() -> str:
    """The version requirement handed to ``PyTorchUtilsLogic.installTorch``."""
    return f">={MINIMUM_TORCH}"


def torch_installed(version: Callable[[str], str] = importlib.metadata.version) -> bool:
    """Is torch installed? From the package metadata: importing torch into Slicer's
    own process (as ``PyTorchUtilsLogic.torchInstalled()`` does) freezes the GUI for
    seconds, loads CUDA there, and on Windows locks the DLLs an upgrade must replace."""
    try:
        version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def torch_version_problem(version: Callable[[str], str] = importlib.metadata.version) -> str | None:
    """What to do when the installed torch is older than the engine supports;
    None when it is recent enough or not installed at all (then it is installed
    with :func:`torch_requirement`). Reads the package metadata: torch is not imported."""
    from packaging.version import InvalidVersion, Version

    try:
        installed = version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        too_old = Version(installed) < Version(MINIMUM_TORCH)
    except InvalidVersion:
        return None  # a local build with an unusual version string: let the engine try it
    if not too_old:
        return None
    return (f"PyTorch {installed} is too old for GraTaSegmenter, which needs {torch_requirement()}. In the "
            f"'PyTorch Utils' module, uninstall PyTorch and install it again with the version requirement "
            f"'{torch_requirement()}', then restart Slicer.")


def missing_packages(find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    """Requirements whose import name cannot be found."""
    return [req for name, req in REQUIREMENTS.items() if find_spec(name) is None]


def constraints_text(version: Callable[[str], str] = importlib.metadata.version) -> str:
    """``pkg==installed`` lines for the packages pip must leave alone."""
    lines = []
    for dist in PROTECTED:
        try:
            lines.append(f"{dist}=={version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


def pip_arguments(missing: list[str], constraints_file: str | Path) -> list[str]:
    """The arguments for ``slicer.util.pip_install``. A list, not one string:
    Slicer passes list items to pip as they are, while a string is split with
    ``shlex``, which would eat the backslashes of a Windows path."""
    return ["-c", str(constraints_file), *missing]


def confirmation_text(missing: list[str]) -> str:
    return ("GraTaSegmenter needs these Python packages, which are not installed yet:\n\n  "
            + "\n  ".join(missing)
            + "\n\nInstall them now with pip? (SimpleITK, numpy and PyTorch are kept as they are.) "
              "This can take a few minutes.")
