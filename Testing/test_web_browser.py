"""The web page in a real browser: ``grata-segmenter web`` started as a user starts it,
Debian's chromium driven by Playwright (no browser download), real clicks and
mouse strokes on Slicer's slice view, the saved files read back as Slicer reads them.

Screenshots are written to ``$GRATA_SCREENSHOTS`` when it is set (``make
web-screenshots`` sets it to the top-level ``Resources/``, which the README shows).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -e '.[web]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the web extra)")

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "GraTaSegmenter" / "GraTaSegmenterLib" / "samples" / "phantom_B_0.png"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                 reason=f"no {CHROMIUM} (apt-get install chromium; .ci/run installs it)"),
              pytest.mark.skipif(os.name != "posix", reason="the server is stopped with SIGTERM")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    shutil.copy(SAMPLE, folder / "eye.png")
    (folder / "broken.png").write_bytes(SAMPLE.read_bytes()[:300])
    return folder


@pytest.fixture(scope="module")
def server(data_dir):
    """The server as a user starts it, on a free port of 127.0.0.1; stopped with SIGTERM."""
    port = _free_port()
    sessions_before = set(Path(tempfile.gettempdir()).glob("GraTaSegmenter-web-*"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "GraTaSegmenterLib.cli", "web", "--port", str(port),
                             "--data", str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    url = None
    end = time.monotonic() + 120
    while time.monotonic() < end and url is None:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        match = re.search(r"is at (http://127\.0\.0\.1:\d+/)", line)
        url = match.group(1) if match else None
    assert url == f"http://127.0.0.1:{port}/", "the server did not announce its address"
    yield url
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "stopped" in out
    assert set(Path(tempfile.gettempdir()).glob("GraTaSegmenter-web-*")) == sessions_before, \
        "the session's files were left behind"


@pytest.fixture
def page(server):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="chromium-"), executable_path=CHROMIUM,
                                                       args=FLAGS, headless=True,
                                                       viewport={"width": 1400, "height": 850})
        page = context.new_page()
        page.goto(server)
        page.wait_for_selector("#grata-adapt", timeout=60_000)
        yield page
        context.close()


def _shot(page, name: str) -> None:
    folder = os.environ.get("GRATA_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name))


def _choose(page, select_id: str, option: str) -> None:
    page.locator(".v-field", has=page.locator(f"#{select_id}")).click()
    page.get_by_role("option", name=option, exact=True).click()


def _open(page, name: str) -> None:
    _choose(page, "grata-data-select", name)
    page.locator("#grata-open").click()


def _voxels(page, segment: str) -> int:
    text = page.locator(f".grata-voxels[data-name='{segment}']").inner_text()
    return int(text.split()[0])


def _wait_voxels(page, segment: str, condition, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = _voxels(page, segment)
        if condition(value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"{segment}: {value} voxels")


def _stroke(page, fx: float, fy: float, length: float = 0.04) -> None:
    """A mouse stroke on the slice view, at a fraction of the image square (fitted to the view's width)."""
    box = page.locator(".remote-controlled-area").first.bounding_box()
    side = min(box["width"], box["height"])
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    x, y = left + fx * side, top + fy * side
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 6):
        page.mouse.move(x + length * side * i / 5, y, steps=2)
    page.mouse.up()


def _settings(page, steps: int) -> None:
    """Steps per image, typed into the settings panel, which is closed again."""
    page.get_by_text("Adaptation settings").click()
    page.locator("#grata-steps").fill(str(steps))
    page.get_by_text("Adaptation settings").click()
    page.locator("#grata-steps").wait_for(state="hidden")


def test_open_adapt_watch_paint_erase_save(page, data_dir):
    _open(page, "eye.png")
    page.wait_for_selector("#grata-message:has-text('Opened eye.png')")
    _settings(page, 2)
    page.locator("#grata-adapt").click()
    page.wait_for_function("document.querySelectorAll('#grata-plot g#cosine use').length === 2", timeout=240_000)
    assert page.locator("#grata-plot g#lr use").count() == 2
    page.wait_for_selector("#grata-segments", timeout=60_000)
    page.wait_for_selector("#grata-status:has-text('Done')")
    names = page.locator("#grata-segments .grata-voxels").evaluate_all("els => els.map(e => e.dataset.name)")
    assert names == ["Optic disc", "Optic cup"]
    disc = _voxels(page, "Optic disc")
    assert disc > _voxels(page, "Optic cup") > 0
    time.sleep(1.0)  # the overlay's frame
    _shot(page, "web_adapted.png")
    page.locator("#grata-plot").screenshot(path=str(Path(os.environ.get("GRATA_SCREENSHOTS", tempfile.gettempdir()))
                                                   / "web_plot.png"))

    # paint on the disc segment, far from it (image corner), then erase the same stroke
    page.locator("button:has(.mdi-brush)").first.click()
    _stroke(page, 0.15, 0.2)
    painted = _wait_voxels(page, "Optic disc", lambda v: v > disc)
    assert painted - disc > 100
    page.wait_for_selector("text=Corrected, not saved")
    page.locator("button:has(.mdi-eraser)").first.click()
    _stroke(page, 0.15, 0.2)
    assert _wait_voxels(page, "Optic disc", lambda v: v < painted) == disc
    page.locator("button:has(.mdi-brush)").first.click()
    _stroke(page, 0.15, 0.2)
    corrected = _wait_voxels(page, "Optic disc", lambda v: v > disc)
    time.sleep(1.0)
    _shot(page, "web_corrected.png")

    # a new run would replace the correction: the page asks, and Keep keeps it
    page.locator("#grata-adapt").click()
    page.wait_for_selector("#grata-confirm:has-text('corrections')")
    page.locator("#grata-confirm-no").click()
    assert _voxels(page, "Optic disc") == corrected

    page.locator("#grata-save-name").fill("eye web")
    page.locator("#grata-save").click()
    page.wait_for_selector("#grata-message:has-text('Saved eye web.seg.nrrd')")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "eye web.labelmap.nrrd")))
    assert int((labels > 0).sum()) == corrected
    from slicer_runtime.segmentation_files import read_seg_nrrd

    read = read_seg_nrrd(data_dir / "eye web.seg.nrrd")
    assert [(s.name, s.voxels) for s in read.segments] == [("Optic disc", corrected),
                                                            ("Optic cup", _voxels(page, "Optic cup"))]
    # the download is the same segmentation, named after the image
    with page.expect_download() as download:
        page.locator("#grata-download-segmentation").click()
    assert download.value.suggested_filename == "eye.seg.nrrd"
    saved_as = Path(tempfile.mkdtemp(prefix="download-")) / download.value.suggested_filename
    download.value.save_as(saved_as)
    downloaded = read_seg_nrrd(saved_as)
    assert [(s.name, s.voxels) for s in downloaded.segments] == [(s.name, s.voxels) for s in read.segments]
    # saving under the same name asks first; Keep leaves the file as it was
    before = (data_dir / "eye web.seg.nrrd").read_bytes()
    page.locator("#grata-save").click()
    page.wait_for_selector("#grata-confirm:has-text('exists')")
    page.locator("#grata-confirm-no").click()
    assert (data_dir / "eye web.seg.nrrd").read_bytes() == before


def test_cancel_mid_run_and_a_bad_file(page, data_dir):
    _open(page, "eye.png")
    page.wait_for_selector("#grata-message:has-text('Opened eye.png')")
    before = sorted(os.listdir(data_dir))
    _settings(page, 300)
    page.locator("#grata-adapt").click()
    page.wait_for_selector("#grata-status:has-text('Step ')", timeout=240_000)
    assert page.locator("#grata-adapt").inner_text().strip().lower() == "cancel"
    page.locator("#grata-adapt").click()
    page.wait_for_selector("#grata-status:has-text('Cancelled')", timeout=30_000)
    assert page.locator("#grata-segments").count() == 0  # the scene is as it was: no segments
    assert sorted(os.listdir(data_dir)) == before
    assert page.locator("#grata-adapt").inner_text().strip().lower() == "adapt & segment"

    # an upload opens like a file of the data folder (the page's own file input, real bytes)
    page.locator("#grata-upload-image input[type=file]").set_input_files(str(SAMPLE))
    page.wait_for_selector("#grata-message:has-text('Opened phantom_B_0.png')", timeout=60_000)
    assert page.locator("#grata-image-name").inner_text() == "phantom_B_0"
    assert sorted(os.listdir(data_dir)) == before  # uploads are kept in the session's folder, not in --data

    _open(page, "broken.png")
    message = page.locator("#grata-message")
    message.wait_for()
    page.wait_for_selector("#grata-message:has-text('cannot be read')")
    assert "broken.png" in message.inner_text()
    assert page.locator("#grata-image-name").inner_text() == "phantom_B_0"  # the image before stays


def test_a_model_folder_uploads_as_a_zip_through_the_pages_file_input(page, tmp_path):
    """A browser uploads files, not folders: a MONAI bundle zipped, through the model's own file
    input (real bytes over the page's websocket), becomes the model with its card."""
    from test_monai_bundle import make_bundle, zip_bundle

    archive = tmp_path / "tiny.zip"
    zip_bundle(make_bundle(tmp_path / "tiny"), archive)
    default = page.locator(".v-field", has=page.locator("#grata-model")).inner_text().strip()
    _choose(page, "grata-model", "A model file (.safetensors, a reference .pth) or an nnU-Net model folder or MONAI "
                                 "bundle (in the data folder, or uploaded as .zip)")
    page.locator("#grata-upload-model input[type=file]").set_input_files(str(archive))
    page.wait_for_selector("#grata-message:has-text('Model folder tiny uploaded')", timeout=60_000)
    page.wait_for_selector("#grata-model-card:has-text('MONAI bundle tiny abdomen')", timeout=30_000)
    assert "Segments: liver, spleen" in page.locator("#grata-model-card").inner_text()
    archive.write_bytes(b"not a zip")
    page.locator("#grata-upload-model input[type=file]").set_input_files(str(archive))
    page.wait_for_selector("#grata-message:has-text('not a zip archive that can be read')", timeout=60_000)
    _choose(page, "grata-model", default)  # one scene for every tab: the next test finds the default model
