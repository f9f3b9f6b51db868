"""The run-time estimate and what the front-ends make of it (GraTaSegmenterLib.cost, RunProgress)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from GraTaSegmenterLib import cost, memory
from GraTaSegmenterLib.slicer_support.events import Event, RunProgress

ROOT = Path(__file__).resolve().parents[1]


def test_a_step_costs_the_passes_its_method_makes():
    assert cost.step_passes("none", 7) == cost.step_passes("bn", 7) == 0
    assert cost.step_passes("tent", 7) == cost.TRAIN_PASS
    assert cost.step_passes("grata", 7) == 2 * cost.TRAIN_PASS + 7
    estimate = cost.Estimate(forward_seconds=0.5, steps=10, passes_per_step=12.4, selection_passes=4,
                             prediction_passes=32)
    assert estimate.seconds == pytest.approx(0.5 * (124 + 4 + 32))
    assert estimate.prediction_seconds == pytest.approx(0.5 * 32)
    assert estimate.text() == ("about 80 s (a forward pass of one window takes 0.50 s; 10 steps of about 12 "
                               "passes each; prediction 32 passes)")
    cropped = cost.Estimate(forward_seconds=0.5, steps=10, passes_per_step=12.4, selection_passes=4,
                            prediction_passes=32, step_forward_seconds=0.25)  # the steps on a crop, timed apart
    assert cropped.seconds == pytest.approx(0.25 * 124 + 0.5 * (4 + 32))
    assert cropped.prediction_seconds == pytest.approx(0.5 * 32)
    assert "window takes 0.50 s; of the steps' crop 0.25 s; 10 steps" in cropped.text()


@pytest.mark.parametrize("seconds, text", [(0.2, "1 s"), (89.4, "89 s"), (90, "2 min"), (3599, "60 min"),
                                           (5400, "1 h 30 min"), (7260, "2 h 01 min")])
def test_durations_are_as_precise_as_an_estimate_deserves(seconds, text):
    assert cost.format_duration(seconds) == text


def progress_after(device: str, seconds: float, inputs=("a.nii.gz", "b.nii.gz"), prediction=None) -> RunProgress:
    progress = RunProgress()
    progress.update(Event("start", {"event": "start", "inputs": list(inputs), "device": device, "total_steps": 20,
                                    "steps_per_input": 10}))
    progress.update(Event("estimate", {"event": "estimate", "input_index": 0, "input": inputs[0],
                                       "seconds": seconds, "forward_seconds": 0.5, "device": device,
                                       **({"prediction_seconds": prediction} if prediction is not None else {})}))
    return progress


def test_a_cpu_run_of_minutes_is_announced_with_what_to_do():
    progress = progress_after("cpu", 150.0)  # 150 s for the first of two volumes: 5 min in all
    assert progress.estimate_seconds == 300
    assert progress.status_text() == "Step 0/20, about 5 min in all (estimated)"
    warning = progress.slow_warning()
    assert warning.startswith("This run will take about 5 min on the CPU") and "Cancel stops it" in warning
    # a later volume's estimate does not change the figure; the first step's time takes over
    progress.update(Event("estimate", {"event": "estimate", "seconds": 10.0}))
    assert progress.estimate_seconds == 300
    progress.update(Event("step", {"event": "step", "global_step": 1, "total_steps": 20, "seconds": 12.0}))
    assert progress.status_text() == "Step 1/20, 3 min 48 s left"


def test_views_per_pass_are_those_whose_step_fits_the_free_memory():
    """Each further view in a pass holds VIEW_PEAK x the kept activations more (measured on an H200:
    seven views per pass 3.6-3.9x, one 1.2-1.3x): the count is the most whose step fits."""
    mib = 1 << 20
    saved = 100 * mib  # one view: 300 MiB; every further one 50 MiB
    assert memory.step_bytes("grata", saved, 1) == 300 * mib and memory.step_bytes("grata", saved, 7) == 600 * mib
    assert memory.step_bytes("tent", saved, 7) == 200 * mib  # TENT has no views
    assert memory.views_per_pass(7, available=1000 * mib, method="grata", saved=saved, default=3) == 7
    assert memory.views_per_pass(7, available=600 * mib, method="grata", saved=saved, default=3) == 7
    assert memory.views_per_pass(7, available=599 * mib, method="grata", saved=saved, default=3) == 6
    assert memory.views_per_pass(7, available=449 * mib, method="grata", saved=saved, default=3) == 3
    assert memory.views_per_pass(2, available=1000 * mib, method="grata", saved=saved, default=3) == 2
    assert memory.views_per_pass(7, available=250 * mib, method="grata", saved=saved, default=3) == 1
    assert memory.views_per_pass(7, available=None, method="grata", saved=saved, default=3) == 3
    assert memory.views_per_pass(2, available=None, method="grata", saved=0, default=3) == 2
    for available in (250, 449, 599, 600, 1000):  # what is chosen fits, unless even one view does not
        k = memory.views_per_pass(7, available=available * mib, method="grata", saved=saved, default=3)
        assert memory.step_bytes("grata", saved, k) <= available * mib or k == 1


def test_the_time_left_counts_the_predictions_still_to_come():
    """nnU-Net's prediction with mirroring often takes longer than the steps: the time left holds the
    prediction of every volume not yet written, from the estimate."""
    progress = progress_after("cpu", 150.0, prediction=60.0)
    progress.update(Event("step", {"event": "step", "global_step": 1, "total_steps": 20, "seconds": 5.0}))
    assert progress.seconds_left() == pytest.approx(19 * 5.0 + 2 * 60.0)
    for step in range(2, 11):
        progress.update(Event("step", {"event": "step", "global_step": step, "total_steps": 20, "seconds": 5.0}))
    progress.update(Event("output", {"event": "output", "input_index": 0, "input": "a.nii.gz", "paths": {}}))
    assert progress.seconds_left() == pytest.approx(10 * 5.0 + 60.0)
    assert progress.status_text() == "Step 10/20, 1 min 50 s left"
    without = progress_after("cpu", 150.0)  # an engine that does not say: the steps alone
    without.update(Event("step", {"event": "step", "global_step": 1, "total_steps": 20, "seconds": 5.0}))
    assert without.seconds_left() == pytest.approx(19 * 5.0)


@pytest.mark.parametrize("device, seconds", [("cpu", 50.0), ("cuda:0 (NVIDIA H200, 139 GiB)", 600.0)])
def test_short_runs_and_gpu_runs_are_not_warned_about(device, seconds):
    assert progress_after(device, seconds).slow_warning() is None


def test_the_front_ends_read_the_estimate_without_loading_torch():
    code = ("import sys; import GraTaSegmenterLib.cost, GraTaSegmenterLib.slicer_support.events, "
            "GraTaSegmenterLib.slicer_support.process; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "GraTaSegmenter", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- memory of a step: counted on the meta device, refused before the first step -------------------------

def test_the_activations_kept_for_the_backward_pass_are_counted_without_memory():
    import torch
    from torch import nn


    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU())
    for p in net[0].parameters():
        p.requires_grad_(False)  # as adaptation leaves them: only the norm's affine parameters learn
    x = torch.rand(1, 1, 8, 8, 8)
    one_map = 4 * 8 ** 3 * 4  # a (1, 4, 8, 8, 8) float32 activation
    saved = memory.saved_activation_bytes(net, x)
    assert 2 * one_map <= saved <= 4 * one_map  # the norm's input and the activation's, a little more
    assert memory.saved_activation_bytes(net, torch.rand(1, 1, 16, 16, 16)) == pytest.approx(8 * saved, rel=0.05)
    for p in net.parameters():
        p.requires_grad_(False)
    assert memory.saved_activation_bytes(net, x) == 0  # nothing learns: nothing is kept
    assert next(net.parameters()).device.type == "cpu"  # the network itself was not moved


def test_a_step_too_large_for_the_memory_runs_on_the_largest_centre_crop_that_fits():
    """Each axis a multiple of the network's stride, all shrinking together in 5 % steps, never
    below half the window; crops the network cannot take are passed over; None where none fits."""
    import torch

    per_voxel = 10
    need = lambda shape: per_voxel * shape[0] * shape[1] * shape[2]  # noqa: E731 - a step's bytes, linear in voxels
    whole = need((20, 80, 80))
    assert memory.adaptation_crop((20, 80, 80), (4, 16, 16), need, whole) == (16, 64, 64)  # the first step down
    assert memory.adaptation_crop((20, 80, 80), (4, 16, 16), need, need((16, 64, 64)) - 1) == (12, 48, 48)
    assert memory.adaptation_crop((20, 80, 80), (4, 16, 16), need, need((12, 48, 48)) - 1) is None  # half: no less
    fine = memory.adaptation_crop((128, 128, 128), (1, 1, 1), need, need((128, 128, 128)) // 2)
    assert fine == (96, 96, 96) and need(fine) <= need((128, 128, 128)) // 2 < need((102, 102, 102))
    refused = lambda shape: None if shape == (16, 64, 64) else need(shape)  # noqa: E731 - a shape the net refuses
    assert memory.adaptation_crop((20, 80, 80), (4, 16, 16), refused, whole) == (12, 48, 48)
    x = torch.arange(2 * 20 * 80 * 80, dtype=torch.float32).reshape(1, 2, 20, 80, 80)
    crop = memory.centre_crop(x, (12, 48, 48))
    assert crop.shape == (1, 2, 12, 48, 48) and torch.equal(crop, x[:, :, 4:16, 16:64, 16:64])


def test_a_step_that_cannot_fit_is_refused_with_what_to_do():
    from GraTaSegmenterLib.errors import OutOfMemory

    assert memory.step_bytes("grata", 100 << 20) == 300 << 20 and memory.step_bytes("none", 100 << 20) == 0
    memory.check_step_fits(300 << 20, 1 << 30, (20, 80, 80), "cpu")
    memory.check_step_fits(300 << 20, None, (20, 80, 80), "cpu")  # nothing known: nothing refused
    with pytest.raises(OutOfMemory, match=r"an adaptation step of this model on its 128 x 128 x 128 windows needs "
                                          r"about 3\.0 GiB of memory and 1\.0 GiB is free on cpu; use --method none"):
        memory.check_step_fits(3 << 30, 1 << 30, (128, 128, 128), "cpu")
