"""Intensity checks and normalisation shared by every entry point.

The reference code min-max normalises each image to [0, 1]; an image that is
constant, or holds NaN or Inf, would silently turn into NaN there. Here such
an image is refused with a message that says what is wrong.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def check_finite(image: np.ndarray, what: str = "the image") -> None:
    if not np.all(np.isfinite(image)):
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise InputError(f"{what} contains {bad} NaN or infinite value(s); "
                         f"fix or crop the image before segmenting it")


def normalise_minmax(image: np.ndarray, what: str = "the image") -> np.ndarray:
    """Scale an image (all channels together) to [0, 1] as float32."""
    image = np.asarray(image, dtype=np.float32)
    check_finite(image, what)
    lo, hi = float(image.min()), float(image.max())
    if not hi > lo:
        raise InputError(f"{what} is constant (every value is {lo:g}); there is nothing to segment. "
                         f"Check that the right volume or file was chosen")
    return (image - lo) / (hi - lo)


def normalise_window(image: np.ndarray, low: float, high: float, what: str = "the image") -> np.ndarray:
    """Clip to an intensity window (e.g. CT Hounsfield units) and scale to [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    check_finite(image, what)
    if float(image.min()) == float(image.max()):
        raise InputError(f"{what} is constant (every value is {float(image.min()):g}); there is nothing "
                         f"to segment. Check that the right volume or file was chosen")
    return (np.clip(image, low, high) - low) / (high - low)
