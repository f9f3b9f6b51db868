"""The web page's session without a browser: trame-slicer's SlicerApp with its direct
(offscreen) view factory, the engine in a child process, the segment editor's
paint effect driven by interactor events, the save read back by Slicer's own
segmentation storage node."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install -e '.[web]')")

SAMPLES = Path(__file__).resolve().parents[1] / "GraTaSegmenter" / "GraTaSegmenterLib" / "samples"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def web():
    """The web package, imported once the Slicer module tests have put back the real ``slicer``."""
    from GraTaSegmenterWeb import rendering

    rendering.choose_offscreen_backend()
    from GraTaSegmenterWeb import session

    return session


@pytest.fixture
def app_and_view(web):
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition, ViewProps, ViewType

    app = SlicerApp()
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    view = app.view_manager.create_view(ViewLayoutDefinition(singleton_tag="Red", view_type=ViewType.SLICE_VIEW,
                                                             properties=ViewProps(orientation="Axial")))
    view.interactor().UpdateSize(400, 400)
    view.render_window().SetSize(400, 400)
    yield app, view
    web.release_app(app)


@pytest.fixture
def session(web, app_and_view, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLES / "phantom_B_0.png", data / "eye.png")
    s = web.WebSession(app_and_view[0], data_dir=data, work_dir=tmp_path)
    yield s
    s.close()


def _stroke(view, points):
    interactor = view.interactor()
    interactor.SetEventPosition(*points[0])
    interactor.InvokeEvent("MouseMoveEvent")
    interactor.InvokeEvent("LeftButtonPressEvent")
    for p in points[1:]:
        interactor.SetEventPosition(*p)
        interactor.InvokeEvent("MouseMoveEvent")
    interactor.InvokeEvent("LeftButtonReleaseEvent")
    view.render()


def _display_position(view, ras):
    """Display (x, y) of a RAS point in a slice view."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    xy_to_ras = view.get_view_node().GetXYToRAS()
    inverse = vtkMatrix4x4()
    vtkMatrix4x4.Invert(xy_to_ras, inverse)
    x, y, _z, _w = inverse.MultiplyPoint([*ras, 1.0])
    return int(round(x)), int(round(y))


def _ras_of_pixel(volume_node, i, j, k=0):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    m = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return m.MultiplyPoint([i, j, k, 1.0])[:3]


def test_open_run_paint_undo_save_and_read_back(web, session, app_and_view, tmp_path):
    from trame_slicer.segmentation import SegmentationEffectPaint
    from trame_slicer.segmentation.paint_effect_parameters import BrushDiameterMode

    from GraTaSegmenterLib.slicer_support.parameters import AdaptParameters
    from GraTaSegmenterLib.slicer_support.process import RunState

    app, view = app_and_view
    assert session.data_entries() == ["eye.png"]
    node = session.open_image(session.data_path("eye.png"))
    reference = sitk.ReadImage(str(session.data_dir / "eye.png"))
    assert node.IsA("vtkMRMLVectorVolumeNode")
    assert node.GetImageData().GetDimensions() == (*reference.GetSize(), 1)
    assert session.segment_ids() == [] and not session.corrected

    run = session.start(AdaptParameters(steps=2), session.default_model)
    assert session.busy
    with pytest.raises(web.SessionError, match="already going on"):
        session.start(AdaptParameters(steps=2), session.default_model)
    state = session.wait(timeout=300)
    assert state is RunState.Done, session.log_lines[-5:]
    assert run.progress.plot_steps == [1, 2]
    assert session.workspace is None  # the run's files are gone

    # named, coloured, coded segments in the input's geometry
    segmentation = session.segmentation.GetSegmentation()
    names = [segmentation.GetSegment(s).GetName() for s in session.segment_ids()]
    assert names == ["Optic disc", "Optic cup"]
    width, height = reference.GetSize()
    counts = session.voxel_counts()
    assert session.segment_mask(session.segment_ids()[0]).shape == (1, height, width)
    assert counts["Optic disc"] > counts["Optic cup"] > 0
    assert not session.corrected

    # paint a 20 mm brush stroke on the disc segment, at a corner far from it
    editor = app.segmentation_editor
    editor.set_active_segment_id(session.segment_ids()[0])
    paint = editor.set_active_effect_type(SegmentationEffectPaint)
    paint.set_brush_diameter(20.0, BrushDiameterMode.Absolute)
    view.fit_view_to_content()
    view.render()
    disc_before = session.segment_mask(session.segment_ids()[0])[0]
    centre = _display_position(view, _ras_of_pixel(node, 30, 30))
    _stroke(view, [centre, (centre[0] + 1, centre[1])])
    disc_after = session.segment_mask(session.segment_ids()[0])[0]
    added = int(disc_after.sum()) - int(disc_before.sum())
    spacing = reference.GetSpacing()
    expected = math.pi * (10.0 / spacing[0]) * (10.0 / spacing[1])
    assert abs(added - expected) < 0.2 * expected, (added, expected)
    assert disc_after[20:41, 20:41].sum() > 0.9 * 21 * 21 * math.pi / 4  # where it was painted
    assert session.corrected

    # a new run would replace the correction: asked first
    with pytest.raises(web.NeedsConfirmation):
        session.start(AdaptParameters(steps=2), session.default_model)

    editor.undo_stack.undo()
    assert session.voxel_counts() == counts
    assert not session.corrected
    editor.undo_stack.redo()
    assert session.voxel_counts()["Optic disc"] == counts["Optic disc"] + added

    saved = session.save("eye corrected")
    assert [p.name for p in saved] == ["eye corrected.seg.nrrd", "eye corrected.labelmap.nrrd"]
    assert not session.corrected
    with pytest.raises(web.NeedsConfirmation, match="exists"):
        session.save("eye corrected")
    before = saved[0].read_bytes()
    assert session.save("eye corrected", overwrite=True)[0].read_bytes() == before
    assert sorted(p.name for p in session.data_dir.iterdir()) == [
        "eye corrected.labelmap.nrrd", "eye corrected.seg.nrrd", "eye.png"]  # no temporary left

    # Slicer's own storage node reads the same names, voxels and geometry back
    import slicer

    scene = slicer.vtkMRMLScene()
    back = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(saved[0]))
    assert storage.ReadData(back)
    seg_back = back.GetSegmentation()
    assert [seg_back.GetNthSegment(i).GetName() for i in range(seg_back.GetNumberOfSegments())] == names
    from vtkmodules.vtkCommonCore import reference as ref

    for index, segment_id in enumerate(session.segment_ids()):  # the terminology entries as they were
        tag, original = ref(""), ref("")
        assert seg_back.GetNthSegment(index).GetTag("TerminologyEntry", tag)
        assert segmentation.GetSegment(segment_id).GetTag("TerminologyEntry", original)
        assert str(tag) == str(original) and "SCT^81016008" in str(tag) if index == 0 else str(tag) == str(original)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(saved[1])))
    assert labels.shape == (height, width)
    assert (labels > 0).sum() == counts["Optic disc"] + added
    assert (labels == 2).sum() == counts["Optic cup"]
    labelmap_image = sitk.ReadImage(str(saved[1]))
    assert labelmap_image.GetOrigin() == reference.GetOrigin()
    assert labelmap_image.GetSpacing() == reference.GetSpacing()
    name, data = session.export("segmentation")
    assert name == "eye.seg.nrrd" and data[:8] == b"NRRD0004"


def test_bad_files_leave_the_scene_as_it_was(web, session, tmp_path):
    from GraTaSegmenterLib.slicer_support.parameters import AdaptParameters
    from GraTaSegmenterLib.slicer_support.process import RunState

    node = session.open_image(session.data_path("eye.png"))
    nodes = session.scene.GetNumberOfNodes()
    broken = session.data_dir / "broken.png"
    broken.write_bytes((session.data_dir / "eye.png").read_bytes()[:200])
    with pytest.raises(web.SessionError, match="cannot be read"):
        session.open_image(broken)
    assert session.image.volume_node is node and session.scene.GetNumberOfNodes() == nodes

    # a model file that is not one: the engine refuses it, the run fails with its message
    fake = session.data_dir / "model.safetensors"
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64))
    session.start(AdaptParameters(steps=1), web.MODEL_FILE, fake)
    assert session.wait(timeout=300) is RunState.Failed
    assert "model.safetensors" in session.last_failure and session.segment_ids() == []
    with pytest.raises(web.SessionError, match="Choose a model file"):
        session.start(AdaptParameters(steps=1), web.MODEL_FILE, None)

    # a two-channel volume opens; the 3-channel fundus model refuses it by its channel count
    grey = session.data_dir / "grey.nrrd"
    voxels = np.random.default_rng(0).normal(100, 20, (8, 40, 40, 2)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(voxels, isVector=True), str(grey))
    session.open_image(grey)
    assert session.image.is_volume and session.image.channels == 2
    assert not session.scene.IsNodePresent(node)  # the picture before is gone with its segmentation
    session.start(AdaptParameters(steps=1), session.default_model)
    assert session.wait(timeout=300) is RunState.Failed
    assert "channel" in session.last_failure, session.last_failure
    assert session.segment_ids() == []

    for outside in ("../x.png", "/etc/passwd"):
        with pytest.raises(web.SessionError, match="outside the data folder"):
            session.data_path(outside)
    for bad in ("../evil", ".hidden", "a/b", "", "a\\b", "nul\x00"):
        with pytest.raises(web.SessionError, match="not a usable file name"):
            session.save(bad)
    assert sorted(p.name for p in session.data_dir.iterdir()) == ["broken.png", "eye.png", "grey.nrrd",
                                                                   "model.safetensors"]
    assert not (tmp_path / "evil.seg.nrrd").exists()


def test_cancel_mid_run_leaves_the_result_of_the_run_before(web, session):
    from GraTaSegmenterLib.slicer_support.parameters import AdaptParameters
    from GraTaSegmenterLib.slicer_support.process import RunState

    session.open_image(session.data_path("eye.png"))
    assert session.start(AdaptParameters(steps=1), session.default_model)
    assert session.wait(timeout=300) is RunState.Done
    counts, fingerprint = session.voxel_counts(), session.fingerprint()
    run = session.start(AdaptParameters(steps=200), session.default_model)
    seen = []
    session.wait(timeout=120, on_events=lambda events: (seen.extend(e.kind for e in events),
                                                        "step" in seen and session.cancel()))
    assert run.cancelled and run.state is RunState.Failed
    assert session.last_failure.startswith("Cancelled")
    assert not run.tree_alive()
    assert session.voxel_counts() == counts and session.fingerprint() == fingerprint
    assert [p.name for p in session.work.iterdir() if p.name.startswith("GraTaSegmenter-")] == []
    assert os.listdir(session.data_dir) == ["eye.png"]


def test_closing_the_session_mid_run_ends_the_engine_and_removes_its_files(web, app_and_view, tmp_path):
    from GraTaSegmenterLib.slicer_support.parameters import AdaptParameters

    data = tmp_path / "d"
    data.mkdir()
    shutil.copy(SAMPLES / "phantom_B_0.png", data / "eye.png")
    s = web.WebSession(app_and_view[0], data_dir=data, work_dir=tmp_path)
    s.open_image(data / "eye.png")
    run = s.start(AdaptParameters(steps=300), s.default_model)
    s.wait(timeout=120, on_events=lambda events: "start" in [e.kind for e in events] and s.close())
    assert not run.tree_alive() and not s.work.exists()
