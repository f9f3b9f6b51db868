"""The model card: everything the engine, the command line and Slicer need to
know about a network besides its weights.

A card travels inside the model file (as JSON in the safetensors header), so a
model can never be separated from the facts needed to use it correctly: which
network to build, what images it expects, how to normalise them, how to turn
its logits into labels, and what each label means (name, colour and a coded
terminology that Slicer's Segment Editor understands).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ModelFileError

CARD_FORMAT = 1
# "nnunet": an nnU-Net v2 model folder (the card is derived from its plans and dataset.json, never stored)
ARCHITECTURES = ("resunet", "unet", "nnunet", "monai")
FILE_ARCHITECTURES = ("resunet", "unet")
OUTPUTS = ("sigmoid", "softmax")
# "model": the model's own preprocessing (nnU-Net's plans) does it
NORMALISATIONS = ("minmax", "window", "model")


@dataclass(frozen=True)
class Code:
    """A coded concept: (coding scheme, code value, code meaning), as DICOM
    and Slicer's terminologies write it."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class SegmentClass:
    """One output of the network.

    ``channel`` is the logit channel. For sigmoid (multi-label) models each
    channel is one independent class; for softmax models channel 0 is the
    background and is not listed. ``label`` is the value the class gets in a
    labelmap; with overlapping sigmoid classes (the optic disc contains the
    cup) a pixel takes the label of the *last* listed class that covers it,
    so list the containing class first.
    """

    name: str
    channel: int
    label: int
    color: tuple[float, float, float]
    category: Code | None = None
    type: Code | None = None
    anatomic_region: Code | None = None


MIN_SIZE_UNITS = ("voxels", "mm")


@dataclass(frozen=True)
class PostprocessRule:
    """What the anatomy allows for one segment (see :mod:`..postprocess`).

    ``segment`` and ``inside`` are class names; ``min_size`` is in voxels or,
    with ``min_size_unit="mm"``, in mm^2 (2D) / mm^3 (3D); ``per_slice`` applies
    the rule to each 2D slice of a volume instead of in 3D."""

    segment: str
    largest_component: bool = False
    fill_holes: bool = False
    inside: str | None = None
    min_size: float | None = None
    min_size_unit: str = "voxels"
    per_slice: bool = False


@dataclass(frozen=True)
class ModelCard:
    """Facts about a model; see the module docstring."""

    name: str
    architecture: str
    arguments: dict[str, Any]
    input_channels: int
    spatial_dims: int
    output: str
    classes: tuple[SegmentClass, ...]
    input_size: tuple[int, ...] | None = None
    normalisation: str = "minmax"
    window: tuple[float, float] | None = None
    slice_axis: int | None = None
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    postprocess: tuple[PostprocessRule, ...] = ()
    format: int = CARD_FORMAT

    def __post_init__(self) -> None:
        problems = validate_card(self)
        if problems:
            raise ModelFileError("invalid model card: " + "; ".join(problems))

    @property
    def out_channels(self) -> int:
        return max(c.channel for c in self.classes) + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"the model card is not valid JSON ({exc}); the file is damaged") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        if not isinstance(data, dict):
            raise ModelFileError("the model card is not a JSON object; the file is damaged")
        data = dict(data)
        if data.get("format") != CARD_FORMAT:
            raise ModelFileError(f"model card format {data.get('format')!r} is not supported "
                                 f"(this version reads format {CARD_FORMAT}); update GraTaSegmenter")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ModelFileError(f"unknown model card fields {sorted(unknown)}; the file is damaged or newer")
        try:
            data["classes"] = tuple(_segment_class(c) for c in data.get("classes", ()))
            data["postprocess"] = tuple(_rule(r) for r in data.get("postprocess") or ())
            for key in ("input_size", "window"):
                if data.get(key) is not None:
                    data[key] = tuple(data[key])
            return cls(**data)
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelFileError(f"incomplete or malformed model card ({exc}); the file is damaged") from None


def _code(value: Any) -> Code | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return Code(**value)
    return Code(*value)


def _rule(data: Any) -> PostprocessRule:
    if not isinstance(data, dict):
        raise TypeError("a post-processing rule is an object")
    return PostprocessRule(**data)


def _segment_class(data: dict[str, Any]) -> SegmentClass:
    data = dict(data)
    for key in ("category", "type", "anatomic_region"):
        data[key] = _code(data.get(key))
    data["color"] = tuple(float(v) for v in data["color"])
    return SegmentClass(**data)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_card(card: ModelCard) -> list[str]:
    """Return the problems of a card (empty when it is usable)."""
    problems = []
    if card.architecture not in ARCHITECTURES:
        problems.append(f"architecture {card.architecture!r} is not one of {ARCHITECTURES}")
    if card.spatial_dims not in (2, 3):
        problems.append(f"spatial_dims must be 2 or 3, not {card.spatial_dims}")
    if card.output not in OUTPUTS:
        problems.append(f"output {card.output!r} is not one of {OUTPUTS}")
    if not isinstance(card.input_channels, int) or card.input_channels < 1:
        problems.append("input_channels must be a positive integer")
    if card.normalisation not in NORMALISATIONS:
        problems.append(f"normalisation {card.normalisation!r} is not one of {NORMALISATIONS}")
    if (card.normalisation == "model") != (card.architecture in ("nnunet", "monai")):
        problems.append("normalisation 'model' (the model's own preprocessing) goes with an nnU-Net model or a "
                        "MONAI bundle only")
    if card.normalisation == "window" and (card.window is None or len(card.window) != 2
                                           or not card.window[0] < card.window[1]):
        problems.append("normalisation 'window' needs window = (low, high) with low < high")
    if card.input_size is not None and (len(card.input_size) != card.spatial_dims
                                        or not all(_is_int(v) and v >= 1 for v in card.input_size)):
        problems.append(f"input_size {card.input_size} must have {card.spatial_dims} positive sizes")
    if card.slice_axis is not None and card.slice_axis not in (0, 1, 2):
        problems.append("slice_axis must be 0, 1 or 2 (axis of a z, y, x array)")
    if not card.classes:
        problems.append("at least one class is needed")
    channels = [c.channel for c in card.classes]
    labels = [c.label for c in card.classes]
    if len(set(channels)) != len(channels):
        problems.append("two classes share a channel")
    if not all(_is_int(v) for v in channels + labels):
        problems.append("class channels and labels must be whole numbers")
        return problems
    if len(set(labels)) != len(labels) or any(not 1 <= label <= 255 for label in labels):
        problems.append("class labels must be distinct and from 1 to 255 (0 is the background; labelmaps "
                        "are 8-bit)")
    if any(c < 0 for c in channels):
        problems.append("class channels must be 0 or more")
    if card.output == "softmax" and any(c < 1 for c in channels):
        problems.append("softmax channel 0 is the background; classes start at channel 1")
    for c in card.classes:
        if len(c.color) != 3 or not all(0.0 <= v <= 1.0 for v in c.color):
            problems.append(f"class {c.name!r}: color must be three values in [0, 1]")
    problems += _rule_problems(card)
    return problems


def _rule_problems(card: ModelCard) -> list[str]:
    names = [c.name for c in card.classes]
    problems, seen = [], set()
    for r in card.postprocess:
        where = f"post-processing rule for {r.segment!r}"
        if r.segment not in names:
            problems.append(f"{where}: no class of that name (classes: {', '.join(names)})")
        if r.segment in seen:
            problems.append(f"{where}: a segment has one rule")
        seen.add(r.segment)
        if r.inside is not None and (r.inside not in names or r.inside == r.segment):
            problems.append(f"{where}: 'inside' must name another class")
        if r.min_size is not None and (isinstance(r.min_size, bool) or not isinstance(r.min_size, (int, float))
                                       or not r.min_size > 0):
            problems.append(f"{where}: min_size must be a positive number")
        if r.min_size_unit not in MIN_SIZE_UNITS:
            problems.append(f"{where}: min_size_unit must be one of {MIN_SIZE_UNITS}")
        for flag in ("largest_component", "fill_holes", "per_slice"):
            if not isinstance(getattr(r, flag), bool):
                problems.append(f"{where}: {flag} must be true or false")
    inside = {r.segment: r.inside for r in card.postprocess}
    for start in inside:
        node, steps = start, 0
        while node in inside and inside[node] is not None and steps <= len(inside):
            node, steps = inside[node], steps + 1
        if steps > len(inside):
            problems.append("post-processing rules: 'inside' forms a cycle")
            break
    return problems
