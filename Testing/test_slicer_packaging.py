"""The extension's packaging, checked without Slicer: the static Slicer-API checker,
the extensions-catalog entry against Slicer's schema, and the CMake lists against
the files that exist."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from GraTaSegmenterLib.slicer_support.schema import validate

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "GraTaSegmenter"
SHARED = ROOT.parent / "shared"
CHECKER = SHARED / "tools" / "slicer_api" / "check_module.py"
SCHEMA = SHARED / "tools" / "slicer_schemas" / "slicer-extension-catalog-entry-schema-v1.0.1.json"


@pytest.mark.skipif(not CHECKER.is_file(), reason="../shared (the Slicer API checker) is not present next to the repo")
def test_every_slicer_name_the_module_uses_exists():
    out = subprocess.run([sys.executable, str(CHECKER), str(MODULE)], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "unknown: 0", out.stdout + out.stderr


@pytest.mark.skipif(not SCHEMA.is_file(), reason="../shared (Slicer's catalog schemas) is not present next to the repo")
def test_the_catalog_entry_is_valid_against_slicers_schema():
    entry = json.loads((ROOT / "GraTaSegmenter.json").read_text(encoding="utf-8"))
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert validate(entry, schema) == []
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["category"] == "Segmentation" and "PyTorch" in entry["build_dependencies"]


def test_the_extension_declares_what_the_slicer_catalog_needs():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\(GraTaSegmenter\)", cmake)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert f"set(EXTENSION_{key} " in cmake
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in cmake and "set(EXTENSION_DEPENDS PyTorch)" in cmake
    assert "add_subdirectory(GraTaSegmenter)" in cmake
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    from PIL import Image

    with Image.open(ROOT / "GraTaSegmenter.png") as icon:
        assert icon.size == (128, 128)


def _module_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "."],
                         capture_output=True, text=True, cwd=MODULE)
    if out.returncode != 0:  # not a git checkout (e.g. an sdist): walk the folder
        return sorted(str(p.relative_to(MODULE)).replace("\\", "/") for p in MODULE.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p))
    return sorted(line for line in out.stdout.splitlines() if line and Path(MODULE, line).is_file())


def _cmake_names_and_globs() -> tuple[set[str], list[str]]:
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "GraTaSegmenter")
    text = re.sub(r"#.*", "", text)
    names = set(re.findall(r"^\s+([\w./-]+\.\w+)\s*$", text, flags=re.M))
    globs = re.findall(r"(GraTaSegmenterLib/[\w/]+/\*\.\w+)", text)
    return names, globs


NOT_IN_SLICER = ("GraTaSegmenterWeb/",)  # the browser front-end: installed with pip, never into Slicer


def test_the_module_cmake_names_every_file_of_the_module_folder():
    names, globs = _cmake_names_and_globs()
    missing = [f for f in _module_files() if f != "CMakeLists.txt" and f not in names
               and not f.startswith(NOT_IN_SLICER)
               and not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, "add to GraTaSegmenter/CMakeLists.txt: " + ", ".join(missing)
    stale = [n for n in names if not (MODULE / n).is_file()]
    assert not stale, "listed in GraTaSegmenter/CMakeLists.txt but missing: " + ", ".join(stale)
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake


def test_only_the_module_file_imports_slicer_and_nothing_heavy_at_file_scope():
    gui = {"slicer", "qt", "vtk", "ctk", "SampleData", "PyTorchUtils"}
    heavy = {"torch", "numpy", "SimpleITK", "monai", "scipy", "matplotlib", "PIL", "safetensors"}
    for path in (MODULE / "GraTaSegmenterLib").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                tops = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) \
                    else {(node.module or "").split(".")[0]}
                assert not tops & gui, f"{path.relative_to(ROOT)} imports {tops & gui}"
    module = ast.parse((MODULE / "GraTaSegmenter.py").read_text(encoding="utf-8"))
    for node in module.body:  # file scope only
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            tops = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) \
                else {(node.module or "").split(".")[0]}
            assert not tops & heavy, f"GraTaSegmenter.py imports {tops & heavy} at file scope"
    web = MODULE / "GraTaSegmenterWeb"  # the web front-end's server never loads torch (the engine runs apart)
    for path in web.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                tops = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) \
                    else {(node.module or "").split(".")[0]}
                assert "torch" not in tops, f"{path.name} imports torch"
                if isinstance(node, ast.ImportFrom) and tops == {"GraTaSegmenterLib"}:
                    assert not (node.module or "").startswith(("GraTaSegmenterLib.models", "GraTaSegmenterLib.segment",
                                                               "GraTaSegmenterLib.adaptation")), \
                        f"{path.name} imports {node.module}, which loads torch"
    support = MODULE / "GraTaSegmenterLib" / "slicer_support"
    for path in support.glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                tops = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) \
                    else {(node.module or "").split(".")[0]}
                assert not tops & heavy, f"{path.name} imports {tops & heavy} at file scope"


def test_no_undefined_or_unused_names_in_the_module_and_the_engine():
    """The module file cannot run here; pyflakes at least proves every name it uses is defined
    (and keeps the engine free of dead imports)."""
    import io

    from pyflakes.api import check
    from pyflakes.reporter import Reporter

    out = io.StringIO()
    problems = sum(check(path.read_text(encoding="utf-8"), str(path), Reporter(out, out))
                   for path in sorted(MODULE.rglob("*.py")))
    assert problems == 0, out.getvalue()


def test_the_panel_ui_has_the_widgets_the_module_uses():
    source = (MODULE / "GraTaSegmenter.py").read_text(encoding="utf-8")
    ui = (MODULE / "Resources" / "UI" / "GraTaSegmenter.ui").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    defined = set(re.findall(r'<widget class="\w+" name="(\w+)"', ui))
    assert used <= defined, used - defined
    assert '<widget class="qMRMLPlotWidget" name="plotWidget">' in ui


def test_every_control_the_readme_tutorial_names_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tutorial = readme[readme.index("### Tutorial"):readme.index("## Citation")]
    ui = (MODULE / "Resources" / "UI" / "GraTaSegmenter.ui").read_text(encoding="utf-8").replace("&amp;&amp;", "&")
    texts = set(re.findall(r"<string>([^<]+)</string>", ui))
    texts |= {t.rstrip(":") for t in texts}
    texts |= {e["name"] for e in json.loads((MODULE / "Resources" / "Models" / "catalog.json").read_text(encoding="utf-8"))["models"]}
    from GraTaSegmenterLib.slicer_support.samples import CATEGORY
    # the extension, the module title, the sample category, the running button's text
    texts |= {"GraTaSegmenter", "GraTa Segmenter", CATEGORY, "Cancel"}
    slicer_modules = {"Sample Data", "Data", "Segment Editor", "Extensions Manager"}
    emphasised = re.findall(r"\*\*([^*]+)\*\*", tutorial) + re.findall(r"(?<!\*)\*([^*]+)\*(?!\*)", tutorial)
    named = {" ".join(n.split()) for n in emphasised}
    named = {n for n in named if n not in slicer_modules and not n.startswith(("Segmentation ›", "Optic"))}
    assert len(named) > 10, named
    assert named <= texts, sorted(named - texts)
    module = (MODULE / "GraTaSegmenter.py").read_text(encoding="utf-8")
    assert '_("GraTa Segmenter")' in module and '_("Cancel")' in module


def test_the_widgets_bound_to_parameters_match_the_parameter_node():
    import xml.etree.ElementTree as ET

    from GraTaSegmenterLib.slicer_support.parameters import MAX_SEED, MAX_STEPS, AdaptParameters

    tree = ast.parse((MODULE / "GraTaSegmenter.py").read_text(encoding="utf-8"))
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GraTaSegmenterParameterNode")
    fields = {s.target.id for s in node_class.body if isinstance(s, ast.AnnAssign)}
    bound = {}
    for widget in ET.parse(MODULE / "Resources" / "UI" / "GraTaSegmenter.ui").iter("widget"):
        props = {p.get("name"): p[0].text for p in widget.findall("property") if len(p)}
        if "SlicerParameterName" in props:
            bound[props["SlicerParameterName"]] = props
    assert set(bound) <= fields, set(bound) - fields
    assert (int(bound["steps"]["minimum"]), int(bound["steps"]["maximum"])) == (1, MAX_STEPS)
    assert (int(bound["seed"]["minimum"]), int(bound["seed"]["maximum"])) == (0, MAX_SEED)
    defaults = AdaptParameters()
    assert int(bound["steps"]["value"]) == defaults.steps
    assert float(bound["learningRate"]["value"]) == defaults.learning_rate
    assert 10 ** -int(bound["learningRate"]["decimals"]) <= float(bound["learningRate"]["minimum"])
