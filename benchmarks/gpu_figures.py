"""The GPU figures of docs/performance.md, in one run (a lent GPU machine's time is short).

    python benchmarks/gpu_figures.py SOURCE --out DIR [--device cuda]

SOURCE is an nnU-Net model folder; only its plans and dataset are read, and two networks with fresh
weights are built from them (``benchmarks/untrained_nnunet.py``: timing does not depend on the
weights' values): the phantom benchmark's network (20 x 80 x 80 windows) and nnU-Net's default
3d_fullres network for 128^3 windows (31 M parameters). For each, in this order:

1. one step of TENT and GraTa, fp32 and bf16, with the consistency views per pass that a run
   chooses from the free memory, and for GraTa also one view per pass
   (``benchmarks/step_cost.py``);
2. the step's peak memory against the engine's count (``benchmarks/step_memory.py``);
3. the last of the networks (the full-size one) on a whole phantom volume through the command
   line (``adapt``, 10 GraTa steps, nnU-Net's prediction with its mirroring), fp32 and bf16: the wall time against the
   engine's own estimate (the ``estimate`` event).

Every part writes its JSON into DIR as soon as it is measured; one that fails is reported and
the others still run.

A lent GPU machine has torch but no network: the other packages travel as one archive of the
cp312 manylinux wheels of requirements/ (simpleitk, nnunetv2, dynamic-network-architectures,
batchgenerators, acvl-utils (``pip wheel --no-deps``), blosc2, ndindex, nibabel, pydicom), all
unzipped into one folder and packed with ``tar -cJf`` (about 37 MB), beside the plans.json and
dataset.json of a phantom model (``scripts/make_nnunet_model.py``). On the machine:
``tar -xJf site.tar.xz -C /tmp/site && PYTHONPATH=/tmp/site python3 benchmarks/gpu_figures.py
SOURCE --out /tmp/gpuout`` (4.5 min on an H200).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GraTaSegmenter"))


def python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "GraTaSegmenter"),
                                                                      os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)


def part(name: str, out: Path, args: list[str]) -> None:
    start = time.perf_counter()
    done = python(*args)
    print(f"== {name} ({time.perf_counter() - start:.0f} s, exit {done.returncode})\n{done.stdout}", flush=True)
    if done.returncode:
        print(done.stderr[-3000:], flush=True)
    (out / f"{name}.log").write_text(done.stdout + "\n" + done.stderr)


def whole_volume(model: str, volume: Path, out: Path, precision: str, device: str, steps: int) -> dict:
    start = time.perf_counter()
    done = python("-m", "GraTaSegmenterLib.cli", "adapt", str(volume), "--model", model, "--method", "grata",
                  "--steps", str(steps), "--lr", "1e-3", "--device", device, "--precision", precision, "--events",
                  "-o", str(out / f"volume_{precision}"), "--overwrite")
    wall = time.perf_counter() - start
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    estimate = next((e for e in events if e.get("event") == "estimate"), {})
    finished = next((e for e in events if e.get("event") == "done"), {})
    steps = [e for e in events if e.get("event") == "step"]
    row = {"precision": precision, "exit": done.returncode, "wall_s": wall, "engine_done_s": finished.get("seconds"),
           "estimate_s": estimate.get("seconds"), "forward_s": estimate.get("forward_seconds"),
           "prediction_estimate_s": estimate.get("prediction_seconds"), "steps": len(steps),
           "log": [line for line in done.stderr.splitlines() if "per pass" in line or "holds about" in line]}
    if done.returncode:
        row["stderr"] = done.stderr[-2000:]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", type=Path, default=Path("/tmp/grata_gpu_figures"))
    ap.add_argument("--models", nargs="+", choices=("phantom", "fullsize"), default=["phantom", "fullsize"],
                    help="the networks to measure; the whole volume runs with the last")
    ap.add_argument("--steps", type=int, default=10, help="GraTa steps of the whole-volume runs")
    ap.add_argument("--volume-scale", type=float, default=2.0,
                    help="size of the whole phantom volume (2: 72 x 320 x 320 voxels)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import SimpleITK as sitk
    import torch

    from GraTaSegmenterLib import phantom3d

    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}), flush=True)
    models = {}
    for name in args.models:
        extra = ["--full-size"] if name == "fullsize" else []
        done = python(str(ROOT / "benchmarks" / "untrained_nnunet.py"), str(args.source), str(args.work / name), *extra)
        if done.returncode:
            print(done.stderr, flush=True)
            return 1
        made = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {made['parameters']:,} parameters, window {made['patch']}", flush=True)
        models[name] = made["folder"]
    for name, folder in models.items():
        for precision in ("fp32", "bf16"):
            part(f"step_cost_{name}_{precision}", args.out,
                 [str(ROOT / "benchmarks" / "step_cost.py"), "--model", folder, "--device", args.device,
                  "--precision", precision, "--forwards", "5", "--steps", "3", "--views-per-pass", "0", "1",
                  "--out", str(args.out / f"step_cost_{name}_{precision}.json")])
        part(f"step_memory_{name}", args.out, [str(ROOT / "benchmarks" / "step_memory.py"), "--model", folder,
                                               "--device", args.device,
                                               "--out", str(args.out / f"step_memory_{name}.json")])
    case = phantom3d.render_case("B", 0, seed=7, scale=args.volume_scale)
    image = sitk.GetImageFromArray(case.image)
    image.SetSpacing(tuple(reversed(case.spacing)))
    volume = args.work / "b_whole.nii.gz"
    sitk.WriteImage(image, str(volume))
    rows = []
    for precision in ("fp32", "bf16"):
        try:
            rows.append({"model": args.models[-1], "shape": list(case.image.shape),
                         **whole_volume(models[args.models[-1]], volume, args.work, precision, args.device,
                                        args.steps)})
        except Exception:  # noqa: BLE001 - report it and go on
            traceback.print_exc()
        print(json.dumps(rows[-1] if rows else None), flush=True)
        (args.out / f"whole_volume_{args.models[-1]}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
