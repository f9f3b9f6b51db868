"""Time of the anatomical post-processing (GraTaSegmenterLib.postprocess) on a
512 x 512 fundus-like mask pair and on a 300 x 512 x 512 volume (3D rules and
per-slice rules), both with 2 % of the voxels flipped (tens of thousands of
islands: the worst case), against the time of one prediction of the bundled
model at its 256 px input (for the volume: of its 300 slices), measured in the
same run on the same machine.

    PYTHONPATH=GraTaSegmenter .venv/bin/python benchmarks/postprocess_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def noisy_masks(shape, seed=0):
    """A disc and a cup with islands and holes: the worst case of a shifted image."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g * g for g in grids)
    disc = (r2 < 0.25) ^ (rng.random(shape) < 0.02)
    cup = (r2 < 0.06) ^ (rng.random(shape) < 0.02)
    return np.stack([disc, cup]).astype(np.uint8)


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    import dataclasses

    import torch

    from GraTaSegmenterLib import postprocess
    from GraTaSegmenterLib.models import default_model_path, load_model
    from GraTaSegmenterLib.models.fundus import FUNDUS_CLASSES, FUNDUS_POSTPROCESS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()

    model = load_model(default_model_path())
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        model(x)
        predict = best(lambda: model(x), args.repeats)
    image = noisy_masks((512, 512))
    volume = noisy_masks((args.slices, 512, 512))
    per_slice = tuple(dataclasses.replace(r, per_slice=True) for r in FUNDUS_POSTPROCESS)
    rows = {
        "prediction 256x256 (bundled model)": predict,
        "post-processing 512x512": best(lambda: postprocess.apply(image, FUNDUS_CLASSES, FUNDUS_POSTPROCESS,
                                                                  (1.0, 1.0)), args.repeats),
        f"post-processing {args.slices}x512x512, 3D": best(
            lambda: postprocess.apply(volume, FUNDUS_CLASSES, FUNDUS_POSTPROCESS, (1.0, 1.0, 1.0)), args.repeats),
        f"post-processing {args.slices}x512x512, per slice": best(
            lambda: postprocess.apply(volume, FUNDUS_CLASSES, per_slice, (1.0, 1.0, 1.0), slice_axis=0),
            args.repeats),
    }
    volume_prediction = predict * args.slices  # a 2D model predicts a volume slice by slice
    for name, seconds in rows.items():
        reference, what = (volume_prediction, f"predicting {args.slices} slices") if "x512x512" in name and \
            name.count("x") > 1 else (predict, "one prediction")
        print(f"{name:48s} {seconds:8.3f} s  ({seconds / reference:5.2f}x {what})")
    print(json.dumps({k: round(v, 4) for k, v in rows.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
