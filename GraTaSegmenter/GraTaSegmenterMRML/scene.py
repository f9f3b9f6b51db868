"""Writing the input, reading the results, and the live plot (see the package docstring)."""

import slicer


def writeVolume(volumeNode, path):
    """Write ``volumeNode`` (its own geometry, no parent transform) as uncompressed
    NRRD with a storage node of its own: the node's storage node, file name and
    modified state stay exactly as they were (a node without one does not gain one)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    return bool(storage.WriteData(volumeNode))


def _readInOwnScene(path, nodeClass, storageClass):
    """A node of ``nodeClass`` read from ``path`` in a scene of its own."""
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass(nodeClass)
    storage = storageClass()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RuntimeError(f"Could not read {path}.")
    return scene, node


def readSegmentation(path, scene, target=None, name="Segmentation"):
    """The segments of the ``.seg.nrrd`` at ``path`` in ``target`` (replaced), or in a
    new segmentation node of ``scene``. The node has no storage node: it is new
    data, which Save Data offers to save."""
    _ownScene, loaded = _readInOwnScene(path, "vtkMRMLSegmentationNode", slicer.vtkMRMLSegmentationStorageNode)
    if target is None:
        target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    target.GetSegmentation().DeepCopy(loaded.GetSegmentation())
    target.Modified()
    return target


def readVolume(path, scene, target=None, name="Volume"):
    """The scalar volume at ``path`` in ``target`` (its voxels and geometry replaced,
    so it is marked modified) or in a new scalar volume node of ``scene``."""
    _ownScene, loaded = _readInOwnScene(path, "vtkMRMLScalarVolumeNode", slicer.vtkMRMLVolumeArchetypeStorageNode)
    if target is None:
        target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    target.CopyOrientation(loaded)
    target.SetAndObserveImageData(loaded.GetImageData())  # reference counted: outlives its own scene
    target.CreateDefaultDisplayNodes()
    return target


def placeBeside(node, reference):
    """Same folder in the subject hierarchy, and under the same transform: the engine
    worked in the volume's own coordinates, so the result overlays only if it moves with it."""
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
    item = shNode.GetItemByDataNode(node)
    if not item:
        item = shNode.CreateItem(shNode.GetSceneItemID(), node)
    shNode.SetItemParent(item, shNode.GetItemParent(shNode.GetItemByDataNode(reference)))


def applyTerms(segmentationNode, match):
    """Names, colours and terminology entries: ``match(name, label)`` returns
    (display name, colour, terminology entry string) or None to leave a segment as it is."""
    segmentation = segmentationNode.GetSegmentation()
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        found = match(segment.GetName(), segment.GetLabelValue())
        if found is None:
            continue
        name, color, entry = found
        segment.SetName(name)
        segment.SetColor(*color)
        segment.SetTag(tag, entry)


def showSurfaces(segmentationNode, show):
    if show:
        segmentationNode.CreateClosedSurfaceRepresentation()
    else:
        segmentationNode.RemoveClosedSurfaceRepresentation()


class PlotNodes:
    """The table, chart, series and view of the live plot: hidden from the data
    tree and not saved with the scene, made again after a scene close."""

    SERIES = (("cosine", "cosine similarity", (0.1, 0.4, 0.9)),
              ("lr_relative", "learning rate / base", (0.9, 0.4, 0.1)))
    COLUMNS = ("step", "cosine", "lr_relative")

    def __init__(self):
        self._nodes = None

    def _alive(self):
        return self._nodes is not None and all(slicer.mrmlScene.IsNodePresent(n) for n in self._nodes)

    def viewNode(self):
        if not self._alive():
            self._nodes = self._create()
        return self._nodes[-1]

    @property
    def table(self):
        self.viewNode()
        return self._nodes[0]

    @staticmethod
    def _add(className, name):
        """Flags first, then AddNode: the subject hierarchy reads them when the node is added."""
        node = slicer.mrmlScene.CreateNodeByClass(className)
        node.UnRegister(None)  # owned by the Python variable now
        node.SetName(name)
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        return slicer.mrmlScene.AddNode(node)

    def _create(self):
        table = self._add("vtkMRMLTableNode", "GraTa adaptation steps")
        chart = self._add("vtkMRMLPlotChartNode", "GraTa adaptation")
        chart.SetXAxisTitle("step")
        chart.SetYAxisTitle("value")
        series = []
        for column, title, color in self.SERIES:
            s = self._add("vtkMRMLPlotSeriesNode", title)
            s.SetAndObserveTableNodeID(table.GetID())
            s.SetXColumnName("step")
            s.SetYColumnName(column)
            s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            s.SetColor(*color)
            chart.AddAndObservePlotSeriesNodeID(s.GetID())
            series.append(s)
        view = self._add("vtkMRMLPlotViewNode", "GraTa adaptation view")
        view.SetPlotChartNodeID(chart.GetID())
        return (table, chart, *series, view)

    def update(self, steps, cosines, lrs):
        """One row per step: step, cosine, learning rate relative to the first step's."""
        import numpy as np

        nan = float("nan")
        base = float(lrs[0] or 1.0) if lrs else 1.0
        columns = [np.array(steps, dtype=float),
                   np.array([nan if v is None else v for v in cosines], dtype=float),
                   np.array([nan if v is None else v / base for v in lrs], dtype=float)]
        table = self.table
        with slicer.util.NodeModify(table):  # one chart update instead of one per column
            slicer.util.updateTableFromArray(table, columns, columnNames=list(self.COLUMNS))

    def rowCount(self):
        return self._nodes[0].GetNumberOfRows() if self._alive() else 0
