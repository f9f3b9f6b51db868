"""Reading a ``.seg.nrrd`` exactly as Slicer does, and checking its terminology
against Slicer's real terminology logic. Needs slicer-core only (no tag)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import SHARED, TAGS

TERM_FILE = Path(__file__).resolve().parents[2] / "GraTaSegmenter" / "Resources" / "Terminology" / \
    "SegmentationCategoryTypeModifier-GraTaSegmenter.term.json"


@dataclass
class SlicerSegment:
    name: str
    color: tuple[float, float, float]
    terminology: str
    voxels: int


@dataclass
class SlicerSegmentation:
    segments: list[SlicerSegment]
    reference_geometry: str  # the conversion parameter Slicer reads; '' when it could not
    ijk_to_ras: np.ndarray  # of the reference geometry (4x4), None when there is none
    extent: tuple[int, ...]


def read_seg_nrrd(path) -> SlicerSegmentation:
    """vtkMRMLSegmentationStorageNode.ReadData into a node of a scene of its own."""
    import slicer_core as sc
    import vtk

    scene = sc.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = sc.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise AssertionError(f"Slicer's segmentation storage node cannot read {path}")
    segmentation = node.GetSegmentation()
    tag = sc.vtkSegment.GetTerminologyEntryTagName()
    segments = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        entry = vtk.reference("")
        segment.GetTag(tag, entry)
        labelmap = sc.vtkOrientedImageData()
        node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(i), labelmap)
        scalars = labelmap.GetPointData().GetScalars()
        count = 0
        if scalars is not None:
            from vtk.util.numpy_support import vtk_to_numpy

            count = int(np.count_nonzero(vtk_to_numpy(scalars)))
        segments.append(SlicerSegment(segment.GetName(), tuple(segment.GetColor()), str(entry), count))
    geometry = segmentation.GetConversionParameter("Reference image geometry")
    matrix, extent = None, ()
    if geometry:
        image = sc.vtkOrientedImageData()
        sc.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image)
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        matrix = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        extent = tuple(image.GetExtent())
    return SlicerSegmentation(segments, geometry, matrix, extent)


def terminology_logic(tag: str = TAGS[-1], share=None):
    """Slicer's terminology logic with its default files of ``tag`` and the extension's file."""
    import shutil
    import tempfile

    import slicer_core as sc

    share = Path(share or tempfile.mkdtemp(prefix="terminologies-"))
    for f in (SHARED / tag / "Terminologies").glob("*.json"):
        shutil.copyfile(f, share / (f.name[:-len(".json")] + ".term.json"))
    logic = sc.vtkSlicerTerminologiesModuleLogic()
    logic.SetModuleShareDirectory(str(share))
    logic.SetMRMLScene(sc.vtkMRMLScene())  # loads the default terminologies, as in Slicer
    if not logic.LoadTerminologyFromFile(str(TERM_FILE)):
        raise AssertionError(f"Slicer's terminology logic refuses {TERM_FILE}")
    return logic


def resolves(logic, entry_string: str, anywhere: bool = False) -> bool:
    """Does the entry's type exist, by code, in the category of the context it names?
    With ``anywhere``: in any loaded context (Slicer's fallback for a model's own codes)."""
    import slicer_core as sc

    entry = sc.vtkSlicerTerminologyEntry()
    if not logic.DeserializeTerminologyEntry(entry_string, entry):
        return False
    if anywhere:
        return bool(logic.UpdateEntryFromLoadedTerminologies(entry, [], []))
    context = entry.GetTerminologyContextName()
    if not logic.IsTerminologyContextLoaded(context):
        return False
    wanted = entry.GetTypeObject()
    for i in range(logic.GetNumberOfTypesInTerminologyCategory(context, entry.GetCategoryObject())):
        candidate = sc.vtkSlicerTerminologyType()
        logic.GetNthTypeInTerminologyCategory(context, entry.GetCategoryObject(), i, candidate)
        if (candidate.GetCodingSchemeDesignator(), candidate.GetCodeValue()) == \
                (wanted.GetCodingSchemeDesignator(), wanted.GetCodeValue()):
            return True
    return False
