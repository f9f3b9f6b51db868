"""Hostile inputs, model files and options (issue: the command line under hostile
input): each case runs ``adapt --events`` in a child process (so a case that would
crash or hang the reader cannot take the test run with it) and asserts exit 2,
exactly one ``error`` event, last, whose message is stderr's, nothing partial on
disk and the inputs unchanged."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from GraTaSegmenterLib.slicer_support.parameters import engine_environment
from test_cli_support import checksum, fundus_like, parse_events, tiny_2d_model, write_picture

MODULE_DIR = Path(__file__).resolve().parents[1] / "GraTaSegmenter"


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    return tiny_2d_model(tmp_path_factory.mktemp("models") / "tiny2d.safetensors")


def run_child(args, timeout=120):
    """``python -m GraTaSegmenterLib.cli`` with bytes arguments allowed (file names that are not UTF-8)."""
    command = [os.fsencode(sys.executable), b"-m", b"GraTaSegmenterLib.cli",
               *[a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]]
    proc = subprocess.run(command, capture_output=True, timeout=timeout,
                          env=engine_environment(os.environ, MODULE_DIR))
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def assert_refused(args, inputs, outdir, kind, contains):
    before = {p: checksum(Path(os.fsdecode(p))) for p in inputs
              if Path(os.fsdecode(p)).is_file() or Path(os.fsdecode(p)).is_dir()}
    code, out, err = run_child(args)
    assert code == 2, (code, err)
    events = parse_events(out)
    assert [e["event"] for e in events].count("error") == 1 and events[-1]["event"] == "error", events
    assert events[-1]["kind"] == kind, events[-1]
    last = err.strip().splitlines()[-1]
    assert last.startswith("grata-segmenter: error: ") and events[-1]["message"] in last, err
    assert contains in last, last
    for p, digest in before.items():
        assert checksum(Path(os.fsdecode(p))) == digest
    outdir = Path(os.fsdecode(outdir))
    if outdir.exists():
        assert not [p for p in outdir.rglob("*") if ".partial-" in p.name], list(outdir.rglob("*"))
    return events[-1]


def _adapt(inputs, outdir, model, *extra):
    return ["adapt", *inputs, "-o", outdir, "--model", model, "--steps", "1", "--device", "cpu", "--events", *extra]


def test_file_name_that_is_not_utf8(tmp_path, model2d):
    name = os.fsencode(tmp_path) + b"/eye-\xff\xfe.png"
    os.rename(write_picture(tmp_path / "eye.png", fundus_like()), name)  # SimpleITK would abort on the name
    out = os.fsencode(tmp_path / "out")
    assert_refused(_adapt([name], out, model2d), [name], out, "InputError", "not valid UTF-8")
    assert not Path(os.fsdecode(out)).exists() or not list(Path(os.fsdecode(out)).iterdir())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_is_refused_not_read(tmp_path, model2d):
    fifo = tmp_path / "eye.png"
    os.mkfifo(fifo)
    assert_refused(_adapt([fifo], tmp_path / "out", model2d), [], tmp_path / "out", "InputError",
                   "not a regular file")


def test_dicom_folder_as_its_own_output_folder(tmp_path, model2d):
    from test_cli_support import write_dicom_series

    series = write_dicom_series(tmp_path / "series")
    listing = sorted(p.name for p in series.iterdir())
    assert_refused(_adapt([series], series, model2d), [series], tmp_path / "none", "ConfigurationError",
                   "inside the DICOM folder")
    assert sorted(p.name for p in series.iterdir()) == listing
    assert_refused(_adapt([series], series / "results", model2d), [series], tmp_path / "none",
                   "ConfigurationError", "inside the DICOM folder")
    assert sorted(p.name for p in series.iterdir()) == listing


@pytest.mark.parametrize("option,value,contains", [
    ("--seed", "18446744073709551616", "--seed: must be a whole number from 0 to 4294967295"),
    ("--seed", "-1", "--seed: must be a whole number"),
    ("--threads", "20000", "--threads: must be at most 256"),
    ("--threads", "0", "--threads: must be at least 1"),
    ("-o", "", "-o/--output: is empty"),
])
def test_out_of_range_options(tmp_path, model2d, option, value, contains):
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    assert_refused(_adapt([eye], tmp_path / "out", model2d, option, value), [eye], tmp_path / "out",
                   "UsageError", contains)


def _damaged_model(path: Path, model2d: Path, how: str) -> Path:
    from GraTaSegmenterLib.models import load_model, save_model

    net = load_model(model2d)
    state = net.state_dict()
    key = next(k for k in state if k.endswith("running_var"))
    weight = next(k for k, v in state.items() if k.endswith("weight") and v.ndim == 4)
    with torch.no_grad():
        if how == "nan weight":
            state[weight].view(-1)[0] = float("nan")
        elif how == "nan variance":
            state[key].view(-1)[0] = float("nan")
        elif how == "negative variance":
            state[key].view(-1)[0] = -1.0
    if how == "int8 weights":
        from safetensors.torch import save_file

        from GraTaSegmenterLib.models import FILE_FORMAT

        tensors = {k: (v.to(torch.int8) if k == weight else v).contiguous() for k, v in state.items()}
        save_file(tensors, str(path), metadata={"format": FILE_FORMAT, "card": net.card.to_json()})
        return path
    net.load_state_dict(state)
    return save_model(net, net.card, path)


@pytest.mark.parametrize("how,contains", [("nan weight", "NaN or infinite values"),
                                          ("nan variance", "NaN or infinite values"),
                                          ("negative variance", "negative variances"),
                                          ("int8 weights", "not floating point")])
def test_model_with_unusable_weights_is_refused_by_adapt_and_info(tmp_path, model2d, how, contains):
    bad = _damaged_model(tmp_path / "bad.safetensors", model2d, how)
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    assert_refused(_adapt([eye], tmp_path / "out", bad), [eye, os.fsencode(bad)], tmp_path / "out",
                   "ModelFileError", contains)
    code, _out, err = run_child(["info", bad])
    assert code == 2 and contains in err


def test_steps_file_is_json_even_when_a_step_is_not_finite(tmp_path):
    from GraTaSegmenterLib.outputs import write_jsonl

    path = tmp_path / "steps.jsonl"
    write_jsonl(path, [{"step": 1, "cosine": float("nan"), "lr": float("inf"), "loss": 0.5}])
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"step": 1, "cosine": None, "lr": None, "loss": 0.5}


def test_grey_image_of_a_model_of_one_channel_still_works(tmp_path):
    """Control case: the refusals above do not refuse a normal run."""
    model = tiny_2d_model(tmp_path / "grey.safetensors", in_channels=1)
    eye = write_picture(tmp_path / "eye.png", fundus_like()[..., 0], vector=False)
    code, out, err = run_child(_adapt([eye], tmp_path / "out", model))
    assert code == 0, err
    assert parse_events(out)[-1]["event"] == "done"


def test_abbreviated_options_are_not_taken_for_others(tmp_path, model2d):
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    code, out, err = run_child(["adapt", eye, "-o", tmp_path / "out", "--model", model2d, "--ev"])
    assert code == 2 and out == "" and "unrecognized arguments: --ev" in err


def test_grey_alpha_picture_is_read_and_its_alpha_dropped(tmp_path):
    from PIL import Image

    from GraTaSegmenterLib import imageio

    grey = fundus_like()[..., 0]
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "eye.png")
    loaded = imageio.read_image(tmp_path / "eye.png")
    assert loaded.channels == 2 and loaded.kind == "picture"
    np.testing.assert_array_equal(loaded.array[0], grey)
    model = tiny_2d_model(tmp_path / "m.safetensors")
    code, out, err = run_child(_adapt([tmp_path / "eye.png"], tmp_path / "out", model))
    assert code == 0, err
    assert "alpha channel dropped" in err and (tmp_path / "out" / "eye" / "labelmap.nrrd").is_file()


def test_a_stop_among_several_inputs_is_summarised_and_skip_existing_goes_on(tmp_path, model2d):
    a = write_picture(tmp_path / "a.png", fundus_like(seed=1))
    b = tmp_path / "b.png"
    b.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    c = write_picture(tmp_path / "c.png", fundus_like(seed=3))
    out = tmp_path / "out"
    code, stdout, err = run_child(["adapt", a, b, c, "-o", out, "--model", model2d, "--steps", "1",
                                   "--device", "cpu"])
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-2] == ("grata-segmenter: 1 of 3 results kept; stopped at b.png; not processed: c.png. Fix or "
                         "remove the input it stopped at, then run again with --skip-existing to go on.")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    kept = (out / "a" / "labelmap.nrrd").stat().st_mtime_ns
    write_picture(b, fundus_like(seed=2))  # the user fixes the file
    code, stdout, err = run_child(_adapt([a, b, c], out, model2d))
    assert code == 2 and "exists already" in err  # without the option nothing is replaced silently
    code, stdout, err = run_child(_adapt([a, b, c], out, model2d, "--skip-existing"))
    assert code == 0, err
    events = parse_events(stdout)
    assert [e["input"] for e in events if e["event"] == "output"] == [str(b), str(c)]
    assert "a.png: " in err and "skipped (--skip-existing)" in err
    assert (out / "a" / "labelmap.nrrd").stat().st_mtime_ns == kept
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c"]
    code, _, err = run_child(_adapt([a], out, model2d, "--skip-existing", "--overwrite"))
    assert code == 2 and "contradict" in err


def _with_card(path: Path, model2d: Path, change) -> Path:
    """The tiny model's weights under a card edited as JSON (as a hand-edited or foreign file would be)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(model2d), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    card = json.loads(meta["card"])
    change(card)
    save_file(tensors, str(path), metadata={**meta, "card": json.dumps(card)})
    return path


def _third_class(card):
    card["classes"].append(dict(card["classes"][1], name="rim", channel=2, label=3))


@pytest.mark.parametrize("change,contains", [
    (_third_class, "the card's classes need 3 output channels, the network has 2"),
    (lambda c: c.update(input_channels=9), "the card says 9 input channels, the network takes 3"),
    (lambda c: c["classes"][0].update(label=300), "from 1 to 255"),
    (lambda c: c["classes"][0].update(color="red"), "malformed model card"),
    (lambda c: c.update(input_size="256"), "input_size"),
    (lambda c: c.update(spatial_dims=3, input_size=[8, 32, 32]), "the card says 3D, the network is 2D"),
    (lambda c: c["classes"][0].update(channel="0"), "whole numbers"),
])
def test_model_card_that_does_not_match_its_network(tmp_path, model2d, change, contains):
    bad = _with_card(tmp_path / "bad.safetensors", model2d, change)
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    error = assert_refused(_adapt([eye], tmp_path / "out", bad), [eye], tmp_path / "out", "ModelFileError",
                           contains)
    assert error["input"] is None  # blamed on the model, before any input is read
    code, _out, err = run_child(["info", bad])
    assert code == 2 and contains in err


def test_output_folder_and_state_file_are_checked_before_the_work(tmp_path, model2d):
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    error = assert_refused(_adapt([eye], link, model2d), [eye], tmp_path / "none", "ConfigurationError",
                           "which does not exist")
    state = tmp_path / "missing" / "state.pt"
    events_before = assert_refused(_adapt([eye], tmp_path / "out", model2d, "--save-state", state), [eye],
                                   tmp_path / "out", "ConfigurationError", "the folder of --save-state")
    assert not (tmp_path / "out").exists()  # refused before any input was processed
    assert error["input"] is None and events_before["input"] is None


def _nifti(path: Path, nan: bool = False) -> Path:
    import SimpleITK as sitk

    from test_cli_support import volume

    array = volume((5, 20, 24), constant_first=False).astype(np.float32)
    if nan:
        array[2, 3, 4], array[3, 1, 1] = np.nan, np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_with_nan_or_cut_short_is_refused(tmp_path, model2d, suffix):
    import gzip

    grey = tiny_2d_model(tmp_path / "grey.safetensors", in_channels=1)
    nan = _nifti(tmp_path / f"nan{suffix}", nan=True)
    assert_refused(_adapt([nan], tmp_path / "out", grey), [nan], tmp_path / "out", "InputError",
                   "2 NaN or infinite value(s)")
    whole = _nifti(tmp_path / f"whole{suffix}")
    cut = tmp_path / f"cut{suffix}"
    if suffix == ".nii":
        cut.write_bytes(whole.read_bytes()[:-300])
    else:
        data = gzip.decompress(whole.read_bytes())
        cut.write_bytes(gzip.compress(data[:-300]))
    assert_refused(_adapt([cut], tmp_path / "out", grey), [cut], tmp_path / "out", "InputError", "truncated")
    code, out, err = run_child(_adapt([whole], tmp_path / "out", grey))
    assert code == 0, err


def test_dicom_series_with_a_truncated_file_is_refused(tmp_path, model2d):
    from test_cli_support import write_dicom_series

    series = write_dicom_series(tmp_path / "series", slices=6)
    victim = sorted(series.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:400])
    assert_refused(_adapt([series], tmp_path / "out", model2d), [series], tmp_path / "out", "InputError",
                   f"1 DICOM file(s) cannot be read and would be left out of the series ({victim.name})")


def test_degenerate_and_tiny_images(tmp_path):
    model = tiny_2d_model(tmp_path / "m.safetensors", input_size=(64, 64))
    one = write_picture(tmp_path / "one.png", fundus_like(1, 1))
    assert_refused(_adapt([one], tmp_path / "out", model), [one], tmp_path / "out", "InputError",
                   "one.png is 1 x 1 pixels, too small to segment (the model expects about 64 x 64)")
    small = write_picture(tmp_path / "small.png", fundus_like(6, 7))
    code, out, err = run_child(_adapt([small], tmp_path / "out", model))
    assert code == 0 and "far below the model's 64 x 64" in err


def test_exif_orientation_is_reported(tmp_path, model2d):
    from PIL import Image

    picture = Image.fromarray(fundus_like())
    exif = picture.getexif()
    exif[0x0112] = 6
    picture.save(tmp_path / "eye.jpg", exif=exif)
    code, out, err = run_child(_adapt([tmp_path / "eye.jpg"], tmp_path / "out", model2d))
    assert code == 0 and "EXIF orientation says 'rotate 90 degrees'" in err


def _signal_after(monkeypatch, target, attribute, signum, when=lambda *a, **k: True):
    """Wrap ``target.attribute`` so that the process signals itself right after the call."""
    import signal as _signal

    original = getattr(target, attribute)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(target, attribute, wrapped)
    return _signal


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_right_after_done_changes_nothing(tmp_path, model2d, monkeypatch, signum):
    import signal

    from GraTaSegmenterLib import events
    from test_cli_support import run_cli

    _signal_after(monkeypatch, events.EventWriter, "__call__", getattr(signal, signum),
                  when=lambda self, event, **fields: event == "done")
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    code, out, err = run_cli(_adapt([eye], tmp_path / "out", model2d))
    stream = parse_events(out)
    assert code == 0, err
    assert stream[-1]["event"] == "done" and not [e for e in stream if e["event"] == "error"]
    assert (tmp_path / "out" / "eye" / "labelmap.nrrd").is_file()


def test_a_signal_right_after_the_rename_still_announces_the_kept_folder(tmp_path, model2d, monkeypatch):
    import signal

    from GraTaSegmenterLib import outputs
    from test_cli_support import run_cli

    _signal_after(monkeypatch, outputs.StagedFolder, "commit", signal.SIGTERM)
    a = write_picture(tmp_path / "a.png", fundus_like(seed=1))
    b = write_picture(tmp_path / "b.png", fundus_like(seed=2))
    code, out, err = run_cli(_adapt([a, b], tmp_path / "out", model2d))
    stream = parse_events(out)
    assert code == 130
    # what is on disk is what the stream says: a's folder, announced; b never started
    assert [e["event"] for e in stream][-2:] == ["output", "error"] and stream[-2]["input"] == str(a)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]


def test_a_failing_state_save_leaves_no_result_folder(tmp_path, model2d, monkeypatch):
    from GraTaSegmenterLib.adaptation import methods
    from test_cli_support import run_cli

    def full_disk(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(methods.GraTa, "save_state", full_disk)
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    code, out, err = run_cli(_adapt([eye], tmp_path / "out", model2d, "--save-state", tmp_path / "s.pt"))
    stream = parse_events(out)
    assert code == 2 and stream[-1]["event"] == "error" and not [e for e in stream if e["event"] == "output"]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_late_ctrl_c_of_the_program_prints_no_traceback(tmp_path, model2d):
    """Run as the program, the handlers are set to ignore once main() has returned."""
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    script = ("import os, signal, sys\n"
              "from GraTaSegmenterLib import cli\n"
              f"sys.argv = ['grata-segmenter'] + {[str(a) for a in _adapt([eye], tmp_path / 'out', model2d)]!r}\n"
              "code = cli.main()\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=engine_environment(os.environ, MODULE_DIR))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("delay", [0.3, 0.7, 1.2, 2.0])
def test_sigterm_during_start_up_is_a_clean_cancel(tmp_path, model2d, delay):
    """While torch is being imported and the model loaded, cancelled as the panel does (SIGKILL
    1 s after the SIGTERM): exit 130 by itself, one Cancelled event, nothing left."""
    import signal
    import time

    eye = write_picture(tmp_path / "eye.png", fundus_like())
    command = [sys.executable, "-m", "GraTaSegmenterLib.cli", *map(str, _adapt([eye], tmp_path / "out", model2d))]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=engine_environment(os.environ, MODULE_DIR))
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=1.0)  # the Slicer panel's grace before its SIGKILL
    except subprocess.TimeoutExpired:
        proc.kill()
    out, err = proc.communicate(timeout=60)
    stream = parse_events(out)
    if proc.returncode == 0:  # it had finished already: then the stream says so
        assert stream[-1]["event"] == "done"
        return
    assert proc.returncode == 130, (proc.returncode, err)
    assert [e["event"] for e in stream].count("error") == 1 and stream[-1]["kind"] == "Cancelled", stream
    assert "internal error" not in err and "Traceback" not in err
    out_dir = tmp_path / "out"
    assert not out_dir.exists() or not [p for p in out_dir.iterdir() if ".partial-" in p.name]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_run_killed_while_writing_leaves_staging_that_the_next_run_removes(tmp_path, model2d):
    """SIGKILL (the panel's last resort) cannot be cleaned up after; the next run in the folder does it."""
    import signal
    import time

    eye = write_picture(tmp_path / "eye.png", fundus_like(1200, 1200))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "GraTaSegmenterLib.cli",
                             *map(str, _adapt([eye], out, model2d))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=engine_environment(os.environ, MODULE_DIR))
    end = time.monotonic() + 120
    while time.monotonic() < end and not (out.is_dir() and [p for p in out.iterdir() if ".partial-" in p.name]):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = [p.name for p in out.iterdir() if ".partial-" in p.name]
    if not left:
        pytest.skip("the run committed before the kill landed")
    other = write_picture(tmp_path / "other.png", fundus_like(seed=4))
    code, stdout, err = run_child(_adapt([other], out, model2d))
    assert code == 0, err
    assert f"removed {out / left[0]}, left by an earlier run that was killed" in err
    assert sorted(p.name for p in out.iterdir()) == ["other"]


_SLOW_WRITER = r"""
import runpy, sys
import numpy as np, SimpleITK as sitk
from GraTaSegmenterLib import imageio
noise = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 256, (11000, 11000), dtype=np.uint8))
real = imageio.write_image
def slow_write(image, path, compress=True):
    sitk.WriteImage(noise, str(path), True)  # seconds inside SimpleITK, as an 8000 x 8000 result takes
    real(image, path, compress)
imageio.write_image = slow_write
sys.argv = ["grata-segmenter", *sys.argv[1:]]
runpy.run_module("GraTaSegmenterLib.cli", run_name="__main__")
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_cancel_as_the_panel_does_it_is_honoured_inside_a_long_write(tmp_path, model2d):
    """SIGTERM, then SIGKILL 1 s later (the panel's Cancel) while SimpleITK is inside a write
    that takes seconds: the run still exits 130 by itself, with one Cancelled event and no
    staging folder left (before, the handler waited for the write and the kill left it)."""
    import signal
    import time

    eye = write_picture(tmp_path / "eye.png", fundus_like())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, *map(str, _adapt([eye], out, model2d))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=engine_environment(os.environ, MODULE_DIR))
    end = time.monotonic() + 120
    while time.monotonic() < end and proc.poll() is None and not list(out.glob(".eye.partial-*/labelmap.nrrd")):
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.2)  # well inside the write
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    stream = parse_events(stdout)
    assert [e["event"] for e in stream].count("error") == 1 and stream[-1]["kind"] == "Cancelled", stream
    assert "output" not in [e["event"] for e in stream]
    assert list(out.iterdir()) == []


# -- what reaches stderr: one line per thing to know, nothing the user cannot act on ----------

def _png_with_damaged_text_chunk(path: Path) -> Path:
    """A valid PNG plus a tEXt chunk with a wrong CRC: libpng reads the pixels and prints
    ``libpng warning: tEXt: CRC error`` on stderr, several times."""
    import io
    import struct

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(fundus_like()).save(buffer, format="PNG")
    data = buffer.getvalue()
    end_of_header = 8 + 4 + 4 + 13 + 4
    text = b"Comment\x00from a damaged camera export"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", 12345)
    path.write_bytes(data[:end_of_header] + chunk + data[end_of_header:])
    return path


def test_libpng_warnings_become_one_line(tmp_path, model2d):
    eye = _png_with_damaged_text_chunk(tmp_path / "eye.png")
    code, out, err = run_child(_adapt([eye], tmp_path / "out", model2d))
    assert code == 0, err
    assert "libpng warning" not in err
    assert [line for line in err.splitlines() if "reader warned" in line] == \
        ["grata-segmenter: eye.png: the reader warned: libpng: tEXt: CRC error"]


def _nrrd_with_axes(path: Path, directions: str) -> Path:
    raw = (np.random.default_rng(0).random((4, 16, 16)) * 100).astype(np.float32)
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 16 16 4\n"
              f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
              "space origin: (0,0,0)\n\n")
    path.write_bytes(header.encode("ascii") + raw.tobytes())
    return path


@pytest.mark.parametrize("directions,contains", [
    ("(0,0,0) (0,1,0) (0,0,1)", "its header gives a voxel spacing of 0 along an axis"),
    ("(1,0,0) (2,0,0) (0,0,1)", "axis directions that do not span space"),
])
def test_header_that_itk_refuses_is_named_not_called_incomplete(tmp_path, model2d, directions, contains):
    ct = _nrrd_with_axes(tmp_path / "ct.nrrd", directions)
    event = assert_refused(_adapt([ct], tmp_path / "out", model2d), [ct], tmp_path / "out", "InputError", contains)
    assert "complete" not in event["message"]


def test_sheared_nifti_is_named_not_called_incomplete(tmp_path, model2d):
    """ITK's NIfTI reader refuses a sheared sform (and warns about its scales first): one message
    naming the geometry, the warning not printed on its own."""
    import struct

    import SimpleITK as sitk

    plain = tmp_path / "plain.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)),
                    str(plain))
    header = bytearray(plain.read_bytes())
    struct.pack_into("<hh", header, 252, 0, 1)  # qform off, sform on
    for offset, row in ((280, (1, 0.5, 0, 0)), (296, (0, 1, 0, 0)), (312, (0, 0, 1, 0))):
        struct.pack_into("<4f", header, offset, *row)
    sheared = tmp_path / "sheared.nii"
    sheared.write_bytes(bytes(header))
    event = assert_refused(_adapt([sheared], tmp_path / "out", model2d), [sheared], tmp_path / "out", "InputError",
                           "sheared geometry")
    assert "complete" not in event["message"]


def test_file_name_the_plot_font_cannot_draw_gives_no_glyph_warnings(tmp_path, model2d):
    eye = write_picture(tmp_path / "眼底.png", fundus_like())
    code, out, err = run_child(_adapt([eye], tmp_path / "out", model2d))
    assert code == 0, err
    assert "Glyph" not in err and "UserWarning" not in err, err
    assert (tmp_path / "out" / "眼底" / "adaptation.png").is_file()


def test_state_file_with_code_is_refused_in_one_sentence_without_unsafe_advice(tmp_path, model2d):
    import pickle

    class Canary:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    state = tmp_path / "state.pt"
    state.write_bytes(pickle.dumps({"x": Canary()}))
    eye = write_picture(tmp_path / "eye.png", fundus_like())
    event = assert_refused(_adapt([eye], tmp_path / "out", model2d, "--load-state", state), [eye, state],
                           tmp_path / "out", "ConfigurationError", "it holds something other than plain tensors")
    assert not (tmp_path / "ran").exists()
    message = event["message"]
    assert "weights_only" not in message and "trust" not in message and len(message) < 400, message
    assert "start afresh without --load-state" in message and "reset the adaptation" not in message


def test_error_messages_carry_no_terminal_colour_codes():
    from GraTaSegmenterLib import cli

    assert cli._message(RuntimeError("\x1b[31mCUDA\x1b[0m error:\n  \x1b[1mdevice busy\x1b[0m")) == \
        "CUDA error: device busy"


def test_an_image_too_large_for_the_memory_is_refused_before_any_step_with_the_size_that_fits(tmp_path, model2d):
    """A header promising 100000 x 100000 RGB pixels (its data file empty: nothing is read):
    refused from the estimate, on the CPU without the GPU-only advice, before the start event."""
    huge = tmp_path / "huge.nhdr"
    (tmp_path / "huge.raw").write_bytes(b"")
    huge.write_text("NRRD0004\ntype: uchar\ndimension: 3\nsizes: 3 100000 100000\nkinds: vector domain domain\n"
                    "encoding: raw\ndata file: huge.raw\n", encoding="ascii")
    event = assert_refused(_adapt([huge], tmp_path / "out", model2d), [huge], tmp_path / "out", "OutOfMemory",
                           "huge.nhdr is 100000 x 100000: segmenting it needs about")
    message = event["message"]
    assert "downsample it to about" in message and "--device cpu" not in message and "--batch-size" not in message


def test_memory_estimate_names_the_size_that_fits():
    from GraTaSegmenterLib import memory

    per_pixel = memory.bytes_per_pixel(3, 2, False, False)
    assert per_pixel == 60  # measured 58-62 bytes per pixel for an RGB picture, two classes (memory.py)
    need = memory.estimate_bytes(20000 * 20000, 3, 2)
    assert need == memory.FIXED_BYTES + 400_000_000 * 60
    available = memory.FIXED_BYTES + 100_000_000 * 60  # room for a quarter of the pixels
    fitting = (available - memory.FIXED_BYTES) // per_pixel
    assert fitting == 100_000_000 and round((fitting / 400_000_000) ** 0.5, 3) == 0.5


_SIGNAL_TIMES = [(round(random.Random(seed).uniform(0.2, 6.0), 2), ("SIGTERM", "SIGINT")[seed % 2])
                 for seed in range(6)]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("delay,signame", _SIGNAL_TIMES)
def test_a_signal_at_a_random_moment_leaves_disk_and_stream_in_agreement(tmp_path, model2d, delay, signame):
    """Seeded random moments across start-up, steps, writing and commit, cancelled as the panel
    does (the signal, SIGKILL 1 s later): the run ends by itself, either cancelled (130, one
    Cancelled error event last, no result, nothing partial) or done (0, done last, the result
    complete and announced). benchmarks/cancel_timing.py tabulates the same on a large run."""
    import signal
    import time

    from GraTaSegmenterLib.outputs import is_complete_result

    eye = write_picture(tmp_path / "eye.png", fundus_like(300, 300))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "GraTaSegmenterLib.cli",
                             *map(str, _adapt([eye], out, model2d, "--steps", "4"))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=engine_environment(os.environ, MODULE_DIR))
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(getattr(signal, signame))
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
    stdout, err = proc.communicate(timeout=60)
    stream = parse_events(stdout)
    kinds = [e["event"] for e in stream]
    assert proc.returncode in (0, 130), (proc.returncode, err)
    if proc.returncode == 0:
        assert kinds[-1] == "done" and "error" not in kinds and "output" in kinds
        assert is_complete_result(out / "eye")
    else:
        assert kinds.count("error") == 1 and kinds[-1] == "error" and stream[-1]["kind"] == "Cancelled", stream
        assert "output" not in kinds and not (out / "eye").exists()
        assert "Traceback" not in err
    assert not out.exists() or not [p for p in out.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_the_program_ends_as_soon_as_done_is_written(tmp_path, model2d):
    """A Cancel that meets `done` (SIGTERM at once, SIGKILL 1 s later, as the panel does): the
    run ends by itself with exit 0. Before, the interpreter's teardown with torch loaded took
    about a second after `done`, and the kill could land on a finished run."""
    import signal

    eye = write_picture(tmp_path / "eye.png", fundus_like())
    proc = subprocess.Popen([sys.executable, "-m", "GraTaSegmenterLib.cli",
                             *map(str, _adapt([eye], tmp_path / "out", model2d))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=engine_environment(os.environ, MODULE_DIR))
    for line in proc.stdout:
        if json.loads(line)["event"] == "done":
            break
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert (tmp_path / "out" / "eye" / "segmentation.seg.nrrd").is_file()
