"""Shared fixtures: small, seeded networks and model files made on the fly."""

from __future__ import annotations

import pytest
import torch

from GraTaSegmenterLib.models import ModelCard, save_model
from GraTaSegmenterLib.models.fundus import FUNDUS_CLASSES
from GraTaSegmenterLib.models.card import SegmentClass
from GraTaSegmenterLib.models.unet import UNet


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny models: more threads only contend


def fundus_card(**overrides) -> ModelCard:
    values = dict(
        name="tiny fundus unet", architecture="unet",
        arguments={"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "channels": [4, 8], "norm": "batch"},
        input_channels=3, spatial_dims=2, output="sigmoid", classes=FUNDUS_CLASSES, input_size=(32, 32),
        provenance={"made_by": "tests"},
    )
    values.update(overrides)
    return ModelCard(**values)


def volume_card(norm: str = "instance") -> ModelCard:
    classes = (SegmentClass("liver", 1, 1, (0.8, 0.3, 0.2)), SegmentClass("tumour", 2, 2, (0.2, 0.8, 0.2)))
    return ModelCard(
        name="tiny 3d unet", architecture="unet",
        arguments={"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "norm": norm},
        input_channels=1, spatial_dims=3, output="softmax", classes=classes,
    )


def build(card: ModelCard) -> torch.nn.Module:
    net = UNet(**card.arguments)
    net.card = card
    return net


@pytest.fixture
def fundus_model_file(tmp_path):
    card = fundus_card()
    net = UNet(**card.arguments)
    return save_model(net, card, tmp_path / "tiny.safetensors")


# -- the test process's own exit -------------------------------------------------------------
# The Slicer module and web page tests build many MRML scenes, segment editors and offscreen
# render windows in this process. VTK observers that call back into Python keep them out of
# reach of the garbage collector, so the interpreter's teardown destroys what is left of them
# in no particular order, and that has crashed (SIGSEGV) after every test had passed and the
# summary was printed: CI then failed on a run that had passed. The product's own processes
# are not affected (the web server's clean exit 0 after SIGTERM is asserted in
# test_web_browser.py; the engine exits through os._exit when cancelled). So, once pytest is
# completely done, this process ends with pytest's own exit status without that teardown.
_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import os
    import sys

    if _exit_status and ("vtkmodules" in sys.modules or "slicer" in sys.modules):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
