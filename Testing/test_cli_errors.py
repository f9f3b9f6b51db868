"""Every error path of ``adapt``: exit status, one message, an ``error`` event, no
partial output, the input unchanged."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GraTaSegmenterLib import imageio
from GraTaSegmenterLib.adaptation.methods import GraTa
from test_cli_support import (assert_no_leftovers, checksum, fundus_like, parse_events, run_cli, tiny_2d_model, 
                              write_picture, write_volume)


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    return tiny_2d_model(tmp_path_factory.mktemp("models") / "tiny2d.safetensors")


def _fails(inputs, outdir, model, *extra, kind, code=2, contains=""):
    before = {str(p): checksum(p) for p in inputs if p.exists()}
    rc, out, err = run_cli(["adapt", *inputs, "-o", outdir, "--model", model, "--steps", "1", "--device", "cpu",
                            "--events", *extra])
    assert rc == code, err
    # one error message, the last line (informational lines such as "grey image repeated" may precede it)
    lines = err.strip().splitlines()
    assert sum("error" in line for line in lines) == 1, err
    assert lines[-1].startswith("grata-segmenter: error: "), err
    events = parse_events(out)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == kind, events[-1]
    assert events[-1]["message"] in lines[-1]
    assert contains in lines[-1]
    for p, digest in before.items():
        assert checksum(p) == digest
    return events[-1]


def test_unreadable_file(tmp_path, model2d):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    error = _fails([bad], tmp_path / "out", model2d, kind="InputError", contains="cannot be read")
    assert error["input"] == str(bad)
    assert_no_leftovers(tmp_path / "out")


def test_unsupported_format(tmp_path, model2d):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    _fails([txt], tmp_path / "out", model2d, kind="InputError", contains="not a supported format")
    assert not (tmp_path / "out").exists()


def test_missing_input(tmp_path, model2d):
    _fails([tmp_path / "nowhere.png"], tmp_path / "out", model2d, kind="InputError", contains="does not exist")


def test_wrong_channel_count(tmp_path):
    model = tiny_2d_model(tmp_path / "grey.safetensors", in_channels=1)
    path = write_picture(tmp_path / "eye.png", fundus_like())
    _fails([path], tmp_path / "out", model, kind="InputError",
           contains="the model expects 1 channel, the image has 3")
    assert_no_leftovers(tmp_path / "out")


def test_nan_and_inf(tmp_path, model2d):
    vol = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    vol[1, 2, 3] = np.nan
    vol[2, 0, 0] = np.inf
    path = write_volume(tmp_path / "nan.nrrd", vol)
    _fails([path], tmp_path / "out", model2d, kind="InputError", contains="NaN or infinite")
    assert_no_leftovers(tmp_path / "out")


def test_constant_image(tmp_path, model2d):
    path = write_picture(tmp_path / "flat.png", np.full((20, 20, 3), 7, np.uint8))
    _fails([path], tmp_path / "out", model2d, kind="InputError", contains="constant")
    assert_no_leftovers(tmp_path / "out")


def test_existing_output_refused(tmp_path, model2d):
    path = write_picture(tmp_path / "eye.png", fundus_like())
    (tmp_path / "out" / "eye").mkdir(parents=True)
    (tmp_path / "out" / "eye" / "mine.txt").write_text("keep me")
    _fails([path], tmp_path / "out", model2d, kind="OutputExists", contains="--overwrite")
    assert (tmp_path / "out" / "eye" / "mine.txt").read_text(encoding="utf-8") == "keep me"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["eye"]


def test_result_folder_must_not_replace_an_input(tmp_path, model2d):
    series = tmp_path / "series"
    series.mkdir()
    (series / "x.dcm").write_bytes(b"")
    _fails([series], tmp_path, model2d, "--overwrite", kind="ConfigurationError", contains="would replace the input")
    assert (series / "x.dcm").exists()


def test_bad_model_file(tmp_path):
    path = write_picture(tmp_path / "eye.png", fundus_like())
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"0123456789abcdef" * 8)
    _fails([path], tmp_path / "out", junk, kind="ModelFileError", contains="not a model file")
    assert not (tmp_path / "out").exists()


def test_disk_full(tmp_path, model2d, monkeypatch):
    path = write_picture(tmp_path / "eye.png", fundus_like())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imageio, "write_seg_nrrd", full)
    _fails([path], tmp_path / "out", model2d, kind="DiskFull", contains="is full")
    assert_no_leftovers(tmp_path / "out")


def test_out_of_memory(tmp_path, model2d, monkeypatch):
    path = write_volume(tmp_path / "vol.nrrd", np.random.default_rng(0).normal(size=(4, 16, 16)).astype(np.float32))

    def oom(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(GraTa, "_step", oom)
    error = _fails([path], tmp_path / "out", model2d, kind="OutOfMemory", contains="downsample the image")
    assert "--device cpu" not in error["message"]  # on the CPU already: the GPU advice would mislead
    assert_no_leftovers(tmp_path / "out")


def test_second_input_failing_keeps_the_first_result(tmp_path, model2d):
    good = write_picture(tmp_path / "good.png", fundus_like())
    flat = write_picture(tmp_path / "flat.png", np.zeros((20, 20, 3), np.uint8))
    error = _fails([good, flat], tmp_path / "out", model2d, kind="InputError")
    assert error["input"] == str(flat)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good"]


def test_usage_error_is_an_event_too(tmp_path, model2d):
    rc, out, err = run_cli(["adapt", "-o", tmp_path / "out", "--events", "--steps", "many"])
    assert rc == 2 and "invalid int value" in err
    assert json.loads(out)["kind"] == "UsageError"


def test_state_options_need_a_gradient_method(tmp_path, model2d):
    path = write_picture(tmp_path / "eye.png", fundus_like())
    _fails([path], tmp_path / "out", model2d, "--method", "bn", "--save-state", tmp_path / "s.pt",
           kind="ConfigurationError", contains="--save-state")


def test_two_d_image_with_a_three_d_model(tmp_path):
    from test_cli_support import tiny_3d_model

    model = tiny_3d_model(tmp_path / "m3.safetensors")
    path = write_picture(tmp_path / "eye.png", fundus_like()[..., 0], vector=False)
    _fails([path], tmp_path / "out", model, kind="InputError", contains="the model is 3D")
    assert sitk.ReadImage(str(path)).GetDimension() == 2
