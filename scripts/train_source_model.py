"""Train the bundled source model: a BatchNorm U-Net on phantom centre A.

It is the default model of the demo, the Slicer sample data and the tests, so
it must be reproducible (seeded; same result for the same torch version and
thread count), small enough to ship (a few MB), and trained only on the
source centre with mild augmentation, so that the shift to the other phantom
centres is real. Sigmoid outputs as in the reference: channel 0 the whole disc,
channel 1 the cup.

    .venv/bin/python scripts/train_source_model.py            # about 25 min on 2 cores
    .venv/bin/python scripts/train_source_model.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from GraTaSegmenterLib import phantom
from GraTaSegmenterLib.models import ModelCard, file_sha256, save_model
from GraTaSegmenterLib.models.fundus import FUNDUS_CLASSES, FUNDUS_POSTPROCESS
from GraTaSegmenterLib.models.unet import UNet
from GraTaSegmenterLib.models import WEIGHTS_DIR, DEFAULT_MODEL_NAME

ARCHITECTURE = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                "channels": [8, 16, 32, 64, 128], "norm": "batch"}


def minmax(images: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1], as every entry point does at test time."""
    flat = images.reshape(len(images), -1)
    lo, hi = flat.min(1), flat.max(1)
    return ((images - lo[:, None, None, None]) / (hi - lo)[:, None, None, None]).astype(np.float32)


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mild augmentation: flips and a small brightness/contrast jitter. Strong
    colour augmentation would train the domain shift away, which the benchmark
    needs to exist (as it does for the reference's source models)."""
    if torch.rand(1, generator=g) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand(1, generator=g) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    b = x.shape[0]
    gain = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.2
    shift = (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.1
    x = (x * gain + shift).clamp(0, 1)
    return x, y


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (p.sum((0, 2, 3)) + target.sum((0, 2, 3)) + 1)).mean()


@torch.no_grad()
def evaluate(net: torch.nn.Module, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Dice (%) of disc and cup with running statistics (eval mode), MONAI's metric."""
    from monai.metrics import compute_dice

    net.eval()
    scores = []
    for i in range(0, len(images), 16):
        pred = (torch.sigmoid(net(torch.from_numpy(images[i:i + 16]))) > 0.5).float()
        scores.append(compute_dice(pred, torch.from_numpy(masks[i:i + 16]).float(), include_background=True))
    dice = torch.cat(scores).nanmean(0) * 100
    net.train()
    return {"disc": float(dice[0]), "cup": float(dice[1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--train-images", type=int, default=1200)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR / DEFAULT_MODEL_NAME)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_images, args.val_images, args.iterations = 32, 16, 5

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    started = time.time()

    # Training and held-out images come from disjoint seeds of centre A.
    train_x, train_y = phantom.render("A", args.train_images, seed=args.seed, size=args.size)
    val_x, val_y = phantom.render("A", args.val_images, seed=args.seed + 1, size=args.size)
    train_x, val_x = minmax(train_x), minmax(val_x)
    print(f"rendered {len(train_x)} + {len(val_x)} images in {time.time() - started:.0f} s", flush=True)

    net = UNet(**ARCHITECTURE).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: min(1.0, (it + 1) / 50) * 0.5 * (1 + math.cos(math.pi * it / args.iterations)))
    net.train()
    for it in range(args.iterations):
        idx = torch.randint(0, len(train_x), (args.batch,), generator=g)
        x = torch.from_numpy(train_x[idx.numpy()])
        y = torch.from_numpy(train_y[idx.numpy()]).float()
        x, y = augment(x, y, g)
        logits = net(x.contiguous(memory_format=torch.channels_last))
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (it + 1) % 100 == 0 or it + 1 == args.iterations:
            print(f"iteration {it + 1}/{args.iterations} loss {loss.item():.4f} "
                  f"({time.time() - started:.0f} s)", flush=True)

    held_out = evaluate(net, val_x, val_y)
    minutes = (time.time() - started) / 60
    print(f"held-out centre A Dice: disc {held_out['disc']:.2f}, cup {held_out['cup']:.2f} "
          f"({minutes:.1f} min)", flush=True)

    card = ModelCard(
        name="Fundus optic disc/cup U-Net (phantom centre A)",
        architecture="unet", arguments=ARCHITECTURE, input_channels=3, spatial_dims=2, output="sigmoid",
        classes=FUNDUS_CLASSES, postprocess=FUNDUS_POSTPROCESS, input_size=(args.size, args.size),
        normalisation="minmax",
        description="BatchNorm U-Net trained on GraTaSegmenter's phantom centre A (colour fundus crops "
                    "centred on the optic disc). Source model of the demo, the sample data and the tests; "
                    "not for clinical use.",
        provenance={
            "trained_with": "scripts/train_source_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "training_data": f"phantom centre A, {args.train_images} images, seed {args.seed}, {args.size} px",
            "iterations": args.iterations, "batch": args.batch, "seed": args.seed,
            "held_out_dice": {k: round(v, 2) for k, v in held_out.items()},
            "held_out_data": f"phantom centre A, {args.val_images} images, seed {args.seed + 1}",
            "torch": torch.__version__, "minutes": round(minutes, 1),
            "date": datetime.date.today().isoformat(),
        },
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(net, card, args.out)
    digest = file_sha256(args.out)
    args.out.with_suffix(".sha256").write_text(f"{digest}  {args.out.name}\n", encoding="utf-8")
    print(json.dumps({"model": str(args.out), "sha256": digest, "bytes": args.out.stat().st_size,
                      "held_out_dice": held_out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
