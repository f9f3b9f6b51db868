"""Adaptation parameters: validation, persistence, the command line they become."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from GraTaSegmenterLib.slicer_support.parameters import (AdaptParameters, ParameterError, adapt_command,
                                                           engine_environment)


def test_defaults_match_the_issue_and_are_valid():
    p = AdaptParameters()
    assert (p.method, p.steps, p.learning_rate, p.mode, p.device) == ("grata", 10, 1e-4, "episodic", "auto")
    assert p.problems() == []


def test_panel_command_line_and_pipeline_start_from_the_same_defaults():
    from GraTaSegmenterLib.cli import build_parser
    from GraTaSegmenterLib.segment import Options

    args = build_parser().parse_args(["adapt", "image.png", "-o", "out"])
    panel, pipeline = AdaptParameters(), Options()
    for a, o, p in (("method", "method", "method"), ("steps", "steps", "steps"), ("lr", "lr", "learning_rate"),
                    ("aux_loss", "aux_loss", "aux_loss"), ("pseudo_loss", "pseudo_loss", "pseudo_loss"),
                    ("mode", "mode", "mode"), ("device", "device", "device"), ("seed", "seed", "seed")):
        assert getattr(args, a) == getattr(pipeline, o) == getattr(panel, p), a


@pytest.mark.parametrize("change, word", [
    ({"method": "sgd"}, "method"), ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
    ({"learning_rate": 0.0}, "learning rate"), ({"learning_rate": float("nan")}, "learning rate"),
    ({"device": "tpu"}, "device"), ({"mode": "online"}, "mode"), ({"seed": -1}, "seed"),
    ({"aux_loss": "consis"}, "two different losses"),
])
def test_every_invalid_value_is_reported_in_words(change, word):
    p = AdaptParameters(**change)
    assert any(word in problem for problem in p.problems())
    with pytest.raises(ParameterError):
        p.validated()


def test_settings_round_trip_and_bad_settings_fall_back_to_defaults():
    p = AdaptParameters(method="tent", steps=3, learning_rate=5e-4, mode="continual", device="cpu", seed=7,
                        uncertainty=True, precision="bf16")
    assert AdaptParameters.from_settings(p.to_settings()) == p
    assert AdaptParameters.from_settings({"precision": "fp8"}).precision == "fp32"
    assert any("precision must be one of fp32, bf16" in x for x in AdaptParameters(precision="fp16").problems())
    broken = {"steps": "many", "learning_rate": "-1", "method": "magic", "uncertainty": "true", "seed": "3"}
    q = AdaptParameters.from_settings(broken)
    assert (q.steps, q.learning_rate, q.method, q.uncertainty, q.seed) == (10, 1e-4, "grata", True, 3)
    assert AdaptParameters.from_settings({}) == AdaptParameters()


def test_command_has_every_option_of_the_contract(tmp_path):
    p = AdaptParameters(steps=3, device="cpu", seed=1, mode="continual", uncertainty=True, precision="bf16")
    cmd = adapt_command(["/bin/PythonSlicer"], tmp_path / "in.nrrd", tmp_path / "out", tmp_path / "m.safetensors", p,
                        save_state=tmp_path / "s1.pt", load_state=tmp_path / "s0.pt")
    assert cmd[:5] == ["/bin/PythonSlicer", "-m", "GraTaSegmenterLib.cli", "adapt", str(tmp_path / "in.nrrd")]
    opts = dict(zip(cmd[5::1], cmd[6::1]))
    assert opts["-o"] == str(tmp_path / "out") and opts["--model"] == str(tmp_path / "m.safetensors")
    assert (opts["--method"], opts["--steps"], opts["--lr"]) == ("grata", "3", "0.0001")
    assert (opts["--aux-loss"], opts["--pseudo-loss"], opts["--mode"]) == ("ent", "consis", "continual")
    assert (opts["--device"], opts["--seed"], opts["--precision"]) == ("cpu", "1", "bf16")
    assert opts["--save-state"] == str(tmp_path / "s1.pt") and opts["--load-state"] == str(tmp_path / "s0.pt")
    assert {"--uncertainty", "--events", "--overwrite"} <= set(cmd)


def test_command_paths_are_absolute_and_optional_flags_absent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = adapt_command(["py"], "in.nrrd", "out", "m.pth", AdaptParameters())
    assert all(Path(c).is_absolute() for c in (cmd[4], cmd[cmd.index("-o") + 1], cmd[cmd.index("--model") + 1]))
    assert "--uncertainty" not in cmd and "--save-state" not in cmd and "--load-state" not in cmd


def test_invalid_parameters_never_become_a_command(tmp_path):
    with pytest.raises(ParameterError, match="steps"):
        adapt_command(["py"], "a", "b", "c", AdaptParameters(steps=0))


def test_environment_puts_the_library_first_and_unbuffers(tmp_path):
    env = engine_environment({"PYTHONPATH": os.pathsep.join(["/x", str(tmp_path)]), "HOME": "/h"}, tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/x"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/h"


def test_post_processing_is_on_by_default_and_its_check_box_turns_it_off(tmp_path):
    on = adapt_command(["python"], tmp_path / "in.nrrd", tmp_path / "out", tmp_path / "m.safetensors",
                       AdaptParameters())
    off = adapt_command(["python"], tmp_path / "in.nrrd", tmp_path / "out", tmp_path / "m.safetensors",
                        AdaptParameters(postprocess=False))
    assert "--no-postprocess" not in on and off[-3:] == ["--no-postprocess", "--events", "--overwrite"]
    assert AdaptParameters.from_settings(AdaptParameters(postprocess=False).to_settings()).postprocess is False
