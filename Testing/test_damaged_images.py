"""Damaged images of every format the command line reads: empty, cut in half, only the
first 64 bytes, or another format's bytes under the name. Each is refused with an
InputError that says what to do, or (another format's valid bytes: ITK reads by content)
read as the image it is; never read with invented pixels, never another exception."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from GraTaSegmenterLib import imageio
from GraTaSegmenterLib.errors import InputError
from test_cli_support import fundus_like

PICTURES = (".png", ".jpg", ".tif", ".bmp")
VOLUMES = (".nrrd", ".nii", ".nii.gz", ".mha")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("originals")
    picture = sitk.GetImageFromArray(fundus_like(64, 80), isVector=True)
    volume = sitk.GetImageFromArray((np.random.default_rng(0).random((6, 20, 24)) * 100).astype(np.float32))
    made = {}
    for suffix in PICTURES + VOLUMES:
        path = folder / f"good{suffix}"
        sitk.WriteImage(picture if suffix in PICTURES else volume, str(path), suffix in (".nrrd", ".mha", ".nii.gz"))
        made[suffix] = path.read_bytes()
    return made


@pytest.mark.parametrize("suffix", PICTURES + VOLUMES)
@pytest.mark.parametrize("damage", ["empty", "half", "first 64 bytes"])
def test_damaged_file_is_refused(tmp_path, originals, suffix, damage):
    data = originals[suffix]
    cut = {"empty": 0, "half": len(data) // 2, "first 64 bytes": 64}[damage]
    path = tmp_path / f"eye{suffix}"
    path.write_bytes(data[:cut])
    with pytest.raises(InputError) as refused:
        imageio.read_image(path)
    message = str(refused.value)
    assert message.startswith(f"eye{suffix}") and "\n" not in message
    assert any(word in message for word in ("truncated", "incomplete", "complete", "cannot be read", "no NIfTI"))
    assert path.read_bytes() == data[:cut]


@pytest.mark.parametrize("suffix", [s for s in PICTURES + VOLUMES if s not in (".png", ".nii", ".nii.gz")])
def test_another_formats_bytes_are_read_as_what_they_are(tmp_path, originals, suffix):
    path = tmp_path / f"eye{suffix}"
    path.write_bytes(originals[".png"])
    loaded = imageio.read_image(path)
    assert np.array_equal(loaded.array, imageio.read_image(_png(tmp_path, originals)).array)


def _png(tmp_path, originals):
    path = tmp_path / "real.png"
    path.write_bytes(originals[".png"])
    return path


def test_truncated_jpeg_and_bitmap_are_refused_by_the_command_line(tmp_path, originals):
    """Before: libjpeg filled the missing rows with grey (printing 'Premature end of JPEG file')
    and ITK's BMP reader with zeros, and both were segmented."""
    from test_cli_hostile import assert_refused, _adapt
    from test_cli_support import tiny_2d_model

    model = tiny_2d_model(tmp_path / "m.safetensors")
    for suffix in (".jpg", ".bmp"):
        path = tmp_path / f"cut{suffix}"
        path.write_bytes(originals[suffix][: len(originals[suffix]) // 2])
        event = assert_refused(_adapt([path], tmp_path / "out", model), [path], tmp_path / "out", "InputError",
                               f"cut{suffix} is truncated")
        assert "Premature" not in event["message"]
