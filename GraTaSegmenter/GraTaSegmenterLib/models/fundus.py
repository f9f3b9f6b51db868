"""The optic disc / optic cup classes of fundus models.

The reference networks have two sigmoid channels: channel 0 the whole optic
disc (cup included), channel 1 the optic cup. In a labelmap the disc rim gets
1 and the cup 2 (the cup is written last, over the disc). Terminology: SNOMED
CT body structures, so that Slicer shows standard names and colours.
"""

from __future__ import annotations

from .card import Code, SegmentClass

TISSUE = Code("SCT", "85756007", "Tissue")
ANATOMICAL_STRUCTURE = Code("SCT", "91723000", "Anatomical structure")

OPTIC_DISC = SegmentClass(
    name="optic disc", channel=0, label=1, color=(0.95, 0.75, 0.25),
    category=ANATOMICAL_STRUCTURE, type=Code("SCT", "81475007", "Optic disc"),
)
OPTIC_CUP = SegmentClass(
    name="optic cup", channel=1, label=2, color=(0.25, 0.55, 0.95),
    category=ANATOMICAL_STRUCTURE, type=Code("SCT", "65821008", "Optic cup"),
)
FUNDUS_CLASSES = (OPTIC_DISC, OPTIC_CUP)
