"""The geometric views of the consistency loss and their exact inverses.

2D (the reference's five plus the original image): identity, horizontal flip,
vertical flip, rotation by 90, 180 and 270 degrees in the image plane.
3D patches ``(B, C, D, H, W)``: identity, a flip along each of W, H and D, and
rotations by 90, 180 and 270 degrees in the H-W plane (seven views). The
prediction of each view is mapped back with the inverse transform before the
predictions are averaged into the pseudo-label.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]


class View(NamedTuple):
    name: str
    forward: Transform
    inverse: Transform


def _rot90(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1).transpose(-2, -1)


def _rot270(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1).flip(-1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _flip(dim: int) -> Transform:
    return lambda x: x.flip(dim)


def _rot180(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1).flip(-2)


VIEWS_2D = (
    View("identity", _identity, _identity),
    View("flip_horizontal", _flip(-1), _flip(-1)),
    View("flip_vertical", _flip(-2), _flip(-2)),
    View("rotate_90", _rot90, _rot270),
    View("rotate_180", _rot180, _rot180),
    View("rotate_270", _rot270, _rot90),
)

VIEWS_3D = (
    View("identity", _identity, _identity),
    View("flip_w", _flip(-1), _flip(-1)),
    View("flip_h", _flip(-2), _flip(-2)),
    View("flip_d", _flip(-3), _flip(-3)),
    View("rotate_90_hw", _rot90, _rot270),
    View("rotate_180_hw", _rot180, _rot180),
    View("rotate_270_hw", _rot270, _rot90),
)

# The six transforms the reference's rotation-prediction task classifies.
ROTATION_TASK = (_flip(-1), _flip(-2), _rot90, _rot180, _rot270, _identity)


def consistency_views(spatial_dims: int, axes: tuple[int, ...] | None = None) -> tuple[View, ...]:
    """The views for a model; ``axes`` limits them to what the model was trained to be invariant
    to (nnU-Net's ``inference_allowed_mirroring_axes``, spatial axes counted from 0): the identity,
    a flip along each allowed axis, and the in-plane rotations only when both in-plane axes are
    allowed. A model trained without mirroring and with left and right labels would otherwise see
    its classes swapped in the flipped views."""
    views = VIEWS_2D if spatial_dims == 2 else VIEWS_3D
    if axes is None:
        return views
    dims = {int(a) - spatial_dims for a in axes}  # spatial axis -> negative tensor dimension
    flips = {"flip_horizontal": -1, "flip_vertical": -2, "flip_w": -1, "flip_h": -2, "flip_d": -3}
    kept = []
    for view in views:
        if view.name == "identity" or flips.get(view.name) in dims or (view.name.startswith("rotate")
                                                                        and {-1, -2} <= dims):
            kept.append(view)
    return tuple(kept)
