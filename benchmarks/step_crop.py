"""What adapting on a crop of the windows costs in Dice, against steps on whole windows.

Where a step on a whole window does not fit in the free memory, the engine steps on
the largest centre crop that does (``memory.adaptation_crop``; the prediction keeps
the model's windows). This runs the same episodic GraTa steps on the 3D phantom's
centres twice, once with the memory the machine has and once with the free memory
stood in just below a whole window's step, so that the crop is the one a device
that size would get, and compares the Dice with the source model's.

    .venv/bin/python benchmarks/step_crop.py --model FOLD_FOLDER --centres BC --cases 4 --steps 5

prints one line per centre and run and writes results.json in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "GraTaSegmenter"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from GraTaSegmenterLib import imageio, memory  # noqa: E402
from GraTaSegmenterLib.segment import Options, Segmenter  # noqa: E402
from volume_benchmark import organ_metrics, write_cases  # noqa: E402


def first_window(seg: Segmenter, path: Path):
    """The first window of the case at ``path``, as the engine checks a step's memory on it."""
    loaded = imageio.read_image(path)
    case = seg.pipeline.prepare(loaded.array, loaded.image)
    seg.pipeline.use_range(case)
    return seg.pipeline.window(case, case.windows[0])


def step_bytes(seg: Segmenter, window) -> int:
    """A GraTa step's bytes on ``window`` (what the engine checks)."""
    return memory.step_bytes("grata", memory.saved_activation_bytes(seg.method.model, window))


def run(model: str, files, steps: int, lr: float, seed: int, short: bool) -> dict:
    seg = Segmenter(Options(model=model, method="grata" if steps else "none", steps=steps, lr=lr, mode="episodic",
                            device="cpu", seed=seed, postprocess=False))
    window = first_window(seg, files[0][0]) if steps else None
    real = memory.device_available_bytes
    if short:  # the free memory of a device where a whole window's step just does not fit
        free = step_bytes(seg, window) - 1
        memory.device_available_bytes = lambda device: free
    rows, step_seconds, start = [], [], time.perf_counter()
    try:
        for path, labels, spacing in files:
            prediction = seg.segment(imageio.read_image(path))
            rows.append(organ_metrics(prediction.masks, labels, spacing))
            step_seconds += [r["seconds"] for r in prediction.records]
    finally:
        memory.device_available_bytes = real
    return {"crop": list(seg.step_crop) if seg.step_crop else None, "patch": list(seg.pipeline.patch),
            "mean_dice": float(np.mean([r["mean_dice"] for r in rows])),
            "per_case": [r["mean_dice"] for r in rows], "seconds": time.perf_counter() - start,
            "step_seconds": float(np.median(step_seconds)) if step_seconds else None,
            "step_mib": step_bytes(seg, memory.centre_crop(window, seg.step_crop) if seg.step_crop else window)
            / (1 << 20) if steps else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="nnU-Net model folder (one fold) trained on centre A")
    ap.add_argument("--out", type=Path, default=Path("step_crop_out"))
    ap.add_argument("--centres", default="BC")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for centre in args.centres:
            files = write_cases(centre, args.cases, args.scale, Path(tmp))
            for name, steps, short in (("none", 0, False), ("whole windows", args.steps, False),
                                       ("centre crop", args.steps, True)):
                result = {"centre": centre, "run": name, **run(args.model, files, steps, args.lr, args.seed, short)}
                results.append(result)
                step = (f"step {result['step_seconds']:.2f} s, {result['step_mib']:.0f} MiB" if result["step_seconds"]
                        else "")
                print(f"{centre} {name:13s} mean Dice {result['mean_dice']:5.1f}  crop {result['crop']} of "
                      f"{result['patch']}  {step}  {result['seconds']:.0f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
