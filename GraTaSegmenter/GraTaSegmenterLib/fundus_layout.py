"""The on-disk layout of the GraTa fundus (optic disc / cup) benchmark.

The reference code reads a data set root folder holding one CSV per split,
named ``<Dataset>_train.csv`` / ``<Dataset>_test.csv`` (REFUGE validation:
``REFUGE_Valid.csv``), with columns ``image`` and ``mask``: paths relative to
the root, e.g. ``RIM_ONE_r3/train/image/x.png``. Images are RGB PNG or JPG.
Masks are single-channel grey images coded 255 = background, 128 = optic
disc rim, 0 = optic cup; a mask path ending in ``.tif`` is read from
``<name>-1.tif`` instead (as the reference does).

Reading converts a mask to the two-channel target (disc = value < 255, cup
included; cup = value == 0), resizes images bilinearly and masks by nearest
neighbour, and min-max normalises each image to [0, 1] over all channels.
``export_centre`` writes phantom centres in the same layout, so the engine
and the reference scripts can run on them unchanged.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .errors import GraTaError, InputError

__all__ = [
    "BACKGROUND", "RIM", "CUP", "Case", "LayoutError", "LayoutFileNotFoundError",
    "decode_mask", "encode_mask", "export_centre", "iter_split", "list_cases", "read_split",
]

BACKGROUND, RIM, CUP = 255, 128, 0
COLUMNS = ("image", "mask")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class LayoutError(InputError):
    """A data set folder or file does not follow the benchmark layout."""


class LayoutFileNotFoundError(GraTaError, FileNotFoundError):
    """A CSV, image or mask the layout refers to does not exist."""


@dataclass(frozen=True)
class Case:
    """One read case: image float32 (3, S, S) in [0, 1], mask uint8 (2, S, S)."""

    image: np.ndarray
    mask: np.ndarray
    name: str


# --------------------------------------------------------------------------
# Mask coding
# --------------------------------------------------------------------------

def encode_mask(mask2: np.ndarray) -> np.ndarray:
    """Two-channel (disc incl. cup, cup) mask -> grey uint8 H x W in {0, 128, 255}."""
    m = np.asarray(mask2)
    if m.ndim != 3 or m.shape[0] != 2:
        raise LayoutError(f"expected a (2, H, W) disc/cup mask, got shape {m.shape}")
    disc, cup = m[0] != 0, m[1] != 0
    if np.any(cup & ~disc):
        raise LayoutError("the cup must lie inside the disc (channel 0 includes the cup)")
    gray = np.full(m.shape[1:], BACKGROUND, np.uint8)
    gray[disc] = RIM
    gray[cup] = CUP
    return gray


def decode_mask(gray: np.ndarray, strict: bool = True) -> np.ndarray:
    """Grey mask H x W -> uint8 (2, H, W): disc = value < 255, cup = value == 0.

    With ``strict`` any value other than 0, 128 and 255 is an error (it
    usually means a resized, anti-aliased or JPEG-compressed mask).
    """
    g = np.asarray(gray)
    if g.ndim != 2:
        raise LayoutError(f"expected a single-channel H x W mask, got shape {g.shape}")
    if strict:
        bad = np.setdiff1d(np.unique(g), (CUP, RIM, BACKGROUND))
        if bad.size:
            raise LayoutError(
                f"mask values {bad[:8].tolist()} are not 0 (cup), 128 (rim) or 255 "
                "(background); re-save the mask losslessly without resampling, or read "
                "with strict=False to threshold it")
    return np.stack([g < BACKGROUND, g == CUP]).astype(np.uint8)


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------

def export_centre(root, centre: str, split: str, count: int, seed: int = 0, size: int = 512,
                  dataset_name: str | None = None) -> Path:
    """Render ``count`` phantom images of ``centre`` and write them in the layout.

    Writes ``<root>/<dataset>/<split>/image/*.png``, ``.../mask/*.png`` and
    ``<root>/<dataset>_<split>.csv``; returns the CSV path. The CSV is written
    to a temporary name and renamed last, so an interrupted export never
    leaves a CSV that points at missing or half-written files.
    """
    from . import phantom  # lazy: rendering is only needed for export

    dataset = dataset_name if dataset_name is not None else f"Phantom_{centre}"
    for label, token in (("dataset_name", dataset), ("split", split)):
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise LayoutError(f"{label} {token!r} must be a simple name of letters, digits, "
                              "'_', '-' or '.' (it becomes a folder and file name)")
    images, masks = phantom.render(centre, count, seed=seed, size=size)
    root = Path(root)
    rel_dir = Path(dataset) / split
    (root / rel_dir / "image").mkdir(parents=True, exist_ok=True)
    (root / rel_dir / "mask").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"{dataset}_{split}_{i:04d}.png"
        rel_img, rel_mask = rel_dir / "image" / name, rel_dir / "mask" / name
        rgb = np.rint(images[i].transpose(1, 2, 0) * 255.0).astype(np.uint8)
        Image.fromarray(rgb).save(root / rel_img)
        Image.fromarray(encode_mask(masks[i])).save(root / rel_mask)
        rows.append((rel_img.as_posix(), rel_mask.as_posix()))
    csv_path = root / f"{dataset}_{split}.csv"
    tmp = csv_path.with_name(csv_path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    return csv_path


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------

def _mask_file(path: Path) -> Path:
    """The file a mask path really refers to: ``x.tif`` is stored as ``x-1.tif``."""
    if path.suffix.lower() == ".tif":
        return path.with_name(path.stem + "-1" + path.suffix)
    return path


def list_cases(root, csv_names: list[str]) -> list[tuple[Path, Path]]:
    """(image path, mask path) pairs of the given CSVs, in order, checked to exist.

    ``csv_names`` are file names in ``root`` (``.csv`` is added if missing).
    """
    root = Path(root)
    if isinstance(csv_names, (str, os.PathLike)):
        csv_names = [csv_names]
    if not root.is_dir():
        raise LayoutFileNotFoundError(f"data set root {root} is not a folder; give the folder "
                                      "that holds the <Dataset>_<split>.csv files")
    pairs = []
    for name in csv_names:
        name = str(name)
        csv_path = root / (name if name.endswith(".csv") else name + ".csv")
        if not csv_path.is_file():
            found = sorted(p.name for p in root.glob("*.csv"))
            raise LayoutFileNotFoundError(
                f"no CSV {csv_path.name} in {root}; the CSVs there are {found or 'none'} "
                "(export one with export_centre or check the data set name and split)")
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LayoutError(
                    f"{csv_path} lacks column(s) {missing}; its header is "
                    f"{reader.fieldnames}; the first line must be 'image,mask'")
            for line, row in enumerate(reader, start=2):
                if not row["image"] or not row["mask"]:
                    raise LayoutError(f"{csv_path} line {line}: empty image or mask path")
                image = root / row["image"]
                mask = _mask_file(root / row["mask"])
                for kind, path in (("image", image), ("mask", mask)):
                    if not path.is_file():
                        raise LayoutFileNotFoundError(
                            f"{csv_path.name} line {line}: {kind} {path} does not exist; paths "
                            f"in the CSV are relative to the data set root {root}")
                pairs.append((image, mask))
    return pairs


def _read_image(path: Path, size: int) -> np.ndarray:
    """RGB image, bilinear resize to size x size, min-max normalised to [0, 1]."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        x = np.asarray(im, dtype=np.float32).transpose(2, 0, 1)
    lo, hi = float(x.min()), float(x.max())
    if hi > lo:
        x = (x - np.float32(lo)) / np.float32(hi - lo)  # divide: max maps to exactly 1
    else:
        x = np.zeros_like(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def _read_mask(path: Path, size: int, strict: bool) -> np.ndarray:
    """Grey mask, nearest resize to size x size, decoded to (2, size, size)."""
    with Image.open(path) as im:
        if im.mode != "L":  # palette, RGB or 16-bit masks: to 8-bit grey
            im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.NEAREST)
        gray = np.asarray(im)
    try:
        return decode_mask(gray, strict=strict)
    except LayoutError as e:
        raise LayoutError(f"{path}: {e}") from None


def iter_split(root, csv_names: list[str], size: int, strict: bool = True) -> Iterator[Case]:
    """Lazily read the cases of the given CSVs (see ``read_split``)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise LayoutError(f"size must be a positive integer, not {size!r}")
    for image, mask in list_cases(root, csv_names):
        yield Case(image=_read_image(image, int(size)), mask=_read_mask(mask, int(size), strict),
                   name=image.stem)


def read_split(root, csv_names: list[str], size: int, strict: bool = True) -> list[Case]:
    """All cases of the given CSVs as ``Case(image, mask, name)`` records.

    image: float32 (3, size, size), min-max normalised to [0, 1]; mask: uint8
    (2, size, size), channel 0 disc (cup included), channel 1 cup; name: the
    image file stem. ``strict`` rejects masks with values other than
    0/128/255.
    """
    return list(iter_split(root, csv_names, size, strict=strict))
