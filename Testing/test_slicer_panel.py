"""The panel's own code paths that need no Qt widget (Slicer's real MRML core,
Slicer's Python layers of both tags, the .ui's widget names): the end of a
failed run, the PyTorch check, texts made for translation."""

from __future__ import annotations

import ast
import sys
import time
import types

import pytest

from slicer_runtime import MODULE_DIR, TAGS, SlicerRuntime, available
from slicer_runtime.panel import panel_from_ui
from test_cli_support import SLOW_ENGINE

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture(scope="module", params=TAGS)
def runtime(request, tmp_path_factory):
    rt = SlicerRuntime(request.param, tmp_path_factory.mktemp(f"panel-{request.param}"))
    rt.module, _ = rt.loadScriptedModule(MODULE_DIR / "GraTaSegmenter.py")
    yield rt
    rt.close()


def widget_without_gui(runtime):
    """The module's widget with its logic and parameter node, widgets from the .ui (see panel.py)."""
    m = runtime.module
    w = m.GraTaSegmenterWidget.__new__(m.GraTaSegmenterWidget)
    w.logic = m.GraTaSegmenterLogic()
    w._parameterNode = w.logic.getParameterNode()
    w._updatingGui = False
    w._timer = runtime.qt.QTimer()
    w.ui = panel_from_ui(MODULE_DIR / "Resources" / "UI" / "GraTaSegmenter.ui")
    for name, _param, values in m.GraTaSegmenterWidget.COMBOS:
        for value in values:
            getattr(w.ui, name).addItem(value, value)
    return w


def test_a_failed_run_leaves_the_panel_ready_for_the_next(runtime, tmp_path):
    m = runtime.module
    runtime.scene.Clear(0)
    import slicer

    volume = slicer.util.addVolumeFromArray((__import__("numpy").ones((1, 8, 8, 3)) * 50).astype("uint8"),
                                            nodeClassName="vtkMRMLVectorVolumeNode")
    w = widget_without_gui(runtime)
    w._parameterNode.inputVolume = volume
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    w.logic.start(volume, str(bad), m.AdaptParameters(steps=1, device="cpu"))
    w.updateButtons()
    assert w.ui.applyButton.text == "Cancel" and not w.ui.inputsCollapsibleButton.enabled
    end = time.monotonic() + 120
    while w.logic.run.state.busy and time.monotonic() < end:
        w.onPoll()  # the last call sees the failure: it must not raise out of the timer slot
        time.sleep(0.02)
    w.onPoll()
    assert w.ui.applyButton.text == "Adapt && Segment"
    for name in ("inputsCollapsibleButton", "adaptationCollapsibleButton", "outputsCollapsibleButton"):
        assert getattr(w.ui, name).enabled, name
    assert w.logic.run.failure and w.logic.run.failure in w.ui.statusLabel.text
    assert not runtime.qt.QApplication.overrideCursors  # no wait cursor left on
    assert w.logic.workspace is None




def test_a_slow_cpu_run_is_announced_with_its_estimate_before_the_first_step(runtime, tmp_path):
    """The engine's estimate event (GraTaSegmenterLib.cost) reaches the panel from a real child process:
    one warning in the log, the status says it until the first step, Cancel ends the run."""
    m = runtime.module
    runtime.scene.Clear(0)
    import slicer

    engine = tmp_path / "slow_engine.py"
    engine.write_text(SLOW_ENGINE, encoding="utf-8")
    volume = slicer.util.addVolumeFromArray(__import__("numpy").ones((4, 8, 8), "float32") * 50)
    w = widget_without_gui(runtime)
    w.logic.pythonCommand = [sys.executable, str(engine)]
    w.logic.ensureDependencies = lambda: None
    w._warnedSlow = False
    w._parameterNode.inputVolume = volume
    logged = []
    w.log = logged.append
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"not read by the stand-in engine")
    w.logic.start(volume, str(bad), m.AdaptParameters(steps=10, device="cpu"))
    end = time.monotonic() + 60
    while w.logic.run.progress.estimate_seconds is None and time.monotonic() < end:
        w.onPoll()
        time.sleep(0.05)
    w.onPoll()
    warnings = [line for line in logged if line.startswith("This run will take")]
    assert warnings == ["This run will take about 25 min on the CPU (no GPU is in use). Cancel stops it and "
                        "leaves the scene as it was; fewer steps, or a computer with a CUDA GPU, make it faster."]
    assert w.ui.statusLabel.text == warnings[0]
    w.logic.cancel(wait=True)
    while w.logic.run.state.busy and time.monotonic() < end:
        w.onPoll()
        time.sleep(0.05)
    w.onPoll()
    assert not w.logic.run.state.busy and len([x for x in logged if x.startswith("This run")]) == 1


class PyTorchUtilsStandIn(types.ModuleType):
    """The PyTorch extension's logic, recording what is asked of it."""

    def __init__(self):
        super().__init__("PyTorchUtils")
        calls = self.calls = []

        class PyTorchUtilsLogic:
            def torchInstalled(self):
                calls.append("torchInstalled")  # imports torch into Slicer's process
                return True

            def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
                calls.append(("installTorch", torchVersionRequirement))
                return object()

        self.PyTorchUtilsLogic = PyTorchUtilsLogic


@pytest.mark.parametrize("torch_there", [True, False])
def test_torch_is_checked_without_importing_it_and_installed_only_when_missing(runtime, monkeypatch, torch_there):
    from GraTaSegmenterLib.slicer_support import dependencies

    stand_in = PyTorchUtilsStandIn()
    monkeypatch.setitem(sys.modules, "PyTorchUtils", stand_in)
    monkeypatch.setattr(dependencies, "torch_installed", lambda: torch_there)
    monkeypatch.setattr(dependencies, "torch_version_problem", lambda: None)
    monkeypatch.setattr(dependencies, "missing_packages", lambda: [])
    import slicer

    asked = []
    # the user clicks OK (in testing mode Slicer's own confirmOkCancelDisplay answers False:
    # it compares its testing answer True with qt.QMessageBox.Ok)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: asked.append(text) or True)
    runtime.module.GraTaSegmenterLogic().ensureDependencies()
    assert len(asked) == (0 if torch_there else 1)
    assert "torchInstalled" not in stand_in.calls
    assert stand_in.calls == ([] if torch_there else [("installTorch", dependencies.torch_requirement())])


def test_texts_for_translation_are_plain_strings():
    """lupdate reads the literal: an f-string inside _() cannot be translated."""
    tree = ast.parse((MODULE_DIR / "GraTaSegmenter.py").read_text(encoding="utf-8"))
    bad = [node.lineno for node in ast.walk(tree)
           if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("_", "translate")
           and any(isinstance(a, ast.JoinedStr) for a in node.args)]
    assert bad == []


def test_torch_installed_reads_metadata():
    from importlib.metadata import PackageNotFoundError

    from GraTaSegmenterLib.slicer_support import dependencies

    def missing(name):
        raise PackageNotFoundError(name)

    assert dependencies.torch_installed(lambda name: "2.13.0") is True
    assert dependencies.torch_installed(missing) is False
