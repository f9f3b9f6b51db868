"""The pictures of a result: the adaptation curve and the contour overlay."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage


def plot_adaptation(records: Sequence[dict], path: Path | BinaryIO, title: str = "", fmt: str | None = None,
                    size: tuple[float, float] = (6.4, 4.0)) -> None:
    """Cosine of the two gradients and the learning rate of each step (matplotlib, Agg).

    ``path`` is a file name or a binary file object (then ``fmt``, e.g. ``"svg"``,
    says the format: the web page draws its live plot with this function). The
    two curves carry the SVG ids ``cosine`` and ``lr``, one marker per step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=size, dpi=100)
    ax_cos, ax_lr = fig.subplots(2, 1, sharex=True)
    steps = [r["step"] for r in records]
    cosine = [np.nan if r.get("cosine") is None else r["cosine"] for r in records]
    lr = [np.nan if r.get("lr") is None else r["lr"] for r in records]
    if records:
        ax_cos.plot(steps, cosine, marker="o", color="tab:blue", gid="cosine")
        ax_lr.plot(steps, lr, marker="o", color="tab:orange", gid="lr")
    else:
        ax_cos.text(0.5, 0.5, "no adaptation steps", ha="center", va="center", transform=ax_cos.transAxes)
    ax_cos.axhline(0.0, color="0.7", linewidth=0.8)
    ax_cos.set_ylim(-1.05, 1.05)
    ax_cos.set_ylabel("cos(g_aux, g_pse)")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax_cos.set_title(_drawable(title))
    fig.tight_layout()
    fig.savefig(path, format=fmt)


def _drawable(text: str) -> str:
    """``text`` with each character that the plot's font has no glyph for as ``?``: matplotlib
    would draw an empty box and print a warning per character (file names in Chinese or
    Japanese on a system without a CJK font). The title is the only place a file name is drawn;
    everywhere else it is kept as it is."""
    from matplotlib import font_manager, ft2font, rcParams

    try:
        font = ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"])))
        drawable = set(font.get_charmap())
    except (OSError, RuntimeError, ValueError):
        return text
    return "".join(c if c.isspace() or ord(c) in drawable else "?" for c in text)


def display_rgb(array: np.ndarray) -> np.ndarray:
    """A channel-first 2D image as 8-bit RGB (H, W, 3), min-max scaled for display."""
    a = np.asarray(array, dtype=np.float32)
    a = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, axis=0)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return (np.clip(np.moveaxis(a, 0, -1), 0, 1) * 255 + 0.5).astype(np.uint8)


def contour_overlay(rgb: np.ndarray, masks: np.ndarray, colors: Sequence[Sequence[float]]) -> np.ndarray:
    """Draw the outline of each binary mask ``(N, H, W)`` on ``rgb`` in its colour."""
    out = rgb.copy()
    thickness = max(1, min(rgb.shape[:2]) // 256)
    for mask, color in zip(masks, colors):
        mask = mask.astype(bool)
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        if thickness > 1:
            edge = ndimage.binary_dilation(edge, iterations=thickness - 1)
        out[edge] = (np.asarray(color) * 255 + 0.5).astype(np.uint8)
    return out


def write_overlay(path: Path, array: np.ndarray, masks: np.ndarray, colors) -> None:
    Image.fromarray(contour_overlay(display_rgb(array), masks, colors)).save(path)
