"""Stand-in for ``slicer.app`` (qSlicerApplication) and its IO manager.

The application object is Qt in Slicer; here it is a small Python object
over the real MRML scene and application logic. Its IO manager loads and
saves with the same MRML calls as Slicer's readers and writers, read at the
v5.10.0 and v5.12.3 tags:

* ``VolumeFile`` - qSlicerVolumesReader::load: ``vtkSlicerVolumesLogic.AddArchetypeVolume``
  with the same option bits, colour node and selection propagation;
* ``SegmentationFile`` - qSlicerSegmentationsReader::load:
  ``vtkSlicerSegmentationsModuleLogic.LoadSegmentationFromFile``;
* saving - qSlicerNodeWriter::write: ``AddDefaultStorageNode`` on the node
  itself, then ``SetFileName`` / ``SetURI(None)`` / compression on *that*
  storage node and ``WriteData``: saving a node re-points its storage node,
  as in Slicer.

One gap of slicer-core, not of Slicer: its ITK has no PNG/JPEG/BMP/TIFF
reader, so such a file is first converted to NRRD with SimpleITK (the same
ITK image IO Slicer's reader uses) and the storage node is pointed back at
the original file afterwards.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import vtk

from . import qt_standin as qt

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class CoreIOManagerStandIn:
    def __init__(self, app):
        self.app = app
        self.loaded: list[str] = []  # file names, in the order they were loaded
        self.saved: list[str] = []

    # -- which reader / writer ---------------------------------------------------------
    @staticmethod
    def fileType(fileName):
        name = str(fileName).lower()
        if name.endswith(".seg.nrrd") or name.endswith(".seg.nii.gz"):
            return "SegmentationFile"
        if name.endswith(".mrml"):
            return "SceneFile"
        return "VolumeFile"

    @staticmethod
    def fileWriterFileType(node, format=None):
        for cls, fileType in (("vtkMRMLSegmentationNode", "SegmentationFile"), ("vtkMRMLVolumeNode", "VolumeFile"),
                              ("vtkMRMLTableNode", "TableFile"), ("vtkMRMLTransformNode", "TransformFile")):
            if node.IsA(cls):
                return fileType
        return "NoFile"

    # -- loading -----------------------------------------------------------------------
    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None):
        fileName = str(properties["fileName"])
        if fileType == "VolumeFile":
            node = self._loadVolume(fileName, properties)
        elif fileType == "SegmentationFile":
            node = self._loadSegmentation(fileName, properties, userMessages)
        else:
            raise NotImplementedError(f"the stand-in IO manager cannot load {fileType}")
        if node is None:
            if userMessages is not None:
                userMessages.AddMessage(vtk.vtkCommand.ErrorEvent, f"Loading {fileName} - load failed.")
            return False
        self.loaded.append(fileName)
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True

    def _loadVolume(self, fileName, properties):
        logic = self.app.modules["volumes"]
        name = properties.get("name") or Path(fileName).name.split(".")[0]  # QFileInfo::baseName
        options = 0
        for key, bit in (("labelmap", 0x1), ("center", 0x2), ("singleFile", 0x4), ("autoWindowLevel", 0x8),
                         ("discardOrientation", 0x10)):
            if properties.get(key):
                options |= bit
        readFrom, cleanup = fileName, None
        if fileName.lower().endswith(PICTURE_SUFFIXES):
            readFrom, cleanup = self._pictureAsNrrd(fileName)
        try:
            node = logic.AddArchetypeVolume(readFrom, name, options)
        finally:
            if cleanup:
                cleanup()
        if node is None:
            return None
        if readFrom != fileName:
            node.GetStorageNode().SetFileName(fileName)
        colorNodeID = properties.get("colorNodeID")
        if colorNodeID and node.GetDisplayNode():
            node.GetDisplayNode().SetAndObserveColorNodeID(colorNodeID)
        if properties.get("show", True):
            selection = self.app.applicationLogic().GetSelectionNode()
            if node.IsA("vtkMRMLLabelMapVolumeNode"):
                selection.SetActiveLabelVolumeID(node.GetID())
            else:
                selection.SetActiveVolumeID(node.GetID())
            self.app.applicationLogic().PropagateVolumeSelection()
        return node

    @staticmethod
    def _pictureAsNrrd(fileName):
        import SimpleITK as sitk

        folder = tempfile.mkdtemp(prefix="slicer-runtime-picture-")
        target = os.path.join(folder, Path(fileName).stem + ".nrrd")
        sitk.WriteImage(sitk.ReadImage(fileName), target, useCompression=False)

        def cleanup():
            for f in os.listdir(folder):
                os.remove(os.path.join(folder, f))
            os.rmdir(folder)

        return target, cleanup

    def _loadSegmentation(self, fileName, properties, userMessages):
        logic = self.app.modules["segmentations"]
        colorNode = None
        if properties.get("colorNodeID"):
            colorNode = self.app.mrmlScene().GetNodeByID(properties["colorNodeID"])
        return logic.LoadSegmentationFromFile(fileName, bool(properties.get("autoOpacities", True)),
                                              properties.get("name") or "", colorNode, userMessages)

    # -- saving (qSlicerNodeWriter::write) ---------------------------------------------------
    def saveNodes(self, fileType, properties, userMessages=None):
        fileName = str(properties.get("fileName") or "")
        if not fileName:
            return False
        if fileType == "SceneFile":
            scene = self.app.mrmlScene()
            scene.SetURL(fileName)
            scene.SetRootDirectory(str(Path(fileName).parent))
            return bool(scene.Commit())
        node = self.app.mrmlScene().GetNodeByID(properties["nodeID"])
        if node is None or not node.IsA("vtkMRMLStorableNode"):
            return False
        Path(fileName).parent.mkdir(parents=True, exist_ok=True)
        if not node.AddDefaultStorageNode():
            return False
        storage = node.GetStorageNode()
        storage.SetFileName(fileName)
        if properties.get("fileFormat"):
            storage.SetWriteFileFormat(properties["fileFormat"])
        storage.SetURI(None)
        if "useCompression" in properties:
            storage.SetUseCompression(int(properties["useCompression"]))
        ok = bool(storage.WriteData(node))
        if userMessages is not None:
            userMessages.AddMessages(storage.GetUserMessages())
        if ok:
            self.saved.append(fileName)
        return ok


class SlicerApplicationStandIn(qt.QObject):
    """``slicer.app`` in testing mode (``testingEnabled()``: dialogs are skipped by Slicer's util)."""

    applicationName = "Slicer"
    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def __init__(self, scene, appLogic, modules: dict, home: Path):
        super().__init__()
        self._scene = scene
        self._appLogic = appLogic
        self.modules = modules  # lower-case module name -> logic
        self.home = Path(home)
        self.cachePath = str(self.home / "cache")
        self.temporaryPath = str(self.home / "tmp")
        for p in (self.cachePath, self.temporaryPath):
            os.makedirs(p, exist_ok=True)
        self.slicerHome = ""
        self._io = CoreIOManagerStandIn(self)
        self._settings = qt.QSettings()
        self.translated: list[tuple[str, str]] = []  # (context, source text) of every translation asked for

    def translate(self, context, text):
        """No translations are loaded: Qt then returns the source text."""
        self.translated.append((context, text))
        return text

    def testingEnabled(self):
        return True

    def mrmlScene(self):
        return self._scene

    def applicationLogic(self):
        return self._appLogic

    def coreIOManager(self):
        return self._io

    ioManager = coreIOManager

    def layoutManager(self):
        return None  # no views: setSliceViewerLayers(fit=True) then only sets the composite nodes

    def settings(self):
        return self._settings

    userSettings = settings

    def processEvents(self):
        qt.QTimer.fire_due()

    def setOverrideCursor(self, cursor):
        qt.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        qt.QApplication.restoreOverrideCursor()

    def moduleDocumentationUrl(self, name):
        return self.documentationBaseUrl + "user_guide/modules/" + name.lower() + ".html"
