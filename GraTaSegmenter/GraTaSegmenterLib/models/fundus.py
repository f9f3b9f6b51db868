"""The optic disc / optic cup classes of fundus models.

The reference networks have two sigmoid channels: channel 0 the whole optic
disc (cup included), channel 1 the optic cup. In a labelmap the disc rim gets
1 and the cup 2 (the cup is written last, over the disc). Terminology: the
optic disc is SNOMED CT 81016008 "Optic nerve head" (DICOM CID 4209, ophthalmic
anatomic structures); SNOMED's "Optic disc cup" concept could not be verified
here, so the cup carries a local code (99GRATA) until it is. The same codes
are in the Slicer module's .term.json.
"""

from __future__ import annotations

from .card import Code, PostprocessRule, SegmentClass

ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")

OPTIC_DISC = SegmentClass(
    name="optic disc", channel=0, label=1, color=(0.95, 0.75, 0.25),
    category=ANATOMICAL_STRUCTURE, type=Code("SCT", "81016008", "Optic nerve head"),
)
OPTIC_CUP = SegmentClass(
    name="optic cup", channel=1, label=2, color=(0.25, 0.55, 0.95),
    category=ANATOMICAL_STRUCTURE, type=Code("99GRATA", "OPTIC_DISC_CUP", "Optic disc cup"),
)
FUNDUS_CLASSES = (OPTIC_DISC, OPTIC_CUP)

# The anatomy of a fundus photo: one disc without holes, one cup inside it.
FUNDUS_POSTPROCESS = (
    PostprocessRule(segment="optic disc", largest_component=True, fill_holes=True),
    PostprocessRule(segment="optic cup", inside="optic disc", largest_component=True, fill_holes=True),
)
