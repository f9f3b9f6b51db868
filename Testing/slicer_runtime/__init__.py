"""Slicer's embedded Python, for tests: ``import slicer`` as a scripted module sees it.

What is real:
* the compiled core, PyPI's ``slicer-core`` (MRML scene, nodes, storage nodes,
  application logic and the Volumes, Segmentations, Terminologies, Colors,
  SubjectHierarchy, Plots, Tables and Transforms logics), set up as Slicer's
  module setup does it (converter rules, default colour tables, default
  terminologies read from Slicer's own files);
* Slicer's pure-Python layers of the tag under test, read from
  ``../shared/slicer_python/<tag>/`` (``slicer.util``, ``ScriptedLoadableModule``,
  ``parameterNodeWrapper``, ``i18n``, ``SampleData``): never copied here.

What is a stand-in (each in its own file, named so, kept to what is called):
``qt`` and ``ctk`` (:mod:`.qt_standin`, :mod:`.ctk_standin`), ``slicer.app`` and
its IO manager (:mod:`.application`), the subject hierarchy plugin logic
(:mod:`.subject_hierarchy`) and a scripted module's parent object.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GRATA_SHARED", REPO.parent / "shared")) / "slicer_python"
TAGS = ("v5.10.0", "v5.12.3")
MODULE_DIR = REPO / "GraTaSegmenter"

QT_WIDGET_NAMES = ("qMRMLNodeComboBox", "qMRMLRangeWidget", "qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLWidget",
                   "qSlicerWidget", "qSlicerScriptedLoadableModuleWidget")

# modules that belong to one activation and are dropped by the next
_OWNED_PREFIXES = ("slicer", "qt", "ctk", "SampleData", "GraTaSegmenter", "GraTaSegmenterMRML")


def available() -> str | None:
    """None when the runtime can be activated, else why not (for pytest.skip)."""
    if not all((SHARED / tag / "slicer" / "util.py").is_file() for tag in TAGS):
        return f"Slicer's Python layers are not at {SHARED} (the ../shared folder beside the repository)"
    try:
        importlib.import_module("slicer_core")
    except ImportError as exc:
        return f"slicer-core is not installed ({exc})"
    return None


class ModuleParentStandIn:
    """What qSlicerScriptedLoadableModule hands a ScriptedLoadableModule as ``parent``."""

    def __init__(self, path):
        self.path = str(path)
        self.title = ""
        self.categories = []
        self.dependencies = []
        self.contributors = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.icon = None
        self.isEntered = False


class SlicerRuntime:
    """One activation: the scene, the logics, the ``slicer`` module of one tag."""

    def __init__(self, tag: str, home: str | os.PathLike):
        import slicer_core
        import vtk

        from . import ctk_standin, qt_standin
        from .application import SlicerApplicationStandIn
        from .subject_hierarchy import SubjectHierarchyPluginLogicStandIn

        if tag not in TAGS:
            raise ValueError(f"unknown Slicer tag {tag!r}")
        self.tag = tag
        self.home = Path(home)
        self.layers = SHARED / tag
        _forget_modules()
        qt_standin.QTimer.reset()
        sys.modules["qt"] = qt_standin
        sys.modules["ctk"] = ctk_standin
        self.qt = qt_standin

        slicer = types.ModuleType("slicer", "Slicer's namespace: slicer-core's classes, the tag's Python layers")
        slicer.__path__ = [str(self.layers / "slicer")]  # slicer.util etc. come from the tag's own files
        slicer.__file__ = str(self.layers / "slicer" / "__init__.py")
        for name in dir(slicer_core):
            if not name.startswith("_"):
                setattr(slicer, name, getattr(slicer_core, name))
        # Qt widget classes of Slicer, as names only (annotations of parameterNodeWrapper's connectors)
        for name in QT_WIDGET_NAMES:
            setattr(slicer, name, type(name, (qt_standin.QWidget,), {}))
        sys.modules["slicer"] = slicer
        for sub in ("modules", "moduleNames"):
            module = types.ModuleType(f"slicer.{sub}")
            sys.modules[f"slicer.{sub}"] = module
            setattr(slicer, sub, module)
        self.slicer = slicer

        # -- the scene and the logics, as Slicer's start-up sets them up ----------------------
        scene = slicer_core.vtkMRMLScene()
        cache = slicer_core.vtkCacheManager()
        (self.home / "RemoteIO").mkdir(parents=True, exist_ok=True)
        cache.SetRemoteCacheDirectory(str(self.home / "RemoteIO"))
        scene.SetCacheManager(cache)
        appLogic = slicer_core.vtkSlicerApplicationLogic()
        appLogic.SetMRMLScene(scene)
        share = self.home / "Terminologies"  # the default files under the names the logic loads
        share.mkdir(parents=True, exist_ok=True)
        for f in (self.layers / "Terminologies").glob("*.json"):
            shutil.copyfile(f, share / (f.name[:-len(".json")] + ".term.json"))
        logics = {}
        for name, cls in (("Colors", slicer_core.vtkSlicerColorLogic),
                          ("SubjectHierarchy", slicer_core.vtkSlicerSubjectHierarchyModuleLogic),
                          ("Volumes", slicer_core.vtkSlicerVolumesLogic),
                          ("Segmentations", slicer_core.vtkSlicerSegmentationsModuleLogic),
                          ("Terminologies", slicer_core.vtkSlicerTerminologiesModuleLogic),
                          ("Tables", slicer_core.vtkSlicerTablesLogic),
                          ("Plots", slicer_core.vtkSlicerPlotsLogic),
                          ("Transforms", slicer_core.vtkSlicerTransformLogic)):
            logic = cls()
            logic.SetMRMLApplicationLogic(appLogic)
            if name == "Terminologies":
                logic.SetModuleShareDirectory(str(share))
            logic.SetMRMLScene(scene)
            appLogic.SetModuleLogic(name, logic)
            logics[name.lower()] = logic
        self.scene, self.appLogic, self.logics = scene, appLogic, logics
        self.shPluginLogic = SubjectHierarchyPluginLogicStandIn(scene)

        self.app = SlicerApplicationStandIn(scene, appLogic, logics, self.home / "app")
        slicer.app = self.app
        slicer.mrmlScene = scene
        for name, logic in logics.items():
            setattr(slicer.modules, name, _LoadedModule(name, logic))
            setattr(slicer.moduleNames, name, name)

        # what slicerqt.py imports at start-up
        importlib.import_module("slicer.util")
        importlib.import_module("slicer.i18n")
        sys.path.insert(0, str(self.layers))  # SampleData.py (a scripted module of Slicer's own)
        self._paths = [str(self.layers)]
        self.vtk = vtk

    # -- a scripted module, as the module manager loads it --------------------------------------
    def loadScriptedModule(self, path: str | os.PathLike):
        """Import a scripted module file, instantiate its module class (which
        registers with ``slicer.app``), and emit ``startupCompleted()``."""
        path = Path(path)
        sys.path.insert(0, str(path.parent))  # Slicer puts each scripted module's folder on sys.path
        self._paths.append(str(path.parent))
        module = importlib.import_module(path.stem)
        parent = ModuleParentStandIn(path)
        instance = getattr(module, path.stem)(parent)
        setattr(self.slicer.modules, path.stem.lower(), _LoadedModule(path.stem, None, parent))
        setattr(self.slicer.modules, path.stem + "Instance", instance)
        self.app.emit("startupCompleted()")
        return module, instance

    def close(self):
        self.shPluginLogic.stop()
        for p in self._paths:
            if p in sys.path:
                sys.path.remove(p)
        _forget_modules()


class _LoadedModule:
    """``slicer.modules.<name>``: ``logic()`` is the real module logic."""

    def __init__(self, name, logic, parent=None):
        self.name = name
        self._logic = logic
        self.parent = parent

    def logic(self):
        return self._logic

    def widgetRepresentation(self):
        return None


def _forget_modules():
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in _OWNED_PREFIXES):
            del sys.modules[name]
