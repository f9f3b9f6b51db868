"""GraTaSegmenter: test-time adaptation (GraTa) of a segmentation network to one image, in 3D Slicer.

This file is a thin shell over two libraries: GraTaSegmenterLib.slicer_support
holds everything that does not need Slicer (parameters and the command line,
the event stream, the child process and its cancellation, the model catalog
and downloads, terminology, sample data); GraTaSegmenterMRML holds what the
module does to the scene (writing the input, reading the results, the plot).
Both, and this file's Logic and self-test, run under Slicer's real MRML core
in the pytest suite (Testing/slicer_runtime).
The adaptation itself runs in a child process (``PythonSlicer -m
GraTaSegmenterLib.cli adapt --events``), so the GUI stays responsive.
"""

import logging
import os
import shutil
import sys
import tempfile
from typing import Annotated, Optional, Union

import ctk
import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

import GraTaSegmenterMRML as mrml
from GraTaSegmenterLib import model_folders
from GraTaSegmenterLib.slicer_support import catalog, dependencies, devices, samples, terminology
from GraTaSegmenterLib.slicer_support.events import format_seconds
from GraTaSegmenterLib.slicer_support.parameters import (AUX_LOSSES, DEVICES, MAX_SEED, MAX_STEPS, METHOD_DESCRIPTIONS,
                                                           METHODS, MODES, PRECISIONS, PSEUDO_LOSSES, AdaptParameters,
                                                           adapt_command, engine_environment)
from GraTaSegmenterLib.slicer_support.process import AdaptRun, RunState
from GraTaSegmenterLib.slicer_support.workspace import ContinualState, RunWorkspace

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
LIB_DIR = os.path.join(MODULE_DIR, "GraTaSegmenterLib")
GRATA_URL = "https://github.com/Chen-Ziyang/GraTa"
SETTINGS_GROUP = "GraTaSegmenter"
ANY_FILE = "any-file"
ANY_FOLDER = "any-folder"  # an nnU-Net model folder or a MONAI bundle, chosen as a folder

#
# Module
#


class GraTaSegmenter(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GraTa Segmenter")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["GraTaSegmenter contributors"]
        self.parent.helpText = _(
            "Segments the optic disc and cup of a fundus photo (or any image a model file describes) after "
            "adapting the network to that image at test time with GraTa (gradient alignment), TENT or BN. "
            'See <a href="{url}">the GraTa authors\' page</a> for the method and reference checkpoints.').format(
            url=GRATA_URL)
        self.parent.acknowledgementText = _(
            "GraTa: Chen, Ye, Pan, Xia, \"Gradient Alignment Improves Test-Time Adaptation for Medical Image "
            "Segmentation\", AAAI 2025 (arXiv 2408.07343).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the phantom fundus samples listed in GraTaSegmenterLib/samples/index.json."""
    import SampleData

    folder = os.path.join(LIB_DIR, "samples")
    manifest = os.path.join(folder, samples.MANIFEST)
    if not os.path.isfile(manifest):
        return
    thumbnail = os.path.join(MODULE_DIR, "Resources", "Icons", "GraTaSegmenter.png")
    for source in samples.sample_data_sources(samples.load_manifest(manifest), folder, thumbnail):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)


#
# Parameter node
#


DEFAULTS = AdaptParameters()


@parameterNodeWrapper
class GraTaSegmenterParameterNode:
    """The panel's state. ``outputSegmentation``/``uncertaintyVolume`` are what the
    user chose to overwrite (None: a new node for every run, so that no earlier
    result, corrected or not, is ever replaced unasked); ``resultSegmentation``
    is the last run's result, for Show 3D and Edit in Segment Editor."""

    # RGB photos are vector volumes. The None is required: the wrapper writes every default when
    # it wraps the node, and a union of node types without None has no value to write.
    inputVolume: Optional[Union[slicer.vtkMRMLScalarVolumeNode, slicer.vtkMRMLVectorVolumeNode]]
    modelId: str = "fundus-phantom-a"
    modelPath: str = ""
    method: Annotated[str, Choice(list(METHODS))] = DEFAULTS.method
    steps: Annotated[int, WithinRange(1, MAX_STEPS)] = DEFAULTS.steps
    learningRate: Annotated[float, WithinRange(1e-6, 1.0)] = DEFAULTS.learning_rate
    auxLoss: Annotated[str, Choice(list(AUX_LOSSES))] = DEFAULTS.aux_loss
    pseudoLoss: Annotated[str, Choice(list(PSEUDO_LOSSES))] = DEFAULTS.pseudo_loss
    mode: Annotated[str, Choice(list(MODES))] = DEFAULTS.mode
    device: Annotated[str, Choice(list(DEVICES))] = DEFAULTS.device
    precision: Annotated[str, Choice(list(PRECISIONS))] = DEFAULTS.precision
    seed: Annotated[int, WithinRange(0, MAX_SEED)] = DEFAULTS.seed
    uncertainty: bool = DEFAULTS.uncertainty
    postprocess: bool = DEFAULTS.postprocess
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    uncertaintyVolume: slicer.vtkMRMLScalarVolumeNode
    resultSegmentation: slicer.vtkMRMLSegmentationNode


def adaptParameters(p) -> AdaptParameters:
    return AdaptParameters(method=p.method, steps=int(p.steps), learning_rate=float(p.learningRate),
                           aux_loss=p.auxLoss, pseudo_loss=p.pseudoLoss, mode=p.mode, device=p.device,
                           precision=p.precision, seed=int(p.seed), uncertainty=bool(p.uncertainty), postprocess=bool(p.postprocess))


#
# Widget
#


class GraTaSegmenterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    COMBOS = (("methodComboBox", "method", METHODS), ("auxLossComboBox", "auxLoss", AUX_LOSSES),
              ("pseudoLossComboBox", "pseudoLoss", PSEUDO_LOSSES), ("modeComboBox", "mode", MODES),
              ("deviceComboBox", "device", DEVICES), ("precisionComboBox", "precision", PRECISIONS))

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._timer = None
        self._warnedSlow = False  # the slow-run warning of the current run was shown
        self._deviceProbe = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GraTaSegmenter.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GraTaSegmenterLogic()

        for name, _param, values in self.COMBOS:
            combo = getattr(self.ui, name)
            for value in values:
                combo.addItem(value, value)
            combo.connect("currentIndexChanged(int)", lambda _i, n=name: self.onComboChanged(n))
        for i, method in enumerate(METHODS):
            self.ui.methodComboBox.setItemData(i, METHOD_DESCRIPTIONS[method], qt.Qt.ToolTipRole)
        for entry in self.logic.catalog:
            self.ui.modelComboBox.addItem(entry.name, entry.id)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, entry.tooltip(), qt.Qt.ToolTipRole)
        self.ui.modelComboBox.addItem(_("Any model file..."), ANY_FILE)
        self.ui.modelComboBox.addItem(_("nnU-Net or MONAI model folder..."), ANY_FOLDER)
        self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, _(
            "An nnU-Net v2 trained-model folder (or one of its fold_N folders) or a MONAI bundle folder; it "
            "segments 3D volumes with its own preprocessing"), qt.Qt.ToolTipRole)
        self.ui.modelLinkLabel.setText(
            _('Reference checkpoints of the GraTa authors are published at <a href="{url}">{url}</a>.').format(
                url=GRATA_URL))

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.resetAdaptationButton.connect("clicked(bool)", self.onResetAdaptation)
        self.ui.openCacheButton.connect("clicked(bool)", self.onOpenCache)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.adaptationCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdaptationCollapsed)

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self._deviceProbe = None
        self.stopRun()
        if self.logic is not None:
            self.logic.continual.reset()  # its temporary folder
        self.removeObservers()

    def stopRun(self):
        """The panel or the scene is going away: end a run and import nothing."""
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.cancel(wait=True)
            self.logic.discardRun()

    def enter(self):
        # The GUI stays connected while the panel lives: reconnecting on every enter() leaks
        # one observer per visit in 5.10 (its disconnectGui does not remove the one connectGui adds).
        self.initializeParameterNode()

    def onReload(self):
        """Developer mode's Reload: drop the libraries too, so that edited code is used."""
        for name in [n for n in sys.modules if n.split(".")[0] in ("GraTaSegmenterLib", "GraTaSegmenterMRML")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event):
        self.stopRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameters ----------------------------------------------------------------
    def initializeParameterNode(self):
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.inputVolume:
            # the first image volume; not a labelmap, which is a scalar volume too
            volumes = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if node.GetClassName() in ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")]
            if volumes:
                parameterNode.inputVolume = volumes[0]
        self.setParameterNode(parameterNode)
        self.ui.plotWidget.setMRMLPlotViewNode(self.logic.plotViewNode())

    def setParameterNode(self, inputParameterNode):
        if inputParameterNode is not None and self._parameterNode is not None and \
                inputParameterNode.parameterNode is self._parameterNode.parameterNode:
            self.updateGUIFromParameterNode()
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        p = self._parameterNode
        if p is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            for name, param, _values in self.COMBOS:
                combo = getattr(self.ui, name)
                combo.setCurrentIndex(max(0, combo.findData(getattr(p, param))))
            self.ui.modelComboBox.setCurrentIndex(max(0, self.ui.modelComboBox.findData(p.modelId)))
            self.ui.modelPathLineEdit.currentPath = p.modelPath
        finally:
            self._updatingGui = False
        entry = self.logic.entry(p.modelId)
        self.ui.modelPathLineEdit.setEnabled(entry is None or entry.kind == "reference")
        # a folder model is browsed as a folder (the file dialog cannot choose one)
        self.ui.modelPathLineEdit.filters = (ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Readable
                                             if p.modelId == ANY_FOLDER else
                                             ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable)
        self.ui.modelCardLabel.setText(self.logic.modelCardText(p.modelId, p.modelPath))
        self.ui.uncertaintyVolumeSelector.setEnabled(p.uncertainty)
        self.ui.resetAdaptationButton.setEnabled(p.mode == "continual" and self.logic.continual.active)
        self.updateButtons()

    def onComboChanged(self, name):
        if self._parameterNode is None or self._updatingGui:
            return
        _n, param, _values = next(c for c in self.COMBOS if c[0] == name)
        setattr(self._parameterNode, param, getattr(self.ui, name).currentData)

    def onModelChanged(self, index):
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.modelId = self.ui.modelComboBox.itemData(index)

    def onModelPathChanged(self, path):
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.modelPath = path

    def onAdaptationCollapsed(self, collapsed):
        """Opening the Advanced section asks, once, which GPUs there are (in the background)."""
        if collapsed or self.logic.deviceLabels is not None or self._deviceProbe is not None:
            return
        self.ui.deviceInfoLabel.setText(_("Detecting GPUs..."))
        self._deviceProbe = self.logic.detectDevicesInBackground()
        qt.QTimer.singleShot(200, self.onDeviceProbePoll)

    def onDeviceProbePoll(self):
        if self._deviceProbe is None:  # the panel was cleaned up (closed or reloaded) meanwhile
            return
        if not self._deviceProbe.done():
            qt.QTimer.singleShot(200, self.onDeviceProbePoll)
            return
        labels = self.logic.setDeviceInfo(self._deviceProbe.result())
        self._deviceProbe = None
        for i, device in enumerate(DEVICES):
            self.ui.deviceComboBox.setItemText(i, labels[device])
        self.ui.deviceInfoLabel.setText(labels["auto"])

    # -- run ---------------------------------------------------------------------------
    def updateButtons(self):
        running = self.logic.run is not None and self.logic.run.state.busy
        p = self._parameterNode
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.enabled = self.logic.run.state is not RunState.Cancelling
            self.ui.applyButton.toolTip = _("Stop the adaptation; nothing is added to the scene.")
        else:
            self.ui.applyButton.text = _("Adapt && Segment")
            problems = [] if p is None else adaptParameters(p).problems()
            if p is not None and not p.inputVolume:
                problems.insert(0, _("select an input volume"))
            self.ui.applyButton.enabled = p is not None and not problems
            self.ui.applyButton.toolTip = "; ".join(problems) or _("Adapt the model to the image and segment it.")
        for widget in (self.ui.inputsCollapsibleButton, self.ui.adaptationCollapsibleButton,
                       self.ui.outputsCollapsibleButton):
            widget.setEnabled(not running)
        hasResult = p is not None and p.resultSegmentation is not None and not running
        self.ui.show3DButton.enabled = hasResult
        self.ui.editInSegmentEditorButton.enabled = hasResult

    def onApplyButton(self):
        if self.logic.run is not None and self.logic.run.state.busy:
            self.logic.cancel()
            self.log(_("Cancelling..."))
            self.updateButtons()
            return
        # no wait cursor: starting may ask to install packages, and a dialog under a wait cursor looks frozen
        with slicer.util.tryWithErrorDisplay(_("Failed to start the adaptation.")):
            p = self._parameterNode
            modelPath = self.logic.resolveModel(p.modelId, p.modelPath)
            self.logic.saveUserDefaults(p)
            self.ui.logTextEdit.clear()
            self.logic.start(p.inputVolume, modelPath, adaptParameters(p), onLog=self.log)
            self._warnedSlow = False
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = self.logic.run.progress.status_text()
            self._timer.start()
        self.updateButtons()

    def onPoll(self):
        run = self.logic.run
        if run is None:
            self._timer.stop()
            return
        events = run.poll()
        if any(e.kind == "step" for e in events):
            self.logic.updatePlot(run.progress)
        self.ui.progressBar.value = int(round(100 * run.progress.fraction))
        self.ui.statusLabel.text = run.progress.status_text()
        warning = run.progress.slow_warning()
        if warning and any(e.kind == "estimate" for e in events) and not self._warnedSlow:
            self._warnedSlow = True  # said once per run, in the log and (until the first step) in the status
            self.log(warning)
        if warning and run.progress.global_step == 0 and run.state.busy:
            self.ui.statusLabel.text = warning
        if run.state.busy:
            return
        self._timer.stop()
        try:
            # shows one clear message on failure, then re-raises (Slicer's util does)
            with slicer.util.tryWithErrorDisplay(_("The adaptation failed.")):
                self.logic.finish(self._parameterNode)
        except Exception:
            pass  # shown above; the panel must still leave the running state below
        finally:
            self.afterRun(run)

    def afterRun(self, run):
        if run.state is RunState.Done:
            for text in run.progress.postprocess:
                self.log(_("Post-processing: {what}").format(what=text))
            self.ui.statusLabel.text = _("Done in {t}.").format(t=format_seconds(run.progress.seconds))
            result = self._parameterNode.resultSegmentation
            if result is not None:  # a new result is shown as the Show 3D button says
                mrml.showSurfaces(result, self.ui.show3DButton.checked)
        else:
            self.ui.statusLabel.text = run.failure or _("Cancelled.")
        self.log(self.ui.statusLabel.text)
        self.ui.progressBar.visible = run.state is RunState.Done
        self.updateGUIFromParameterNode()

    def log(self, text):
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    # -- after a run ------------------------------------------------------------------
    def onResetAdaptation(self):
        self.logic.continual.reset()
        self.log(_("Continual adaptation reset: the next image starts from the source model."))
        self.updateGUIFromParameterNode()

    def onShow3D(self, show):
        segmentation = self._parameterNode.resultSegmentation
        if segmentation:
            mrml.showSurfaces(segmentation, show)

    def onEditInSegmentEditor(self):
        segmentation = self._parameterNode.resultSegmentation
        # the volume the result was computed on (the input selector may have moved on since)
        volume = segmentation.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.util.getModuleWidget("SegmentEditor").editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume or self._parameterNode.inputVolume)

    def onOpenCache(self):
        os.makedirs(self.logic.cache.root, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.logic.cache.root)))

    def onClearCache(self):
        size = self.logic.cache.size_bytes()
        if size and slicer.util.confirmOkCancelDisplay(
                _("Delete the downloaded models ({mb:.1f} MB) in {path}?").format(mb=size / 2**20,
                                                                                  path=self.logic.cache.root)):
            self.logic.cache.clear()


#
# Logic
#


class GraTaSegmenterLogic(ScriptedLoadableModuleLogic):
    """Runs the engine in a child process and brings its results into the scene.

    Nothing is added to the scene until a run has succeeded (the plot nodes,
    created once, are the only exception and are not saved with the scene).
    """

    def __init__(self, pythonCommand=None, cacheRoot=None):
        ScriptedLoadableModuleLogic.__init__(self)
        models = os.path.join(MODULE_DIR, "Resources", "Models")
        self.catalog = catalog.load_catalog(os.path.join(models, "catalog.json"),
                                            os.path.join(models, "catalog.schema.json"))
        self.cache = catalog.ModelCache(cacheRoot or os.path.join(slicer.app.cachePath, "GraTaSegmenter", "models"))
        self.pythonCommand = pythonCommand or pythonSlicerCommand()
        self.terms = terminology.load_terms(self.termFile())
        # so that the Segment Editor's terminology selector knows the optic disc and cup codes
        slicer.modules.terminologies.logic().LoadTerminologyFromFile(self.termFile())
        self.continual = ContinualState()
        self.run = None
        self.workspace = None
        self.inputVolume = None
        self.deviceLabels = None
        self.plot = mrml.PlotNodes()

    def getParameterNode(self):
        """The wrapped parameter node; a new one starts from the user's saved choices."""
        node = super().getParameterNode()
        isNew = not node.GetParameterNames()
        wrapped = GraTaSegmenterParameterNode(node)
        if isNew:
            self.loadUserDefaults(wrapped)
        return wrapped

    @staticmethod
    def termFile():
        return os.path.join(MODULE_DIR, "Resources", "Terminology",
                            "SegmentationCategoryTypeModifier-GraTaSegmenter.term.json")

    # -- user defaults (persist between sessions) ---------------------------------------
    def saveUserDefaults(self, p):
        settings = qt.QSettings()
        for key, value in adaptParameters(p).to_settings().items():
            settings.setValue(f"{SETTINGS_GROUP}/{key}", value)
        settings.setValue(f"{SETTINGS_GROUP}/modelId", p.modelId)
        settings.setValue(f"{SETTINGS_GROUP}/modelPath", p.modelPath)

    def loadUserDefaults(self, p):
        settings = qt.QSettings()
        stored = {key: settings.value(f"{SETTINGS_GROUP}/{key}") for key in AdaptParameters().to_settings()}
        a = AdaptParameters.from_settings(stored)
        p.method, p.steps, p.learningRate, p.auxLoss, p.pseudoLoss = (a.method, a.steps, a.learning_rate,
                                                                      a.aux_loss, a.pseudo_loss)
        p.mode, p.device, p.seed, p.uncertainty, p.postprocess = a.mode, a.device, a.seed, a.uncertainty, a.postprocess
        p.precision = a.precision
        modelId = settings.value(f"{SETTINGS_GROUP}/modelId")
        if modelId and (self.entry(modelId) is not None or modelId in (ANY_FILE, ANY_FOLDER)):
            p.modelId = modelId
        p.modelPath = settings.value(f"{SETTINGS_GROUP}/modelPath") or ""

    # -- models ---------------------------------------------------------------------------
    def entry(self, modelId):
        return next((e for e in self.catalog if e.id == modelId), None)

    def modelCardText(self, modelId, modelPath):
        if modelId == ANY_FOLDER:
            return (model_folders.card_text(modelPath) if modelPath else "") or _(
                "Select an nnU-Net v2 model folder (dataset.json, plans.json, fold_N) or a MONAI bundle folder "
                "(configs/inference.json, models/model.pt).")
        entry = self.entry(modelId)
        path = modelPath if entry is None or entry.kind == "reference" else None
        if entry is not None and entry.kind == "bundled":
            path = os.path.join(LIB_DIR, "models", "weights", entry.file)
        card = catalog.read_safetensors_card(path) if path and os.path.isfile(path) else None
        text = catalog.card_text(card) if card else ""
        if entry is not None:
            text = entry.tooltip() + ("\n\nModel card:\n" + text if text else "")
        return text or _("Select a model file (.safetensors with a model card, or a reference .pth checkpoint).")

    def resolveModel(self, modelId, modelPath):
        if modelId == ANY_FOLDER:
            if not modelPath or model_folders.kind(modelPath) is None:
                raise ValueError(_("Select an nnU-Net model folder (with dataset.json and plans.json, or one of its "
                                   "fold_N folders) or a MONAI bundle folder (with configs/inference.json)."))
            return modelPath
        entry = self.entry(modelId)
        if entry is None:
            if not modelPath or not os.path.isfile(modelPath):
                raise ValueError(_("Select a model file."))
            return modelPath
        dialog = None
        if entry.kind == "download" and not self.cache.is_cached(entry):
            dialog = slicer.util.createProgressDialog(labelText=_("Downloading {name}...").format(name=entry.name),
                                                      maximum=100)

        def progress(done, total):
            if dialog is not None:
                dialog.value = int(100 * done / total) if total else 0
                slicer.app.processEvents()
                return not dialog.wasCanceled
            return True

        try:
            return str(catalog.resolve_model(entry, bundled_dir=os.path.join(LIB_DIR, "models", "weights"),
                                             cache=self.cache, user_file=modelPath or None, progress=progress))
        finally:
            if dialog is not None:
                dialog.close()

    def detectDevicesInBackground(self):
        """A Future of the device probe (a child process started from a worker thread)."""
        return devices.probe_in_background(self.pythonCommand, self.environment())

    def setDeviceInfo(self, info):
        self.deviceLabels = devices.device_labels(info)
        return self.deviceLabels

    # -- dependencies ---------------------------------------------------------------------
    def ensureDependencies(self):
        """PyTorch from the PyTorch extension, other packages with pip after one confirmation.

        Whether torch is there is read from package metadata: asking PyTorchUtils
        (``torchInstalled()``) would import torch into Slicer's own process."""
        if not dependencies.torch_installed():
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("This module needs the PyTorch extension. Install 'PyTorch' from the "
                                     "Extensions Manager and restart Slicer.")) from None
            if not slicer.util.confirmOkCancelDisplay(_("PyTorch is not installed yet. Install it now with the "
                                                        "PyTorch extension? This can take several minutes.")):
                raise RuntimeError(_("PyTorch is required."))
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if torchLogic.installTorch(askConfirmation=False,
                                       torchVersionRequirement=dependencies.torch_requirement()) is None:
                raise RuntimeError(_("PyTorch could not be installed; see the PyTorch Utils module."))
        problem = dependencies.torch_version_problem()
        if problem:
            raise RuntimeError(problem)
        missing = dependencies.missing_packages()
        if not missing:
            return
        if not slicer.util.confirmOkCancelDisplay(dependencies.confirmation_text(missing)):
            raise RuntimeError(_("The required Python packages are not installed."))
        with tempfile.TemporaryDirectory() as folder:
            constraints = os.path.join(folder, "constraints.txt")
            with open(constraints, "w", encoding="utf-8") as f:
                f.write(dependencies.constraints_text())
            slicer.util.pip_install(dependencies.pip_arguments(missing, constraints))

    def environment(self):
        return engine_environment(os.environ, MODULE_DIR)

    # -- a run ------------------------------------------------------------------------------
    def start(self, inputVolume, modelPath, params, onLog=None):
        """Write the input, start the child process; returns the AdaptRun (polled by the caller).
        The scene is not touched: the input is written with a storage node of its own."""
        if self.run is not None and self.run.state.busy:
            raise RuntimeError(_("An adaptation is already running."))
        if inputVolume is None:
            raise ValueError(_("Select an input volume."))
        params.validated()
        self.ensureDependencies()
        self.workspace = RunWorkspace()
        self.inputVolume = inputVolume
        if not mrml.writeVolume(inputVolume, self.workspace.input_path):
            self.workspace.cleanup()
            raise RuntimeError(_("Could not write the input volume to {path}.").format(path=self.workspace.input_path))
        continual = params.mode == "continual"
        if continual and self.continual.follow((os.path.abspath(modelPath), params.method)) and onLog:
            onLog(_("Continual adaptation restarted from the source model: the model or the method changed."))
        command = adapt_command(self.pythonCommand, self.workspace.input_path, self.workspace.output_dir, modelPath,
                                params, save_state=self.continual.pending_path if continual else None,
                                load_state=self.continual.load_path() if continual else None)
        if onLog:
            onLog(" ".join(command))
        self.resetPlot()
        self.run = AdaptRun(command, env=self.environment(), on_log=onLog)
        self.run.start()
        return self.run

    def cancel(self, wait=False):
        if self.run is not None and self.run.state.busy:
            if wait:
                self.run.cancel_and_wait(2.0)
            else:
                self.run.cancel()

    def finish(self, parameterNode):
        """After the run ended: import the results (Done) or clean up and raise (Failed)."""
        run = self.run
        try:
            if run.state is RunState.Done:
                self.importResults(run.progress.outputs[-1], parameterNode)
                self.continual.commit()
            elif not run.cancelled:
                raise RuntimeError(run.failure + "\n\n" + _("Details are in the log."))
        finally:
            self.discardRun()  # the files of the run; a state not committed above is dropped

    def discardRun(self):
        """Forget the current run without importing its results; remove its files."""
        self.continual.discard_pending()
        if self.workspace is not None:
            self.workspace.cleanup()
            self.workspace = None

    def importResults(self, output, parameterNode):
        """A new segmentation node, or the segments of the one the user chose replaced.
        The files are read in a scene of their own: no node points into the run folder."""
        inputVolume = self.inputVolume
        scene = slicer.mrmlScene
        target = mrml.readSegmentation(output["segmentation"], scene, parameterNode.outputSegmentation,
                                       inputVolume.GetName() + " GraTa segmentation")
        mrml.placeBeside(target, inputVolume)  # first: the geometry below is then taken without a transform
        target.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        mrml.applyTerms(target, self.segmentTerm)
        target.CreateDefaultDisplayNodes()
        parameterNode.resultSegmentation = target
        if output.get("uncertainty"):
            uncertainty = mrml.readVolume(output["uncertainty"], scene, parameterNode.uncertaintyVolume,
                                          inputVolume.GetName() + " GraTa uncertainty")
            mrml.placeBeside(uncertainty, inputVolume)
        slicer.util.setSliceViewerLayers(background=inputVolume, fit=True)

    def segmentTerm(self, name, label):
        """(name, colour, terminology entry) of a segment the engine wrote, or None. By name only:
        each segment of the engine's file is a layer of its own with label value 1, so a label
        would match the term file's label 1 (Optic disc) for any model's first class."""
        term = terminology.match_term(self.terms, name)
        if term is None:
            return None
        return terminology.display_name(term.name), term.color, term.terminology_entry()

    # -- live plot --------------------------------------------------------------------------
    def plotViewNode(self):
        return self.plot.viewNode()

    def resetPlot(self):
        self.plot.update([], [], [])

    def updatePlot(self, progress):
        if progress is None or not progress.plot_steps:
            self.resetPlot()
        else:
            self.plot.update(progress.plot_steps, progress.plot_cosine, progress.plot_lr)

    def plotPointCount(self):
        return self.plot.rowCount()


def pythonSlicerCommand():
    """The interpreter for the child: the PythonSlicer launcher (it sets up Slicer's
    Python environment), or this interpreter when there is none."""
    launcher = shutil.which("PythonSlicer")
    if launcher is None and slicer.app.slicerHome:
        candidate = os.path.join(slicer.app.slicerHome, "bin", "PythonSlicer" + (".exe" if os.name == "nt" else ""))
        launcher = candidate if os.path.isfile(candidate) else None
    return [launcher or sys.executable]


#
# Test (runs inside Slicer: Developer Mode > Reload and Test, or the CTest registered in CMakeLists.txt)
#


class GraTaSegmenterTest(ScriptedLoadableModuleTest):
    DICE_THRESHOLD = 0.5

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AdaptThreeStepsOnSample()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def loadSample(self):
        import SampleData

        registerSampleData()
        manifest = samples.load_manifest(os.path.join(LIB_DIR, "samples", samples.MANIFEST))
        sample = next(s for s in manifest if s.label)
        volume = SampleData.downloadSample(sample.name)
        label = slicer.util.loadLabelVolume(os.path.join(LIB_DIR, "samples", sample.label))
        return volume, label

    def runToEnd(self, logic, parameterNode, timeout=600):
        import time

        end = time.monotonic() + timeout
        while logic.run.state.busy and time.monotonic() < end:
            if logic.run.poll():
                logic.updatePlot(logic.run.progress)
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertFalse(logic.run.state.busy, "the run did not end in time")
        logic.finish(parameterNode)

    def test_AdaptThreeStepsOnSample(self):
        import numpy as np

        self.delayDisplay("Adapt 3 steps on the CPU")
        volume, label = self.loadSample()
        shift = vtk.vtkMatrix4x4()
        shift.SetElement(0, 3, 12.5)  # the volume under a transform: the result must move with it
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        transform.SetMatrixTransformToParent(shift)
        volume.SetAndObserveTransformNodeID(transform.GetID())
        logic = GraTaSegmenterLogic()
        p = logic.getParameterNode()
        p.inputVolume = volume
        params = AdaptParameters(steps=3, device="cpu", seed=0)
        logic.start(volume, logic.resolveModel("fundus-phantom-a", ""), params)
        self.runToEnd(logic, p)
        self.assertIs(logic.run.state, RunState.Done, logic.run.failure)
        segmentation = p.resultSegmentation
        self.assertIsNotNone(segmentation)
        self.assertIsNone(p.outputSegmentation)  # new node by default: a second run would not replace this one
        self.assertEqual(segmentation.GetTransformNodeID(), transform.GetID())
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(sorted(names), ["Optic cup", "Optic disc"])
        from GraTaSegmenterLib.fundus_layout import decode_mask

        reference = decode_mask(slicer.util.arrayFromVolume(label)[0])[0] > 0  # the disc (cup included): mask < 255
        discId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Optic disc")
        cupId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Optic cup")
        disc = (slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, discId, volume)[0] > 0)
        disc |= slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, cupId, volume)[0] > 0
        dice = 2.0 * np.logical_and(disc, reference).sum() / max(1, disc.sum() + reference.sum())
        self.assertGreater(dice, self.DICE_THRESHOLD)
        self.assertEqual(logic.plotPointCount(), 3)
        self.delayDisplay(f"Dice of the optic disc: {dice:.3f}")

    def test_CancelLeavesSceneUnchanged(self):
        import time

        self.delayDisplay("Cancel mid-run")
        volume, _label = self.loadSample()
        logic = GraTaSegmenterLogic()
        p = logic.getParameterNode()
        p.inputVolume = volume
        logic.plotViewNode()
        before = slicer.mrmlScene.GetNumberOfNodes()
        logic.start(volume, logic.resolveModel("fundus-phantom-a", ""), AdaptParameters(steps=200, device="cpu"))
        end = time.monotonic() + 300
        while logic.run.progress.global_step < 1 and logic.run.state.busy and time.monotonic() < end:
            logic.run.poll()
            time.sleep(0.05)
        workspace = logic.workspace.root
        t0 = time.monotonic()
        logic.cancel(wait=True)
        self.assertLess(time.monotonic() - t0, 2.5)
        self.assertFalse(logic.run.tree_alive())
        logic.finish(p)
        self.assertTrue(logic.run.cancelled)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertIsNone(p.resultSegmentation)
        self.assertFalse(os.path.exists(workspace))
        self.delayDisplay("Cancel passed")
