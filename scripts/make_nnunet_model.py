"""Make a real nnU-Net v2 model folder from the 3D phantom (for the tests and the 3D benchmark).

Every format-bearing step is nnU-Net's own: the raw data set is written in
nnU-Net's layout, nnU-Net fingerprints and plans it, its trainer class builds
the network, the loss and the optimiser, nnU-Net's preprocessor prepares every
training case, and the trainer's ``save_checkpoint`` writes the checkpoint.
Only the training loop is ours (a few hundred iterations on random patches
instead of nnU-Net's 1000 x 250 with its augmentation pipeline), and the plans'
network may be made narrower (``--features``) so that it trains on a CPU.

    python scripts/make_nnunet_model.py OUT [--centre A] [--cases 6] [--scale 0.5]
        [--features 8] [--iterations 150] [--configuration 3d_fullres] [--regions]

writes OUT/Dataset501_GraTaPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres/{dataset.json, plans.json,
fold_0/checkpoint_final.pth} and prints that folder. ``--regions`` trains a region-based model
(:data:`REGIONS`: nested regions with sigmoid outputs, as nnU-Net trains BraTS), whose
``regions_class_order`` gives back the phantom's labels.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "GraTaSegmenter"))

DATASET = "Dataset501_GraTaPhantom"
#: the region-based variant's labels: nested regions of the phantom's organs (1 liver, 2 spleen, 3 kidney)
REGIONS = {"background": 0, "organs": [1, 2, 3], "spleen or kidney": [2, 3], "kidney": [3]}


def write_raw(raw: Path, centre: str, cases: int, scale: float, seed: int, regions: bool = False) -> None:
    import SimpleITK as sitk

    from GraTaSegmenterLib import phantom3d

    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        case = phantom3d.render_case(centre, i, seed=seed, scale=scale)
        image = sitk.GetImageFromArray(case.image)
        image.SetSpacing(tuple(reversed(case.spacing)))
        labels = sitk.GetImageFromArray(case.labels)
        labels.CopyInformation(image)
        sitk.WriteImage(image, str(raw / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(labels, str(raw / "labelsTr" / f"phantom_{i:03d}.nii.gz"))
    labels = {"background": 0, **{name: k + 1 for k, name in enumerate(phantom3d.ORGANS)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": REGIONS if regions else labels, "numTraining": cases,
               "file_ending": ".nii.gz",
               "description": f"GraTaSegmenter 3D phantom, centre {centre}, seed {seed}, scale {scale}"}
    if regions:
        dataset["regions_class_order"] = [1, 2, 3]
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))


def narrow(plans_file: Path, configuration: str, features: int) -> None:
    plans = json.loads(plans_file.read_text())
    arch = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    n = arch["n_stages"]
    arch["features_per_stage"] = [min(features * 2 ** i, features * 8) for i in range(n)]
    plans_file.write_text(json.dumps(plans, indent=4))


def random_patch(rng, data, seg, patch, force_foreground=False):
    """A patch at a random place, or (``force_foreground``, as nnU-Net's loader does for a third of a
    batch) centred on a random voxel of a foreground class drawn uniformly among those present, so
    that small organs are seen as often as large ones."""
    starts = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(data.shape[1:], patch)]
    if force_foreground:
        classes = [c for c in np.unique(seg) if c > 0]
        if classes:
            where = np.argwhere(seg[0] == classes[int(rng.integers(len(classes)))])
            voxel = where[int(rng.integers(len(where)))]
            starts = [int(np.clip(v - p // 2, 0, max(0, s - p))) for v, s, p in zip(voxel, data.shape[1:], patch)]
    window = tuple(slice(a, a + p) for a, p in zip(starts, patch))
    d, s = data[(slice(None),) + window], seg[(slice(None),) + window]
    pads = [(0, 0)] + [(0, p - x) for p, x in zip(patch, d.shape[1:])]
    return np.pad(d, pads), np.pad(s, pads)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--centre", default="A")
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--configuration", default="3d_fullres", choices=("3d_fullres", "2d"))
    ap.add_argument("--regions", action="store_true", help="a region-based model (sigmoid outputs, nested regions)")
    ap.add_argument("--mirror-axes", default=None,
                    help="comma-separated axes the trainer allows at inference (default: the trainer's own)")
    ap.add_argument("--verbose", action="store_true", help="the mean loss every 50 iterations on stderr")
    args = ap.parse_args(argv)
    root = args.out.resolve()
    os.environ["nnUNet_raw"] = str(root / "nnUNet_raw")
    os.environ["nnUNet_preprocessed"] = str(root / "nnUNet_preprocessed")
    os.environ["nnUNet_results"] = str(root)
    import torch

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    raw = root / "nnUNet_raw" / DATASET
    write_raw(raw, args.centre, args.cases, args.scale, args.seed, args.regions)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    with contextlib.redirect_stdout(io.StringIO()):
        extract_fingerprints([501], num_processes=1, check_dataset_integrity=True)
        plan_experiments([501])
    pre = root / "nnUNet_preprocessed" / DATASET
    narrow(pre / "nnUNetPlans.json", args.configuration, args.features)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer wants nnU-Net's preprocessed folder to exist
        preprocess([501], configurations=(args.configuration,), num_processes=(1,), show_progress_bar=False)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((raw / "dataset.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = nnUNetTrainer({**plans, "continue_training": False}, args.configuration, 0, dataset_json,
                                device=torch.device("cpu"))
        trainer.num_epochs = args.iterations  # nnU-Net's poly learning-rate schedule, over our iterations
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    if args.mirror_axes is not None:
        trainer.inference_allowed_mirroring_axes = tuple(int(a) for a in args.mirror_axes.split(",") if a)
    preprocessor = trainer.configuration_manager.preprocessor_class(verbose=False)
    import SimpleITK as sitk

    cases = []
    for i in range(args.cases):
        image = sitk.ReadImage(str(raw / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz"))
        labels = sitk.ReadImage(str(raw / "labelsTr" / f"phantom_{i:03d}.nii.gz"))
        data = sitk.GetArrayFromImage(image)[None].astype(np.float32)
        seg = sitk.GetArrayFromImage(labels)[None].astype(np.int8)
        d, s, _ = preprocessor.run_case_npy(data, seg, {"spacing": list(image.GetSpacing())[::-1]},
                                            trainer.plans_manager, trainer.configuration_manager, dataset_json)
        cases.append((d, s))
    patch = list(trainer.configuration_manager.patch_size)
    net, loss_fn, optimizer = trainer.network, trainer.loss, trainer.optimizer
    net.train()
    scales = trainer._get_deep_supervision_scales()  # nnU-Net's own: 1, 1/2, 1/4 ... per axis
    losses = []
    for it in range(args.iterations):
        # nnU-Net's rule: the last third of every batch (at least one sample) is forced onto foreground
        forced = [k >= round(args.batch * (1 - 0.33)) for k in range(args.batch)]
        if len(patch) == 2:  # 2D configuration: one slice of each case
            batch = [(d[:, 0], s[:, 0]) for d, s in
                     [random_patch(rng, *cases[int(rng.integers(len(cases)))], [1] + patch, f) for f in forced]]
        else:
            batch = [random_patch(rng, *cases[int(rng.integers(len(cases)))], patch, f) for f in forced]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64)).float()
        if trainer.label_manager.has_regions:  # nnU-Net's loader turns labels into one channel per region
            y = torch.cat([torch.isin(y, torch.tensor(r, dtype=y.dtype)).float()
                           for r in trainer.label_manager.foreground_regions], 1)
        targets = [torch.nn.functional.interpolate(y, scale_factor=[float(v) for v in sc], mode="nearest")
                   if any(float(v) != 1.0 for v in sc) else y for sc in scales]
        trainer.lr_scheduler.step(it)
        optimizer.zero_grad(set_to_none=True)
        out = net(x)
        loss = loss_fn(out, targets[:len(out)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        optimizer.step()
        losses.append(float(loss.detach()))
        trainer.logger.log("train_losses", np.float64(losses[-1]), it)
        if args.verbose and (it + 1) % 50 == 0:
            print(f"iteration {it + 1}: loss {np.mean(losses[-50:]):.4f}, {time.time() - start:.0f} s",
                  file=sys.stderr, flush=True)
    trainer.current_epoch = args.iterations
    net.eval()
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    out = Path(trainer.output_folder_base)
    (out / "plans.json").write_text(json.dumps(plans, indent=4))
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    print(json.dumps({"folder": str(out), "seconds": round(time.time() - start, 1),
                      "first_loss": round(losses[0], 4) if losses else None,
                      "last_loss": round(float(np.mean(losses[-10:])), 4) if losses else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
