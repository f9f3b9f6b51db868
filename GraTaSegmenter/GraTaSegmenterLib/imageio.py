"""Reading images and writing results with their geometry (SimpleITK).

Every input kind the command line accepts is read here into one
:class:`LoadedImage`: a channel-first float array plus the SimpleITK image it
came from, whose geometry (size, origin, spacing, direction) every output
copies. Inputs are only ever opened for reading.

Also here: the writer of Slicer segmentation files (``.seg.nrrd``), a small
NRRD writer of its own because Slicer's layout (segment axis first, kind
``list``) is not one SimpleITK writes.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .terminology_contexts import ANATOMIC_CONTEXT, TERMINOLOGY_CONTEXT

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
SUPPORTED = PICTURE_SUFFIXES + VOLUME_SUFFIXES


def suffix_of(path: str | os.PathLike) -> str:
    """The lower-case format suffix, with ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def stem_of(path: str | os.PathLike) -> str:
    """The name of an input without its format suffix (a DICOM folder: its name)."""
    p = Path(path)
    if p.is_dir():
        return p.resolve().name or "dicom"
    suffix = suffix_of(p)
    return p.name[: len(p.name) - len(suffix)] if suffix else p.name


@dataclass
class LoadedImage:
    """One input image.

    ``array`` is float32, channel first: ``(C, H, W)`` for 2D images,
    ``(C, D, H, W)`` (numpy z, y, x order) for volumes. ``image`` is the
    SimpleITK image as read: the geometry reference of every output.
    """

    path: Path
    image: sitk.Image
    array: np.ndarray
    kind: str  # "picture", "volume" or "dicom"
    suffix: str
    notes: list[str] = field(default_factory=list)  # what the readers warned about, one line each

    @property
    def dims(self) -> int:
        return self.image.GetDimension()

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def is_nifti(self) -> bool:
        return self.suffix in (".nii", ".nii.gz")


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        series = ()
    if not series:
        raise InputError(f"{folder} is a folder without a DICOM series; give an image file or a folder "
                         f"holding the DICOM files of one series")
    # The series with the most files: the main acquisition when a folder holds a localiser too.
    listed = [reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series]
    files = max(listed, key=len)
    _check_no_dicom_left_out(folder, {os.path.realpath(f) for group in listed for f in group})
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"the DICOM series in {folder} cannot be read ({_first_line(exc)}); "
                         f"check that the folder holds one complete series") from None


def _check_no_dicom_left_out(folder: Path, in_series: set[str]) -> None:
    """GDCM leaves out of every series a DICOM file it cannot read (a truncated one): the
    series would then silently miss a slice and get a wrong slice spacing. Refuse instead."""
    left_out = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith(".") or os.path.realpath(f) in in_series:
            continue
        try:
            with open(f, "rb") as handle:
                head = handle.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            left_out.append(f.name)
    if left_out:
        shown = ", ".join(left_out[:5]) + (f" ... ({len(left_out)} in all)" if len(left_out) > 5 else "")
        raise InputError(f"{folder.name}: {len(left_out)} DICOM file(s) cannot be read and would be left out of "
                         f"the series ({shown}): a slice would be missing and the slice spacing wrong. Copy "
                         f"the series again, or remove the file(s) if they do not belong to it")


_ITK_WARNING = re.compile(r"^WARNING: In .*, line \d+$")
_ITK_SOURCE = re.compile(r"^\w+ \(0x[0-9a-fA-F]+\): ")


@contextlib.contextmanager
def reader_warnings(notes: list[str]) -> Iterator[None]:
    """Catch what the C libraries under SimpleITK print while reading: libpng's ``libpng
    warning: ...`` lines on stderr (one per row for some damage), ITK's four-line WARNING
    blocks, and libjpeg's bare warnings, which it prints on *stdout*, where ``--events`` has its
    JSON lines. They become one short note per distinct message in ``notes``; anything else
    printed meanwhile goes on to stderr unchanged. Without file descriptors, nothing is caught."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as caught:
        for fd in saved:
            os.dup2(caught.fileno(), fd)
        try:
            yield
        finally:
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
    others = []
    for line in text.splitlines():
        line = line.strip()
        if not line or _ITK_WARNING.match(line):
            continue
        if line.startswith("libpng warning: "):
            note = "libpng: " + line[len("libpng warning: "):]
        elif line in _LIBJPEG_WARNINGS:
            note = "libjpeg: " + line
        elif _ITK_SOURCE.match(line):
            note = "ITK: " + _ITK_SOURCE.sub("", line)
        else:
            others.append(line)
            continue
        if note not in notes:
            notes.append(note)
    if others:
        print("\n".join(others), file=sys.stderr)


# libjpeg's warnings (it prints them bare); the first means the file was cut short and the
# missing rows were filled in grey.
_TRUNCATED_JPEG = "Premature end of JPEG file"
_LIBJPEG_WARNINGS = (_TRUNCATED_JPEG, "Corrupt JPEG data: premature end of data segment")


def check_bmp(path: Path) -> None:
    """What ITK's BMP reader does not check: the file holds the rows its header promises
    (ITK fills the missing ones with zeros). Uncompressed bitmaps only; others are left to ITK."""
    with open(path, "rb") as f:
        head = f.read(34)
    size = path.stat().st_size
    if len(head) < 34 or head[:2] != b"BM":
        return  # not a bitmap header: ITK's own refusal says so
    offset = int.from_bytes(head[10:14], "little")
    width = int.from_bytes(head[18:22], "little", signed=True)
    height = int.from_bytes(head[22:26], "little", signed=True)
    bits = int.from_bytes(head[28:30], "little")
    compression = int.from_bytes(head[30:34], "little")
    if compression not in (0, 3) or width <= 0 or bits == 0:
        return
    need = offset + (width * bits + 31) // 32 * 4 * abs(height)
    if size < need:
        raise InputError(f"{path.name} is truncated: its header promises {need} bytes, the file holds {size}; "
                         f"copy or export it again")


_HEADER_REFUSALS = (
    ("Zero-valued spacing", "its header gives a voxel spacing of 0 along an axis, so its geometry is undefined; "
                            "correct the spacing in the header (or save it again from a viewer that shows it right)"),
    ("Bad direction, determinant is 0", "its header gives axis directions that do not span space (two axes along "
                                        "one line); correct the space directions in the header"),
    ("orthonormal direction cosines", "its header gives a sheared geometry (axes not at right angles), which ITK's "
                                      "NIfTI reader does not support; resample it onto a grid with right-angled "
                                      "axes (e.g. in Slicer: Resample Image), or save it as NRRD"),
)


def _read_failure(path: Path, exc: BaseException) -> InputError:
    """The reader's refusal in words that say what to do: a header ITK refuses is not an
    incomplete file."""
    text = str(exc)
    for marker, advice in _HEADER_REFUSALS:
        if marker in text:
            return InputError(f"{path.name} cannot be used: {advice}")
    return InputError(f"{path.name} cannot be read as an image ({_first_line(exc)}); "
                      f"check that the file is complete and of the format its name says")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "ERROR" in line or "error" in line] or lines
    return useful[-1][:200] if useful else type(exc).__name__


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def check_nifti(path: Path) -> None:
    """What ITK's NIfTI reader does not check: the file holds all the voxels its header
    promises (ITK fills a truncated file with zeros) and no NaN or infinite value (ITK
    turns them into 0). Reads the header (NIfTI-1 or -2, either byte order) and the data."""
    import gzip
    import struct
    import zlib

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path.name} is not a complete NIfTI file ({exc}); check that the file was copied "
                         f"or downloaded completely") from None
    header = None
    for order in "<>":
        if len(raw) >= 4 and struct.unpack(order + "i", raw[:4])[0] in (348, 540):
            header = order
            break
    if header is None:
        raise InputError(f"{path.name} has no NIfTI header; check that it is a NIfTI file")
    order, version2 = header, struct.unpack(header + "i", raw[:4])[0] == 540
    try:
        if version2:
            datatype, bitpix = struct.unpack(order + "hh", raw[12:16])
            dims = struct.unpack(order + "8q", raw[16:80])
            offset = struct.unpack(order + "q", raw[168:176])[0]
        else:
            datatype, bitpix = struct.unpack(order + "hh", raw[70:74])
            dims = struct.unpack(order + "8h", raw[40:56])
            offset = int(struct.unpack(order + "f", raw[108:112])[0])
    except struct.error:
        raise InputError(f"{path.name}: the NIfTI header is cut short; the file is incomplete") from None
    count = 1
    for d in dims[1:1 + max(0, min(int(dims[0]), 7))]:
        count *= max(int(d), 1)
    need = offset + count * max(int(bitpix), 8) // 8
    if len(raw) < need:
        raise InputError(f"{path.name} is truncated: its header promises {need} bytes of data and header, the "
                         f"file holds {len(raw)}; copy or download it again")
    if datatype in _NIFTI_FLOATS:
        data = np.frombuffer(raw, dtype=order + _NIFTI_FLOATS[datatype], count=count, offset=offset)
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(f"{path.name} contains {bad} NaN or infinite value(s); fix or crop the image "
                             f"before segmenting it")


def _read_picture_with_pillow(path: Path) -> sitk.Image | None:
    """Pictures ITK has no pixel type for (grey + alpha PNG): read with Pillow, as ITK
    would place them (spacing 1, origin 0); None when Pillow cannot read the file either."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" and the like: the refusal says it
            with Image.open(path) as picture:
                picture.load()
                if picture.mode not in ("LA", "La", "PA"):
                    return None  # ITK's refusal stands for everything else
                array = np.asarray(picture.convert("LA"))
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=True)


_EXIF_TURNS = {2: "mirrored", 3: "rotate 180 degrees", 4: "flipped", 5: "mirrored and rotated 270 degrees",
               6: "rotate 90 degrees", 7: "mirrored and rotated 90 degrees", 8: "rotate 270 degrees"}


def exif_orientation(path: Path) -> str | None:
    """A JPEG/TIFF's EXIF orientation in words when it asks viewers to turn the picture (None: as stored)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged EXIF block: then no orientation to report
            with Image.open(path) as picture:
                value = picture.getexif().get(0x0112)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return _EXIF_TURNS.get(value)


def check_readable_path(path: Path) -> None:
    """Refuse, before any reader sees it, what would crash or hang one: a name that
    is not valid UTF-8 (SimpleITK aborts the process on it) and anything that is
    neither a regular file nor a folder (a named pipe blocks the reader for ever)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise InputError(f"{shown}: the file name is not valid UTF-8, which the image readers cannot open; "
                         f"rename the file (or its folder)") from None
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path")
    if not (path.is_file() or path.is_dir()):
        raise InputError(f"{path} is not a regular file (a pipe, socket or device); give an image file or a "
                         f"DICOM folder")


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read an input; raise :class:`InputError` saying what to do when it cannot be used."""
    path = Path(path)
    check_readable_path(path)
    notes: list[str] = []
    if path.is_dir():
        with reader_warnings(notes):
            image = _read_dicom_series(path)
        kind, suffix = "dicom", ""
    else:
        suffix = suffix_of(path)
        if suffix not in SUPPORTED:
            raise InputError(f"{path.name}: {suffix or 'files without a suffix'} is not a supported format; "
                             f"use PNG, JPEG, TIFF, BMP, NRRD, NIfTI, MHA/MHD or a DICOM series folder")
        if suffix in (".nii", ".nii.gz"):
            check_nifti(path)
        if suffix == ".bmp":
            check_bmp(path)
        try:
            with reader_warnings(notes):
                image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            image = _read_picture_with_pillow(path) if suffix in PICTURE_SUFFIXES else None
            if image is None:
                raise _read_failure(path, exc) from None
        if "libjpeg: " + _TRUNCATED_JPEG in notes:
            raise InputError(f"{path.name} is truncated (the JPEG data ends early; its missing rows would be "
                             f"grey); copy or export it again")
        kind = "picture" if suffix in PICTURE_SUFFIXES else "volume"
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{path.name} is a {image.GetDimension()}D image; give a 2D image or a 3D volume "
                         f"(extract one time point or channel first)")
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(f"{path.name} holds complex values; give a magnitude image")
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)  # channels first
    else:
        array = array[None]
    return LoadedImage(path=path, image=image, array=np.ascontiguousarray(array, dtype=np.float32),
                       kind=kind, suffix=suffix, notes=notes)


# -- geometry ----------------------------------------------------------------------------------

def direction_matrix(image: sitk.Image) -> np.ndarray:
    d = image.GetDimension()
    return np.asarray(image.GetDirection(), dtype=np.float64).reshape(d, d)


def through_plane_axis(image: sitk.Image) -> int:
    """The numpy axis (of a z, y, x array) across which a volume's slices lie.

    The slice normal is the cross product of the image's first two direction
    columns; the axis whose direction is most aligned with it is the through-
    plane axis: axis 0 for volumes stored slice by slice (the usual case, also
    for oblique acquisitions), another one only for sheared geometries.
    """
    m = direction_matrix(image)
    normal = np.cross(m[:, 0], m[:, 1])
    itk_axis = int(np.argmax(np.abs(normal @ m)))
    return 2 - itk_axis


def geometry_3d(image: sitk.Image) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray, tuple[int, ...]]:
    """(origin, spacing, direction 3x3, size) of an image, a 2D one as a single slice."""
    size = tuple(int(s) for s in image.GetSize())
    origin = tuple(float(v) for v in image.GetOrigin())
    spacing = tuple(float(v) for v in image.GetSpacing())
    m = direction_matrix(image)
    if image.GetDimension() == 2:
        m3 = np.eye(3)
        m3[:2, :2] = m
        return origin + (0.0,), spacing + (1.0,), m3, size + (1,)
    return origin, spacing, m, size


def with_geometry(array: np.ndarray, reference: sitk.Image, vector: bool = False) -> sitk.Image:
    """A SimpleITK image of ``array`` (numpy order; components last when ``vector``)
    with the geometry of ``reference``."""
    image = sitk.GetImageFromArray(array, isVector=vector)
    if tuple(image.GetSize()) != tuple(reference.GetSize()):
        raise ValueError(f"output size {image.GetSize()} differs from the input's {reference.GetSize()}")
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    return image


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write with SimpleITK; write errors surface as OSError (see :mod:`.outputs`)."""
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    try:
        writer.Execute(image)
    except RuntimeError as exc:
        raise OSError(f"cannot write {Path(path).name} ({_first_line(exc)})") from None


def labels_from_masks(masks: np.ndarray, classes) -> np.ndarray:
    """One labelmap from per-class masks: pixels take the label of the last listed
    class that covers them. Here, torch-free, so that the web page saves with it too."""
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)
    for mask, c in zip(masks, classes):
        labels[mask.astype(bool)] = c.label
    return labels


# -- Slicer segmentation (.seg.nrrd) -------------------------------------------------------------

def _code_text(code) -> str:
    return f"{code.scheme}^{code.value}^{code.meaning}" if code is not None else "^^"


def terminology_entry(segment_class) -> str:
    """Slicer's terminology tag value for a card class (Slicer 5 serialisation:
    context~category~type~type modifier~anatomic context~region~region modifier)."""
    return (f"{TERMINOLOGY_CONTEXT}~{_code_text(segment_class.category)}~{_code_text(segment_class.type)}~^^"
            f"~{ANATOMIC_CONTEXT}~{_code_text(segment_class.anatomic_region)}~^^")


def _format_vector(values: Sequence[float]) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def _nrrd_value(text: str) -> str:
    return str(text).replace("\n", " ").replace("\r", " ")


def segmentation_metadata(classes, nonempty: Sequence[bool], size: Sequence[int], origin, spacing,
                          direction: np.ndarray, tags: Sequence[str | None] | None = None) -> dict[str, str]:
    """Slicer's segmentation header fields for one layer per class.

    ``size`` is the (i, j, k) size of the file; ``nonempty[i]`` whether layer
    i has a voxel set (an empty segment gets Slicer's empty extent). ``tags[i]``,
    when given and not None, is layer i's terminology entry as Slicer stores it
    (a corrected segmentation keeps the entries its segments have); otherwise
    the entry is made from the class's codes.
    """
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.asarray(spacing)[None, :]
    ijk_to_lps[:3, 3] = origin
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    extent_full = [0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1]
    geometry = ";".join(f"{v:.17g}" for v in ijk_to_ras.ravel()) + ";" + ";".join(map(str, extent_full)) + ";"
    meta = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ConversionParameters": (
            f"Reference image geometry|{geometry}|Image geometry description string determining the geometry "
            f"of the labelmap that is created in course of conversion. Can be copied from a volume, using "
            f"the button.&"),  # each parameter ends with '&': without it Slicer reads an empty geometry
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for i, c in enumerate(classes):
        extent = extent_full if nonempty[i] else [0, -1, 0, -1, 0, -1]
        entry = tags[i] if tags is not None and tags[i] else terminology_entry(c) if c.type is not None else None
        segment_tags = f"TerminologyEntry:{entry}|" if entry else "|"
        meta.update({
            f"Segment{i}_ID": f"Segment_{c.label}",
            f"Segment{i}_Name": c.name,
            f"Segment{i}_NameAutoGenerated": "0",
            f"Segment{i}_Color": " ".join(f"{v:.6g}" for v in c.color),
            f"Segment{i}_ColorAutoGenerated": "0",
            f"Segment{i}_Layer": str(i),
            f"Segment{i}_LabelValue": "1",
            f"Segment{i}_Extent": " ".join(map(str, extent)),
            f"Segment{i}_Tags": segment_tags,
        })
    return {k: _nrrd_value(v) for k, v in meta.items()}


def write_seg_nrrd(path: str | os.PathLike, masks: np.ndarray, reference: sitk.Image, classes,
                   tags: Sequence[str | None] | None = None) -> None:
    """Write a Slicer segmentation: one binary layer per class (overlaps allowed).

    ``masks`` is ``(N, *spatial)`` in numpy order ((N, H, W) for a 2D input,
    which becomes a single-slice volume). The file is a 4D NRRD, first axis the
    layer (kind ``list``), with the input's geometry in LPS space, gzip encoded,
    the layout Slicer's vtkMRMLSegmentationStorageNode writes.
    """
    origin, spacing, direction, _ = geometry_3d(reference)
    masks = np.asarray(masks, dtype=np.uint8)
    if masks.ndim == 3:
        masks = masks[:, None]  # (N, 1, H, W)
    # NRRD's first axis varies fastest: the bytes of a C-order (z, y, x, N) array are in
    # file axis order (N, x, y, z).
    data = np.ascontiguousarray(np.moveaxis(masks, 0, -1))
    sizes = [masks.shape[0], masks.shape[3], masks.shape[2], masks.shape[1]]
    nonempty = [bool(m.any()) for m in masks]
    meta = segmentation_metadata(classes, nonempty, sizes[1:], origin, spacing, direction, tags)
    columns = [direction[:, j] * spacing[j] for j in range(3)]
    header = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        "type: unsigned char",
        "dimension: 4",
        "space: left-posterior-superior",
        "sizes: " + " ".join(map(str, sizes)),
        "space directions: none " + " ".join(_format_vector(c) for c in columns),
        "kinds: list domain domain domain",
        "encoding: gzip",
        "space origin: " + _format_vector(origin),
    ]
    header += [f"{k}:={v}" for k, v in meta.items()]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n\n").encode("utf-8"))
        f.write(gzip.compress(data.tobytes(), compresslevel=6, mtime=0))  # same masks, same bytes
