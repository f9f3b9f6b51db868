"""``grata-segmenter demo`` on a temporary samples folder and a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from test_cli_support import fundus_like, run_cli, tiny_2d_model
from GraTaSegmenterLib.demo import dice


def _samples(folder):
    folder.mkdir()
    yy, xx = np.mgrid[:40, :48]
    r = np.hypot(yy - 20, xx - 24)
    mask = np.full((40, 48), 255, np.uint8)
    mask[r < 10] = 128
    mask[r < 5] = 0
    for centre in ("B", "C"):
        for i in (0, 1):
            Image.fromarray(fundus_like(seed=i + ord(centre))).save(folder / f"phantom_{centre}_{i}.png")
            Image.fromarray(mask).save(folder / f"phantom_{centre}_{i}_mask.png")
    (folder / "README.txt").write_text("not a sample")
    return folder


def test_demo(tmp_path):
    samples = _samples(tmp_path / "samples")
    from GraTaSegmenterLib.models.fundus import FUNDUS_POSTPROCESS

    model = tiny_2d_model(tmp_path / "m.safetensors", postprocess=FUNDUS_POSTPROCESS)
    code, out, err = run_cli(["demo", "-o", tmp_path / "demo", "--samples", samples, "--model", model,
                              "--steps", "1", "--device", "cpu"])
    assert code == 0, err
    assert "mean Dice of disc and cup" in out and "B " in out and "C " in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text(encoding="utf-8"))
    assert summary["samples"] == 4 and set(summary["centres"]) == {"B", "C"}
    assert (tmp_path / "demo" / "summary.png").is_file()
    # an untrained network gives debris: post-processing leaves at most one component per mask
    comps = summary["mean_components_after"]
    assert all(c <= 1 for c in comps["grata"]) and "connected components per mask" in out
    assert "mean_dice_after_without_postprocessing" in summary
    assert (tmp_path / "demo" / "grata-raw" / "phantom_B_0" / "segmentation.seg.nrrd").is_file()
    assert {p.name for p in (tmp_path / "demo" / "grata").iterdir()} == {"phantom_B_0", "phantom_B_1",
                                                                         "phantom_C_0", "phantom_C_1"}
    # a second run needs --overwrite
    code, _, err = run_cli(["demo", "-o", tmp_path / "demo", "--samples", samples, "--model", model,
                            "--steps", "1", "--device", "cpu"])
    assert code == 2 and "--overwrite" in err


def test_demo_without_samples(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["demo", "--samples", tmp_path / "empty", "-o", tmp_path / "demo"])
    assert code == 2 and "no samples" in err


def test_dice_values():
    a = np.zeros((2, 4, 4), np.uint8)
    b = np.zeros((2, 4, 4), np.uint8)
    a[0, :2], b[0, :1] = 1, 1
    assert dice(a, b) == pytest.approx([2 * 4 / (8 + 4), 1.0])
