"""Coded terminology for the organ names models give their labels.

nnU-Net's ``dataset.json`` and MONAI bundles name their labels in plain words
("liver", "kidney_left"); Slicer's Segment Editor understands coded concepts.
This table holds the SNOMED CT codes of the structures abdominal and thoracic
models segment, exactly as Slicer's "Slicer General Anatomy" terminology
lists them (the tests check every entry against that file), so a segment named
by a model gets the code Slicer would give it when picked by hand.
"""

from __future__ import annotations

import re

from .card import Code

ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
TISSUE = Code("SCT", "85756007", "Tissue")
ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")

_STRUCTURES = {
    "adrenal gland": ("23451007", "Adrenal gland"), "aorta": ("15825003", "Aorta"), "brain": ("12738006", "Brain"),
    "colon": ("71854001", "Colon"), "duodenum": ("38848004", "Duodenum"), "esophagus": ("32849002", "Esophagus"),
    "gallbladder": ("28231008", "Gallbladder"), "heart": ("80891009", "Heart"), "kidney": ("64033007", "Kidney"),
    "liver": ("10200004", "Liver"), "lung": ("39607008", "Lung"), "pancreas": ("15776009", "Pancreas"),
    "prostate": ("41216001", "Prostate"), "rib": ("113197003", "Rib"), "small intestine": ("30315005", "Small Intestine"),
    "spinal cord": ("2748008", "Spinal cord"), "spleen": ("78961009", "Spleen"), "stomach": ("69695003", "Stomach"),
    "trachea": ("44567001", "Trachea"), "uterus": ("35039007", "Uterus"),
}
_OTHERS = {"bone": (TISSUE, "272673000", "Bone"), "cyst": (ALTERED, "367643001", "Cyst"),
           "mass": (ALTERED, "4147007", "Mass")}
_SYNONYMS = {"gall bladder": "gallbladder", "oesophagus": "esophagus", "kidneys": "kidney", "lungs": "lung",
             "adrenal": "adrenal gland", "tumor": "mass", "tumour": "mass"}

#: every (category, type) the table can give, keyed by the normalised name
TABLE: dict[str, tuple[Code, Code]] = {
    **{name: (ANATOMICAL_STRUCTURE, Code("SCT", value, meaning)) for name, (value, meaning) in _STRUCTURES.items()},
    **{name: (category, Code("SCT", value, meaning)) for name, (category, value, meaning) in _OTHERS.items()},
}


def normalised(name: str) -> str:
    """'Kidney_Left' -> 'kidney': lower case, words split on '_' and '-', side words dropped."""
    words = [w for w in re.split(r"[\s_\-]+", name.strip().lower()) if w and w not in ("left", "right", "l", "r")]
    text = " ".join(words)
    return _SYNONYMS.get(text, text)


def code_for(name: str) -> tuple[Code | None, Code | None]:
    """(category, type) codes of a label name, or (None, None) when the name is not in the table."""
    return TABLE.get(normalised(name), (None, None))
