"""The page's wiring without a browser: a trame server that is built but not started,
the page's own (remote) slice view painted through its interactor. The browser test
(test_web_browser.py) clicks the same controls for real; this one pins what the
page does with them, and runs where no chromium is installed."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -e '.[web]')")
SAMPLE = Path(__file__).resolve().parents[1] / "GraTaSegmenter" / "GraTaSegmenterLib" / "samples" / "phantom_B_0.png"
pytestmark = pytest.mark.slow


@pytest.fixture
def page(tmp_path):
    from GraTaSegmenterWeb import rendering

    rendering.choose_offscreen_backend()
    from trame.app import get_server

    from GraTaSegmenterWeb.page import GraTaPage

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLE, data / "eye.png")
    (data / "broken.png").write_bytes(SAMPLE.read_bytes()[:300])
    p = GraTaPage(get_server(f"grata-test-{uuid.uuid4().hex}", client_type="vue3"), data_dir=data)
    yield p
    p.close()


def _stroke_at_image_corner(page):
    """A short left-button stroke on the page's slice view, 15 % in from the image's top left."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    view = page.app.view_manager.get_view("Red")
    view.render_window().SetSize(500, 500)
    view.interactor().UpdateSize(500, 500)
    view.fit_view_to_content()
    view.render()
    ijk_to_ras, ras_to_xy = vtkMatrix4x4(), vtkMatrix4x4()
    page.session.image.volume_node.GetIJKToRASMatrix(ijk_to_ras)
    vtkMatrix4x4.Invert(view.get_view_node().GetXYToRAS(), ras_to_xy)
    width, height = page.session.image.spatial_shape[-1], page.session.image.spatial_shape[-2]
    ras = ijk_to_ras.MultiplyPoint([0.15 * width, 0.15 * height, 0, 1])
    x, y = (int(round(v)) for v in ras_to_xy.MultiplyPoint(ras)[:2])
    interactor = view.interactor()
    interactor.SetEventPosition(x, y)
    interactor.InvokeEvent("MouseMoveEvent")
    interactor.InvokeEvent("LeftButtonPressEvent")
    interactor.SetEventPosition(x + 3, y)
    interactor.InvokeEvent("MouseMoveEvent")
    interactor.InvokeEvent("LeftButtonReleaseEvent")


def test_the_pages_views_paint_and_its_state_follows(page):
    from trame_slicer.segmentation import SegmentationEffectPaint

    from GraTaSegmenterLib.slicer_support.process import RunState

    state = page.state
    assert state.grata_data_entries == ["broken.png", "eye.png"]
    assert state.grata_model_id == page.session.default_model
    state.grata_data_choice = "eye.png"
    page._reported(page.open_data_entry)()
    assert state.grata_image_name == "eye" and state.grata_message_type == "success"
    assert page.layouts.layout_id == "picture"
    state.grata_p_steps = "1"  # as the text field sends it
    page._reported(page.adapt_or_cancel)()
    assert state.grata_busy is False or page.session.busy
    assert page.session.wait(timeout=300) is RunState.Done
    page._after_poll()
    assert state.grata_busy is False and state.grata_progress == 100
    assert state.grata_plot_points == 1 and 'id="cosine"' in state.grata_plot_svg
    assert [s["name"] for s in state.grata_segments] == ["Optic disc", "Optic cup"]
    assert state.grata_segments[0]["color"].startswith("#") and not state.grata_corrected
    disc = state.grata_segments[0]["voxels"]

    # painting with the editor on the page's own view (the views must exist before the
    # editor registers its effects, or the paint pipelines have no view and nothing is painted)
    page.app.segmentation_editor.set_active_segment_id(page.session.segment_ids()[0])
    page.app.segmentation_editor.set_active_effect_type(SegmentationEffectPaint)
    _stroke_at_image_corner(page)
    assert state.grata_segments[0]["voxels"] > disc + 50
    assert state.grata_corrected

    # a run now asks first; declining leaves everything as it is
    page._reported(page.adapt_or_cancel)()
    assert state.grata_confirm_open and "corrections" in state.grata_confirm_text
    assert not page.session.busy
    page._decline()
    assert not state.grata_confirm_open and state.grata_corrected

    # saving clears 'corrected'; saving again under the same name asks, Continue replaces
    state.grata_save_name = "eye web"
    page._reported(page.save)()
    assert "Saved eye web.seg.nrrd" in state.grata_message and not state.grata_corrected
    assert "eye web.seg.nrrd" not in state.grata_data_entries  # not an image to open: a result
    page._reported(page.save)()
    assert state.grata_confirm_open and "exists" in state.grata_confirm_text
    page._confirm()
    assert not state.grata_confirm_open and "Saved" in state.grata_message


def test_a_bad_file_is_one_message_and_the_image_before_stays(page):
    state = page.state
    state.grata_data_choice = "eye.png"
    page._reported(page.open_data_entry)()
    state.grata_data_choice = "broken.png"
    page._reported(page.open_data_entry)()
    assert state.grata_message_type == "error" and "cannot be read" in state.grata_message
    assert state.grata_image_name == "eye" and page.session.image.name == "eye"
    state.grata_data_choice = "../../etc/passwd"
    page._reported(page.open_data_entry)()
    assert "outside the data folder" in state.grata_message
    state.grata_p_steps = "many"
    page._reported(page.adapt_or_cancel)()
    assert "Steps per image" in state.grata_message and not page.session.busy


def test_the_server_warns_beyond_this_machine_and_checks_its_options(tmp_path):
    import argparse

    from GraTaSegmenterWeb import server

    assert server.host_warning("127.0.0.1") is None and server.host_warning("localhost") is None
    assert "no login" in server.host_warning("0.0.0.0")
    ok = argparse.Namespace(port=8080, host="127.0.0.1", data=str(tmp_path))
    assert server.check_arguments(ok) is None
    assert "no such folder" in server.check_arguments(argparse.Namespace(port=1, host="x", data=str(tmp_path / "n")))
    assert "65535" in server.check_arguments(argparse.Namespace(port=70000, host="x", data=None))


def test_offscreen_rendering_is_chosen_only_where_there_is_no_screen(monkeypatch):
    from GraTaSegmenterWeb import rendering

    monkeypatch.setattr(rendering.sys, "platform", "linux")
    env = {}
    assert rendering.choose_offscreen_backend(env, find_library=lambda name: "libOSMesa.so.8") == rendering.OSMESA
    assert env[rendering.VARIABLE] == rendering.OSMESA
    env = {}
    assert rendering.choose_offscreen_backend(env, find_library=lambda name: None) == rendering.EGL
    for kept in ({"DISPLAY": ":0"}, {rendering.VARIABLE: "vtkXOpenGLRenderWindow"}):
        env = dict(kept)
        assert rendering.choose_offscreen_backend(env, find_library=lambda name: "x") is None and env == kept


def test_the_command_line_says_what_to_install_when_the_web_extra_is_missing(monkeypatch, capsys):
    import importlib.util

    from GraTaSegmenterLib import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trame_slicer" else real(name))
    assert cli.main(["web", "--port", "0"]) == 2
    assert "install the 'web' extra" in capsys.readouterr().err


def test_a_dicom_series_with_a_model_file_gets_the_3d_layout_surfaces_and_an_uncertainty_layer(page):
    from test_cli_support import tiny_3d_model, write_dicom_series

    from GraTaSegmenterLib.slicer_support.process import RunState
    from GraTaSegmenterWeb.session import MODEL_FILE

    data = page.session.data_dir
    write_dicom_series(data / "ct" / "series", slices=6)
    (data / "models").mkdir()
    tiny_3d_model(data / "models" / "tiny3d.safetensors")
    state = page.state
    page.state.grata_data_entries = page.session.data_entries()
    assert "ct/series/" in state.grata_data_entries
    from GraTaSegmenterWeb import files

    assert files.model_entries(data) == ["models/tiny3d.safetensors"]
    state.grata_data_choice = "ct/series/"
    page._reported(page.open_data_entry)()
    assert state.grata_message_type == "success", state.grata_message
    assert page.layouts.layout_id == "volume" and page.session.image.is_volume
    assert page.session.image.volume_node.GetImageData().GetDimensions() == (24, 20, 6)
    state.grata_model_id, state.grata_model_file = MODEL_FILE, "models/tiny3d.safetensors"
    state.grata_p_steps, state.grata_p_uncertainty, state.grata_p_method = 1, True, "tent"
    page._reported(page.adapt_or_cancel)()
    assert page.session.wait(timeout=300) is RunState.Done, page.session.log_lines[-3:]
    page._after_poll()
    assert [s["name"] for s in state.grata_segments] == ["liver", "spleen"]  # the card's names, as in Slicer
    segmentation = page.session.segmentation
    assert segmentation.GetSegmentation().ContainsRepresentation("Closed surface")  # shown in the 3D view
    assert page.editor_logic.data.segment_display.show_3d  # and the editor's Show 3D switch says so
    assert state.grata_has_uncertainty
    red = page.app.view_manager.get_view("Red")
    assert red.get_foreground_volume_id() is None
    page._on_uncertainty_toggled(True)
    assert red.get_foreground_volume_id() == page.session.uncertainty.GetID()
    assert red.get_foreground_opacity() == 0.5
    page._on_uncertainty_toggled(False)
    assert red.get_foreground_volume_id() is None


def test_the_page_names_no_server_file_outside_the_data_folder_and_its_uploads(page):
    from GraTaSegmenterWeb.session import SessionError

    session = page.session
    with pytest.raises(SessionError, match="neither in the data folder nor uploaded"):
        session.model_file("/etc/passwd")
    with pytest.raises(SessionError, match="outside the data folder"):
        session.model_file("../../etc/passwd")
    uploaded = session.store_uploads([("C:\\\\Users\\\\me\\\\model.safetensors", b"x")])
    assert uploaded.name == "model.safetensors" and session.model_file(str(uploaded)) == uploaded.resolve()
    first = session.store_uploads([("eye.png", SAMPLE.read_bytes())])
    page.open_path(first)
    page.open_path(session.data_path("eye.png"))
    assert not first.exists() and uploaded.exists()  # the image's upload went with it; the model's stays


def test_closing_the_page_releases_its_scene_views_and_server(page):
    from trame.app import core

    page.state.grata_data_choice = "eye.png"
    page._reported(page.open_data_entry)()
    scene, views = page.app.scene, page.app.view_manager
    assert scene.GetNodesByClass("vtkMRMLVolumeNode").GetNumberOfItems() == 1
    assert views.get_views() and core.AVAILABLE_SERVERS.get(page.server.name) is page.server
    page.close()
    assert scene.GetNodesByClass("vtkMRMLVolumeNode").GetNumberOfItems() == 0
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert views.get_views() == []
    assert page.server.name not in core.AVAILABLE_SERVERS
    page.close()  # a second close (the fixture's) does nothing more


def test_a_monai_bundle_in_the_data_folder_shows_its_card_and_segments_a_ct(page):
    """The page's counterpart of the panel's folder model: listed with a trailing '/', its card
    read from its JSON as soon as it is chosen, a CT segmented with the bundle's segment names."""
    import SimpleITK as sitk

    from test_monai_bundle import make_bundle

    from GraTaSegmenterLib import phantom3d
    from GraTaSegmenterLib.slicer_support.process import RunState
    from GraTaSegmenterWeb import files
    from GraTaSegmenterWeb.session import MODEL_FILE

    data, state = page.session.data_dir, page.state
    make_bundle(data / "bundles" / "tiny")
    (data / "bundles" / "tiny" / "models" / "extra.pt").write_bytes(b"")  # inside a bundle: not listed apart
    case = phantom3d.render_case("B", 0, scale=0.5)
    image = sitk.GetImageFromArray(case.image)
    image.SetSpacing(tuple(reversed(case.spacing)))
    sitk.WriteImage(image, str(data / "ct.nrrd"))
    assert files.model_entries(data) == ["bundles/tiny/"]
    state.grata_data_entries = page.session.data_entries()
    state.grata_data_choice = "ct.nrrd"
    page._reported(page.open_data_entry)()
    assert state.grata_message_type == "success", state.grata_message
    state.grata_model_id, state.grata_model_file = MODEL_FILE, "bundles/tiny/"
    page._on_model_chosen(grata_model_id=MODEL_FILE, grata_model_file="bundles/tiny/")
    assert "MONAI bundle tiny abdomen" in state.grata_model_card and "Segments: liver, spleen" in state.grata_model_card
    page._on_model_chosen(grata_model_id=MODEL_FILE, grata_model_file="../outside/")
    assert "outside the data folder" in state.grata_model_card
    state.grata_p_steps, state.grata_p_method = 1, "grata"
    page._reported(page.adapt_or_cancel)()
    assert page.session.wait(timeout=300) is RunState.Done, page.session.log_lines[-3:]
    page._after_poll()
    assert [s["name"] for s in state.grata_segments] == ["liver", "spleen"]


def test_a_slow_cpu_run_is_announced_above_the_controls_once(page, tmp_path):
    """The engine's estimate event from a real child (a stand-in engine that writes the events of
    a 25-minute CPU run) becomes one warning on the page and one log line; Cancel still ends it."""
    import time

    from test_cli_support import SLOW_ENGINE

    from GraTaSegmenterLib.slicer_support.process import RunState

    engine = tmp_path / "slow_engine.py"
    engine.write_text(SLOW_ENGINE, encoding="utf-8")
    page.session.python = [sys.executable, str(engine)]
    state = page.state
    state.grata_data_entries = page.session.data_entries()
    state.grata_data_choice = "eye.png"
    page._reported(page.open_data_entry)()
    page._reported(page.adapt_or_cancel)()
    end = time.monotonic() + 60
    while page.session.run.progress.estimate_seconds is None and time.monotonic() < end:
        page.session.poll()
        time.sleep(0.05)
    page._after_poll()
    page._after_poll()
    assert state.grata_message_type == "warning"
    assert state.grata_message.startswith("This run will take about 25 min on the CPU")
    assert sum(line.startswith("This run will take") for line in page.session.log_lines) == 1
    page._reported(page.adapt_or_cancel)()  # Cancel
    assert page.session.wait(timeout=60) is not RunState.Running


def _zip(path: Path, members: dict, links=()) -> Path:
    """A zip of ``members`` (name -> bytes) and of symbolic links (name -> target) as zip tools store them."""
    import stat
    import zipfile

    with zipfile.ZipFile(path, "w") as zipped:
        for name, content in members.items():
            zipped.writestr(name, content)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zipped.writestr(info, target)
    return path


def test_a_model_folder_zipped_unpacks_to_its_model_and_nothing_else_lands(tmp_path, monkeypatch):
    """A browser uploads files, not folders: a model folder comes as a .zip. The model inside is found
    at any depth the usual zips have (Dataset.../nnUNetTrainer__.../), and every archive that would
    write outside its folder, hold links, unpack past the limit, hold several models or none, or is
    no zip at all is one message with nothing of it left on the server."""
    from GraTaSegmenterWeb import files

    folder = tmp_path / "uploads"
    folder.mkdir()
    trained = "Dataset501_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres/"
    nnunet = {trained + "plans.json": b"{}", trained + "dataset.json": b"{}",
              trained + "fold_0/checkpoint_final.pth": b"weights", "__MACOSX/._plans.json": b"fork"}
    model = files.unpack_model_archive(_zip(tmp_path / "nnunet.zip", nnunet), folder)
    assert model.parent.parent.parent == folder and model.relative_to(model.parents[1]).as_posix() == \
        "Dataset501_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert (model / "fold_0" / "checkpoint_final.pth").read_bytes() == b"weights"
    assert not (model.parents[1] / "__MACOSX").exists()
    bundle = files.unpack_model_archive(_zip(tmp_path / "b.zip", {"configs/inference.json": b"{}",
                                                                   "models/model.pt": b""}), folder)
    assert bundle.parent == folder and (bundle / "configs" / "inference.json").is_file()
    kept = sorted(folder.iterdir())

    refused = {
        "outside its folder": {"../evil.txt": b"x"},
        "outside its folder ": {"/etc/evil.txt": b"x"},
        "two files of one name": {"configs/inference.json": b"{}", "configs//inference.json": b"{}"},
        "several models": {"a/configs/inference.json": b"{}", "b/configs/inference.json": b"{}"},
        "no nnU-Net model folder": {"notes/readme.txt": b"hello"},
    }
    for message, members in refused.items():
        with pytest.raises(files.FileRefused, match=message.strip()):
            files.unpack_model_archive(_zip(tmp_path / "r.zip", members), folder)
    with pytest.raises(files.FileRefused, match="holds a link"):
        files.unpack_model_archive(_zip(tmp_path / "l.zip", {"configs/inference.json": b"{}"},
                                        links=[("models/model.pt", "/etc/passwd")]), folder)
    locked = _zip(tmp_path / "e.zip", {"configs/inference.json": b"{}"})
    data = bytearray(locked.read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # the encryption flag in both headers, as a password sets it
        at = data.find(header)
        flags = at + (6 if header == b"PK\x03\x04" else 8)
        data[flags] |= 0x1
    locked.write_bytes(bytes(data))
    with pytest.raises(files.FileRefused, match="is encrypted"):
        files.unpack_model_archive(locked, folder)
    (tmp_path / "n.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(files.FileRefused, match="not a zip archive that can be read"):
        files.unpack_model_archive(tmp_path / "n.zip", folder)
    monkeypatch.setattr(files, "MODEL_ARCHIVE_BYTES", 3 << 20)
    big = {"configs/inference.json": b"{}", "models/model.pt": bytes(4 << 20)}  # compresses to a few KiB
    with pytest.raises(files.FileRefused, match="unpacks to more than"):
        files.unpack_model_archive(_zip(tmp_path / "big.zip", big), folder)
    assert sorted(folder.iterdir()) == kept and not (tmp_path / "evil.txt").exists()


def test_a_zipped_bundle_uploaded_on_the_page_shows_its_card_and_is_the_run_model(page, tmp_path):
    import io

    import SimpleITK as sitk
    from test_monai_bundle import make_bundle, zip_bundle

    from GraTaSegmenterLib import phantom3d
    from GraTaSegmenterLib.slicer_support.process import RunState
    from GraTaSegmenterWeb.session import MODEL_FILE, SessionError

    content = io.BytesIO()
    zip_bundle(make_bundle(tmp_path / "tiny"), content)
    state, session = page.state, page.session
    page._on_upload_model([{"name": "tiny.zip", "size": len(content.getvalue()), "type": "application/zip",
                            "content": content.getvalue()}])
    assert state.grata_message_type == "success" and "Model folder tiny uploaded" in state.grata_message
    uploaded = Path(state.grata_model_file)
    assert uploaded.name == "tiny" and state.grata_model_entries[-1] == str(uploaded)
    assert not list((session.work / "uploads").glob("upload-*"))  # the archive itself is not kept
    assert session.model_file(str(uploaded)) == uploaded.resolve()
    page._on_model_chosen(grata_model_id=MODEL_FILE, grata_model_file=str(uploaded))
    assert "MONAI bundle tiny abdomen" in state.grata_model_card, state.grata_model_card
    case = phantom3d.render_case("C", 0, scale=0.5)
    image = sitk.GetImageFromArray(case.image)
    image.SetSpacing(tuple(reversed(case.spacing)))
    sitk.WriteImage(image, str(session.data_dir / "ct.nrrd"))
    state.grata_data_entries = session.data_entries()
    state.grata_data_choice = "ct.nrrd"
    page._reported(page.open_data_entry)()
    state.grata_model_id, state.grata_p_steps, state.grata_p_method = MODEL_FILE, 1, "grata"
    page._reported(page.adapt_or_cancel)()
    assert session.wait(timeout=300) is RunState.Done, session.log_lines[-3:]
    page._after_poll()
    assert [s["name"] for s in state.grata_segments] == ["liver", "spleen"] and state.grata_plot_points == 1
    before = state.grata_model_file
    page._on_upload_model([{"name": "notes.zip", "content": b"not a zip"}])
    assert state.grata_message_type == "error" and "not a zip archive" in state.grata_message
    assert state.grata_model_file == before
    page._on_upload_model([])
    assert state.grata_message_type == "error" and state.grata_message == "no file was uploaded"
    with pytest.raises(SessionError, match="not a usable file name"):
        session.store_model_upload("", b"")
