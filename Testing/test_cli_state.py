"""Continual adaptation split over two runs with --save-state/--load-state equals one
uninterrupted run: same labelmaps, same final state (weights, optimiser, random generator)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from test_cli_support import fundus_like, parse_events, run_cli, tiny_2d_model, volume, write_picture, write_volume


def _run(inputs, outdir, model, *extra):
    code, out, err = run_cli(["adapt", *inputs, "-o", outdir, "--model", model, "--steps", "2", "--device", "cpu",
                              "--mode", "continual", "--seed", "3", "--batch-size", "2", "--events", *extra])
    assert code == 0, err
    return parse_events(out)


def _same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _labels(folder):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelmap.nrrd")))


def test_split_continual_run_equals_one_run(tmp_path):
    model = tiny_2d_model(tmp_path / "m.safetensors")
    a = write_picture(tmp_path / "a.png", fundus_like(seed=1))
    b = write_volume(tmp_path / "b.nrrd", volume((5, 20, 24), seed=2))  # slice batches drawn at random
    c = write_picture(tmp_path / "c.png", fundus_like(seed=3))

    whole = _run([a, b, c], tmp_path / "whole", model, "--save-state", tmp_path / "whole.pt")
    first = _run([a, b], tmp_path / "first", model, "--save-state", tmp_path / "half.pt")
    second = _run([c], tmp_path / "second", model, "--load-state", tmp_path / "half.pt",
                  "--save-state", tmp_path / "end.pt")

    assert whole[-2]["paths"]["state"] == str(tmp_path / "whole.pt")
    assert first[0]["total_steps"] == 4 and second[0]["total_steps"] == 2
    for name, part in (("a", "first"), ("b", "first"), ("c", "second")):
        np.testing.assert_array_equal(_labels(tmp_path / "whole" / name), _labels(tmp_path / part / name))
    # the adaptation really changed something between the source model and the end
    cos_whole = [e["cosine"] for e in whole if e["event"] == "step"]
    cos_split = [e["cosine"] for e in first + second if e["event"] == "step"]
    assert cos_whole == pytest.approx(cos_split, abs=0, rel=0)
    end = torch.load(tmp_path / "end.pt", weights_only=True)
    _same(torch.load(tmp_path / "whole.pt", weights_only=True), end)
    assert end["steps_done"] == 6
