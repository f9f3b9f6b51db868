"""The child-process protocol end to end, exactly as the Slicer module launches it:
``[python, -m, GraTaSegmenterLib.cli, adapt, ..., --events]`` with the module's
environment, polled by AdaptRun; events parsed, outputs read, and a cancel
mid-run leaving no process and no output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GraTaSegmenterLib.slicer_support.parameters import AdaptParameters, adapt_command, engine_environment
from GraTaSegmenterLib.slicer_support.process import AdaptRun, RunState, group_members
from GraTaSegmenterLib.slicer_support.terminology import display_name, load_terms, match_term
from GraTaSegmenterLib.slicer_support.workspace import ContinualState, RunWorkspace

MODULE_DIR = Path(__file__).resolve().parents[1] / "GraTaSegmenter"


def _has_adapt() -> bool:
    try:
        out = subprocess.run([sys.executable, "-m", "GraTaSegmenterLib.cli", "adapt", "--help"],
                             capture_output=True, timeout=120, env=engine_environment(os.environ, MODULE_DIR))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _has_adapt(), reason="GraTaSegmenterLib.cli has no 'adapt' subcommand yet"),
              pytest.mark.skipif(os.name == "nt", reason="the tree-kill check reads POSIX process groups")]


@pytest.fixture
def model_file(tmp_path):
    from conftest import fundus_card
    from GraTaSegmenterLib.models import build_network, save_model

    card = fundus_card()
    return save_model(build_network(card), card, tmp_path / "tiny.safetensors")


def write_input(path: Path, size: int = 32, seed: int = 0) -> Path:
    """An RGB (vector) volume as the module writes it: uncompressed NRRD."""
    rng = np.random.default_rng(seed)
    rgb = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    image = sitk.GetImageFromArray(rgb, isVector=True)
    image.SetSpacing((0.1, 0.1))
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def run_to_end(run: AdaptRun, timeout: float = 300) -> list:
    events, end = [], time.monotonic() + timeout
    while run.state.busy and time.monotonic() < end:
        events += run.poll()
        time.sleep(0.05)
    return events


def test_a_run_streams_steps_and_writes_a_segmentation(model_file, tmp_path):
    ws = RunWorkspace(tmp_path)
    write_input(ws.input_path)
    params = AdaptParameters(steps=3, device="cpu", seed=0, uncertainty=True)
    cmd = adapt_command([sys.executable], ws.input_path, ws.output_dir, model_file, params)
    run = AdaptRun(cmd, env=engine_environment(os.environ, MODULE_DIR))
    run.start()
    events = run_to_end(run)
    assert run.state is RunState.Done, f"{run.failure}\n" + "\n".join(run.stderr_tail)
    kinds = [e.kind for e in events if e.kind != "log"]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 3
    assert run.progress.plot_steps == [1, 2, 3] and run.progress.total_steps == 3
    seg = Path(run.progress.outputs[-1]["segmentation"])
    assert seg.is_file() and seg.name.endswith(".seg.nrrd") and ws.output_dir in seg.parents
    image = sitk.ReadImage(str(seg))
    assert image.GetSize()[:2] == (32, 32)
    uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(run.progress.outputs[-1]["uncertainty"]))
    assert uncertainty.shape[-2:] == (32, 32) and 0 <= uncertainty.min() and uncertainty.max() <= 1
    # what the module's applyTerminology makes of the segments Slicer reads from this file
    terms = load_terms(MODULE_DIR / "Resources" / "Terminology" /
                       "SegmentationCategoryTypeModifier-GraTaSegmenter.term.json")
    count = sum(1 for k in image.GetMetaDataKeys() if re.fullmatch(r"Segment\d+_ID", k))
    named = {}
    for i in range(count):
        term = match_term(terms, image.GetMetaData(f"Segment{i}_Name"),
                          int(image.GetMetaData(f"Segment{i}_LabelValue")))
        named[display_name(term.name)] = term.type.value
    assert named == {"Optic disc": "81016008", "Optic cup": "OPTIC_DISC_CUP"}
    ws.cleanup()
    assert not ws.root.exists()


def launcher(tmp_path: Path) -> list[str]:
    """Like Slicer's PythonSlicer: a launcher that starts the interpreter as its
    child (no exec) and waits for it, so the tree has two processes."""
    script = tmp_path / "PythonSlicer"
    script.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\nexit $?\n', encoding="utf-8")
    script.chmod(0o755)
    return [str(script)]


@pytest.mark.parametrize("through_launcher", [False, True], ids=["interpreter", "launcher"])
def test_cancel_mid_run_leaves_no_process_and_no_output(model_file, tmp_path, through_launcher):
    ws = RunWorkspace(tmp_path)
    write_input(ws.input_path, size=64)
    params = AdaptParameters(steps=1000, device="cpu", seed=0)
    python = launcher(tmp_path) if through_launcher else [sys.executable]
    run = AdaptRun(adapt_command(python, ws.input_path, ws.output_dir, model_file, params),
                   env=engine_environment(os.environ, MODULE_DIR))
    run.start()
    end = time.monotonic() + 300
    while run.progress.global_step < 1 and run.state.busy and time.monotonic() < end:
        run.poll()
        time.sleep(0.02)
    assert run.state is RunState.Running, run.failure
    members = group_members(run.pid)
    if members is not None:
        assert len(members) == (2 if through_launcher else 1)
    t0 = time.monotonic()
    run.cancel()
    assert run.wait(5) is RunState.Failed and run.cancelled
    assert time.monotonic() - t0 < 2.0
    if not through_launcher:  # the engine cleaned up and exited by itself (130), it was not killed
        assert run.returncode == 130, run.returncode
    assert not run.tree_alive()
    assert not ws.output_dir.exists() or not any(ws.output_dir.iterdir())
    ws.cleanup()


def click(model_file: Path, image: Path, parent: Path, params: AdaptParameters, continual: ContinualState):
    """One Adapt & Segment click as GraTaSegmenterLogic.start/finish make it, without the scene:
    input copied into a fresh workspace, state loaded and saved aside, committed on success."""
    ws = RunWorkspace(parent)
    shutil.copy(image, ws.input_path)
    continual.follow((str(model_file), params.method))
    cmd = adapt_command([sys.executable], ws.input_path, ws.output_dir, model_file, params,
                        save_state=continual.pending_path, load_state=continual.load_path())
    run = AdaptRun(cmd, env=engine_environment(os.environ, MODULE_DIR))
    run.start()
    events = run_to_end(run)
    assert run.state is RunState.Done, run.failure
    assert continual.commit()
    ws.cleanup()
    return [e.get("cosine") for e in events if e.kind == "step"]


def test_continual_clicks_equal_one_continual_run_until_reset(model_file, tmp_path):
    a, b = write_input(tmp_path / "a.nrrd", seed=1), write_input(tmp_path / "b.nrrd", seed=2)
    params = AdaptParameters(steps=2, device="cpu", seed=5, mode="continual")
    whole_cmd = adapt_command([sys.executable], a, tmp_path / "whole", model_file, params)
    whole_cmd.insert(whole_cmd.index("-o"), str(b))
    whole = AdaptRun(whole_cmd, env=engine_environment(os.environ, MODULE_DIR))
    whole.start()
    whole_cosines = [e.get("cosine") for e in run_to_end(whole) if e.kind == "step"]
    assert whole.state is RunState.Done and len(whole_cosines) == 4

    state = ContinualState(tmp_path)
    first = click(model_file, a, tmp_path, params, state)
    second = click(model_file, b, tmp_path, params, state)
    assert first + second == whole_cosines  # the second click continued from the first, bit for bit
    state.reset()
    assert click(model_file, a, tmp_path, params, state) == first  # after Reset: from the source model again
    state.reset()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("GraTaSegmenter-")]  # no workspace left


def test_a_photo_as_slicer_saves_it_is_segmented_exactly_like_the_photo(model_file, tmp_path):
    """Slicer keeps a loaded PNG as a one-slice 3D vector volume (RAS, so an LPS file has a flipped
    direction) and the module saves that as NRRD: the engine must give the photo's own result."""
    from test_cli_support import fundus_like, write_picture

    rgb = fundus_like(40, 48, seed=4)
    png = write_picture(tmp_path / "photo.png", rgb)
    volume = sitk.GetImageFromArray(rgb[None], isVector=True)
    volume.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    nrrd = tmp_path / "input.nrrd"
    sitk.WriteImage(volume, str(nrrd), useCompression=False)
    labels = {}
    for path in (png, nrrd):
        params = AdaptParameters(steps=2, device="cpu", seed=0)
        run = AdaptRun(adapt_command([sys.executable], path, tmp_path / path.suffix[1:], model_file, params),
                       env=engine_environment(os.environ, MODULE_DIR))
        run.start()
        run_to_end(run)
        assert run.state is RunState.Done, run.failure
        result = sitk.ReadImage(run.progress.outputs[-1]["labelmap"])
        labels[path.suffix] = sitk.GetArrayFromImage(result)
        if path == nrrd:
            assert result.GetSize() == (48, 40, 1) and result.GetDirection() == volume.GetDirection()
    assert labels[".png"].any() and labels[".png"].shape == (40, 48)
    np.testing.assert_array_equal(labels[".nrrd"][0], labels[".png"])
