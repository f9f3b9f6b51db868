"""The Device menu: which GPUs the engine can use, asked in a child process without freezing the panel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from GraTaSegmenterLib.slicer_support import devices
from GraTaSegmenterLib.slicer_support.parameters import engine_environment

MODULE_DIR = Path(__file__).resolve().parents[1] / "GraTaSegmenter"


def test_the_probe_reports_this_machines_torch_and_devices():
    info = devices.probe()
    assert info["torch"] == torch.__version__
    assert len(info["cuda"]) == torch.cuda.device_count() if torch.cuda.is_available() else info["cuda"] == []
    assert info["mps"] == bool(torch.backends.mps.is_available())
    assert "error" not in info


def test_the_child_process_probe_gives_the_same_answer_in_the_background():
    env = engine_environment(os.environ, MODULE_DIR)
    future = devices.probe_in_background([sys.executable], env)
    assert future.result(timeout=120) == devices.probe()


def test_a_missing_interpreter_or_a_crash_becomes_an_error_label_not_an_exception(tmp_path):
    missing = devices.run_probe([str(tmp_path / "no-python")])
    assert missing["torch"] is None and missing["cuda"] == [] and missing["error"]
    crash = devices.run_probe([sys.executable, "-c", "raise SystemExit('driver exploded')", "--"])
    assert "driver exploded" in crash["error"]
    assert devices.device_labels(crash)["auto"].startswith("auto: CPU [")


def test_labels_name_the_gpu_and_its_memory():
    two = {"torch": "2.13.0", "cuda": [{"name": "NVIDIA H200", "memory_gb": 139.8},
                                       {"name": "NVIDIA T4", "memory_gb": 15.0}], "mps": False}
    labels = devices.device_labels(two)
    assert labels["auto"] == "auto: CUDA - NVIDIA H200 (139.8 GB), NVIDIA T4 (15 GB)"
    assert labels["cuda"] == "cuda: NVIDIA H200 (139.8 GB), NVIDIA T4 (15 GB)"
    assert labels["mps"] == "mps (not available)" and labels["cpu"] == "cpu"
    mac = devices.device_labels({"torch": "2.13.0", "cuda": [], "mps": True})
    assert (mac["auto"], mac["cuda"], mac["mps"]) == ("auto: Apple GPU (MPS)", "cuda (no CUDA GPU found)",
                                                      "mps: Apple GPU")
