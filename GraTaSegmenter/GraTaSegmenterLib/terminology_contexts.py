"""The Slicer terminology contexts that segment tags name (standard library only).

A segment's terminology entry names the context its codes come from. The
optic disc and cup codes are in the extension's own context, the
``SegmentationCategoryTypeContextName`` of
``GraTaSegmenter/Resources/Terminology/SegmentationCategoryTypeModifier-GraTaSegmenter.term.json``
(registered by the Slicer module; a test keeps the two names equal). Slicer's
"3D Slicer General Anatomy list" holds neither code, so an entry naming it
would not resolve in the Segment Editor.
"""

TERMINOLOGY_CONTEXT = "Segmentation category and type - GraTaSegmenter"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
