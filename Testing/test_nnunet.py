"""nnU-Net v2 model folders: read safely, predicted as nnU-Net predicts, adapted on its windows.

The model folder is made by ``scripts/make_nnunet_model.py``: planned by nnU-Net,
its network built, trained (briefly) and checkpointed by nnU-Net's own trainer.
The reference every prediction is held against is nnU-Net's ``nnUNetPredictor``
loading that folder by itself.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GraTaSegmenterLib import imageio, phantom3d
from GraTaSegmenterLib.adaptation.norm import NORM_TYPES, adaptation_summary
from GraTaSegmenterLib.adaptation.views import consistency_views
from GraTaSegmenterLib.errors import ConfigurationError, InputError, ModelFileError, OutOfMemory
from GraTaSegmenterLib.models.nnunet import (build_network, is_nnunet_folder, load_nnunet, regions,
                                              resolved_configuration)
from GraTaSegmenterLib.segment import Options, Segmenter
from test_cli_support import OBLIQUE_3D, Canary, assert_same_geometry, parse_events, run_cli, set_geometry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nnunet")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_nnunet_model.py"), str(out), "--cases", "4",
                           "--iterations", "30", "--scale", "0.5"], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["folder"])


@pytest.fixture
def copy(folder, tmp_path):
    """A copy of the model folder to tamper with."""
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


@pytest.fixture(scope="module")
def volume_b(tmp_path_factory) -> Path:
    """Centre B (other calibration) at an oblique orientation: nnU-Net reads voxels, not directions."""
    case = phantom3d.render_case("B", 11, scale=0.5)
    image = sitk.GetImageFromArray(case.image)
    set_geometry(image, tuple(reversed(case.spacing)), (12.5, -30.0, 7.25), OBLIQUE_3D)
    path = tmp_path_factory.mktemp("volumes") / "centre_b.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def nnunet_reference(folder: Path, volume: Path, folds=(0,), weights=None):
    """nnU-Net's own prediction: the predictor loads the folder itself (weights_only=False: our own file)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    if weights is not None:
        predictor.list_of_parameters = weights
    image = sitk.ReadImage(str(volume))
    array = sitk.GetArrayFromImage(image)[None].astype(np.float32)
    return predictor.predict_single_npy_array(array, {"spacing": list(image.GetSpacing())[::-1]},
                                              save_or_return_probabilities=True)


def segment(folder, volume, **options):
    seg = Segmenter(Options(model=str(folder), device="cpu", **options), log=lambda message: None)
    return seg, seg.segment(imageio.read_image(volume))


def edit_checkpoint(fold: Path, change) -> None:
    path = fold / "checkpoint_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    change(checkpoint)
    torch.save(checkpoint, path)


def edit_plans(folder: Path, change) -> None:
    plans = json.loads((folder / "plans.json").read_text())
    change(plans)
    (folder / "plans.json").write_text(json.dumps(plans))


# -- prediction: nnU-Net's own -------------------------------------------------------------------

def test_method_none_is_nnunets_own_prediction(folder, volume_b):
    _, ours = segment(folder, volume_b, method="none", probabilities=True)
    labels, probabilities = nnunet_reference(folder, volume_b)
    assert ours.labels.shape == labels.shape == sitk.ReadImage(str(volume_b)).GetSize()[::-1]
    np.testing.assert_array_equal(ours.labels, labels)
    np.testing.assert_allclose(ours.probabilities, probabilities[1:], atol=1e-6)
    # not a constant field: the briefly trained network already ranks the liver above the rest
    truth = phantom3d.render_case("B", 11, scale=0.5).labels
    liver = ours.probabilities[0]
    assert liver.std() > 1e-3 and liver[truth == 1].mean() > liver[truth != 1].mean() + 0.05
    assert [m.sum() for m in ours.masks] == [int((labels == k).sum()) for k in (1, 2, 3)]


def test_an_ensemble_of_folds_is_predicted_as_nnunet_averages_it(copy, volume_b):
    shutil.copytree(copy / "fold_0", copy / "fold_1")
    generator = torch.Generator().manual_seed(1)

    def perturb(checkpoint):
        for value in checkpoint["network_weights"].values():
            value.add_(torch.randn(value.shape, generator=generator) * 0.05 * value.std().nan_to_num(0.0))

    edit_checkpoint(copy / "fold_1", perturb)
    _, ours = segment(copy, volume_b, method="none")
    labels, _ = nnunet_reference(copy, volume_b, folds=(0, 1))
    np.testing.assert_array_equal(ours.labels, labels)
    single, _ = nnunet_reference(copy, volume_b, folds=(0,))
    assert (single != labels).any()  # the second fold took part
    with pytest.raises(ConfigurationError, match="ensemble of 2 folds.*fold_0"):
        segment(copy, volume_b, method="grata", steps=1)
    _, one_fold = segment(copy / "fold_1", volume_b, method="none")  # a fold folder is a model of its own
    np.testing.assert_array_equal(one_fold.labels, nnunet_reference(copy, volume_b, folds=(1,))[0])


# -- adaptation: on nnU-Net's windows, only the norms move, nnU-Net predicts with them ----------------

def test_grata_adapts_the_instance_norms_and_nnunet_predicts_with_the_adapted_weights(folder, volume_b):
    seg, adapted = segment(folder, volume_b, method="grata", steps=2, lr=1e-3)
    records = adapted.records
    assert [r["step"] for r in records] == [1, 2] and all(r["applied"] for r in records)
    for r in records:
        assert -1 <= r["cosine"] <= 1
        assert r["lr"] == pytest.approx(1e-3 * (r["cosine"] + 1) ** 2 / 4, rel=1e-5)
    source = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    network = seg.pipeline.model.network
    now = network.state_dict()
    trained = set(seg.method.param_names)
    assert trained and all(isinstance(seg.model.get_submodule(n.rsplit(".", 1)[0]), NORM_TYPES) for n in trained)
    changed = {k for k in source if not torch.equal(source[k], now[k])}
    # (the decoder holds the encoder too, so a weight can have two keys: check the module, not the name)
    assert changed and all(isinstance(network.get_submodule(k.rsplit(".", 1)[0]), torch.nn.InstanceNorm3d)
                           for k in changed)
    labels, _ = nnunet_reference(folder, volume_b, weights=seg.pipeline.adapted_weights())
    np.testing.assert_array_equal(adapted.labels, labels)


def test_the_steps_run_on_the_windows_with_most_foreground(folder):
    from GraTaSegmenterLib.nnunet_pipeline import NnUNetPipeline

    model = load_nnunet(folder)
    pipeline = NnUNetPipeline(model, torch.device("cpu"), tile_step_size=0.5)
    case = phantom3d.render_case("A", 3, scale=1.0)  # full size: several windows
    image = sitk.GetImageFromArray(case.image)
    image.SetSpacing(tuple(reversed(case.spacing)))
    prepared = pipeline.prepare(case.image[None], image)
    assert len(prepared.windows) > 2
    pipeline.use_range(prepared)
    windows = pipeline.adaptation_windows(prepared, 2, lambda x: pipeline.module(x))
    with torch.no_grad():
        mass = [float(torch.softmax(pipeline.module(pipeline.window(prepared, w)), 1)[:, 1:].sum())
                for w in prepared.windows]
    assert [mass[prepared.windows.index(w)] for w in windows] == sorted(mass, reverse=True)[:2]
    x = pipeline.window(prepared, windows[0])
    assert x.shape[2:] == tuple(model.config["patch_size"]) and 0 <= float(x.min()) and float(x.max()) <= 1
    # the unit-interval window, scaled back, is nnU-Net's preprocessed data
    back = x * pipeline.module.scale.view(1, -1, 1, 1, 1) + pipeline.module.shift.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(back[0], prepared.padded[windows[0]].float(), atol=1e-4, rtol=1e-5)


def test_consistency_views_follow_the_checkpoints_mirroring_axes(copy, volume_b):
    assert [v.name for v in consistency_views(3, (0,))] == ["identity", "flip_d"]
    assert [v.name for v in consistency_views(3, (1, 2))] == ["identity", "flip_w", "flip_h", "rotate_90_hw",
                                                              "rotate_180_hw", "rotate_270_hw"]
    assert [v.name for v in consistency_views(3, ())] == ["identity"]
    assert len(consistency_views(3, (0, 1, 2))) == len(consistency_views(3)) == 7
    edit_checkpoint(copy / "fold_0", lambda c: c.update(inference_allowed_mirroring_axes=(0,)))
    seg, _ = segment(copy, volume_b, method="grata", steps=1)
    assert seg.method.loss_context.view_axes == (0,)
    assert seg.pipeline.predictor.allowed_mirroring_axes == (0,)


# -- the other configurations: 2d (slice by slice) and 3d_lowres ---------------------------------------

@pytest.fixture(scope="module")
def folder_2d(tmp_path_factory) -> Path:
    """A 2d configuration, planned and trained by nnU-Net as the 3d one (a volume predicted slice by slice)."""
    out = tmp_path_factory.mktemp("nnunet2d")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_nnunet_model.py"), str(out), "--cases", "4",
                           "--iterations", "30", "--scale", "0.5", "--configuration", "2d"], capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["folder"])


def test_a_2d_configuration_predicts_slice_by_slice_as_nnunet_and_adapts_on_2d_windows(folder_2d, volume_b):
    model = load_nnunet(folder_2d)
    assert model.configuration == "2d" and model.card.spatial_dims == 2 and len(model.config["patch_size"]) == 2
    _, ours = segment(folder_2d, volume_b, method="none", probabilities=True)
    labels, probabilities = nnunet_reference(folder_2d, volume_b)
    assert ours.labels.shape == labels.shape == sitk.ReadImage(str(volume_b)).GetSize()[::-1]
    np.testing.assert_array_equal(ours.labels, labels)
    np.testing.assert_allclose(ours.probabilities, probabilities[1:], atol=1e-6)

    seg, adapted = segment(folder_2d, volume_b, method="grata", steps=2, lr=1e-3)
    assert [r["step"] for r in adapted.records] == [1, 2]
    # the steps see nnU-Net's 2D windows (one slice each) and the engine's 2D views
    prepared = seg.pipeline.prepare(imageio.read_image(volume_b).array, sitk.ReadImage(str(volume_b)))
    assert seg.pipeline.window(prepared, prepared.windows[0]).shape == (1, 1, *model.config["patch_size"])
    assert seg.method.loss_context.spatial_dims == 2
    assert [v.name for v in consistency_views(2, seg.method.loss_context.view_axes)][:3] == \
        ["identity", "flip_horizontal", "flip_vertical"]
    network = seg.pipeline.model.network
    source = torch.load(folder_2d / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    changed = {k for k, v in network.state_dict().items() if not torch.equal(source[k], v)}
    assert changed and all(isinstance(network.get_submodule(k.rsplit(".", 1)[0]), torch.nn.InstanceNorm2d)
                           for k in changed)
    np.testing.assert_array_equal(adapted.labels,
                                  nnunet_reference(folder_2d, volume_b, weights=seg.pipeline.adapted_weights())[0])


def test_a_3d_lowres_configuration_is_predicted_at_its_spacing_and_resampled_back_as_nnunet_does(folder, tmp_path,
                                                                                                  volume_b):
    """nnU-Net plans 3d_lowres only for images much larger than a patch; this one is the 3d_fullres
    network planned at a coarser spacing (inheriting the rest), as nnU-Net writes such plans."""
    lowres = tmp_path / folder.name.replace("3d_fullres", "3d_lowres")
    shutil.copytree(folder, lowres)
    edit_plans(lowres, lambda p: p["configurations"].update({"3d_lowres": {
        "inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres", "spacing": [3.5, 2.25, 2.25],
        "next_stage": "3d_cascade_fullres"}}))
    edit_checkpoint(lowres / "fold_0", lambda c: c["init_args"].update(configuration="3d_lowres"))
    model = load_nnunet(lowres)
    assert model.configuration == "3d_lowres" and model.config["spacing"] == [3.5, 2.25, 2.25]
    seg, ours = segment(lowres, volume_b, method="none", probabilities=True)
    labels, probabilities = nnunet_reference(lowres, volume_b)
    assert ours.labels.shape == labels.shape == sitk.ReadImage(str(volume_b)).GetSize()[::-1]
    np.testing.assert_array_equal(ours.labels, labels)
    np.testing.assert_allclose(ours.probabilities, probabilities[1:], atol=1e-6)
    fullres, _ = nnunet_reference(folder, volume_b)
    assert (labels != fullres).any()  # the coarser grid was used, and resampled back to the input's
    prepared = seg.pipeline.prepare(imageio.read_image(volume_b).array, sitk.ReadImage(str(volume_b)))
    assert prepared.data.shape[1] < sitk.ReadImage(str(volume_b)).GetSize()[2]
    # and the cascade's second stage, which needs the first stage's segmentation, is refused by name
    edit_plans(lowres, lambda p: p["configurations"].update({"3d_cascade_fullres": {
        "inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}))
    edit_checkpoint(lowres / "fold_0", lambda c: c["init_args"].update(configuration="3d_cascade_fullres"))
    with pytest.raises(ModelFileError, match="second stage of a cascade"):
        load_nnunet(lowres)


@pytest.fixture(scope="module")
def folder_regions(tmp_path_factory) -> Path:
    """A region-based model (nested regions, sigmoid outputs), trained by nnU-Net's trainer."""
    out = tmp_path_factory.mktemp("nnunet_regions")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_nnunet_model.py"), str(out), "--cases", "4",
                           "--iterations", "30", "--scale", "0.5", "--regions"], capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["folder"])


def test_a_region_based_model_gives_one_overlapping_segment_per_region_as_nnunet_predicts(folder_regions,
                                                                                         volume_b):
    from GraTaSegmenterLib import model_folders

    card = load_nnunet(folder_regions).card
    assert card.output == "sigmoid"
    assert [(c.name, c.channel, c.label) for c in card.classes] == [("organs", 0, 1), ("spleen or kidney", 1, 2),
                                                                   ("kidney", 2, 3)]
    assert card.classes[2].type.value == "64033007" and card.classes[0].type is None  # no code for "organs"
    dataset = json.loads((folder_regions / "dataset.json").read_text())
    assert [name for name, _ in regions({**dataset, "labels": {**dataset["labels"], "ignore": 4}})] == \
        ["organs", "spleen or kidney", "kidney"]  # nnU-Net's unannotated-voxel label is no region
    text = model_folders.card_text(folder_regions)
    assert "Segments: organs, spleen or kidney, kidney" in text and "segments may overlap" in text

    _, ours = segment(folder_regions, volume_b, method="none", probabilities=True)
    labels, probabilities = nnunet_reference(folder_regions, volume_b)
    assert probabilities.shape[0] == 3  # one sigmoid per region, no background
    np.testing.assert_array_equal(ours.labels, labels)
    np.testing.assert_allclose(ours.probabilities, probabilities, atol=1e-6)
    for mask, region in zip(ours.masks, ([1, 2, 3], [2, 3], [3])):
        np.testing.assert_array_equal(mask, np.isin(labels, region))
    assert ours.masks[2].sum() > 0 and (ours.masks[0] >= ours.masks[1]).all() and (ours.masks[1] >= ours.masks[2]).all()

    seg, adapted = segment(folder_regions, volume_b, method="grata", steps=2, lr=1e-3)
    assert seg.method.loss_context.output == "sigmoid"
    assert [r["step"] for r in adapted.records] == [1, 2] and all(-1 <= r["cosine"] <= 1 for r in adapted.records)
    weights = seg.pipeline.adapted_weights()
    source = torch.load(folder_regions / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert any(not torch.equal(source[k], v) for k, v in weights[0].items())
    np.testing.assert_array_equal(adapted.labels, nnunet_reference(folder_regions, volume_b, weights=weights)[0])


# -- loading: nothing from the folder runs --------------------------------------------------------------

def test_a_checkpoint_carrying_code_is_refused_without_running_it(copy, tmp_path, volume_b):
    canary = tmp_path / "canary"
    edit_checkpoint(copy / "fold_0", lambda c: c.update(logging=Canary(canary)))
    with pytest.raises(ModelFileError, match="could run code"):
        load_nnunet(copy)
    code, out, err = run_cli(["info", copy])
    assert code != 0 and "could run code" in err and "weights_only=False" not in err
    code, out, err = run_cli(["adapt", volume_b, "-o", tmp_path / "out", "--model", copy, "--device", "cpu"])
    assert code != 0 and "could run code" in err
    assert not canary.exists()
    assert not (tmp_path / "out" / "centre_b").exists()
    # the same pickle does run when loaded the unsafe way, so the canary would have told
    pickle.loads(pickle.dumps(Canary(canary)))
    assert canary.exists()


@pytest.mark.parametrize("change, message", [
    (lambda p: p["configurations"]["3d_fullres"]["architecture"].update(network_class_name="os.system"),
     "network 'os.system'"),
    (lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(conv_op="subprocess.Popen"),
     "conv_op = 'subprocess.Popen'"),
    (lambda p: p["configurations"]["3d_fullres"].update(preprocessor_name="MyPreprocessor"),
     "not nnU-Net's own: preprocessor 'MyPreprocessor'"),
    (lambda p: p["configurations"]["3d_fullres"].update(resampling_fn_data="evil"), "resampling_fn_data 'evil'"),
    (lambda p: p.update(image_reader_writer="NibabelIOWithReorient"), "NibabelIOWithReorient"),
    (lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
        features_per_stage=[4, 8, 16, 32, 32]),
     "the weights do not fit the network the plans describe.*trainer 'nnUNetTrainer'"),
])
def test_plans_naming_other_code_or_another_network_are_refused(copy, change, message):
    edit_plans(copy, change)
    with pytest.raises(ModelFileError, match=message):
        load_nnunet(copy)


def test_incomplete_or_unsupported_folders_say_what_is_wrong(copy, tmp_path):
    (copy / "fold_0" / "checkpoint_final.pth").rename(copy / "fold_0" / "model.pth")
    with pytest.raises(ModelFileError, match="neither checkpoint_final.pth nor checkpoint_best.pth"):
        load_nnunet(copy)
    (copy / "fold_0" / "model.pth").rename(copy / "fold_0" / "checkpoint_best.pth")
    assert load_nnunet(copy).checkpoint == "checkpoint_best.pth"
    dataset = json.loads((copy / "dataset.json").read_text())
    (copy / "dataset.json").write_text(json.dumps({**dataset, "labels": {**dataset["labels"], "ignore": 4}}))
    assert [c.name for c in load_nnunet(copy).card.classes] == ["liver", "spleen", "kidney"]  # no output for it
    (copy / "dataset.json").write_text(json.dumps({**dataset, "labels": {"background": 0, "organ": [1, 2]}}))
    with pytest.raises(ModelFileError, match=r"lists 1 regions but its regions_class_order is None"):
        load_nnunet(copy)
    (copy / "dataset.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="dataset.json .* not readable JSON"):
        load_nnunet(copy)
    assert not is_nnunet_folder(tmp_path / "nothing") and is_nnunet_folder(copy) and is_nnunet_folder(copy / "fold_0")


def test_a_network_without_affine_norms_has_nothing_to_adapt(copy, volume_b):
    edit_plans(copy, lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
        norm_op_kwargs={"eps": 1e-5, "affine": False}))
    config = resolved_configuration(json.loads((copy / "plans.json").read_text()), "3d_fullres")
    keep = set(build_network(config, 1, 4).state_dict())  # the weights of the network without affine norms
    edit_checkpoint(copy / "fold_0", lambda c: c.update(network_weights={
        k: v for k, v in c["network_weights"].items() if k in keep}))
    model = load_nnunet(copy)
    assert adaptation_summary(model.network).startswith("nothing: the network has no normalisation layer")
    with pytest.raises(ConfigurationError, match="no normalisation layer with affine parameters"):
        segment(copy, volume_b, method="grata", steps=1)
    _, prediction = segment(copy, volume_b, method="none")
    assert prediction.labels.shape == sitk.ReadImage(str(volume_b)).GetSize()[::-1]


def test_a_picture_is_refused_with_an_nnunet_model(folder, tmp_path):
    path = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (40, 40), np.uint8)), str(path))
    with pytest.raises(InputError, match=r"photo.png is a 2D image; nnU-Net .* segments volumes \(choose a CT or MR volume\)"):
        segment(folder, path, method="none")


# -- what people see --------------------------------------------------------------------------------

def test_labels_are_named_coded_segments(folder):
    card = load_nnunet(folder).card
    assert [(c.name, c.label, c.channel) for c in card.classes] == [("liver", 1, 1), ("spleen", 2, 2),
                                                                   ("kidney", 3, 3)]
    assert [c.type.value for c in card.classes] == ["10200004", "78961009", "64033007"]
    assert {c.category.meaning for c in card.classes} == {"Anatomical Structure"}
    assert card.output == "softmax" and card.spatial_dims == 3 and card.input_channels == 1


def test_info_says_what_the_model_is_and_what_adapts(folder):
    code, out, err = run_cli(["info", folder])
    assert code == 0, err
    for expected in ("nnU-Net Dataset501_GraTaPhantom 3d_fullres", "network: PlainConvUNet", "norm InstanceNorm3d",
                     "patch: 20 x 80 x 80 voxels at 2.5 x 1.5 x 1.5 mm", "normalisation: CTNormalization",
                     "classes: liver (label 1), spleen (label 2), kidney (label 3)",
                     "adapts: the affine parameters of 18 InstanceNorm3d layers", "fold 0: ", "sha256 "):
        assert expected in out, (expected, out)


def test_the_command_line_writes_nnunets_segmentation_in_the_inputs_geometry(folder, volume_b, tmp_path):
    code, out, err = run_cli(["adapt", volume_b, "-o", tmp_path, "--model", folder, "--steps", "1", "--device", "cpu",
                              "--events", "--uncertainty"])
    assert code == 0, err
    events = parse_events(out)
    assert [e["event"] for e in events].count("step") == 1
    result = tmp_path / "centre_b"
    labelmap = sitk.ReadImage(str(result / "labelmap.nii.gz"))
    assert_same_geometry(labelmap, sitk.ReadImage(str(volume_b)))
    seg = sitk.ReadImage(str(result / "segmentation.seg.nrrd"))
    names = [seg.GetMetaData(f"Segment{k}_Name") for k in range(3)]
    assert names == ["liver", "spleen", "kidney"]
    assert "SCT^10200004^Liver" in seg.GetMetaData("Segment0_Tags")
    uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(str(result / "uncertainty.nii.gz")))
    assert 0 <= uncertainty.min() and uncertainty.max() <= 1


def test_the_folder_describes_itself_from_its_json_without_torch(folder):
    """What the Slicer panel and the web page show before a run (their process may lack torch)."""
    from GraTaSegmenterLib import model_folders

    assert model_folders.kind(folder) == model_folders.kind(folder / "fold_0") == "nnunet"
    assert model_folders.kind(folder / "fold_0" / "checkpoint_final.pth") is None
    text = model_folders.card_text(folder)
    assert "Segments: liver, spleen, kidney" in text
    assert "configuration: 3d_fullres" in text and "folds: 0" in text and "trainer: nnUNetTrainer" in text
    assert "folds: 0" in model_folders.card_text(folder / "fold_0")
    code = ("import sys; import GraTaSegmenterLib.model_folders as f; f.card_text(sys.argv[1]); "
            "assert not {'torch', 'monai', 'nnunetv2'} & set(sys.modules), 'imported'")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                          cwd=ROOT / "GraTaSegmenter", timeout=120)
    assert done.returncode == 0, done.stderr


# -- how long it will take: the estimate before the work ---------------------------------------------------

def test_the_run_says_how_long_it_will_take_from_one_timed_forward_pass(copy, tmp_path):
    """One ``estimate`` event per volume, before the first step: a timed forward pass times the
    passes the run makes (steps at 2 x TRAIN_PASS + views each, the window choice, nnU-Net's
    prediction over every window and mirror)."""
    from GraTaSegmenterLib import cost
    from GraTaSegmenterLib.events import validate

    edit_checkpoint(copy / "fold_0", lambda c: c.update(inference_allowed_mirroring_axes=(1, 2)))
    case = phantom3d.render_case("C", 2, scale=1.0)  # full size: several windows
    image = sitk.GetImageFromArray(case.image)
    image.SetSpacing(tuple(reversed(case.spacing)))
    path = tmp_path / "c.nii.gz"
    sitk.WriteImage(image, str(path))
    events, lines = [], []
    seg = Segmenter(Options(model=str(copy), device="cpu", method="grata", steps=3),
                    emit=lambda name, **fields: events.append({"event": name, "time": 0.0, **fields}),
                    log=lines.append)
    seg.segment(imageio.read_image(path))
    assert [e["event"] for e in events][:2] == ["estimate", "step"]
    estimate = events[0]
    assert validate(estimate) == [] and estimate["input"] == str(path) and estimate["device"] == "cpu"
    windows = len(seg.pipeline.predictor._internal_get_sliding_window_slicers(
        seg.pipeline.prepare(case.image[None], image).padded.shape[1:]))
    assert windows > 2
    views = 6  # the flips of W and H and the three in-plane rotations, with the identity
    passes = 3 * (2 * cost.TRAIN_PASS + views) + windows + windows * 4  # 4 = the mirrors of axes 1 and 2
    assert estimate["forward_seconds"] > 0
    assert estimate["seconds"] == pytest.approx(estimate["forward_seconds"] * passes, rel=1e-9)
    assert estimate["prediction_seconds"] == pytest.approx(estimate["forward_seconds"] * windows * 4, rel=1e-9)
    assert any(line.startswith("c.nii.gz: about ") and "3 steps of about 11 passes each" in line
               and f"prediction {windows * 4} passes" in line for line in lines)

    none = Segmenter(Options(model=str(copy), device="cpu", method="none"), log=lines.append,
                     emit=lambda name, **fields: events.append({"event": name, **fields}))
    loaded = imageio.read_image(path)
    prepared = none.pipeline.prepare(loaded.array, loaded.image)
    none.pipeline.use_range(prepared)
    none._announce_cost(loaded, 0, prepared, steps=0)  # what segment() announces, without the prediction after it
    assert events[-1]["event"] == "estimate"  # no steps, no window choice: the prediction alone
    assert events[-1]["seconds"] == pytest.approx(events[-1]["forward_seconds"] * windows * 4, rel=1e-9)


def test_steps_that_do_not_fit_in_the_free_memory_are_refused_before_the_first(folder, volume_b, monkeypatch):
    from GraTaSegmenterLib import memory

    before = volume_b.read_bytes()
    lines = []
    seg = Segmenter(Options(model=str(folder), device="cpu", method="grata", steps=2), log=lines.append)
    loaded = imageio.read_image(volume_b)
    seg.segment(loaded)
    held = [line for line in lines if line.startswith("an adaptation step holds about ")]
    assert len(held) == 1 and held[0].endswith("MiB on cpu")
    monkeypatch.setattr(memory, "device_available_bytes", lambda device: 1 << 20)
    steps = []
    seg = Segmenter(Options(model=str(folder), device="cpu", method="grata", steps=2), log=lines.append,
                    emit=lambda name, **fields: steps.append(name))
    with pytest.raises(OutOfMemory, match=r"needs about .* GiB of memory \(and crops of them down to 50% of each "
                                          r"axis do not fit either\) and 0\.0 GiB is free on cpu; use --method none"):
        seg.segment(loaded)
    assert "step" not in steps and volume_b.read_bytes() == before
    Segmenter(Options(model=str(folder), device="cpu", method="none"), log=lines.append).segment(loaded)  # no steps


def test_on_a_gpu_the_consistency_views_per_pass_follow_the_free_memory(folder, volume_b, monkeypatch):
    """The CUDA branch of the memory check, run here on the CPU with the device's type and free
    memory stood in: the views per pass are those that fit beside the step, all seven at most."""
    from GraTaSegmenterLib import memory

    seg = Segmenter(Options(model=str(folder), device="cpu", method="grata", steps=1), log=lambda m: None)
    case = seg.pipeline.prepare(imageio.read_image(volume_b).array, sitk.ReadImage(str(volume_b)))
    seg.pipeline.use_range(case)
    window = seg.pipeline.window(case, case.windows[0])
    saved = memory.saved_activation_bytes(seg.method.model, window)
    need = memory.step_bytes("grata", saved)
    seg.device = torch.device("cuda")
    lines = []
    seg.log = lines.append
    for free, expected in ((memory.step_bytes("grata", saved, 3) + 1, 3), (need + 100 * saved, 7),
                           (memory.step_bytes("grata", saved, 2) - 1, 1)):
        monkeypatch.setattr(memory, "device_available_bytes", lambda device, free=free: free)
        seg._check_step_fits(window)
        assert seg.method.loss_context.batch_views == expected
        held = memory.step_bytes("grata", saved, expected)  # the step's memory with the views it will run
        assert lines[-2] == f"an adaptation step holds about {held / (1 << 20):.0f} MiB on {seg.device_text}"
    assert lines[-1].startswith("the consistency views run 1 per pass (of 7)") and seg.step_crop is None
    monkeypatch.setattr(memory, "device_available_bytes", lambda device: need - 1)
    seg._check_step_fits(window)  # a whole window's step with one view does not fit: a crop of it does
    assert seg.step_crop is not None and seg.method.loss_context.batch_views >= 1
    monkeypatch.setattr(memory, "device_available_bytes", lambda device: 1 << 20)
    with pytest.raises(OutOfMemory):
        seg._check_step_fits(window)


def test_steps_too_large_for_the_free_memory_run_on_a_centre_crop_of_the_windows(folder, volume_b, monkeypatch):
    """Where a step on a whole window does not fit and one on a crop does, the steps run on the
    largest centre crop that fits (each axis a multiple of the network's stride, at least half the
    window), the estimate counts the smaller steps, and the prediction keeps nnU-Net's windows."""
    from GraTaSegmenterLib import cost, memory

    loaded = imageio.read_image(volume_b)
    lines, events, shapes = [], [], []
    seg = Segmenter(Options(model=str(folder), device="cpu", method="grata", steps=2), log=lines.append,
                    emit=lambda name, **fields: events.append((name, fields)))
    case = seg.pipeline.prepare(loaded.array, loaded.image)
    seg.pipeline.use_range(case)
    window = seg.pipeline.window(case, case.windows[0])
    count = memory.activation_counter(seg.method.model)
    whole = memory.step_bytes("grata", count(tuple(window.shape))[0])
    monkeypatch.setattr(memory, "device_available_bytes", lambda device: whole - 1)
    step = seg.method.step
    seg.method.step = lambda x: (shapes.append(tuple(x.shape)), step(x))[1]
    prediction = seg.segment(loaded)
    patch, multiple, crop = seg.pipeline.patch, seg.pipeline.step_multiple(seg.pipeline.patch), seg.step_crop
    assert crop is not None and crop != patch and shapes == [(1, 1, *crop)] * 2
    assert all(c % m == 0 and p / 2 <= c <= p for c, m, p in zip(crop, multiple, patch))
    assert memory.step_bytes("grata", count((1, 1, *crop))[0]) <= whole - 1
    said = " x ".join(map(str, crop))
    assert any(line.endswith(f"the steps run on its centre {said} voxels (the prediction on whole windows)")
               for line in lines)
    estimate = next(fields for name, fields in events if name == "estimate")
    context = seg.method.loss_context
    views = len(consistency_views(context.spatial_dims, context.view_axes))
    selection = len(case.windows) if len(case.windows) > 1 else 0
    told = next(line for line in lines if " forward pass of one window takes " in line)
    crop_seconds = float(told.split("of the steps' crop ")[1].split(" s")[0])  # timed apart, as said
    whole_passes = selection + seg.pipeline.prediction_passes(case)
    assert estimate["seconds"] == pytest.approx(estimate["forward_seconds"] * whole_passes
                                                + crop_seconds * 2 * cost.step_passes("grata", views),
                                                abs=0.005 * 2 * cost.step_passes("grata", views))  # said to 0.01 s
    steps = [fields for name, fields in events if name == "step"]
    assert len(steps) == 2 and all(np.isfinite(s["cosine"]) for s in steps)
    assert prediction.masks.shape[1:] == loaded.array.shape[-3:] and prediction.masks.any()


def test_on_a_gpu_the_estimate_times_a_forward_pass_after_the_set_up(folder, volume_b, monkeypatch):
    """A GPU's first forward pass pays one-time set-up (measured on an H200: 1.76 s against 0.018 s
    for the next, which made the estimate of a run 17x too long): there the estimate times the
    second pass, and only the first input pays for the extra one; a CPU adds no pass."""
    from GraTaSegmenterLib import memory

    loaded = imageio.read_image(volume_b)
    monkeypatch.setattr(memory, "device_available_bytes", lambda device: 1 << 40)
    for device, passes in (("cuda", [2, 1]), ("cpu", [1, 1])):
        events = []
        seg = Segmenter(Options(model=str(folder), device="cpu", method="grata", steps=1), log=lambda m: None,
                        emit=lambda name, **fields: events.append((name, fields)))
        seg.device = torch.device(device)  # the device's type stood in; the tensors stay on the CPU
        predict, calls = seg.method.predict, []

        def slow_first(x, predict=predict, calls=calls):
            calls.append(x.shape)
            if len(calls) == 1:
                time.sleep(1.0)  # the set-up of a first pass
            return predict(x)

        seg.method.predict = slow_first
        case = seg.pipeline.prepare(loaded.array, loaded.image)
        seg.pipeline.use_range(case)
        counts = []
        for index in range(2):
            before = len(calls)
            seg._announce_cost(loaded, index, case, steps=1)
            counts.append(len(calls) - before)
        timed = [fields["forward_seconds"] for name, fields in events if name == "estimate"]
        assert counts == passes and len(timed) == 2
        if device == "cuda":
            assert max(timed) < 0.9  # the set-up is not in the estimate
        else:
            assert timed[0] >= 1.0 > timed[1]  # one pass, as timed


def test_the_gpu_figures_networks_are_nnunet_folders_built_from_the_plans(folder, tmp_path):
    """``benchmarks/untrained_nnunet.py`` (the networks the GPU figures time): a folder the engine
    loads like any other, with the source's network, or nnU-Net's default 3d_fullres network at
    128^3 (31.2 M parameters, as the issue's spike timed)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "untrained_nnunet.py"), str(folder),
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout.strip().splitlines()[-1])
    source, untrained = load_nnunet(folder), load_nnunet(made["folder"])
    assert made["parameters"] == sum(p.numel() for p in source.network.parameters())
    assert untrained.card.classes == source.card.classes and untrained.config == source.config
    assert [k for k in untrained.fold_weights[0]] == [k for k in source.fold_weights[0]]

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import untrained_nnunet
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    plans = untrained_nnunet.full_size(json.loads((folder / "plans.json").read_text()))
    config = resolved_configuration(plans, "3d_fullres")
    assert config["patch_size"] == [128, 128, 128]
    assert sum(p.numel() for p in build_network(config, 1, 4).parameters()) == 31_197_204
