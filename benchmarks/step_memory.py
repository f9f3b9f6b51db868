"""How much memory one adaptation step of a 3D model takes, against the count the engine refuses by.

The engine counts, on the meta device, the bytes autograd keeps for the backward pass of one forward
of a window (``memory.saved_activation_bytes``) and refuses steps whose expected peak
(``memory.step_bytes``: that count times ``memory.STEP_PEAK[method]``, plus ``memory.VIEW_PEAK`` for each
further consistency view in a pass) exceeds the free memory. This
script measures the real peak: in a fresh process per method, the resident memory before one step
and the process's peak after it (CPU; on CUDA ``torch.cuda.max_memory_allocated``)::

    python benchmarks/step_memory.py --model FOLDER [--device cuda] [--out results.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("tent", "grata")


def child(model: str, method: str, device: str) -> dict:
    sys.path.insert(0, str(ROOT / "GraTaSegmenter"))
    import SimpleITK as sitk
    import torch

    from GraTaSegmenterLib import imageio, memory, phantom3d
    from GraTaSegmenterLib.segment import Options, Segmenter

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        case = phantom3d.render_case("B", 0, seed=7, scale=0.5)
        image = sitk.GetImageFromArray(case.image)
        image.SetSpacing(tuple(reversed(case.spacing)))
        sitk.WriteImage(image, str(Path(tmp) / "b.nii.gz"))
        loaded = imageio.read_image(Path(tmp) / "b.nii.gz")
    seg = Segmenter(Options(model=model, method=method, steps=1, device=device, seed=0, postprocess=False),
                    log=lambda message: None)
    pipeline = seg.pipeline
    case = pipeline.prepare(seg._usable_channels(loaded, "volume"), loaded.image)
    pipeline.use_range(case)
    x = pipeline.window(case, case.windows[0])
    saved = memory.saved_activation_bytes(seg.method.model, x)
    seg._check_step_fits(x)  # as a run does: on CUDA the views per pass follow the free memory
    seg.method.predict(x)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seg.method.step(x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        seg.method.step(x)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    context = seg.method.loss_context
    return {"method": method, "device": device, "patch": list(pipeline.patch), "saved_bytes": saved,
            "views_per_pass": context.batch_views,
            "step_peak_bytes": peak, "peak_over_saved": peak / saved, "engine_expects": memory.step_bytes(method, saved, context.batch_views)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.child, args.device)))
        return 0
    rows = []
    for method in METHODS:  # a fresh process each: the process's peak is the step's
        done = subprocess.run([sys.executable, __file__, "--model", args.model, "--device", args.device,
                               "--child", method], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{method:6s} {'x'.join(map(str, r['patch']))}: kept for backward {r['saved_bytes'] / 2**20:.0f} MiB, "
              f"step peak {r['step_peak_bytes'] / 2**20:.0f} MiB ({r['peak_over_saved']:.1f}x), engine expects "
              f"{r['engine_expects'] / 2**20:.0f} MiB")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
