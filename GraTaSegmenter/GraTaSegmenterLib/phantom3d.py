"""A multi-centre abdominal CT/MR phantom with exact organ masks (3D volumes).

Why: the 3D networks Slicer users have (nnU-Net, MONAI) are adapted on CT and
MR, and the public abdominal data sets cannot be shipped. This renders an
upper-abdomen volume of a random body (anatomy) as one of five simulated
scanners (centres A..E) acquires it, with the exact masks of the geometry that
was rendered: liver (label 1), spleen (2) and kidneys (3).

Rendering, in order (see docs/phantom.md):

1. Anatomy (depends on seed and index only, never on the centre: the same body
   can be scanned at every centre): an elliptic body with a fat layer, a spine,
   lung bases at the top, and liver, spleen and two kidneys as ellipsoids with
   smooth harmonic bumps on their surface, in millimetres.
2. Scene: every tissue gets the centre's intensity (Hounsfield-like units for
   the CT centres, arbitrary T1-like units for the MR centre), evaluated at
   sub-slices 1 mm apart and averaged over the centre's slice thickness
   (partial volume of thick slices).
3. Acquisition: in-plane blur, a smooth multiplicative bias field, scale and
   offset of the calibration, Gaussian noise.
4. Masks: the organ level functions at the output voxel centres.

Centres differ the way scanners do: calibration (B), slice thickness and
resolution (C), dose (noise) and contrast phase (D), modality (E, MR-like).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy.ndimage import gaussian_filter

from .errors import ConfigurationError

__all__ = ["Scanner", "CENTRES", "ORGANS", "Case", "render_case", "describe"]

ORGANS = ("liver", "spleen", "kidney")  # labels 1, 2, 3
TISSUES = ("air", "fat", "soft_tissue", "lung", "bone", *ORGANS)


@dataclass(frozen=True)
class Scanner:
    """How one simulated site scans a body.

    ``intensities`` maps each of :data:`TISSUES` to its mean value; ``gain`` and
    ``offset`` are the calibration applied after that; ``noise`` the standard
    deviation of the added noise; ``bias`` the relative amplitude of a smooth
    multiplicative field; ``slice_mm`` and ``pixel_mm`` the output spacing."""

    name: str
    description: str
    modality: str
    intensities: tuple[tuple[str, float], ...]
    slice_mm: float = 2.5
    pixel_mm: float = 1.5
    gain: float = 1.0
    offset: float = 0.0
    noise: float = 8.0
    bias: float = 0.0
    blur_px: float = 0.5

    def value(self, tissue: str) -> float:
        return dict(self.intensities)[tissue]


_CT_PORTAL = (("air", -1000.0), ("fat", -100.0), ("soft_tissue", 45.0), ("lung", -850.0), ("bone", 600.0),
              ("liver", 110.0), ("spleen", 125.0), ("kidney", 170.0))
# Without contrast agent the organs lie within some 20 HU of the muscle.
_CT_NATIVE = (("air", -1000.0), ("fat", -100.0), ("soft_tissue", 45.0), ("lung", -850.0), ("bone", 600.0),
              ("liver", 60.0), ("spleen", 48.0), ("kidney", 32.0))
_MR_T1 = (("air", 0.0), ("fat", 900.0), ("soft_tissue", 300.0), ("lung", 30.0), ("bone", 420.0),
          ("liver", 560.0), ("spleen", 380.0), ("kidney", 330.0))

CENTRES = MappingProxyType({
    "A": Scanner("A", "CT, portal venous phase, 2.5 mm slices, 1.5 mm pixels (the source centre)", "CT",
                 _CT_PORTAL),
    "B": Scanner("B", "CT of another vendor: calibration off by gain 1.1 and -60 HU, more noise", "CT",
                 _CT_PORTAL, gain=1.1, offset=-60.0, noise=15.0),
    "C": Scanner("C", "CT with 5 mm slices and 2 mm pixels, 10 % bias field", "CT", _CT_PORTAL,
                 slice_mm=5.0, pixel_mm=2.0, bias=0.10, blur_px=0.7),
    "D": Scanner("D", "low-dose CT without contrast agent: organs barely differ, 35 HU noise", "CT",
                 _CT_NATIVE, noise=35.0),
    "E": Scanner("E", "MR-like T1 volume: other intensities and contrasts, 30 % bias field", "MR",
                 _MR_T1, slice_mm=3.0, noise=20.0, bias=0.30),
})

#: extent of every volume in mm (z, y, x): the upper abdomen
FIELD_MM = (90.0, 240.0, 240.0)


@dataclass
class Case:
    """One rendered volume: ``image`` float32 and ``labels`` uint8, both (z, y, x),
    ``spacing`` in mm in the same axis order."""

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    centre: str
    index: int


def describe(centre: str) -> str:
    return _scanner(centre).description


def _scanner(centre: str) -> Scanner:
    if centre not in CENTRES:
        raise ConfigurationError(f"unknown centre {centre!r}; choose one of {', '.join(CENTRES)}")
    return CENTRES[centre]


@dataclass(frozen=True)
class _Blob:
    """An ellipsoid (centre and radii in mm, z, y, x) with harmonic bumps: inside where level <= 1."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    bumps: tuple[tuple[float, float, float], ...]  # (amplitude, frequency, phase)

    def level(self, z, y, x) -> np.ndarray:
        dz, dy, dx = (z - self.centre[0]) / self.radii[0], (y - self.centre[1]) / self.radii[1], \
            (x - self.centre[2]) / self.radii[2]
        r2 = dz * dz + dy * dy + dx * dx
        angle = np.arctan2(dy, dx)
        wobble = 1.0
        for amplitude, frequency, phase in self.bumps:
            wobble = wobble + amplitude * np.cos(frequency * angle + phase + 2.0 * dz)
        return r2 / (wobble * wobble)


def _anatomy(rng: np.random.Generator) -> dict[str, _Blob]:
    def u(low, high):
        return float(rng.uniform(low, high))

    def bumps():
        return tuple((u(0.02, 0.07), float(rng.integers(2, 5)), u(0, 2 * math.pi)) for _ in range(2))

    zc = FIELD_MM[0] / 2
    body = (u(100, 112), u(78, 90))  # x and y semi-axes of the body section
    return {
        "body": _Blob((zc, 0.0, 0.0), (1e6, body[1], body[0]), ()),
        "inner": _Blob((zc, 0.0, 0.0), (1e6, body[1] - u(10, 16), body[0] - u(10, 16)), ()),
        "spine": _Blob((zc, u(48, 56), u(-3, 3)), (1e6, u(13, 16), u(13, 16)), ()),
        "lung_r": _Blob((u(-25, -15), u(0, 10), u(-55, -45)), (u(45, 55), u(55, 65), u(40, 48)), ()),
        "lung_l": _Blob((u(-25, -15), u(0, 10), u(45, 55)), (u(45, 55), u(55, 65), u(40, 48)), ()),
        "liver": _Blob((zc + u(-12, -4), u(-12, 0), u(-52, -40)), (u(30, 38), u(44, 54), u(40, 50)), bumps()),
        "spleen": _Blob((zc + u(-12, -2), u(18, 30), u(58, 68)), (u(30, 36), u(28, 34), u(16, 20)), bumps()),
        "kidney_r": _Blob((zc + u(8, 16), u(32, 40), u(-46, -38)), (u(26, 30), u(16, 19), u(14, 17)), bumps()),
        "kidney_l": _Blob((zc + u(4, 12), u(32, 40), u(38, 46)), (u(26, 30), u(16, 19), u(14, 17)), bumps()),
    }


def _tissue_map(blobs: dict[str, _Blob], z, y, x) -> np.ndarray:
    """Index into :data:`TISSUES` of every point (later tissues drawn over earlier ones)."""
    t = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), np.uint8)
    t[blobs["body"].level(z, y, x) <= 1] = TISSUES.index("fat")
    t[blobs["inner"].level(z, y, x) <= 1] = TISSUES.index("soft_tissue")
    for name in ("lung_r", "lung_l"):
        t[(blobs[name].level(z, y, x) <= 1) & (t > 0)] = TISSUES.index("lung")
    t[blobs["spine"].level(z, y, x) <= 1] = TISSUES.index("bone")
    for organ, parts in (("kidney", ("kidney_r", "kidney_l")), ("spleen", ("spleen",)), ("liver", ("liver",))):
        for name in parts:
            t[blobs[name].level(z, y, x) <= 1] = TISSUES.index(organ)
    return t


def _grid(scanner: Scanner, n_mm: tuple[float, float, float]) -> tuple[tuple[int, int, int], tuple]:
    spacing = (scanner.slice_mm, scanner.pixel_mm, scanner.pixel_mm)
    shape = tuple(max(8, int(round(extent / s))) for extent, s in zip(n_mm, spacing))
    centres = tuple((np.arange(n) + 0.5) * s - (n * s / 2 if axis else 0.0)
                    for axis, (n, s) in enumerate(zip(shape, spacing)))
    return shape, centres


def _bias_field(rng: np.random.Generator, z, y, x, amplitude: float) -> np.ndarray:
    if amplitude <= 0:
        return np.ones(np.broadcast_shapes(z.shape, y.shape, x.shape), np.float32)
    a = rng.uniform(-1, 1, 4)
    field = a[0] * y / 120 + a[1] * x / 120 + a[2] * (z / FIELD_MM[0] - 0.5) + a[3] * (x * y) / 120 ** 2
    field = field / max(float(np.abs(field).max()), 1e-6)
    return (1.0 + amplitude * field).astype(np.float32)


def render_case(centre: str, index: int, seed: int = 0, scale: float = 1.0) -> Case:
    """Render body ``index`` as centre ``centre`` scans it.

    ``scale`` shrinks the field of view and the anatomy together (0.5 gives a
    volume of half the extent on the same spacing: quicker tests, same
    centres). The same (seed, index) is the same body at every centre; the
    acquisition noise and bias depend on the centre too."""
    scanner = _scanner(centre)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ConfigurationError(f"index must be an integer >= 0, not {index!r}")
    if not (isinstance(scale, (int, float)) and 0.2 <= scale <= 2.0):
        raise ConfigurationError(f"scale must be a number from 0.2 to 2, not {scale!r}")
    body_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3, int(index)]))
    scan_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3, int(index), ord(centre)]))
    blobs = _anatomy(body_rng)
    extent = tuple(e * scale for e in FIELD_MM)
    shape, (zc, yc, xc) = _grid(scanner, extent)
    # Anatomy coordinates are those of a full-size body: scale the grid back.
    zs, ys, xs = zc / scale, yc / scale, xc / scale
    values = np.array([scanner.value(t) for t in TISSUES], np.float32)
    sub = max(1, int(math.ceil(scanner.slice_mm / 1.0)))
    image = np.zeros(shape, np.float32)
    y3, x3 = ys[None, :, None], xs[None, None, :]
    for k in range(sub):  # partial volume: the slab of each slice, 1 mm apart
        offset = ((k + 0.5) / sub - 0.5) * scanner.slice_mm / scale
        image += values[_tissue_map(blobs, (zs + offset)[:, None, None], y3, x3)]
    image /= sub
    labels_of = np.array([0] * 5 + [1, 2, 3], np.uint8)
    labels = labels_of[_tissue_map(blobs, zs[:, None, None], y3, x3)]
    if scanner.blur_px > 0:
        image = gaussian_filter(image, (0.0, scanner.blur_px, scanner.blur_px), truncate=3.0)
    image *= _bias_field(scan_rng, zs[:, None, None], y3, x3, scanner.bias)
    image = image * np.float32(scanner.gain) + np.float32(scanner.offset)
    image += scan_rng.standard_normal(shape, dtype=np.float32) * np.float32(scanner.noise)
    if scanner.modality == "MR":
        np.abs(image, out=image)  # magnitude images are never negative
    spacing = (scanner.slice_mm, scanner.pixel_mm, scanner.pixel_mm)
    return Case(image=image.astype(np.float32), labels=labels, spacing=spacing, centre=centre, index=int(index))
