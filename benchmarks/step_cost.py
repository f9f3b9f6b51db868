"""What one adaptation step costs, in forward passes of the same window: the figures behind
``GraTaSegmenterLib.cost`` (the run-time estimate the front-ends warn with).

For a model folder (nnU-Net or MONAI bundle), one phantom volume of centre B is prepared as the
model prepares it; on its first window the script times the method's prediction (the forward
pass) and one step of each method, and prints the ratio with the estimate's model of it
(``cost.step_passes``). Ratios, measured in one run on one machine::

    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --model FOLDER [--threads 1] [--precision bf16] [--out results.json]

On a GPU (``--device cuda``) the consistency views run as many per pass as a run would choose from
the free memory (``Segmenter._check_step_fits``), or each count given by ``--views-per-pass``; the
step's peak is ``torch.cuda.max_memory_allocated`` above the memory in use before it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "GraTaSegmenter"))

from GraTaSegmenterLib import cost, imageio, phantom3d  # noqa: E402
from GraTaSegmenterLib.adaptation.views import consistency_views  # noqa: E402
from GraTaSegmenterLib.segment import Options, Segmenter  # noqa: E402

METHODS = ("tent", "grata")


def measure(model: str, method: str, volume: Path, forwards: int, steps: int, precision: str, device: str,
            views_per_pass: int) -> dict:
    seg = Segmenter(Options(model=model, method=method, steps=1, lr=1e-3, device=device, seed=0, postprocess=False,
                            precision=precision), log=lambda message: None)
    loaded = imageio.read_image(volume)
    pipeline = seg.pipeline
    case = pipeline.prepare(seg._usable_channels(loaded, "volume"), loaded.image)
    pipeline.use_range(case)
    x = pipeline.window(case, case.windows[0])
    seg._check_step_fits(x)  # as a run does: on CUDA it chooses the views per pass from the free memory
    context = seg.method.loss_context
    if views_per_pass:
        context.batch_views = views_per_pass
    cuda = seg.device.type == "cuda"

    def finish() -> None:
        if cuda:
            torch.cuda.synchronize(seg.device)

    first, *forward = [cost.timed_forward(seg.method.predict, x) for _ in range(forwards + 1)]  # the first warms up
    seg.method.step(x)  # warm-up (cuDNN's algorithm choice, the optimiser's state)
    finish()
    step, peak = [], None
    if cuda:
        before = torch.cuda.memory_allocated(seg.device)
        torch.cuda.reset_peak_memory_stats(seg.device)
    for _ in range(steps):
        start = time.perf_counter()
        seg.method.step(x)
        finish()
        step.append(time.perf_counter() - start)
    if cuda:
        peak = (torch.cuda.max_memory_allocated(seg.device) - before) / (1 << 20)
    views = len(consistency_views(context.spatial_dims, context.view_axes))
    f, s = statistics.median(forward), statistics.median(step)
    return {"method": method, "precision": seg.method.precision, "device": seg.device_text,
            "patch": list(pipeline.patch), "views": views, "views_per_pass": context.batch_views,
            "first_forward_s": first, "forward_s": f, "step_s": s, "measured_passes": s / f,
            "estimated_passes": cost.step_passes(method, views),
            "peak_mib": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an nnU-Net model folder or a MONAI bundle")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--forwards", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--views-per-pass", type=int, nargs="+", default=[0],
                    help="GraTa's consistency views per forward pass (0, the default: as a run chooses)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        case = phantom3d.render_case("B", 0, seed=7, scale=0.5)
        image = sitk.GetImageFromArray(case.image)
        image.SetSpacing(tuple(reversed(case.spacing)))
        volume = Path(tmp) / "b.nii.gz"
        sitk.WriteImage(image, str(volume))
        rows = []
        for m in args.methods:
            for k in (args.views_per_pass if m == "grata" else [0]):
                r = measure(args.model, m, volume, args.forwards, args.steps, args.precision, args.device, k)
                rows.append(r)
                peak = f", peak {r['peak_mib']:.0f} MiB" if r["peak_mib"] is not None else ""
                print(f"{r['method']:6s} {r['precision']} {r['device']} patch {'x'.join(map(str, r['patch']))}  "
                      f"forward {r['forward_s']:.3f} s  step {r['step_s']:.3f} s  = {r['measured_passes']:.1f} "
                      f"passes (estimate {r['estimated_passes']:.1f}, {r['views']} views, {r['views_per_pass']} "
                      f"per pass{peak})", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
