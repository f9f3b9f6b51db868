"""An nnU-Net v2 model folder with freshly initialised weights, for speed and memory figures.

A trained checkpoint of a full-size network is too large to carry to a lent GPU machine (a
31 M-parameter 3d_fullres network is 124 MB before its optimiser state), and what a step or a
prediction costs does not depend on the weights' values, only on the network and the window. This
script therefore writes a model folder in nnU-Net's format (``dataset.json``, ``plans.json``,
``fold_0/checkpoint_final.pth`` with ``network_weights``, ``init_args``, ``trainer_name`` and
``inference_allowed_mirroring_axes``, as nnU-Net's trainer saves them) whose network is built from
the source folder's plans, or, with ``--full-size``, from nnU-Net's default 3d_fullres plans for a
128^3 window (6 stages, 32-320 features: the network the issue's spike timed)::

    python benchmarks/untrained_nnunet.py SOURCE OUT [--full-size]

SOURCE is a model folder (only its dataset.json and plans.json are read). Its segmentations are
meaningless; use it for timing and memory only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "GraTaSegmenter"))

from GraTaSegmenterLib.models.nnunet import build_network, regions, resolved_configuration  # noqa: E402

CONFIGURATION = "3d_fullres"
#: nnU-Net's planner's choice for a 128^3 window at isotropic spacing (ExperimentPlanner, v2 defaults)
FULL_SIZE = {
    "patch_size": [128, 128, 128],
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "n_conv_per_stage": [2] * 6,
    "n_conv_per_stage_decoder": [2] * 5,
}


def full_size(plans: dict) -> dict:
    config = plans["configurations"][CONFIGURATION]
    config["patch_size"] = FULL_SIZE["patch_size"]
    arch = config["architecture"]["arch_kwargs"]
    arch.update({k: v for k, v in FULL_SIZE.items() if k != "patch_size"})
    return plans


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--full-size", action="store_true", help="nnU-Net's default 3d_fullres network at 128^3")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    plans = json.loads((args.source / "plans.json").read_text())
    dataset = json.loads((args.source / "dataset.json").read_text())
    if args.full_size:
        plans = full_size(plans)
    config = resolved_configuration(plans, CONFIGURATION)
    labels = [v for k, v in dataset["labels"].items() if k != "ignore"]
    outputs = len(regions(dataset) or []) or len(labels)
    torch.manual_seed(args.seed)
    net = build_network(config, len(dataset["channel_names"]), outputs)
    folder = args.out / f"nnUNetTrainer__{plans.get('plans_name', 'nnUNetPlans')}__{CONFIGURATION}"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    torch.save({"network_weights": net.state_dict(), "current_epoch": 0, "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": 0, "dataset_json": dataset},
                "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    parameters = sum(p.numel() for p in net.parameters())
    print(json.dumps({"folder": str(folder), "parameters": parameters, "patch": config["patch_size"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
