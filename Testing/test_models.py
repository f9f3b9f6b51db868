"""Model files: the authors' checkpoints load by key, strictly; our own files
carry their card; nothing in a model file can run code."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from GraTaSegmenterLib.errors import ModelFileError
from GraTaSegmenterLib.models import build_network, load_model, save_model
from GraTaSegmenterLib.models.resunet import AUX_HEADS, ResUnet, resunet_config_from_keys
from GraTaSegmenterLib.models.unet import UNet

from conftest import fundus_card, volume_card


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
def test_reference_checkpoint_loads_with_its_own_names(tmp_path, backbone):
    ref = ResUnet(backbone)
    path = tmp_path / "last-Res_Unet.pth"
    torch.save(ref.state_dict(), path)

    model = load_model(path)

    assert model.backbone == backbone
    assert model.heads == AUX_HEADS
    assert model.card.output == "sigmoid" and [c.name for c in model.card.classes] == ["optic disc", "optic cup"]
    loaded, saved = model.state_dict(), ref.state_dict()
    assert list(loaded) == list(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_reference_checkpoint_without_heads_and_logits_match(tmp_path):
    ref = ResUnet("resnet34", heads=())
    torch.save(ref.state_dict(), tmp_path / "m.pth")
    model = load_model(tmp_path / "m.pth")
    assert model.heads == ()
    x = torch.rand(1, 3, 64, 64)
    ref.eval()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_architecture_is_recognised_from_keys():
    config = resunet_config_from_keys(ResUnet("resnet50", heads=("rotate",)).state_dict())
    assert config == {"backbone": "resnet50", "num_classes": 2, "in_channels": 3, "heads": ["rotate"],
                      "with_fc": True}


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = ResUnet("resnet18", heads=()).state_dict()
    del state["up2.bn.weight"]
    state["extra.layer.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path / "broken.pth")
    message = str(err.value)
    assert "missing keys: up2.bn.weight" in message
    assert "unexpected keys: extra.layer.weight" in message


def test_wrong_shape_is_reported(tmp_path):
    state = ResUnet("resnet18", heads=()).state_dict()
    state["bnout.weight"] = torch.ones(7)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ModelFileError, match="wrong shapes: bnout.weight"):
        load_model(tmp_path / "shape.pth")


class _Payload:
    """Unpickling this would create a file: the attack a tampered model file makes."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("container", ["torch-zip", "plain-pickle"])
def test_tampered_file_does_not_run_code(tmp_path, container):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    payload = {"res.conv1.weight": torch.zeros(1), "evil": _Payload(target)}
    if container == "torch-zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(ModelFileError, match="could run code"):
        load_model(path)
    assert not target.exists()


def test_project_file_round_trip_keeps_weights_and_card(tmp_path):
    card = fundus_card()
    net = UNet(**card.arguments)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    path = save_model(net, card, tmp_path / "m.safetensors")

    model = load_model(path)

    assert model.card == card
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_3d_card_round_trip(tmp_path):
    card = volume_card("group")
    path = save_model(build_network(card), card, tmp_path / "v.safetensors")
    model = load_model(path)
    assert model.card.spatial_dims == 3
    assert model(torch.rand(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)


@pytest.mark.parametrize("content, message", [
    (b"just some text, not weights", "not a model file"),
    (b"", "not a model file"),
])
def test_not_a_model_file(tmp_path, content, message):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_truncated_model_file(tmp_path, fundus_model_file):
    data = fundus_model_file.read_bytes()
    broken = tmp_path / "cut.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(broken)


def test_safetensors_without_card(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelFileError, match="without a GraTaSegmenter model card"):
        load_model(tmp_path / "plain.safetensors")


def test_missing_file():
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model("/nonexistent/model.safetensors")


def test_state_dict_of_another_network(tmp_path):
    torch.save(UNet().state_dict(), tmp_path / "unet.pth")
    with pytest.raises(ModelFileError, match="not of the reference ResUnet"):
        load_model(tmp_path / "unet.pth")


def test_invalid_card_is_refused():
    disc = fundus_card().classes[0]
    with pytest.raises(ModelFileError, match="output 'relu'"):
        fundus_card(output="relu")
    with pytest.raises(ModelFileError, match="labels must be distinct"):
        fundus_card(classes=(disc, dataclasses.replace(disc, channel=1)))
    with pytest.raises(ModelFileError, match="input_size"):
        fundus_card(input_size=(32,))
