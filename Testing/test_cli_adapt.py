"""``grata-segmenter adapt``: round trips per input kind with non-trivial geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from GraTaSegmenterLib import imageio
from GraTaSegmenterLib.models.fundus import FUNDUS_CLASSES
from test_cli_support import (OBLIQUE_2D, assert_same_geometry, assert_slicer_reads, checksum, fundus_like, parse_events, 
                              run_cli, set_geometry, SOFTMAX_CLASSES, write_dicom_series, tiny_2d_model, tiny_3d_model, volume, write_picture,
                              write_volume)


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    return tiny_2d_model(tmp_path_factory.mktemp("models") / "tiny2d.safetensors")


def _adapt(inputs, outdir, model, *extra):
    code, out, err = run_cli(["adapt", *inputs, "-o", outdir, "--model", model, "--steps", "1", "--device", "cpu",
                              "--events", *extra])
    assert code == 0, err
    return parse_events(out), err


def _check_result(folder, loaded, n_classes=2, nifti=False, classes=FUNDUS_CLASSES):
    ref = loaded.image
    ext = ".nii.gz" if nifti else ".nrrd"
    labelmap = sitk.ReadImage(str(folder / f"labelmap{ext}"))
    assert labelmap.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(labelmap, ref)
    seg = sitk.ReadImage(str(folder / "segmentation.seg.nrrd"))
    origin, spacing, direction, size = imageio.geometry_3d(ref)
    assert seg.GetSize() == size and seg.GetNumberOfComponentsPerPixel() == n_classes
    np.testing.assert_allclose(seg.GetOrigin(), origin, atol=1e-5)
    np.testing.assert_allclose(seg.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(np.reshape(seg.GetDirection(), (3, 3)), direction, atol=1e-5)
    layers = sitk.GetArrayFromImage(seg)  # (z, y, x, N)
    labels = sitk.GetArrayFromImage(labelmap).reshape(layers.shape[:3])
    assert set(np.unique(layers)) <= {0, 1}
    assert set(np.unique(labels)) <= {0, 1, 2}
    # the labelmap is the layers painted in class order
    painted = np.zeros_like(labels)
    for i in range(n_classes):
        painted[layers[..., i] > 0] = i + 1
    np.testing.assert_array_equal(painted, labels)
    for name in ("steps.jsonl", "adaptation.png"):
        assert (folder / name).is_file()
    assert_slicer_reads(folder / "segmentation.seg.nrrd", ref, classes, layers)
    return labelmap, seg


@pytest.mark.parametrize("suffix,grey", [(".png", False), (".png", True), (".jpg", False), (".tif", True),
                                         (".bmp", False)])
def test_pictures(tmp_path, model2d, suffix, grey):
    rgb = fundus_like(seed=1)
    path = write_picture(tmp_path / f"eye{suffix}", rgb[..., 0] if grey else rgb, vector=not grey)
    before = checksum(path)
    events, err = _adapt([path], tmp_path / "out", model2d, "--probabilities", "--uncertainty")
    assert checksum(path) == before
    assert ("repeated to 3 channels" in err) == grey
    folder = tmp_path / "out" / "eye"
    _check_result(folder, imageio.read_image(path))
    assert (folder / "overlay.png").is_file()
    probs = sitk.ReadImage(str(folder / "probabilities.nrrd"))
    assert probs.GetNumberOfComponentsPerPixel() == 2 and probs.GetSize() == (48, 40)
    p = sitk.GetArrayFromImage(probs)
    assert 0 <= p.min() and p.max() <= 1
    u = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "uncertainty.nrrd")))
    assert u.shape == (40, 48) and 0 <= u.min() and u.max() <= 1
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "step", "output", "done"]
    assert set(events[2]["paths"]) == {"labelmap", "segmentation", "steps", "plot", "overlay", "probabilities",
                                       "uncertainty"}


def test_mha_2d_oblique_and_anisotropic(tmp_path, model2d):
    img = sitk.GetImageFromArray(fundus_like(36, 44), isVector=True)
    set_geometry(img, (0.3, 0.45), (-4.0, 17.5), OBLIQUE_2D)
    path = tmp_path / "eye.mha"
    sitk.WriteImage(img, str(path))
    _adapt([path], tmp_path / "out", model2d)
    _, seg = _check_result(tmp_path / "out" / "eye", imageio.read_image(path))
    assert seg.GetSize()[2] == 1  # a 2D input becomes a single-slice segmentation


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_scalar_volumes_slice_by_slice(tmp_path, model2d, suffix):
    path = write_volume(tmp_path / f"vol{suffix}", volume())
    before = checksum(path)
    events, err = _adapt([path], tmp_path / "out", model2d, "--batch-size", "2", "--uncertainty")
    assert checksum(path) == before
    assert "1 of 6 slices are constant" in err
    folder = tmp_path / "out" / "vol"
    nifti = suffix == ".nii.gz"
    _check_result(folder, imageio.read_image(path), nifti=nifti)
    assert not (folder / "overlay.png").exists()
    unc = sitk.ReadImage(str(folder / ("uncertainty.nii.gz" if nifti else "uncertainty.nrrd")))
    assert_same_geometry(unc, imageio.read_image(path).image, atol=1e-4)


def test_rgb_vector_volume(tmp_path, model2d):
    rgb = np.stack([fundus_like(20, 24, seed=i) for i in range(4)]).astype(np.uint8)  # (z, y, x, 3)
    path = write_volume(tmp_path / "rgbvol.nrrd", rgb, vector=True)
    _adapt([path], tmp_path / "out", model2d)
    _check_result(tmp_path / "out" / "rgbvol", imageio.read_image(path))


def test_dicom_series_folder(tmp_path, model2d):
    series = write_dicom_series(tmp_path / "series")
    before = checksum(series)
    _adapt([series], tmp_path / "out", model2d)
    assert checksum(series) == before
    loaded = imageio.read_image(series)
    assert loaded.kind == "dicom" and loaded.image.GetSize() == (24, 20, 4)
    _check_result(tmp_path / "out" / "series", loaded)


@pytest.mark.parametrize("input_size", [(8, 16, 16), None])
def test_3d_model_on_volume(tmp_path, input_size):
    model = tiny_3d_model(tmp_path / "tiny3d.safetensors", input_size=input_size)
    path = write_volume(tmp_path / "ct.nrrd", volume((6, 18, 22), constant_first=False))
    _adapt([path], tmp_path / "out", model, "--probabilities")
    folder = tmp_path / "out" / "ct"
    _check_result(folder, imageio.read_image(path), classes=SOFTMAX_CLASSES)
    probs = sitk.ReadImage(str(folder / "probabilities.nrrd"))
    assert probs.GetNumberOfComponentsPerPixel() == 2  # one per class (background not listed)


def test_segmentation_file_metadata(tmp_path, model2d):
    path = write_picture(tmp_path / "eye.png", fundus_like())
    _adapt([path], tmp_path / "out", model2d)
    seg = sitk.ReadImage(str(tmp_path / "out" / "eye" / "segmentation.seg.nrrd"))
    meta = {k: seg.GetMetaData(k) for k in seg.GetMetaDataKeys()}
    assert meta["NRRD_kinds[pixel]"] == "list"
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert meta["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert meta["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    for i, c in enumerate(FUNDUS_CLASSES):
        assert meta[f"Segment{i}_Name"] == c.name and meta[f"Segment{i}_Layer"] == str(i)
        assert [float(v) for v in meta[f"Segment{i}_Color"].split()] == pytest.approx(c.color)
        assert meta[f"Segment{i}_Tags"] == f"TerminologyEntry:{imageio.terminology_entry(c)}|"
        assert f"~{c.type.scheme}^{c.type.value}^{c.type.meaning}~" in meta[f"Segment{i}_Tags"]
    assert meta["Segment0_Tags"].startswith(
        "TerminologyEntry:Segmentation category and type - GraTaSegmenter~")
    for i in (0, 1):
        extent = [int(v) for v in meta[f"Segment{i}_Extent"].split()]
        assert extent in ([0, 47, 0, 39, 0, 0], [0, -1, 0, -1, 0, -1])


def test_two_inputs_same_stem_and_overwrite(tmp_path, model2d):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pa = write_picture(a / "eye.png", fundus_like(seed=2))
    pb = write_picture(b / "eye.png", fundus_like(seed=3))
    events, _ = _adapt([pa, pb], tmp_path / "out", model2d)
    outs = [e for e in events if e["event"] == "output"]
    assert [e["input_index"] for e in outs] == [0, 1]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"eye", "eye_2"}
    _adapt([pa, pb], tmp_path / "out", model2d, "--overwrite")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"eye", "eye_2"}


def test_steps_file_and_events_agree(tmp_path, model2d):
    path = write_picture(tmp_path / "eye.png", fundus_like())
    code, out, err = run_cli(["adapt", path, "-o", tmp_path / "out", "--model", model2d, "--steps", "2",
                              "--device", "cpu", "--events", "--method", "tent"])
    assert code == 0, err
    events = parse_events(out)
    steps = [e for e in events if e["event"] == "step"]
    records = [json.loads(line) for line in (tmp_path / "out" / "eye" / "steps.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records] == [1, 2] == [s["step"] for s in steps]
    assert records[0]["lr"] == pytest.approx(1e-4) and records[0]["cosine"] is None
    assert events[0]["total_steps"] == 2 and events[0]["method"] == "tent"


def test_without_events_prints_result_folders(tmp_path, model2d):
    path = write_picture(tmp_path / "eye.png", fundus_like())
    code, out, err = run_cli(["adapt", path, "-o", tmp_path / "out", "--model", model2d, "--steps", "1",
                              "--device", "cpu"])
    assert code == 0, err
    assert out.strip() == str((tmp_path / "out" / "eye").absolute())


def test_threads_option(tmp_path, model2d):
    import torch

    path = write_picture(tmp_path / "eye.png", fundus_like(seed=2))
    torch.set_num_threads(2)
    code, out, err = run_cli(["adapt", str(path), "-o", str(tmp_path / "out"), "--model", str(model2d),
                              "--steps", "1", "--threads", "1"])
    assert code == 0 and torch.get_num_threads() == 1
    code, out, err = run_cli(["adapt", str(path), "-o", str(tmp_path / "out2"), "--threads", "0"])
    assert code == 2 and "must be at least 1" in err
