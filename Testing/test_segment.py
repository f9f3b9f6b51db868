"""The pipeline from Python (no command line): slicing, batching, channels, mapping back."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GraTaSegmenterLib import imageio
from GraTaSegmenterLib.errors import InputError
from GraTaSegmenterLib.models import ModelCard, save_model
from GraTaSegmenterLib.models.fundus import FUNDUS_CLASSES
from GraTaSegmenterLib.models.unet import UNet
from GraTaSegmenterLib.imageio import labels_from_masks
from GraTaSegmenterLib.segment import Options, Segmenter, _Feeder, match_channels
from test_cli_support import fundus_like, tiny_2d_model, volume, write_picture, write_volume


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    return tiny_2d_model(tmp_path_factory.mktemp("m") / "m.safetensors")


def test_adaptation_batches_skip_constant_slices(tmp_path, model2d, monkeypatch):
    vol = volume((7, 16, 16), constant_first=False)
    vol[[0, 3, 6]] = 0.0
    loaded = imageio.read_image(write_volume(tmp_path / "v.nrrd", vol))
    seg = Segmenter(Options(model=str(model2d), steps=4, device="cpu", batch_size=2), log=lambda m: None)
    seen = []
    step = seg.method.step

    def spy(x):
        seen.append(x.clone())
        return step(x)

    monkeypatch.setattr(seg.method, "step", spy)
    prediction = seg.segment(loaded)
    assert len(seen) == 4 and all(x.shape[0] == 2 for x in seen)
    assert all(float(x.amax(dim=(1, 2, 3)).min()) > 0 for x in seen)  # no all-zero (constant) slice
    assert prediction.labels.shape == (7, 16, 16) and prediction.masks.shape == (2, 7, 16, 16)
    np.testing.assert_array_equal(prediction.labels, labels_from_masks(prediction.masks, FUNDUS_CLASSES))


def test_slice_axis_from_the_card(tmp_path):
    args = dict(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8))
    card = ModelCard(name="axis", architecture="unet", arguments=args, input_channels=1, spatial_dims=2,
                     output="sigmoid", classes=FUNDUS_CLASSES, input_size=None, slice_axis=2)
    path = save_model(UNet(**args), card, tmp_path / "axis.safetensors")
    loaded = imageio.read_image(write_volume(tmp_path / "v.nrrd", volume((5, 12, 9), constant_first=False)))
    seg = Segmenter(Options(model=str(path), method="none", device="cpu"))
    feeder = _Feeder(loaded.array, seg.card, 2, seg.size_multiple)
    assert len(feeder) == 9 and feeder.spatial == (5, 12) and feeder.net_size == (6, 12)
    prediction = seg.segment(loaded)
    assert prediction.labels.shape == (5, 12, 9)


def test_through_plane_axis_is_the_stored_slice_axis():
    img = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    assert imageio.through_plane_axis(img) == 0
    img.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # sagittal storage: still slice by stored slice
    assert imageio.through_plane_axis(img) == 0


def test_channels():
    logs = []
    loaded = imageio.LoadedImage(path=imageio.Path("g.png"), image=sitk.Image(4, 4, sitk.sitkUInt8),
                                 array=np.zeros((2, 4, 4), np.float32), kind="picture", suffix=".png")
    assert match_channels(loaded, 3, logs.append).shape == (3, 4, 4)  # grey + alpha -> grey -> RGB
    assert any("alpha" in m for m in logs) and any("repeated" in m for m in logs)
    rgb = imageio.LoadedImage(path=imageio.Path("c.nrrd"), image=sitk.Image(4, 4, sitk.sitkUInt8),
                              array=np.zeros((3, 4, 4), np.float32), kind="volume", suffix=".nrrd")
    with pytest.raises(InputError, match="the model expects 1 channel, the image has 3"):
        match_channels(rgb, 1, logs.append)


def test_prediction_is_mapped_back_to_the_input_grid(tmp_path, model2d):
    loaded = imageio.read_image(write_picture(tmp_path / "eye.png", fundus_like(37, 53)))
    seg = Segmenter(Options(model=str(model2d), steps=1, device="cpu", probabilities=True, uncertainty=True))
    p = seg.segment(loaded)
    assert p.labels.shape == (37, 53) and p.probabilities.shape == (2, 37, 53) and p.uncertainty.shape == (37, 53)
    np.testing.assert_array_equal(p.masks, (p.probabilities > 0.5).astype(np.uint8))
    assert len(p.records) == 1 and p.records[0]["global_step"] == 1


def test_default_batch_size_from_the_pixel_budget(tmp_path, model2d):
    seg = Segmenter(Options(model=str(model2d), method="none", device="cpu"))
    feeder = _Feeder(np.zeros((1, 200, 8, 8), np.float32), seg.card, 0, 4)
    assert seg._batch_size(feeder) == 64  # 32 x 32 slices: capped
    seg.card = seg.card.__class__(**{**seg.card.__dict__, "input_size": (512, 512)})
    feeder = _Feeder(np.zeros((1, 200, 8, 8), np.float32), seg.card, 0, 4)
    assert seg._batch_size(feeder) == 16


def test_episodic_mode_restarts_from_the_source(tmp_path, model2d):
    a = imageio.read_image(write_picture(tmp_path / "a.png", fundus_like(seed=1)))
    seg = Segmenter(Options(model=str(model2d), steps=2, device="cpu"))
    first = seg.segment(a)
    again = seg.segment(a)
    assert [r["cosine"] for r in first.records] == [r["cosine"] for r in again.records]
    np.testing.assert_array_equal(first.labels, again.labels)
    assert torch.get_num_threads() == 1


def test_volume_of_constant_slices_refused(tmp_path, model2d):
    vol = np.repeat(np.arange(4, dtype=np.float32)[:, None, None], 16, 1).repeat(16, 2)  # each slice flat
    loaded = imageio.read_image(write_volume(tmp_path / "flat.nrrd", vol))
    seg = Segmenter(Options(model=str(model2d), steps=1, device="cpu"), log=lambda m: None)
    with pytest.raises(InputError, match="every slice"):
        seg.segment(loaded)
