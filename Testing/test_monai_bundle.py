"""MONAI bundles: read as data, predicted as the bundle predicts, adapted on its windows.

The tests make a small bundle laid out as MONAI's model zoo lays them out
(configs/inference.json with the zoo's ``$`` entries around the parts we
read, configs/metadata.json, models/model.pt). MONAI's own ``ConfigParser``
running that bundle is the reference for ``--method none``.
"""

from __future__ import annotations

import copy as copy_module
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GraTaSegmenterLib import imageio, phantom3d
from GraTaSegmenterLib.adaptation.norm import NORM_TYPES
from GraTaSegmenterLib.errors import ModelFileError
from GraTaSegmenterLib.models.monai_bundle import is_monai_bundle, load_bundle
from GraTaSegmenterLib.monai_pipeline import consistency_axes
from GraTaSegmenterLib.segment import Options, Segmenter
from test_cli_support import OBLIQUE_3D, Canary, assert_same_geometry, parse_events, run_cli, set_geometry

NETWORK = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16],
           "strides": [2, 2], "num_res_units": 1, "norm": "batch"}
INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "image_key": "image",
    "device": "$torch.device('cpu')",
    "network_def": NETWORK,
    "network": "$@network_def.to(@device)",
    "pixdim": [2.0, 2.0, 3.0],
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key"},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -160, "a_max": 240, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "@image_key", "dtype": "$torch.float32"}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [48, 48, 16], "sw_batch_size": 2, "overlap": 0.25},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
    "run": ["$@evaluator.run()"],
}
METADATA = {"version": "0.1.0", "name": "tiny abdomen", "description": "a tiny test bundle",
            "network_data_format": {"inputs": {"image": {"num_channels": 1, "modality": "CT"}},
                                    "outputs": {"pred": {"num_channels": 3,
                                                         "channel_def": {"0": "background", "1": "liver",
                                                                         "2": "spleen"}}}}}


def zip_bundle(bundle: Path, archive) -> None:
    """The bundle folder as a user zips it (its own name at the top), into ``archive`` (a path or a file)."""
    import zipfile

    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                zipped.write(path, f"{bundle.name}/{path.relative_to(bundle).as_posix()}")


def make_bundle(root: Path, inference=None, weights=True, seed=0, network=None) -> Path:
    """A bundle folder; its weights are those of ``network`` (default NETWORK), whatever the config says
    (the refusal tests tamper with the config, not with the weights)."""
    import monai.networks.nets as nets

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(inference or INFERENCE, indent=2))
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA))
    if weights:
        torch.manual_seed(seed)
        net = nets.UNet(**{k: v for k, v in (network or NETWORK).items() if k != "_target_"})
        with torch.no_grad():  # running statistics that are not the identity, as a trained net has
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm3d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
        torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "tiny_bundle")


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """Centre B of the phantom, oblique, as NIfTI (MONAI's reference reads it with nibabel)."""
    case = phantom3d.render_case("B", 1, scale=0.5)
    image = sitk.GetImageFromArray(case.image)
    set_geometry(image, tuple(reversed(case.spacing)), (10.0, -20.0, 5.0), OBLIQUE_3D)
    path = tmp_path_factory.mktemp("vol") / "centre_b.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def monai_reference(bundle: Path, volume: Path):
    """The bundle run by MONAI itself (ConfigParser evaluating it; fine for our own trusted bundle):
    its postprocessed output, channels first, in SimpleITK's (z, y, x) voxel order."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(volume)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], net)[0]
    out = parser.get_parsed_content("postprocessing")(data)["pred"]
    return np.transpose(np.asarray(out), (0, 3, 2, 1))  # (C, x, y, z) -> (C, z, y, x)


def segment(model: Path, volume: Path, **kwargs):
    seg = Segmenter(Options(model=str(model), device="cpu", **kwargs))
    return seg, seg.segment(imageio.read_image(volume))


# -- loading -------------------------------------------------------------------------------------

def test_a_bundle_is_recognised_and_read_with_its_labels_and_preprocessing(bundle):
    assert is_monai_bundle(bundle) and not is_monai_bundle(bundle / "configs")
    b = load_bundle(bundle)
    assert b.target == "UNet" and b.activation == "softmax" and b.image_key == "image"
    assert [name for name, _ in b.preprocessing] == ["Orientationd", "Spacingd", "ScaleIntensityRanged", "EnsureTyped"]
    assert dict(b.preprocessing)["Spacingd"]["pixdim"] == [2.0, 2.0, 3.0]  # the @reference resolved
    assert [(c.name, c.channel, c.label) for c in b.card.classes] == [("liver", 1, 1), ("spleen", 2, 2)]
    assert b.card.classes[0].type.value == "10200004"  # SNOMED liver, as for nnU-Net labels
    assert b.card.input_size == (48, 48, 16) and b.card.architecture == "monai"


def test_info_says_what_the_bundle_is_and_what_adapts(bundle):
    code, out, err = run_cli(["info", bundle])
    assert code == 0, err
    assert "network: UNet" in out and "Spacingd(pixdim=[2.0, 2.0, 3.0], mode=bilinear)" in out
    assert "SlidingWindowInferer" in out and "activation softmax" in out
    assert "adapts: the affine parameters of" in out and "BatchNorm3d" in out
    assert "sha256" in out


@pytest.mark.parametrize("where, value, message", [
    (("network_def", "_target_"), "$__import__('os').system('touch CANARY')", "Python expression"),
    (("network_def", "_target_"), "monai.apps.download_url", "not one of the classes"),
    (("network_def", "channels"), "$[4, 8, 16]", "Python expression"),
    (("network_def", "norm"), {"_target_": "torch.nn.Identity"}, "an object MONAI would build"),
    (("network_def", "channels"), "%other.json#channels", "macro"),
    (("network_def", "_mode_"), "callable", "directive"),
    (("inferer", "_target_"), "monai.inferers.Inferer", "not one of the classes"),
    (("preprocessing", "transforms", 3), {"_target_": "Lambdad", "keys": "image",
                                          "func": "$lambda x: os.system('touch CANARY')"}, "Python expression"),
    (("preprocessing", "transforms", 3), {"_target_": "Lambdad", "keys": "image"}, "not one of the classes"),
    (("preprocessing", "transforms", 5, "dtype"), "$torch.float16", "Python expression"),
])
def test_anything_that_would_run_code_is_refused_with_its_place(tmp_path, where, value, message):
    config = copy_module.deepcopy(INFERENCE)
    node = config
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    root = make_bundle(tmp_path / "b", config)
    os.chdir(tmp_path)  # a canary 'touch CANARY' would land here
    with pytest.raises(ModelFileError, match=message) as caught:
        load_bundle(root)
    assert ".".join(str(k) for k in where[:2]).split(".")[0] in str(caught.value)
    assert "not loaded" in str(caught.value)
    assert not (tmp_path / "CANARY").exists()


def test_monai_itself_would_have_run_the_canary(tmp_path):
    """The refused bundle is dangerous: MONAI's own parser runs its code."""
    from monai.bundle import ConfigParser

    config = copy_module.deepcopy(INFERENCE)
    canary = tmp_path / "CANARY"
    config["network_def"]["channels"] = f"$__import__('os').system('touch {canary}') or [4, 8, 16]"
    root = make_bundle(tmp_path / "b", config)
    with pytest.raises(ModelFileError, match="Python expression"):
        load_bundle(root)
    assert not canary.exists()
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.get_parsed_content("network_def")
    assert canary.exists()


def test_weights_carrying_code_and_torchscript_are_refused(tmp_path, bundle, volume):
    canary = tmp_path / "canary"
    pickled = make_bundle(tmp_path / "pickled", weights=False)
    with open(pickled / "models" / "model.pt", "wb") as f:
        pickle.dump({"conv.weight": Canary(canary)}, f)
    with pytest.raises(ModelFileError, match="could run code"):
        load_bundle(pickled)
    code, out, err = run_cli(["adapt", volume, "-o", tmp_path / "out", "--model", pickled, "--device", "cpu"])
    assert code != 0 and "could run code" in err
    assert not canary.exists() and not (tmp_path / "out" / "centre_b").exists()

    scripted = make_bundle(tmp_path / "scripted", weights=False)
    (scripted / "models" / "model.ts").write_bytes(b"PK\x03\x04 torchscript")
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_bundle(scripted)

    wrong = make_bundle(tmp_path / "wrong", weights=False)
    shutil.copy(bundle / "models" / "model.pt", wrong / "models" / "model.pt")
    config = json.loads((wrong / "configs" / "inference.json").read_text())
    config["network_def"]["channels"] = [4, 8, 32]
    (wrong / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="wrong shapes"):
        load_bundle(wrong)


def test_yaml_configs_are_read_with_the_safe_loader(tmp_path, bundle):
    import yaml

    root = make_bundle(tmp_path / "y")
    (root / "configs" / "inference.json").unlink()
    text = yaml.safe_dump(INFERENCE)
    (root / "configs" / "inference.yaml").write_text(text)
    assert load_bundle(root).target == "UNet"
    canary = tmp_path / "canary"
    (root / "configs" / "inference.yaml").write_text(
        f"network_def: !!python/object/apply:os.system ['touch {canary}']\n" + text)
    with pytest.raises(ModelFileError, match="not readable"):
        load_bundle(root)
    assert not canary.exists()


# -- predicting as the bundle does -----------------------------------------------------------------

def test_method_none_is_the_bundles_own_prediction(bundle, volume):
    reference = monai_reference(bundle, volume)[0]  # the argmax labels
    seg, prediction = segment(bundle, volume, method="none", steps=0, probabilities=True)
    assert prediction.labels.shape == reference.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(volume))).shape
    # MONAI reads the NIfTI with nibabel, we with SimpleITK: the affines agree to float precision, so a
    # few voxels on a decision boundary may fall either way
    agree = float((prediction.labels == reference).mean())
    assert agree > 0.999, agree
    assert len(np.unique(reference)) > 1  # not a trivial comparison
    assert prediction.probabilities.shape == (2,) + reference.shape


def sigmoid_bundle(root: Path) -> Path:
    """The tiny bundle with one sigmoid channel per organ (no background channel), as multi-label
    bundles have it: masks may overlap, each is its channel above 0.5."""
    import copy

    inference = copy.deepcopy(INFERENCE)
    inference["network_def"]["out_channels"] = 2
    inference["postprocessing"]["transforms"][0] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}
    inference["postprocessing"]["transforms"][2] = {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}
    make_bundle(root, inference=inference, seed=1, network=inference["network_def"])  # liver ~39 % of the voxels, spleen a few
    metadata = copy.deepcopy(METADATA)
    metadata["network_data_format"]["outputs"]["pred"] = {"num_channels": 2, "channel_def": {"0": "liver",
                                                                                           "1": "spleen"}}
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return root


def test_a_sigmoid_bundle_gives_one_mask_per_channel_as_monai_thresholds_them(tmp_path, volume):
    root = sigmoid_bundle(tmp_path / "sigmoid_bundle")
    seg, prediction = segment(root, volume, method="none", steps=0)
    assert [(c.name, c.channel, c.label) for c in seg.card.classes] == [("liver", 0, 1), ("spleen", 1, 2)]
    assert seg.card.output == "sigmoid"
    reference = monai_reference(root, volume)
    assert prediction.masks.shape == reference.shape
    for channel in range(2):
        assert 0 < reference[channel].mean() < 1  # not a trivial comparison
        assert float((prediction.masks[channel] == reference[channel]).mean()) > 0.999
    _, adapted = segment(root, volume, method="grata", steps=1, lr=1e-2)
    assert len(adapted.records) == 1 and adapted.records[0]["cosine"] is not None
    assert adapted.masks.shape == prediction.masks.shape and set(np.unique(adapted.masks)) <= {0, 1}


def test_the_gradient_methods_adapt_only_norm_affine_parameters_and_predict_with_them(bundle, volume):
    source = load_bundle(bundle).network.state_dict()
    seg, prediction = segment(bundle, volume, method="grata", steps=2, lr=1e-2)
    assert len(prediction.records) == 2 and all(r["cosine"] is not None for r in prediction.records)
    changed = [k for k, v in seg.model.network.state_dict().items() if k in source and not torch.equal(v, source[k])]
    assert changed
    modules = dict(seg.model.network.named_modules())
    assert all(isinstance(modules[k.rsplit(".", 1)[0]], NORM_TYPES) for k in changed)
    _, none = segment(bundle, volume, method="none", steps=0)
    assert prediction.labels.shape == none.labels.shape
    assert not np.array_equal(prediction.labels, none.labels)


def test_steps_too_large_for_the_free_memory_run_on_a_crop_the_network_takes(bundle, volume, monkeypatch):
    """A bundle says nothing of its network's stride: the crop's axes are multiples of the largest
    power of two dividing the window (48 -> 16), checked by the network's own shapes on the meta device."""
    from GraTaSegmenterLib import memory

    seg = Segmenter(Options(model=str(bundle), device="cpu", method="grata", steps=2, lr=1e-2))
    loaded = imageio.read_image(volume)
    case = seg.pipeline.prepare(loaded.array, loaded.image)
    window = seg.pipeline.window(case, case.windows[0])
    assert seg.pipeline.step_multiple(tuple(window.shape[2:])) == tuple(16 for _ in window.shape[2:])
    whole = memory.step_bytes("grata", memory.saved_activation_bytes(seg.method.model, window))
    monkeypatch.setattr(memory, "device_available_bytes", lambda device: whole - 1)
    shapes, step = [], seg.method.step
    seg.method.step = lambda x: (shapes.append(tuple(x.shape[2:])), step(x))[1]
    prediction = seg.segment(loaded)
    expected = tuple(32 if size == 48 else size for size in window.shape[2:])  # 48 -> 32; 16 stays (half: 8 < 16)
    assert seg.step_crop == expected and shapes == [expected] * 2
    assert len(prediction.records) == 2 and all(np.isfinite(r["cosine"]) for r in prediction.records)


def test_lateral_labels_keep_the_left_right_axis_out_of_the_views(tmp_path):
    meta = copy_module.deepcopy(METADATA)
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "background", "1": "left kidney",
                                                                     "2": "right kidney"}
    root = make_bundle(tmp_path / "lat")
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert consistency_axes(load_bundle(root)) == (1, 2)  # RAS: axis 0 is left-right
    assert consistency_axes(load_bundle(make_bundle(tmp_path / "plain"))) is None


def test_the_command_line_segments_a_volume_with_a_bundle_in_its_geometry(bundle, volume, tmp_path):
    code, out, err = run_cli(["adapt", volume, "-o", tmp_path, "--model", bundle, "--steps", "1", "--device", "cpu",
                              "--events"])
    assert code == 0, err
    events = parse_events(out)
    assert [e["event"] for e in events].count("step") == 1
    result = tmp_path / "centre_b"
    assert_same_geometry(sitk.ReadImage(str(result / "labelmap.nii.gz")), sitk.ReadImage(str(volume)))
    seg = sitk.ReadImage(str(result / "segmentation.seg.nrrd"))
    assert [seg.GetMetaData(f"Segment{k}_Name") for k in range(2)] == ["liver", "spleen"]
    assert "SCT^10200004^Liver" in seg.GetMetaData("Segment0_Tags")
