"""Anatomical post-processing of the masks, as the model card's rules say.

A network's thresholded output can be anatomically impossible: a disc made of
a blob plus scattered islands, a cup partly outside the disc, holes. Fundus
pipelines therefore enforce the anatomy after the network. The card says, per
segment, what the anatomy allows (:class:`~.models.card.PostprocessRule`):

* ``inside``: clip to another segment's mask (processed first), e.g. the cup
  inside the disc;
* ``min_size``: remove connected components smaller than this, in voxels or,
  with ``min_size_unit="mm"``, in mm^2 (2D) / mm^3 (3D) from the spacing;
* ``largest_component``: keep only the largest connected component;
* ``fill_holes``: fill the holes (background not connected to the border).

Connected components use full connectivity (8 neighbours in 2D, 26 in 3D),
so a diagonal pixel chain is one component. ``per_slice`` applies a rule to
each 2D slice of a volume (along ``slice_axis``) instead of in 3D. The
morphology is scipy.ndimage's. Probabilities and the uncertainty map are
computed before post-processing and are not changed by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass
class SegmentReport:
    """What the rules did to one segment (counted over slices with ``per_slice``)."""

    segment: str
    inside: str | None = None  # the containing segment, if the rule has one
    outside_removed: int = 0  # voxels outside the containing segment
    small_removed: int = 0  # components removed for their size
    islands_removed: int = 0  # components removed by largest_component
    holes_filled: int = 0  # holes filled
    voxels_before: int = 0
    voxels_after: int = 0

    def text(self) -> str:
        parts = []
        for count, one, many in ((self.outside_removed, "voxel outside the {} removed", "voxels outside the {} removed"),
                                 (self.small_removed, "small component removed", "small components removed"),
                                 (self.islands_removed, "island removed", "islands removed"),
                                 (self.holes_filled, "hole filled", "holes filled")):
            if count:
                parts.append(f"{count} " + (one if count == 1 else many).format(self.inside))
        return f"{self.segment}: " + (", ".join(parts) if parts else "unchanged")


@dataclass
class Report:
    segments: list[SegmentReport] = field(default_factory=list)

    def text(self) -> str:
        return "; ".join(s.text() for s in self.segments)

    def to_list(self) -> list[dict]:
        return [dict(vars(s), text=s.text()) for s in self.segments]


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components with full connectivity (8 neighbours in 2D, 26 in 3D)."""
    mask = np.asarray(mask, bool)
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))


def _remove_small(mask: np.ndarray, min_voxels: float) -> tuple[np.ndarray, int]:
    labels, n = _label(mask)
    if n == 0:
        return mask, 0
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_voxels) + 1
    return np.isin(labels, keep), int(n - len(keep))


def _largest(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = _label(mask)
    if n <= 1:
        return mask, 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1), int(n - 1)


def _fill(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Holes: background components (face connectivity, the complement of the foreground's full
    connectivity) that do not touch the border. One labelling pass: scipy's binary_fill_holes
    iterates dilations, which takes seconds on a 300-slice volume."""
    background = ~mask
    labels, n = ndimage.label(background)
    if n == 0:
        return mask, 0
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(mask.ndim):
        for index in (0, -1):
            outside[np.unique(np.take(labels, index, axis=axis))] = True
    outside[0] = True  # label 0 is the foreground itself
    holes = int(n + 1 - np.count_nonzero(outside))
    if holes == 0:
        return mask, 0
    return mask | ~outside[labels], holes


def _apply_rule(mask: np.ndarray, rule, voxel_size: float, report: SegmentReport) -> np.ndarray:
    if rule.min_size:
        threshold = rule.min_size / voxel_size if rule.min_size_unit == "mm" else rule.min_size
        mask, removed = _remove_small(mask, threshold)
        report.small_removed += removed
    if rule.largest_component:
        mask, removed = _largest(mask)
        report.islands_removed += removed
    if rule.fill_holes:
        mask, filled = _fill(mask)
        report.holes_filled += filled
    return mask


def order_rules(rules: Sequence) -> list:
    """Rules in an order where every ``inside`` segment comes before the segments inside it."""
    pending, done, ordered = list(rules), set(), []
    ruled = {r.segment for r in rules}
    while pending:
        ready = [r for r in pending if r.inside is None or r.inside in done or r.inside not in ruled]
        if not ready:
            raise ValueError("post-processing rules contain a cycle of 'inside'")
        for r in ready:
            ordered.append(r)
            done.add(r.segment)
            pending.remove(r)
    return ordered


def apply(masks: np.ndarray, classes: Sequence, rules: Sequence, spacing: Sequence[float],
          slice_axis: int | None = None) -> tuple[np.ndarray, Report]:
    """Post-process ``masks`` ((K, *spatial), one binary mask per class, numpy order).

    ``spacing`` is in numpy axis order (mm); ``slice_axis`` is the axis along
    which ``per_slice`` rules work (the through-plane axis of a 2D model on a
    volume; ignored for 2D images). Returns new masks (uint8) and a report.
    """
    out = np.asarray(masks).astype(bool)  # a copy: the caller's masks are not changed
    names = [c.name for c in classes]
    report = Report()
    spatial = out.shape[1:]
    spacing = tuple(float(s) for s in spacing)
    for rule in order_rules(rules):
        k = names.index(rule.segment)
        seg = SegmentReport(rule.segment, inside=rule.inside, voxels_before=int(out[k].sum()))
        mask = out[k]
        if rule.inside is not None:
            container = out[names.index(rule.inside)]
            seg.outside_removed = int((mask & ~container).sum())
            mask = mask & container
        if rule.per_slice and len(spatial) == 3:
            axis = 0 if slice_axis is None else slice_axis
            area = float(np.prod([s for i, s in enumerate(spacing) if i != axis]))
            planes = [_apply_rule(np.take(mask, i, axis=axis), rule, area, seg) for i in range(spatial[axis])]
            mask = np.stack(planes, axis=axis)
        else:
            mask = _apply_rule(mask, rule, float(np.prod(spacing)), seg)
        out[k] = mask
        seg.voxels_after = int(mask.sum())
        report.segments.append(seg)
    return out.astype(np.uint8), report


def components(mask: np.ndarray) -> int:
    """Number of connected components (full connectivity) of a binary mask."""
    return int(_label(mask)[1])
