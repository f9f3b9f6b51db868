"""Segment names, colours and coded terminology for the segments the module creates.

The codes live in a Slicer terminology file
(``Resources/Terminology/SegmentationCategoryTypeModifier-GraTaSegmenter.term.json``,
dcmqi segment-context format), which the module also registers with Slicer's
Terminologies module so that the Segment Editor lists the structures. This
module reads that file without Slicer and builds, for each segment, the
*terminology entry string* Slicer stores in a segment's terminology tag::

    context~catScheme^catValue^catMeaning~typeScheme^typeValue^typeMeaning~modifier~anatomicContext~region~regionModifier

A model whose classes are not in the file (any model file) still gets names,
colours and, when its card has them, codes from the card.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..terminology_contexts import ANATOMIC_CONTEXT, TERMINOLOGY_CONTEXT as CARD_CONTEXT


@dataclass(frozen=True)
class Coded:
    scheme: str
    value: str
    meaning: str

    def serialize(self) -> str:
        for part in (self.scheme, self.value, self.meaning):
            if "~" in part or "^" in part:
                raise ValueError(f"a code may not contain '~' or '^': {part!r}")
        return f"{self.scheme}^{self.value}^{self.meaning}"

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Coded":
        return cls(str(obj["CodingSchemeDesignator"]), str(obj["CodeValue"]), str(obj["CodeMeaning"]))


EMPTY = "^^"


@dataclass(frozen=True)
class SegmentTerm:
    name: str
    label: int | None
    color: tuple[float, float, float]
    category: Coded | None
    type: Coded | None
    context: str

    def terminology_entry(self) -> str:
        """The string for ``segment.SetTag(segment.GetTerminologyEntryTagName(), ...)``."""
        category = self.category.serialize() if self.category else EMPTY
        type_ = self.type.serialize() if self.type else EMPTY
        return "~".join([self.context, category, type_, EMPTY, ANATOMIC_CONTEXT, EMPTY, EMPTY])


def load_terms(path: str | os.PathLike) -> list[SegmentTerm]:
    """Every type of every category of a Slicer ``.term.json`` file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    context = data["SegmentationCategoryTypeContextName"]
    terms = []
    for category in data["SegmentationCodes"]["Category"]:
        cat = Coded.from_json(category)
        for entry in category.get("Type", []):
            rgb = entry.get("recommendedDisplayRGBValue") or [128, 128, 128]
            label = entry.get("3dSlicerIntegerLabel")
            terms.append(SegmentTerm(name=str(entry.get("3dSlicerLabel") or entry["CodeMeaning"]),
                                     label=int(label) if label is not None else None,
                                     color=tuple(float(c) / 255.0 for c in rgb[:3]),
                                     category=cat, type=Coded.from_json(entry), context=context))
    return terms


def terms_from_card(card: dict[str, Any]) -> list[SegmentTerm]:
    """Terms from a model card's classes (``name``, ``label``, ``color`` in [0, 1],
    optional ``category``/``type`` codes as {scheme, value, meaning})."""
    terms = []
    for c in card.get("classes") or []:
        codes = []
        for key in ("category", "type"):
            v = c.get(key)
            if isinstance(v, dict):
                codes.append(Coded(str(v["scheme"]), str(v["value"]), str(v["meaning"])))
            elif isinstance(v, (list, tuple)) and len(v) == 3:
                codes.append(Coded(*map(str, v)))
            else:
                codes.append(None)
        color = tuple(float(x) for x in (c.get("color") or (0.5, 0.5, 0.5)))[:3]
        terms.append(SegmentTerm(name=str(c["name"]), label=c.get("label"), color=color,
                                 category=codes[0], type=codes[1], context=CARD_CONTEXT))
    return terms


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def match_term(terms: Iterable[SegmentTerm], name: str, label: int | None = None) -> SegmentTerm | None:
    """The term for a segment: by name (case, '_' and '-' ignored), then by label value."""
    terms = list(terms)
    for t in terms:
        if _key(t.name) == _key(name) or (t.type is not None and _key(t.type.meaning) == _key(name)):
            return t
    if label is not None:
        for t in terms:
            if t.label == label:
                return t
    return None


def display_name(name: str) -> str:
    """Segment names as Slicer shows them: 'optic disc' -> 'Optic disc'."""
    name = name.replace("_", " ").strip()
    return name[:1].upper() + name[1:]
