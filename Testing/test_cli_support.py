"""Shared helpers of the command-line tests (no tests here): tiny model files,
test images with non-trivial geometry, running the CLI and reading results.

Kept tiny on purpose: 2-level U-Nets with 4/8 channels, images of a few
dozen pixels, one or two adaptation steps.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from GraTaSegmenterLib import cli, imageio
from GraTaSegmenterLib.events import validate
from GraTaSegmenterLib.models import ModelCard, save_model
from GraTaSegmenterLib.models.card import Code, SegmentClass
from GraTaSegmenterLib.models.fundus import FUNDUS_CLASSES
from GraTaSegmenterLib.models.unet import UNet

# On a few shared CPU cores, OpenMP threads spinning against other processes make
# tiny networks ~100x slower (3 s instead of 20 ms per step). One thread is fastest
# for these tiny models: the conftest sets it in this process, this environment in
# the child processes the tests start.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


OBLIQUE_3D = None  # filled below


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE_3D = tuple(rotation(0.2, -0.3, 0.4).ravel())
OBLIQUE_2D = tuple(np.array([[math.cos(0.5), -math.sin(0.5)], [math.sin(0.5), math.cos(0.5)]]).ravel())


def tiny_2d_model(path: Path, in_channels: int = 3, input_size=(32, 32), seed: int = 0, postprocess=()) -> Path:
    torch.manual_seed(seed)
    args = dict(spatial_dims=2, in_channels=in_channels, out_channels=2, channels=(4, 8))
    card = ModelCard(name="tiny fundus", architecture="unet", arguments=args, input_channels=in_channels,
                     spatial_dims=2, output="sigmoid", classes=FUNDUS_CLASSES, input_size=input_size,
                     postprocess=tuple(postprocess))
    return save_model(UNet(**args), card, path)


SOFTMAX_CLASSES = (
    SegmentClass(name="liver", channel=1, label=1, color=(0.86, 0.45, 0.35),
                 category=Code("SCT", "123037004", "Anatomical Structure"), type=Code("SCT", "10200004", "Liver")),
    SegmentClass(name="spleen", channel=2, label=2, color=(0.62, 0.35, 0.74),
                 category=Code("SCT", "123037004", "Anatomical Structure"), type=Code("SCT", "78961009", "Spleen")),
)


def tiny_3d_model(path: Path, input_size=(8, 16, 16), norm: str = "instance") -> Path:
    torch.manual_seed(0)
    args = dict(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8), norm=norm)
    card = ModelCard(name="tiny 3D", architecture="unet", arguments=args, input_channels=1, spatial_dims=3,
                     output="softmax", classes=SOFTMAX_CLASSES, input_size=input_size)
    return save_model(UNet(**args), card, path)


def fundus_like(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) with a bright disc: not constant, not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    base = np.stack([150 - r, 80 - r / 2, 40 + 0 * r], -1) + rng.normal(0, 8, (h, w, 3))
    base[r < min(h, w) / 5] += 80
    return np.clip(base, 0, 255).astype(np.uint8)


def volume(shape=(6, 20, 24), seed: int = 0, constant_first: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(100, 20, shape).astype(np.float32)
    if constant_first:
        v[0] = -1000.0  # air padding
    return v


def set_geometry(image: sitk.Image, spacing, origin, direction) -> sitk.Image:
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write_volume(path: Path, array: np.ndarray, vector: bool = False) -> Path:
    img = sitk.GetImageFromArray(array, isVector=vector)
    set_geometry(img, (0.7, 0.9, 2.5), (12.5, -30.0, 7.25), OBLIQUE_3D)
    sitk.WriteImage(img, str(path))
    return path


def write_picture(path: Path, array: np.ndarray, vector: bool = True) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


def checksum(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for f in files:
        digest.update(os.fsencode(f.name))
        digest.update(f.read_bytes())
    return digest.hexdigest()


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run ``grata-segmenter`` in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def parse_events(stdout: str) -> list[dict]:
    """Every stdout line must be one valid event."""
    events = []
    for line in stdout.splitlines():
        obj = json.loads(line)
        problems = validate(obj)
        assert not problems, (problems, line)
        events.append(obj)
    return events


def assert_same_geometry(image: sitk.Image, reference: sitk.Image, atol: float = 1e-5) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=atol)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=atol)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=atol)


def assert_no_leftovers(outdir: Path) -> None:
    """Nothing partial: no temporary folders, and no result folder at all."""
    if outdir.exists():
        assert list(outdir.iterdir()) == [], list(outdir.iterdir())


def assert_slicer_reads(seg_path: Path, reference: sitk.Image, classes, layers: np.ndarray) -> None:
    """Slicer's own vtkMRMLSegmentationStorageNode reads the file with the classes'
    names and colours, terminology that resolves in the extension's context, the
    input's geometry as reference geometry, and the same voxels per segment."""
    from slicer_runtime.segmentation_files import read_seg_nrrd, resolves

    read = read_seg_nrrd(seg_path)
    assert [s.name for s in read.segments] == [c.name for c in classes]
    for segment, c in zip(read.segments, classes):
        assert segment.color == pytest_approx(c.color)
        if c.type is not None:  # the fundus codes in the context named; others in some loaded context
            assert resolves(_terms(), segment.terminology, anywhere=c not in FUNDUS_CLASSES), segment.terminology
    assert read.reference_geometry, "Slicer reads no reference image geometry"
    origin, spacing, direction, size = imageio.geometry_3d(reference)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(spacing)[None, :]
    lps[:3, 3] = origin
    np.testing.assert_allclose(read.ijk_to_ras, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-6)
    assert read.extent == (0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    assert [s.voxels for s in read.segments] == [int(np.count_nonzero(layers[..., i])) for i in range(len(classes))]


def pytest_approx(values):
    import pytest

    return pytest.approx(tuple(float(v) for v in values), abs=1e-5)


_TERMS_CACHE: list = []


def _terms():
    from slicer_runtime.segmentation_files import terminology_logic

    if not _TERMS_CACHE:
        _TERMS_CACHE.append(terminology_logic())
    return _TERMS_CACHE[0]


def write_dicom_series(series: Path, slices: int = 4) -> Path:
    """A CT series of ``slices`` files (20 x 24, 0.8 x 0.6 mm, 2.5 mm apart) in ``series``."""
    series.mkdir(parents=True)
    vol = volume((slices, 20, 24), constant_first=False).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.1234567890"
    for k in range(vol.shape[0]):
        sl = sitk.GetImageFromArray(vol[k])
        for tag, value in [("0008|0060", "CT"), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                           ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"), ("0008|0018", f"{uid}.3.{k}"),
                           ("0020|0013", str(k + 1)), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0032", f"-10\\20\\{5 + 2.5 * k}"), ("0028|0030", "0.8\\0.6"),
                           ("0018|0050", "2.5")]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return series


# A stand-in engine for the front-ends: the events of a CPU run estimated at 25 minutes, then it waits
# (to be cancelled). The estimate event is GraTaSegmenterLib.cost's, as segment.py emits it.
SLOW_ENGINE = """
import json, sys, time
def emit(name, **fields):
    print(json.dumps({"event": name, "time": time.time(), **fields}), flush=True)
emit("start", version=1, inputs=["in.nrrd"], output_dir="out", model="m", model_name="an nnU-Net model",
     method="grata", mode="episodic", device="cpu", steps_per_input=10, total_steps=10)
emit("estimate", input_index=0, input="in.nrrd", seconds=1500.0, forward_seconds=8.7,
     prediction_seconds=939.6, device="cpu")
time.sleep(60)
"""


class Canary:
    """Unpickling this runs a shell command that creates ``path``: the side effect a model file
    carrying code would have (the loaders must refuse it without it happening)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))
