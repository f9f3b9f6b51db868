"""Reading inputs and writing Slicer segmentation files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from GraTaSegmenterLib import imageio
from GraTaSegmenterLib.errors import InputError
from GraTaSegmenterLib.models.fundus import FUNDUS_CLASSES
from test_cli_support import OBLIQUE_2D, OBLIQUE_3D, set_geometry


def _seg_header(path):
    raw = open(path, "rb").read()
    head, _, data = raw.partition(b"\n\n")
    return head.decode().splitlines(), gzip.decompress(data)


def test_seg_nrrd_3d_layout_geometry_and_overlap(tmp_path):
    ref = set_geometry(sitk.Image(5, 4, 3, sitk.sitkFloat32), (0.5, 0.7, 2.0), (1.0, -2.0, 3.5), OBLIQUE_3D)
    masks = np.zeros((2, 3, 4, 5), np.uint8)
    masks[0, 1, 1:3, 1:4] = 1
    masks[1, 1, 2, 2] = 1  # the cup inside the disc: separate layers
    path = tmp_path / "s.seg.nrrd"
    imageio.write_seg_nrrd(path, masks, ref, FUNDUS_CLASSES)
    header, data = _seg_header(path)
    assert "kinds: list domain domain domain" in header and "sizes: 2 5 4 3" in header
    assert "space: left-posterior-superior" in header and len(data) == masks.size
    seg = sitk.ReadImage(str(path))
    assert seg.GetSize() == (5, 4, 3) and seg.GetNumberOfComponentsPerPixel() == 2
    np.testing.assert_allclose(seg.GetDirection(), OBLIQUE_3D, atol=1e-12)
    np.testing.assert_allclose(seg.GetSpacing(), (0.5, 0.7, 2.0))
    np.testing.assert_allclose(seg.GetOrigin(), (1.0, -2.0, 3.5))
    np.testing.assert_array_equal(np.moveaxis(sitk.GetArrayFromImage(seg), -1, 0), masks)
    assert seg.GetMetaData("Segment1_Extent") == "0 4 0 3 0 2"
    conv = seg.GetMetaData("Segmentation_ConversionParameters")
    assert conv.startswith("Reference image geometry|") and conv.split("|")[1].endswith(";0;4;0;3;0;2;")


def test_seg_nrrd_of_a_2d_image_is_a_single_slice(tmp_path):
    ref = set_geometry(sitk.Image(6, 4, sitk.sitkUInt8), (0.3, 0.4), (5.0, 6.0), OBLIQUE_2D)
    masks = np.zeros((2, 4, 6), np.uint8)
    path = tmp_path / "s.seg.nrrd"
    imageio.write_seg_nrrd(path, masks, ref, FUNDUS_CLASSES)
    seg = sitk.ReadImage(str(path))
    assert seg.GetSize() == (6, 4, 1)
    np.testing.assert_allclose(np.reshape(seg.GetDirection(), (3, 3))[:2, :2], np.reshape(OBLIQUE_2D, (2, 2)))
    assert seg.GetMetaData("Segment0_Extent") == "0 -1 0 -1 0 -1"  # empty segment, as Slicer writes it


def test_terminology_entry():
    cup = FUNDUS_CLASSES[1]
    cat, typ = cup.category, cup.type
    assert imageio.terminology_entry(cup) == (
        f"Segmentation category and type - GraTaSegmenter~{cat.scheme}^{cat.value}^{cat.meaning}"
        f"~{typ.scheme}^{typ.value}^{typ.meaning}~^^~Anatomic codes - DICOM master list~^^~^^")


def test_stems_and_suffixes(tmp_path):
    assert imageio.suffix_of("a/b.NII.GZ") == ".nii.gz" and imageio.stem_of("a/b.nii.gz") == "b"
    assert imageio.stem_of("x.seg.nrrd") == "x.seg" and imageio.stem_of(tmp_path) == tmp_path.name


def test_four_dimensional_image_refused(tmp_path):
    path = tmp_path / "t.nrrd"
    sitk.WriteImage(sitk.Image([5, 4, 3, 2], sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match="4D"):
        imageio.read_image(path)


def test_folder_without_dicom(tmp_path):
    with pytest.raises(InputError, match="without a DICOM series"):
        imageio.read_image(tmp_path)


def test_rgb_picture_is_channel_first(tmp_path):
    path = tmp_path / "c.png"
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 2] = 200
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    loaded = imageio.read_image(path)
    assert loaded.array.shape == (3, 4, 6) and loaded.array[2].max() == 200 and loaded.kind == "picture"


def test_seg_nrrd_bytes_depend_on_the_masks_only(tmp_path):
    """The gzip stream carries no time stamp: the same segmentation saved twice (the web page's
    overwrite, a researcher's rerun) gives the same bytes, whatever the clock says. (The web
    session's save-twice test failed when the two saves fell in different seconds.)"""
    ref = sitk.Image(6, 5, sitk.sitkUInt8)
    masks = np.zeros((2, 5, 6), np.uint8)
    masks[0, 1:4, 1:5] = 1
    path = tmp_path / "a.seg.nrrd"
    imageio.write_seg_nrrd(path, masks, ref, FUNDUS_CLASSES)
    data = path.read_bytes()
    stream = data[data.index(b"\n\n") + 2:]
    assert stream[:2] == b"\x1f\x8b" and stream[4:8] == b"\x00\x00\x00\x00"  # gzip magic, mtime 0
    _, layers = _seg_header(path)
    assert np.frombuffer(layers, np.uint8).sum() == 12
