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
}
PROTECTED = ("SimpleITK", "numpy", "torch")


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


def pip_arguments(missing: list[str], constraints_file: str | Path) -> str:
    """The argument string for ``slicer.util.pip_install``."""
    return " ".join([f'-c "{constraints_file}"', *(f'"{req}"' for req in missing)])


def confirmation_text(missing: list[str]) -> str:
    return ("GraTaSegmenter needs these Python packages, which are not installed yet:\n\n  "
            + "\n  ".join(missing)
            + "\n\nInstall them now with pip? (SimpleITK, numpy and PyTorch are kept as they are.) "
              "This can take a few minutes.")
