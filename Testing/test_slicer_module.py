"""The Slicer module (GraTaSegmenter.py) run for real: under Slicer's own MRML core
(slicer-core) with Slicer's own ScriptedLoadableModule, parameterNodeWrapper, util
and SampleData of v5.10.0 and v5.12.3 (../shared/slicer_python), as a user of the
panel would feel it. The engine runs as the module runs it, in a child process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_runtime import MODULE_DIR, TAGS, SlicerRuntime, available
from slicer_runtime.segmentation_files import resolves

pytestmark = [pytest.mark.slow, pytest.mark.skipif(available() is not None, reason=str(available()))]


@pytest.fixture(scope="module", params=TAGS)
def runtime(request, tmp_path_factory):
    rt = SlicerRuntime(request.param, tmp_path_factory.mktemp(f"slicer-{request.param}"))
    module, _instance = rt.loadScriptedModule(MODULE_DIR / "GraTaSegmenter.py")
    rt.module = module
    yield rt
    rt.close()


@pytest.fixture
def slicer(runtime):
    runtime.scene.Clear(0)
    import slicer as slicer_module

    return slicer_module


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from test_cli_support import tiny_2d_model

    return str(tiny_2d_model(tmp_path_factory.mktemp("model") / "tiny.safetensors"))


def storable_state(scene):
    """Every storable node: (id, storage node id, its file name, modified since read)."""
    out = {}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
        storage = node.GetStorageNode()
        out[node.GetID()] = (storage.GetID() if storage else None, storage.GetFileName() if storage else None,
                             bool(node.GetModifiedSinceRead()))
    return out


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def photo_volume(slicer, tmp_path, name="eye", size=40, seed=0, spacing=(0.5, 0.5, 1.0), direction=None):
    """A user's RGB photo as Slicer holds it: a vector volume loaded from a file."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2
    rgb = (rng.random((1, size, size, 3)) * 60 + 60).astype(np.uint8)
    rgb[0][disc] = (230, 200, 120)
    image = sitk.GetImageFromArray(rgb, isVector=True)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    path = tmp_path / f"{name}.nrrd"
    sitk.WriteImage(image, str(path))
    return slicer.util.loadVolume(str(path), {"name": name})


def run_to_end(runtime, logic, parameterNode, timeout=300):
    """Poll the run as the panel's timer does, then finish it: the module's own self-test helper."""
    runtime.module.GraTaSegmenterTest().runToEnd(logic, parameterNode, timeout)


def adapt(runtime, volume, model, steps=2, **params):
    m = runtime.module
    logic = m.GraTaSegmenterLogic()
    p = logic.getParameterNode()
    p.inputVolume = volume
    logic.start(volume, model, m.AdaptParameters(steps=steps, device="cpu", **params))
    run_to_end(runtime, logic, p)
    assert logic.run.state is m.RunState.Done, logic.run.failure
    return logic, p


# -- loading ---------------------------------------------------------------------------------------

def test_parameter_node_is_created_with_its_defaults(runtime, slicer):
    m = runtime.module
    p = m.GraTaSegmenterLogic().getParameterNode()  # crashed with "Unable to write value 'None'" before
    d = m.AdaptParameters()
    assert (p.method, p.steps, p.learningRate, p.mode, p.device) == (d.method, d.steps, d.learning_rate, d.mode,
                                                                       d.device)
    assert p.inputVolume is None and p.outputSegmentation is None and p.resultSegmentation is None
    node = p.parameterNode
    assert node.GetAttribute("ModuleName") == "GraTaSegmenter" and node.GetParameter("steps") == str(d.steps)


def test_module_registers_its_samples_and_translatable_texts(runtime, slicer):
    import SampleData

    names = [s.sampleName for sources in slicer.modules.sampleDataSources.values() for s in sources]
    assert any(n.startswith("GraTa") or "phantom" in n.lower() for n in names), names
    assert ("qSlicerAbstractCoreModule", "Segmentation") in runtime.app.translated
    assert SampleData.SampleDataLogic  # Slicer's own SampleData of this tag


def test_module_self_test_passes(runtime, slicer):
    """The module's own GraTaSegmenterTest, as Reload and Test runs it in Slicer."""
    test = runtime.module.GraTaSegmenterTest()
    test.messageDelay = 0
    test.runTest()


# -- what a run does to the scene ---------------------------------------------------------------------

def test_run_leaves_the_users_nodes_and_files_as_they_were(runtime, slicer, tmp_path, tiny_model):
    volume = photo_volume(slicer, tmp_path)
    before = storable_state(runtime.scene)
    file_before = Path(volume.GetStorageNode().GetFileName()).read_bytes()
    logic, p = adapt(runtime, volume, tiny_model)
    after = storable_state(runtime.scene)
    for node_id, state in before.items():
        assert after[node_id] == state  # same storage node, same file name, not marked saved
    assert Path(volume.GetStorageNode().GetFileName()).read_bytes() == file_before
    assert volume.GetStorageNode().GetFileName() == str(tmp_path / "eye.nrrd")


def test_volume_without_storage_node_gains_none(runtime, slicer, tiny_model):
    m = runtime.module
    rgb = (np.random.default_rng(1).random((1, 32, 32, 3)) * 255).astype(np.uint8)
    volume = slicer.util.addVolumeFromArray(rgb, name="from array", nodeClassName="vtkMRMLVectorVolumeNode")
    assert volume.GetStorageNode() is None
    logic = m.GraTaSegmenterLogic()
    p = logic.getParameterNode()
    logic.plotViewNode()  # the panel's plot exists before any run
    ids = node_ids(runtime.scene)
    logic.start(volume, tiny_model, m.AdaptParameters(steps=200, device="cpu"))
    logic.cancel(wait=True)
    logic.finish(p)
    assert volume.GetStorageNode() is None and node_ids(runtime.scene) == ids
    adapt(runtime, volume, tiny_model)
    assert volume.GetStorageNode() is None


def test_results_point_nowhere_near_the_run_folder_and_are_saved_with_the_scene(runtime, slicer, tmp_path,
                                                                                 tiny_model):
    volume = photo_volume(slicer, tmp_path)
    logic, p = adapt(runtime, volume, tiny_model, uncertainty=True)
    results = [p.resultSegmentation, slicer.util.getFirstNodeByClassByName(
        "vtkMRMLScalarVolumeNode", "eye GraTa uncertainty")]
    for node in results:
        assert node is not None
        assert node.GetStorageNode() is None  # new data: nothing points into the deleted run folder
        assert node.GetModifiedSinceRead()  # so Save Data offers it, checked
    saved = save_scene_as_save_data_dialog(runtime, tmp_path / "saved")
    for node_id, path in saved.items():
        assert Path(path).is_file(), (node_id, path)
    # and the saved scene reads back with the segmentation and its segments
    scene = slicer.vtkMRMLScene()
    scene.SetURL(str(tmp_path / "saved" / "scene.mrml"))
    assert scene.Connect()
    seg = scene.GetFirstNodeByName(p.resultSegmentation.GetName())
    assert seg.GetSegmentation().GetNumberOfSegments() == 2


def save_scene_as_save_data_dialog(runtime, folder: Path) -> dict:
    """What File > Save Data does by default (qSlicerSaveDataDialog, 5.10/5.12): every
    storable node that is not hidden and is saved with the scene gets a file name
    (a default storage node where it had none); the *modified* ones are written;
    then the .mrml. Returns node id -> the file the saved scene refers to."""
    import slicer

    folder.mkdir(parents=True, exist_ok=True)
    scene = runtime.scene
    refs = {}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
        if node.GetHideFromEditors() or not node.GetSaveWithScene():
            continue
        modified = node.GetModifiedSinceRead()
        if node.GetStorageNode() is None or not node.GetStorageNode().GetFileName():
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
            storage.SetFileName(str(folder / (node.GetName() + "." + storage.GetDefaultWriteFileExtension())))
        path = node.GetStorageNode().GetFileName()
        if modified:
            assert slicer.util.saveNode(node, path)
        refs[node.GetID()] = path
    assert slicer.util.saveScene(str(folder / "scene.mrml"))
    return refs


def test_results_overlay_a_rotated_anisotropic_input_under_a_transform(runtime, slicer, tmp_path, tiny_model):
    c, s = np.cos(0.4), np.sin(0.4)
    direction = (c, -s, 0, s, c, 0, 0, 0, 1)
    volume = photo_volume(slicer, tmp_path, spacing=(0.3, 0.7, 2.0), direction=direction)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = runtime.vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 12.5)
    m.SetElement(1, 3, -4.0)
    transform.SetMatrixTransformToParent(m)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    logic, p = adapt(runtime, volume, tiny_model)
    seg = p.resultSegmentation
    assert seg.GetTransformNodeID() == transform.GetID()
    sh = slicer.mrmlScene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == sh.GetItemParent(sh.GetItemByDataNode(volume))
    # the labelmap in the input's geometry equals what the engine computed on the input's voxels
    for name in ("Optic disc", "Optic cup"):
        segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName(name)
        assert segment_id, name
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, volume)
        assert mask.shape == slicer.util.arrayFromVolume(volume).shape[:3]
    disc = slicer.util.arrayFromSegmentBinaryLabelmap(
        seg, seg.GetSegmentation().GetSegmentIdBySegmentName("Optic disc"), volume)
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    ijk = runtime.vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk)
    expected = ";".join(f"{ijk.GetElement(r, k):.6g}" for r in range(4) for k in range(4))
    got = ";".join(f"{float(v):.6g}" for v in geometry.split(";")[:16])
    assert got == expected
    # on the input's own grid: resampling the segment to the volume loses or adds no voxel
    internal = slicer.util.arrayFromSegmentInternalBinaryLabelmap(
        seg, seg.GetSegmentation().GetSegmentIdBySegmentName("Optic disc"))
    assert disc.sum() == internal.sum()


def test_segments_are_named_coloured_and_coded_in_the_loaded_context(runtime, slicer, tmp_path, tiny_model):
    logic, p = adapt(runtime, photo_volume(slicer, tmp_path), tiny_model)
    segmentation = p.resultSegmentation.GetSegmentation()
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    terms = slicer.modules.terminologies.logic()  # the module registered its file with this logic
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        entry = runtime.vtk.reference("")
        assert segment.GetTag(tag, entry)
        assert resolves(terms, str(entry)), str(entry)
        assert segment.GetName() in ("Optic disc", "Optic cup")
    assert terms.IsTerminologyContextLoaded("Segmentation category and type - GraTaSegmenter")


def test_segments_of_another_model_keep_their_own_names_and_codes(runtime, slicer, tmp_path):
    """Every layer of the engine's .seg.nrrd has label value 1: matching terms by label value
    named any model's first class 'Optic disc'."""
    from test_cli_support import tiny_3d_model, volume

    model = str(tiny_3d_model(tmp_path / "tiny3d.safetensors"))
    sitk.WriteImage(sitk.GetImageFromArray(volume((8, 16, 16))), str(tmp_path / "ct.nrrd"))
    ct = slicer.util.loadVolume(str(tmp_path / "ct.nrrd"))
    logic, p = adapt(runtime, ct, model, steps=1, method="tent")
    segmentation = p.resultSegmentation.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["liver", "spleen"]
    entry = runtime.vtk.reference("")
    assert segmentation.GetNthSegment(0).GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
    assert "SCT^10200004^Liver" in str(entry)


def test_a_chosen_segmentation_is_replaced_only_on_success_and_no_orphans(runtime, slicer, tmp_path, tiny_model):
    m = runtime.module
    volume = photo_volume(slicer, tmp_path)
    chosen = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my corrections")
    chosen.GetSegmentation().AddEmptySegment("", "mine")
    chosen_unc = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my uncertainty")
    logic = m.GraTaSegmenterLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.outputSegmentation, p.uncertaintyVolume = volume, chosen, chosen_unc
    # a failed run (a model file that is not one) changes nothing
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    logic.plotViewNode()
    ids = node_ids(runtime.scene)
    logic.start(volume, str(bad), m.AdaptParameters(steps=1, device="cpu", uncertainty=True))
    with pytest.raises(RuntimeError):
        run_to_end(runtime, logic, p)
    assert node_ids(runtime.scene) == ids
    assert chosen.GetSegmentation().GetNthSegment(0).GetName() == "mine"
    counts = []
    for _ in range(3):
        logic.start(volume, tiny_model, m.AdaptParameters(steps=1, device="cpu", uncertainty=True))
        run_to_end(runtime, logic, p)
        counts.append(len(node_ids(runtime.scene)))
    assert counts[0] == counts[1] == counts[2]  # no storage/display nodes left behind per run
    assert p.resultSegmentation is chosen
    names = sorted(chosen.GetSegmentation().GetNthSegment(i).GetName()
                   for i in range(chosen.GetSegmentation().GetNumberOfSegments()))
    assert names == ["Optic cup", "Optic disc"]
    assert chosen_unc.GetImageData() is not None and chosen_unc.GetModifiedSinceRead()
    values = slicer.util.arrayFromVolume(chosen_unc)
    assert values.shape == (1, 40, 40) and 0 <= values.min() <= values.max() <= 1


def test_plot_nodes_stay_out_of_the_data_tree_and_come_back_after_a_scene_close(runtime, slicer, tmp_path,
                                                                               tiny_model):
    logic, p = adapt(runtime, photo_volume(slicer, tmp_path), tiny_model, steps=3)
    assert logic.plotPointCount() == 3
    table = logic.plot.table
    assert table.GetNumberOfColumns() == 3 and table.GetNumberOfRows() == 3
    sh = slicer.mrmlScene.GetSubjectHierarchyNode()
    for node in logic.plot._nodes:
        assert not sh.GetItemByDataNode(node), node.GetName()
        assert node.GetHideFromEditors() and not node.GetSaveWithScene()
    view = logic.plotViewNode()
    slicer.mrmlScene.Clear(0)
    again = logic.plotViewNode()
    assert slicer.mrmlScene.IsNodePresent(again) and again is not view


def test_continual_mode_carries_the_state_and_reset_forgets_it(runtime, slicer, tmp_path, tiny_model):
    m = runtime.module
    volume = photo_volume(slicer, tmp_path)
    logic = m.GraTaSegmenterLogic()
    p = logic.getParameterNode()
    cosines = []
    for _ in range(2):
        logic.start(volume, tiny_model, m.AdaptParameters(steps=1, device="cpu", mode="continual"))
        run_to_end(runtime, logic, p)
        cosines.append(logic.run.progress.plot_cosine[-1])
    assert logic.continual.runs == 2 and logic.continual.active
    logic.continual.reset()
    logic.start(volume, tiny_model, m.AdaptParameters(steps=1, device="cpu", mode="continual"))
    run_to_end(runtime, logic, p)
    assert logic.run.progress.plot_cosine[-1] == cosines[0]  # from the source model again
    assert cosines[1] != cosines[0]
    logic.continual.reset()


def test_a_monai_bundle_chosen_as_a_folder_segments_a_ct_with_the_bundles_segments(runtime, slicer, tmp_path):
    """The panel's 'nnU-Net or MONAI model folder...' choice: the card from the folder's JSON, the
    run on a scalar CT volume, the segments named and coded from the bundle's labels."""
    from test_monai_bundle import make_bundle

    from GraTaSegmenterLib import phantom3d

    m = runtime.module
    bundle = str(make_bundle(tmp_path / "bundle"))
    logic = m.GraTaSegmenterLogic()
    text = logic.modelCardText(m.ANY_FOLDER, bundle)
    assert "MONAI bundle tiny abdomen" in text and "Segments: liver, spleen" in text and "UNet" in text
    assert "Select an nnU-Net" in logic.modelCardText(m.ANY_FOLDER, "")
    with pytest.raises(ValueError, match="MONAI bundle folder"):
        logic.resolveModel(m.ANY_FOLDER, str(tmp_path))  # a folder that is no model
    case = phantom3d.render_case("B", 0, scale=0.5)
    image = sitk.GetImageFromArray(case.image)
    image.SetSpacing(tuple(reversed(case.spacing)))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    ct = slicer.util.loadVolume(str(tmp_path / "ct.nrrd"))
    assert ct.IsA("vtkMRMLScalarVolumeNode")
    logic, p = adapt(runtime, ct, logic.resolveModel(m.ANY_FOLDER, bundle), steps=1, method="grata")
    assert p.resultSegmentation is not None
    segmentation = p.resultSegmentation.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["liver", "spleen"]
    entry = runtime.vtk.reference("")
    assert segmentation.GetNthSegment(1).GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
    assert "SCT^78961009^Spleen" in str(entry)
    assert logic.run.progress.plot_steps == [1]
