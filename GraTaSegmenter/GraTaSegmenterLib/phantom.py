"""A multi-centre colour-fundus phantom with exact optic disc / cup masks.

Why a phantom: the public optic disc/cup benchmarks (REFUGE, ORIGA, RIM-ONE,
Drishti-GS) cannot be shipped with the extension, yet the engine needs data
with a *known, graded* domain shift to be trained, adapted and tested on. This
module renders disc-centred colour fundus crops of a random eye (anatomy) as
seen through one of five simulated acquisition chains (centres A..E).

Rendering model, in order (see docs/phantom.md):

1. Anatomy (depends on centre, seed and index): an irregular elliptical optic
   disc defined by an analytic level function ``D(x, y)`` (disc = ``D <= 1``),
   a cup defined by ``C(x, y)`` clipped to ``D <= 1 - margin`` so that it is
   strictly inside the disc by construction, an optional peripapillary atrophy
   crescent outside the disc, and a branching vessel tree leaving the cup.
2. Scene: the anatomy is shaded at the centre's native resolution (retinal
   texture, illumination, darker macula side, disc, pallor of the cup, vessels).
3. Acquisition: optical blur, vignetting and illumination gradient, colour
   response (3x3 matrix), contrast, gamma, sensor noise, 8-bit quantisation,
   JPEG compression, and finally resampling from the native size to ``size``.
4. Masks: the level functions are evaluated on the output pixel grid, so the
   masks are exact binary masks of the geometry that was shaded.

Coordinates are normalised: the crop spans [-1, 1] in x (left to right) and y
(top to bottom), pixel centres at ``(j + 0.5) / n * 2 - 1``.
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from .errors import ConfigurationError

__all__ = ["AcquisitionProfile", "CENTRES", "describe", "render"]

MIN_SIZE = 64
_NOISE_TYPES = ("gaussian", "poisson", "speckle")
# Images are rendered on up to this many threads (results do not depend on it).
_WORKERS = max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------
# Acquisition profiles
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class AcquisitionProfile:
    """How one (simulated) site photographs an eye.

    Fields:
        name: the centre letter.
        spirit: the real camera / data set this profile is loosely styled on.
        shift: the intended size of the domain shift from centre A.
        native_size: side, in pixels, of the crop as the camera delivers it;
            the scene is rendered at this size, then resampled to ``size``.
        magnification: apparent size of the disc relative to centre A
            (field of view / crop scale of the site).
        colour_matrix: 3x3 linear colour response, ``rgb_out = M @ rgb_in``.
        brightness: offset added after the colour matrix.
        contrast: gain around the image mean (1 = unchanged).
        gamma: exponent applied to the [0, 1] signal (>1 darker, <1 brighter).
        blur_sigma: Gaussian optical blur, in native pixels.
        noise_type: "gaussian" (additive), "poisson" (signal-dependent, shot
            noise) or "speckle" (multiplicative).
        noise_level: standard deviation of the noise at signal 1.
        jpeg_quality: Pillow JPEG quality of the stored file, None = lossless.
        vignetting: relative darkening at the crop corners.
        illumination_gradient: amplitude of a linear illumination ramp in a
            random direction (uneven flash / pupil).
        illumination_field: amplitude of a smooth, spatially varying (not
            linear) illumination field: bright and dark patches of a small
            pupil or a hand-held camera. Per-image statistics cannot undo it.
        reflections: number of specular reflections (whitish sheen along the
            vessels and the disc, typical of young eyes).
        lesions: number of bright exudate-like and dark haemorrhage-like spots,
            some near the disc (bright ones have the cup's pallor).
        eyelash_shadow: darkness of a soft shadow band across one border.
        disc_offset: how far the disc centre may lie from the crop centre (in
            half widths); None: 0.08, as at centre A.
    """

    name: str
    spirit: str
    shift: str
    native_size: int
    magnification: float
    colour_matrix: tuple[tuple[float, float, float], ...]
    brightness: float
    contrast: float
    gamma: float
    blur_sigma: float
    noise_type: str
    noise_level: float
    jpeg_quality: int | None
    vignetting: float
    illumination_gradient: float
    illumination_field: float = 0.0
    reflections: int = 0
    lesions: int = 0
    eyelash_shadow: float = 0.0
    disc_offset: float | None = None

    def __post_init__(self):
        if self.noise_type not in _NOISE_TYPES:
            raise ConfigurationError(
                f"noise_type must be one of {_NOISE_TYPES}, not {self.noise_type!r}")
        m = np.asarray(self.colour_matrix, dtype=float)
        if m.shape != (3, 3):
            raise ConfigurationError("colour_matrix must be 3x3")


_IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

CENTRES: MappingProxyType = MappingProxyType({
    "A": AcquisitionProfile(
        name="A", spirit="REFUGE training set (Zeiss Visucam 500): clean source centre",
        shift="none (source)", native_size=512, magnification=1.0,
        colour_matrix=_IDENTITY, brightness=0.0, contrast=1.0, gamma=1.0,
        blur_sigma=0.0, noise_type="gaussian", noise_level=0.006,
        jpeg_quality=None, vignetting=0.06, illumination_gradient=0.05),
    "B": AcquisitionProfile(
        name="B", spirit="REFUGE validation/test sets (Canon CR-2): another camera, same protocol",
        shift="mild", native_size=448, magnification=0.95,
        colour_matrix=((1.03, 0.03, 0.0), (0.0, 0.97, 0.02), (0.0, 0.02, 0.92)),
        brightness=-0.01, contrast=0.95, gamma=1.08,
        blur_sigma=0.8, noise_type="gaussian", noise_level=0.012,
        jpeg_quality=90, vignetting=0.10, illumination_gradient=0.08),
    "C": AcquisitionProfile(
        name="C", spirit="ORIGA (Singapore Malay Eye Study): dark, red-saturated, soft, small discs",
        shift="strong", native_size=256, magnification=0.78,
        colour_matrix=((1.12, 0.10, 0.0), (0.02, 0.68, 0.04), (0.0, 0.10, 0.50)),
        brightness=-0.02, contrast=0.62, gamma=1.5,
        blur_sigma=1.6, noise_type="poisson", noise_level=0.045,
        jpeg_quality=45, vignetting=0.30, illumination_gradient=0.20),
    "D": AcquisitionProfile(
        name="D", spirit="RIM-ONE r3 (Hospital Univ. de Canarias, stereo camera): narrow field, "
                         "cool washed-out colour, large discs",
        shift="strong", native_size=320, magnification=1.32,
        colour_matrix=((0.78, 0.16, 0.06), (0.12, 0.92, 0.10), (0.08, 0.25, 1.05)),
        brightness=0.04, contrast=0.64, gamma=0.75,
        blur_sigma=1.3, noise_type="speckle", noise_level=0.08,
        jpeg_quality=35, vignetting=0.18, illumination_gradient=0.25),
    "E": AcquisitionProfile(
        name="E", spirit="Drishti-GS (Aravind Eye Hospital, 30 deg field): bright, yellow cast, "
                         "strong vignetting",
        shift="moderate to strong", native_size=384, magnification=1.12,
        colour_matrix=((1.0, 0.14, 0.0), (0.06, 1.04, 0.0), (0.0, 0.04, 0.68)),
        brightness=0.0, contrast=1.2, gamma=0.88,
        blur_sigma=1.0, noise_type="gaussian", noise_level=0.025,
        jpeg_quality=70, vignetting=0.38, illumination_gradient=0.15),
    # F-H: shifts that differ from A in where they act, not in the image's global statistics, so
    # that re-estimating BatchNorm statistics cannot undo them (docs/phantom.md has the rationale).
    "F": AcquisitionProfile(
        name="F", spirit="hand-held, non-mydriatic camera through a small pupil: uneven, patchy "
                         "illumination (bright crescent, dark sectors); colour as at A",
        shift="local (illumination)", native_size=448, magnification=1.0,
        colour_matrix=_IDENTITY, brightness=0.0, contrast=1.0, gamma=1.0,
        blur_sigma=0.6, noise_type="gaussian", noise_level=0.012,
        jpeg_quality=85, vignetting=0.30, illumination_gradient=0.45, illumination_field=0.45),
    "G": AcquisitionProfile(
        name="G", spirit="screening programme photos: specular reflections of young eyes, exudates and "
                         "haemorrhages of diabetic retinopathy, an eyelash shadow; colour as at A",
        shift="local (artefacts)", native_size=512, magnification=1.0,
        colour_matrix=_IDENTITY, brightness=0.0, contrast=1.0, gamma=1.0,
        blur_sigma=0.4, noise_type="gaussian", noise_level=0.010,
        jpeg_quality=90, vignetting=0.08, illumination_gradient=0.06,
        reflections=6, lesions=14, eyelash_shadow=0.55),
    "H": AcquisitionProfile(
        name="H", spirit="wide-field camera, macula-centred crops: small discs away from the centre; "
                         "colour as at A",
        shift="geometric (field of view)", native_size=512, magnification=0.6,
        colour_matrix=_IDENTITY, brightness=0.0, contrast=1.0, gamma=1.0,
        blur_sigma=0.5, noise_type="gaussian", noise_level=0.008,
        jpeg_quality=None, vignetting=0.10, illumination_gradient=0.06, disc_offset=0.35),
})
_CENTRE_INDEX = {name: k for k, name in enumerate(sorted(CENTRES))}


def describe(centre: str) -> str:
    """A human-readable, multi-line summary of a centre's acquisition profile."""
    p = _profile(centre)
    m = "; ".join(" ".join(f"{v:+.2f}" for v in row) for row in p.colour_matrix)
    jpeg = "lossless" if p.jpeg_quality is None else f"JPEG q={p.jpeg_quality}"
    return "\n".join([
        f"Centre {p.name}: {p.spirit}",
        f"  domain shift from A: {p.shift}",
        f"  native size {p.native_size} px, disc magnification x{p.magnification:.2f}",
        f"  colour matrix [{m}], brightness {p.brightness:+.2f}, "
        f"contrast {p.contrast:.2f}, gamma {p.gamma:.2f}",
        f"  blur sigma {p.blur_sigma:.1f} px, {p.noise_type} noise {p.noise_level:.3f}, {jpeg}",
        f"  vignetting {p.vignetting:.2f}, illumination gradient {p.illumination_gradient:.2f}",
    ] + ([f"  illumination field {p.illumination_field:.2f}, {p.reflections} reflections, {p.lesions} lesions, "
          f"eyelash shadow {p.eyelash_shadow:.2f}, disc offset up to "
          f"{0.08 if p.disc_offset is None else p.disc_offset:.2f}"]
         if (p.illumination_field or p.reflections or p.lesions or p.eyelash_shadow or p.disc_offset) else []))


def _profile(centre) -> AcquisitionProfile:
    if not isinstance(centre, str) or centre not in CENTRES:
        raise ConfigurationError(
            f"unknown centre {centre!r}: choose one of {', '.join(sorted(CENTRES))}")
    return CENTRES[centre]


# --------------------------------------------------------------------------
# Anatomy (pure geometry, resolution independent)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Shape:
    """An irregular, tilted ellipse: level function ``r / (1 + f(theta))``.

    ``harmonics`` are (cos, sin) amplitudes for orders 2, 3, ...; order 1 would
    only shift the shape, so it is left out.
    """

    cx: float
    cy: float
    a: float  # horizontal semi-axis (before tilt)
    b: float  # vertical semi-axis
    tilt: float
    harmonics: tuple[tuple[float, float], ...]

    def level(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Level function on a grid: < 1 inside, 1 on the boundary.

        x is a row vector and y a column vector (broadcast to a 2-D grid). The
        angular harmonics use powers of the unit complex number instead of
        trigonometric calls, which is several times faster.
        """
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        dx = (x - self.cx).astype(np.float32)
        dy = (y - self.cy).astype(np.float32)
        u = (c * dx + s * dy) / self.a
        v = (-s * dx + c * dy) / self.b
        r = np.sqrt(u * u + v * v) + np.float32(1e-9)
        cos1, sin1 = u / r, v / r
        ck, sk = cos1, sin1
        f = np.zeros_like(r)
        for ac, bs in self.harmonics:
            ck, sk = ck * cos1 - sk * sin1, sk * cos1 + ck * sin1
            f += np.float32(ac) * ck + np.float32(bs) * sk
        return r / (1.0 + f)


@dataclass(frozen=True)
class _Anatomy:
    """Everything about one eye that does not depend on the camera."""

    disc: _Shape
    cup: _Shape
    cup_margin: float  # cup is clipped to disc level <= 1 - cup_margin
    temporal: int  # +1: macula to the right (x > 0), -1: to the left
    ppa: tuple | None  # (width, angular sharpness, direction) or None
    vessels: tuple = field(repr=False)  # ((points (k,2), width, is_vein), ...)
    fundus_rgb: tuple[float, float, float] = (0.78, 0.36, 0.15)
    disc_rgb: tuple[float, float, float] = (0.96, 0.72, 0.45)
    cup_rgb: tuple[float, float, float] = (1.0, 0.90, 0.74)

    def disc_level(self, x, y):
        return self.disc.level(x, y)

    def cup_level(self, x, y, disc_level=None):
        """Cup level clipped so that ``cup <= 1`` implies ``disc <= 1 - margin``."""
        if disc_level is None:
            disc_level = self.disc.level(x, y)
        return np.maximum(self.cup.level(x, y), disc_level / (1.0 - self.cup_margin))


def _harmonics(rng, orders: int, amplitude: float) -> tuple:
    """Random shape harmonics whose summed amplitude stays below ``amplitude``."""
    raw = rng.normal(0.0, 1.0, size=(orders, 2)) / np.arange(2, orders + 2)[:, None]
    total = np.abs(raw).sum()
    raw *= amplitude * rng.uniform(0.4, 1.0) / max(total, 1e-9)
    return tuple((float(a), float(b)) for a, b in raw)


def _make_anatomy(rng: np.random.Generator, profile: AcquisitionProfile) -> _Anatomy:
    """Draw a random eye: disc, cup (vertical CDR ~ U(0.2, 0.8)), PPA, vessels."""
    temporal = 1 if rng.random() < 0.5 else -1
    # Disc diameter 25-45 % of the crop at magnification 1 (radius in units of
    # the half width), scaled by the site's magnification.
    radius = rng.uniform(0.25, 0.45) * profile.magnification
    radius = float(np.clip(radius, 0.16 if profile.magnification >= 0.75 else 0.1, 0.55))
    elong = rng.uniform(1.02, 1.14)  # discs are slightly taller than wide
    a, b = radius / math.sqrt(elong), radius * math.sqrt(elong)
    lim = 0.08 if profile.disc_offset is None else float(profile.disc_offset)
    disc = _Shape(cx=float(rng.uniform(-lim, lim)), cy=float(rng.uniform(-lim, lim)),
                  a=a, b=b, tilt=float(rng.uniform(-0.2, 0.2)),
                  harmonics=_harmonics(rng, 4, 0.035))

    cdr = rng.uniform(0.2, 0.8)
    bc = cdr * b
    ac = cdr * a * rng.uniform(0.88, 1.08)
    free_x, free_y = (1.0 - cdr) * a, (1.0 - cdr) * b
    # The cup sits a little temporal and is otherwise close to the disc centre.
    ox = temporal * rng.uniform(0.0, 0.35) * free_x
    oy = rng.uniform(-0.15, 0.15) * free_y
    c, s = math.cos(disc.tilt), math.sin(disc.tilt)
    cup = _Shape(cx=disc.cx + c * ox - s * oy, cy=disc.cy + s * ox + c * oy,
                 a=ac, b=bc, tilt=disc.tilt + float(rng.uniform(-0.15, 0.15)),
                 harmonics=_harmonics(rng, 3, 0.03))

    ppa = None
    if rng.random() < 0.3:
        ppa = (float(rng.uniform(0.12, 0.35)),  # crescent width, in disc radii
               float(rng.uniform(1.0, 4.0)),  # angular sharpness (cos power)
               float((0.0 if temporal > 0 else math.pi) + rng.uniform(-0.6, 0.6)))

    fundus = np.array([0.78, 0.36, 0.15]) * rng.uniform(0.85, 1.12, 3)
    disc_rgb = np.array([0.95, 0.62, 0.36]) * rng.uniform(0.93, 1.05, 3)
    cup_rgb = np.array([1.0, 0.93, 0.80]) * rng.uniform(0.95, 1.03, 3)
    vessels = _make_vessels(rng, disc, cup, temporal)
    return _Anatomy(disc=disc, cup=cup, cup_margin=0.06, temporal=temporal, ppa=ppa,
                    vessels=vessels, fundus_rgb=tuple(fundus.tolist()),
                    disc_rgb=tuple(disc_rgb.tolist()), cup_rgb=tuple(cup_rgb.tolist()))


def _grow_vessel(rng, start, angle, bend, width, depth, out):
    """Random-walk one vessel from ``start``; may spawn thinner side branches.

    ``bend`` is the curvature (rad per unit length) that makes the main
    arcades sweep around towards the macula. Appends (points, width, is_vein)
    to ``out``; ``width`` is (starting width in normalised units, is_vein).
    The walk is vectorised: one draw of all its steps, then cumulative sums.
    """
    step, steps = 0.04, 80
    turns = angle + np.cumsum(bend * step + rng.normal(0.0, 0.06, steps))
    xy = np.empty((steps + 1, 2))
    xy[0] = start
    xy[1:, 0] = start[0] + np.cumsum(step * np.cos(turns))
    xy[1:, 1] = start[1] + np.cumsum(step * np.sin(turns))
    outside = np.flatnonzero(np.abs(xy[1:]).max(axis=1) > 1.15)
    last = int(outside[0]) + 1 if outside.size else steps
    pts = xy[:last + 1]
    if depth < 2:  # main vessels fork more often than their branches
        forks = np.flatnonzero(rng.random(last) < (0.045 if depth == 0 else 0.02))
        for k in forks[forks > 2]:
            side = 1 if rng.random() < 0.5 else -1
            child_w = width[0] * 0.985 ** k * rng.uniform(0.45, 0.7)
            _grow_vessel(rng, tuple(pts[k]), float(turns[k - 1]) + side * rng.uniform(0.45, 1.1),
                         rng.normal(0.0, 0.6), (child_w, width[1]), depth + 1, out)
    out.append((pts.astype(np.float32), width[0], width[1]))


def _make_vessels(rng, disc: _Shape, cup: _Shape, temporal: int) -> tuple:
    """Main superior/inferior arcades (vein + artery pairs) plus nasal and
    macular branches, all leaving from just nasal of the cup centre."""
    out: list = []
    ox = cup.cx - temporal * 0.25 * cup.a
    scale = min(1.0, disc.b / 0.35) ** 0.5  # vessels look thinner on small discs
    for vert in (-1, 1):  # -1: superior (up, y < 0), +1: inferior
        for is_vein, w0 in ((True, 0.042), (False, 0.030)):
            w = w0 * scale * rng.uniform(0.85, 1.15)
            # temporal arcade: leaves vertically, bends towards the macula
            a0 = vert * math.pi / 2 - temporal * vert * rng.uniform(0.05, 0.35)
            bend = -temporal * vert * rng.uniform(0.6, 1.3)
            start = (ox + rng.normal(0, 0.02), cup.cy + vert * 0.2 * cup.b)
            _grow_vessel(rng, start, a0, bend, (w, is_vein), 0, out)
            # nasal arcade: thinner, bends away from the macula
            a1 = vert * math.pi / 2 + temporal * vert * rng.uniform(0.3, 0.7)
            _grow_vessel(rng, start, a1, temporal * vert * rng.uniform(0.2, 0.6),
                         (w * 0.7, is_vein), 1, out)
    for _ in range(int(rng.integers(1, 4))):  # small macular / nasal branches
        direction = temporal if rng.random() < 0.6 else -temporal
        a = (0.0 if direction > 0 else math.pi) + rng.uniform(-0.5, 0.5)
        _grow_vessel(rng, (ox, cup.cy + rng.normal(0, 0.03)), a, rng.normal(0, 1.0),
                     (0.015 * scale * rng.uniform(0.8, 1.3), rng.random() < 0.5), 1, out)
    return tuple(out)


# --------------------------------------------------------------------------
# Scene shading at native resolution
# --------------------------------------------------------------------------

def _axes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row vector x and column vector y of normalised pixel-centre coordinates."""
    t = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0)
    return t[None, :], t[:, None]


def _smooth_noise(rng, coarse: int, n: int) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency noise: a coarse random grid upsampled
    bicubically (Pillow, fast), standing in for choroidal texture and
    uneven pigmentation."""
    grid = rng.standard_normal((coarse, coarse)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((n, n), Image.BICUBIC))


def _texture(rng, n: int) -> np.ndarray:
    """Retinal texture: broad blotches (7x7 grid) plus finer mottling (28x28),
    summed at the coarse scale so that only one full-size resize is paid."""
    fine = rng.standard_normal((28, 28)).astype(np.float32) * np.float32(0.035)
    fine += 0.07 * _smooth_noise(rng, 7, 28)
    return np.asarray(Image.fromarray(fine).resize((n, n), Image.BICUBIC))


def _ramp(level: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-indicator of ``level <= 1``: 1 inside, 0 outside, 0.5 on
    the boundary, linear over ``+-edge``. The 50 % point is exactly the mask
    boundary, so the masks trace the visible edge."""
    return np.clip((1.0 + edge - level) * (0.5 / edge), 0.0, 1.0)


def _draw_vessels(anatomy: _Anatomy, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise veins and arteries as anti-aliased opacity maps in [0, 1].

    Drawn with Pillow at twice the native size, then box-reduced: cheap
    anti-aliasing. Each polyline is drawn in short chunks of decreasing width
    so vessels taper.
    """
    ss = 2 * n
    layers = {True: Image.new("L", (ss, ss), 0), False: Image.new("L", (ss, ss), 0)}
    draws = {k: ImageDraw.Draw(v) for k, v in layers.items()}
    chunk_len = 8
    for pts, w0, is_vein in anatomy.vessels:
        px = ((pts + 1.0) * (0.5 * ss)).tolist()
        w = w0 * 0.5 * ss
        for start in range(0, len(px) - 1, chunk_len):
            chunk = [tuple(p) for p in px[start:start + chunk_len + 1]]
            draws[is_vein].line(chunk, fill=255, width=max(1, int(round(w))))
            w *= 0.985 ** chunk_len
    return tuple(np.asarray(layers[k].reduce(2), dtype=np.float32) * np.float32(1.0 / 255.0)
                 for k in (True, False))


def _window(anatomy: _Anatomy, n: int, reach: float) -> tuple[slice, slice]:
    """Pixel window (rows, cols) of half-width ``reach`` disc radii.

    Only this window needs the (costly) level functions; everywhere else the
    pixel is plain retina. The disc (harmonics < 4 %) fits in ``reach=1.1``,
    the atrophy halo (at most 0.6 radii further) in ``reach=1.75``.
    """
    d = anatomy.disc
    half = reach * max(d.a, d.b)
    lo = lambda c: max(0, int(math.floor(((c - half) + 1.0) * 0.5 * n)))  # noqa: E731
    hi = lambda c: min(n, int(math.ceil(((c + half) + 1.0) * 0.5 * n)) + 1)  # noqa: E731
    return slice(lo(d.cy), hi(d.cy)), slice(lo(d.cx), hi(d.cx))


def _blend(channels: np.ndarray, alpha: np.ndarray, colour) -> None:
    """In place: channels[c] = (1 - alpha) * channels[c] + alpha * colour[c].

    ``colour`` entries may be scalars or arrays shaped like ``alpha``.
    Channels-first with per-channel loops: contiguous, far faster in numpy
    than broadcasting over a trailing axis of length 3.
    """
    for c in range(3):
        channels[c] += alpha * (colour[c] - channels[c])


def _shade(anatomy: _Anatomy, rng, n: int) -> np.ndarray:
    """The eye as an ideal camera would see it: float32 (3, n, n) in ~[0, 1]."""
    x, y = _axes(n)
    # Retina: orange-red, choroidal texture, darker towards the macula.
    tex = 1.0 + _texture(rng, n)
    macula = 1.0 - 0.22 / (1.0 + np.exp(-(anatomy.temporal * x - 0.55) * 6.0))
    lum = tex * macula
    fundus = np.asarray(anatomy.fundus_rgb, np.float32)
    img = np.stack([lum * fundus[c] for c in range(3)])

    rows, cols = _window(anatomy, n, 1.75 if anatomy.ppa is not None else 1.1)
    xw, yw = x[:, cols], y[rows, :]
    win = img[:, rows, cols]  # a view: blending into it edits img
    dl = anatomy.disc_level(xw, yw)
    shape = dl.shape
    # Peripapillary atrophy: a pale, mottled crescent just outside the rim.
    if anatomy.ppa is not None:
        width, sharp, direction = anatomy.ppa
        dx, dy = xw - anatomy.disc.cx, yw - anatomy.disc.cy
        ang = np.cos(np.arctan2(dy, dx) - direction)
        wobble = _smooth_noise(rng, 9, max(shape))[:shape[0], :shape[1]]
        reach = width * np.clip(ang, 0.0, 1.0) ** sharp * np.clip(1.0 + 0.4 * wobble, 0.3, 1.6)
        outside = dl - 1.0
        ppa = np.clip((reach - outside) / 0.04, 0.0, 1.0) * np.clip(outside / 0.03 + 0.7, 0.0, 1.0)
        ppa *= 0.8 * (outside > -0.02)
        mottle = 0.85 + 0.15 * _smooth_noise(rng, 40, max(shape))[:shape[0], :shape[1]]
        _blend(win, ppa, [v * mottle for v in (0.88, 0.70, 0.52)])

    # Disc: yellow-orange, the rim redder towards its edge.
    disc_a = _ramp(dl, 0.035)
    rim = np.clip(dl, 0.0, 1.0) ** 3
    grain = 1.0 + 0.04 * _smooth_noise(rng, 12, max(shape))[:shape[0], :shape[1]]
    _blend(win, disc_a, [anatomy.disc_rgb[c] * grain * (1.0 - 0.18 * k * rim)
                         for c, k in enumerate((0.0, 0.6, 1.0))])

    # Cup: pallor, strongest at its centre (the excavation).
    cl = anatomy.cup_level(xw, yw, dl)
    cup_a = _ramp(cl, 0.06) * 0.9
    pallor = 0.9 + 0.12 * np.clip(1.0 - cl, 0.0, 1.0)
    _blend(win, cup_a, [v * pallor for v in anatomy.cup_rgb])

    # Vessels over everything: veins darker and wider than arteries.
    vein, artery = _draw_vessels(anatomy, n)
    tint = fundus / np.array([0.78, 0.36, 0.15], np.float32)
    _blend(img, 0.85 * artery, np.array([0.62, 0.16, 0.08], np.float32) * tint)
    _blend(img, 0.9 * vein, np.array([0.42, 0.08, 0.05], np.float32) * tint)
    return img


def _spot(n: int, cx: float, cy: float, rx: float, ry: float, angle: float, x, y) -> np.ndarray:
    """Soft elliptical spot (opacity in [0, 1]) centred at (cx, cy), radii in half widths."""
    c, s = math.cos(angle), math.sin(angle)
    u = (c * (x - cx) + s * (y - cy)) / rx
    v = (-s * (x - cx) + c * (y - cy)) / ry
    return np.clip(1.5 - (u * u + v * v), 0.0, 1.0).astype(np.float32) ** 1.5


def _artefacts(img: np.ndarray, anatomy: _Anatomy, profile: AcquisitionProfile, rng) -> None:
    """In place, before the camera: reflections, lesions, an eyelash shadow (centre G).
    The masks are unchanged: none of them is disc or cup."""
    if not (profile.reflections or profile.lesions or profile.eyelash_shadow):
        return
    n = img.shape[1]
    x, y = _axes(n)
    d = anatomy.disc
    for _ in range(profile.reflections):
        # a thin bright sheen along an arc around the disc or along a vessel
        r = rng.uniform(1.3, 3.0) * max(d.a, d.b)
        t = rng.uniform(0.0, 2.0 * math.pi)
        cx, cy = d.cx + r * math.cos(t), d.cy + r * math.sin(t)
        alpha = 0.75 * _spot(n, cx, cy, rng.uniform(0.08, 0.22), rng.uniform(0.01, 0.03), t + math.pi / 2, x, y)
        _blend(img, alpha, (0.98, 0.93, 0.88))
    for k in range(profile.lesions):
        bright = k % 2 == 0
        if k < profile.lesions // 3:  # some near the disc, where they look like pallor of the cup
            r, t = rng.uniform(1.15, 1.8) * max(d.a, d.b), rng.uniform(0.0, 2.0 * math.pi)
            cx, cy = d.cx + r * math.cos(t), d.cy + r * math.sin(t)
        else:
            cx, cy = rng.uniform(-0.9, 0.9), rng.uniform(-0.9, 0.9)
        size = rng.uniform(0.015, 0.05)
        alpha = (0.9 if bright else 0.8) * _spot(n, cx, cy, size, size * rng.uniform(0.6, 1.4),
                                                 rng.uniform(0, math.pi), x, y)
        _blend(img, alpha, (1.0, 0.92, 0.62) if bright else (0.35, 0.05, 0.03))
    if profile.eyelash_shadow:
        t = rng.uniform(0.0, 2.0 * math.pi)
        along = math.cos(t) * x + math.sin(t) * y  # distance towards one border
        across = -math.sin(t) * x + math.cos(t) * y
        band = np.clip((along - 0.45) / 0.35, 0.0, 1.0).astype(np.float32)
        # out-of-focus lashes: soft stripes running towards the border
        streaks = (0.55 + 0.45 * np.sin(across * rng.uniform(25.0, 40.0) + rng.uniform(0, math.pi)) ** 2)
        shadow = (profile.eyelash_shadow * band * streaks).astype(np.float32)
        for c in range(3):
            img[c] *= 1.0 - shadow


# --------------------------------------------------------------------------
# Acquisition chain
# --------------------------------------------------------------------------

def _unit_noise(rng, n: int) -> np.ndarray:
    """Zero-mean, unit-variance noise plane (n, n), float32.

    The sum of two uniform bytes (a triangular distribution, close enough to
    a Gaussian for sensor noise) costs a quarter of ``standard_normal``.
    """
    b = np.frombuffer(rng.bytes(2 * n * n), dtype=np.uint8).reshape(2, n, n)
    noise = b[0].astype(np.float32)
    noise += b[1]
    noise -= 255.0
    noise *= np.float32(1.0 / math.sqrt(2 * (256 ** 2 - 1) / 12.0))
    return noise


def _acquire(img: np.ndarray, profile: AcquisitionProfile, rng, size: int) -> np.ndarray:
    """Photograph a (3, n, n) scene with a centre's camera; uint8 (size, size, 3)."""
    n = img.shape[1]
    x, y = _axes(n)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    light = (1.0 + profile.illumination_gradient * (math.cos(phi) * x + math.sin(phi) * y)) \
        * (1.0 - profile.vignetting * 0.5 * (x * x + y * y))
    if profile.illumination_field:
        field = _smooth_noise(rng, 4, n)
        field = field / max(float(np.abs(field).max()), 1e-6)
        light = light * np.clip(1.0 + profile.illumination_field * field, 0.15, None)
    m = np.asarray(profile.colour_matrix, np.float32)
    chans = []
    for c in range(3):
        ch = img[c]
        if profile.blur_sigma > 0:  # optics
            ch = gaussian_filter(ch, profile.blur_sigma, truncate=2.5)
        chans.append(ch * light)
    # Sensor colour response, contrast, gamma.
    chans = [m[c, 0] * chans[0] + m[c, 1] * chans[1] + m[c, 2] * chans[2] for c in range(3)]
    mean = np.float32(sum(float(ch.mean()) for ch in chans) / 3.0)
    offset = np.float32((1.0 - profile.contrast) * mean + profile.brightness)
    gain = np.float32(profile.contrast)
    noise_level = np.float32(profile.noise_level)
    planes = []
    for c in range(3):
        ch = chans[c] * gain + offset
        np.clip(ch, 0.0, 1.0, out=ch)
        if profile.gamma != 1.0:
            ch = np.power(ch, np.float32(profile.gamma))
        if noise_level > 0:
            noise = _unit_noise(rng, n) * noise_level
            if profile.noise_type == "poisson":
                noise *= np.sqrt(ch)
            elif profile.noise_type == "speckle":
                noise *= ch
            ch += noise
        ch *= 255.0
        ch += 0.5
        np.clip(ch, 0.0, 255.0, out=ch)
        planes.append(Image.fromarray(ch.astype(np.uint8)))
    pic = Image.merge("RGB", planes)  # 8-bit file, as the camera writes it
    if profile.jpeg_quality is not None:  # the file the site stores
        buf = io.BytesIO()
        pic.save(buf, format="JPEG", quality=int(profile.jpeg_quality))
        buf.seek(0)
        pic = Image.open(buf).convert("RGB")
    if pic.size != (size, size):
        pic = pic.resize((size, size), Image.BILINEAR)
    return np.asarray(pic)


def _masks(anatomy: _Anatomy, size: int) -> np.ndarray:
    """Exact binary disc (cup included) and cup masks on the output grid."""
    masks = np.zeros((2, size, size), np.uint8)
    x, y = _axes(size)
    rows, cols = _window(anatomy, size, 1.1)
    dl = anatomy.disc_level(x[:, cols], y[rows, :])
    cl = anatomy.cup_level(x[:, cols], y[rows, :], dl)
    masks[0, rows, cols] = dl <= 1.0
    masks[1, rows, cols] = cl <= 1.0
    return masks


def _rngs(centre: str, seed: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent anatomy, acquisition and artefact generators for one image.

    Seeded by (seed, centre, index) only, so image i does not depend on how
    many images are rendered; different centres see different eyes (no
    anatomy is shared between a training and a test centre).
    """
    ss = np.random.SeedSequence([int(seed), _CENTRE_INDEX[centre], int(index)])
    a, b, c = ss.spawn(3)  # the first two children are those of spawn(2): centres A-E are unchanged
    return np.random.default_rng(a), np.random.default_rng(b), np.random.default_rng(c)


def render(centre: str, count: int, seed: int = 0, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Render ``count`` fundus crops of one centre.

    Returns (images, masks): images float32 (count, 3, size, size) in [0, 1]
    (8-bit levels, as a camera file would hold); masks uint8 (count, 2, size,
    size) in {0, 1}, channel 0 the whole disc including the cup, channel 1 the
    cup. Bit-identical for the same arguments; image i depends only on
    (centre, seed, i).
    """
    profile = _profile(centre)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ConfigurationError(f"count must be an integer >= 1, not {count!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigurationError(f"size must be an integer >= {MIN_SIZE}, not {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigurationError(f"seed must be an integer >= 0, not {seed!r}")
    count, size = int(count), int(size)
    images = np.empty((count, 3, size, size), np.float32)
    masks = np.empty((count, 2, size, size), np.uint8)

    def one(i: int) -> None:
        rng_anat, rng_acq, rng_art = _rngs(centre, seed, i)
        anatomy = _make_anatomy(rng_anat, profile)
        scene = _shade(anatomy, rng_anat, profile.native_size)
        _artefacts(scene, anatomy, profile, rng_art)
        rgb = _acquire(scene, profile, rng_acq, size)
        images[i] = rgb.transpose(2, 0, 1) * np.float32(1.0 / 255.0)
        masks[i] = _masks(anatomy, size)

    # Each image has its own generators, so the order of work does not matter
    # and threads (numpy, scipy and Pillow release the GIL) keep it exact.
    workers = min(_WORKERS, count)
    if workers <= 1:
        for i in range(count):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(count)))
    return images, masks
