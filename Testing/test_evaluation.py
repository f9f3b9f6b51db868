"""The benchmark harness: metrics an oracle must ace, protocols that do what
they say, and a quick end-to-end run of the benchmark script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from GraTaSegmenterLib import fundus_layout
from GraTaSegmenterLib.evaluation import evaluate_stream, image_metrics, segmentation_metrics
from GraTaSegmenterLib.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _square_masks(size=32):
    mask = np.zeros((2, size, size), dtype=bool)
    mask[0, 8:18, 8:18] = True
    mask[1, 10:15, 10:15] = True
    return torch.from_numpy(mask)


def test_oracle_scores_dice_100_and_distance_0():
    mask = _square_masks()
    metrics = segmentation_metrics(mask, mask)
    assert metrics == {"disc_dice": 100.0, "disc_asd": 0.0, "cup_dice": 100.0, "cup_asd": 0.0}


def test_known_overlap_and_empty_prediction():
    target = _square_masks()
    shifted = torch.roll(target, 1, dims=2)  # one pixel right: 90 of 100 disc pixels overlap
    metrics = segmentation_metrics(shifted, target)
    assert metrics["disc_dice"] == pytest.approx(90.0)
    assert metrics["cup_dice"] == pytest.approx(80.0)
    assert 0 < metrics["disc_asd"] <= 1.0
    empty = segmentation_metrics(torch.zeros_like(target), target)
    assert empty["disc_dice"] == 0.0 and np.isnan(empty["disc_asd"])


def _cases(n=3, size=32):
    rng = np.random.default_rng(0)
    images = [rng.random((3, size, size), dtype=np.float32) for _ in range(n)]
    masks = [_square_masks(size).numpy().astype(np.uint8) for _ in range(n)]
    return images, masks, [f"case{i}" for i in range(n)]


def test_none_reproduces_the_source_model(fundus_model_file):
    images, masks, names = _cases()
    run = evaluate_stream(fundus_model_file, "none", images, masks, names)
    model = load_model(fundus_model_file)
    for image, mask, result in zip(images, masks, run.images):
        with torch.no_grad():
            pred = torch.sigmoid(model(torch.from_numpy(image)[None]))[0] > 0.5
        expected = image_metrics(pred, torch.from_numpy(mask).bool(), model.card)
        np.testing.assert_equal(result.metrics, expected)
        scores = segmentation_metrics(pred, torch.from_numpy(mask).bool())
        assert {k: result.metrics[k] for k in scores} == pytest.approx(scores, nan_ok=True)


def test_continual_carries_and_episodic_resets(fundus_model_file):
    images, masks, names = _cases()
    same = [images[0]] * 3
    continual = evaluate_stream(fundus_model_file, "grata", same, masks, names, steps=[1])
    episodic = evaluate_stream(fundus_model_file, "grata", same, masks, names, protocol="episodic", steps=[1, 2])
    cos_c = [r["cosine"] for r in continual.records]
    cos_e = [r["cosine"] for r in episodic.records]
    assert len(cos_c) == 3 and len(set(np.round(cos_c, 12))) == 3  # the model moves on
    assert len(cos_e) == 6 and cos_e[0] == cos_e[2] == cos_e[4]  # reset: same image, same first step
    assert [r.steps for r in episodic.images] == [1, 2] * 3
    assert episodic.summary(2)["mean_dice"]["n"] == 3


def test_benchmark_script_quick_run(tmp_path, fundus_model_file):
    import fundus_benchmark

    root = tmp_path / "data"
    for centre in "AB":
        fundus_layout.export_centre(root, centre, "test", 2, seed=1, size=64)
    out = tmp_path / "out"
    assert fundus_benchmark.main([
        "--data-root", str(root), "--model", str(fundus_model_file), "--targets", "Phantom_B",
        "--methods", "none", "grata", "--episodic-methods", "grata", "--episodic-steps", "1", "2",
        "--episodic-limit", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["method"] for r in results["paper"]] == ["none", "grata"]
    assert results["source"]["mean_dice"]["n"] == 2
    assert set(results["episodic"][0]["by_steps"]) == {"1", "2"}
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "| grata |" in table and "episodic" in table
    for name in ("bars_per_target.png", "dice_vs_steps.png", "cosine_lr_traces.png"):
        assert (out / name).stat().st_size > 1000

    merged = tmp_path / "merged"
    assert fundus_benchmark.main(["--merge", str(out / "results.json"), "--out", str(merged)]) == 0
    assert (merged / "table.md").read_text(encoding="utf-8") == table
