"""Stand-in for qSlicerSubjectHierarchyPluginLogic (a Qt class): it puts data
nodes into the subject hierarchy when they are added to the scene.

As onNodeAdded does in Slicer (Modules/Loadable/SubjectHierarchy/Widgets/
qSlicerSubjectHierarchyPluginLogic.cxx, v5.10.0 and v5.12.3): nothing while
the scene imports, nothing for a node that is hidden from editors *at the
moment it is added* (the flag is not re-read later), and only nodes that a
plugin owns (the classes below, those of the plugins Slicer registers).
"""

from __future__ import annotations

import vtk

OWNED_CLASSES = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLModelNode", "vtkMRMLMarkupsNode",
                 "vtkMRMLTransformNode", "vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode",
                 "vtkMRMLTextNode", "vtkMRMLSequenceNode", "vtkMRMLColorTableNode")


class SubjectHierarchyPluginLogicStandIn:
    def __init__(self, scene):
        self.scene = scene
        self._tag = scene.AddObserver(scene.NodeAddedEvent, self.onNodeAdded)

    def stop(self):
        self.scene.RemoveObserver(self._tag)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, scene, event, node):
        if node is None or node.IsA("vtkMRMLSubjectHierarchyNode"):
            return
        if scene.IsImporting() or node.GetHideFromEditors():
            return
        if node.IsA("vtkMRMLColorTableNode") and node.GetType() != node.User:
            return  # built-in colour tables are not data
        if not any(node.IsA(cls) for cls in OWNED_CLASSES):
            return
        sh = scene.GetSubjectHierarchyNode()
        if sh is not None and not sh.GetItemByDataNode(node):
            sh.CreateItem(sh.GetSceneItemID(), node)
