"""Time per adaptation step (plus the prediction after it) and peak memory.

Every configuration runs in its own child process, one after the other, so
that peak memory is that configuration's alone: on the CPU the peak resident
set size above the level reached after building the model, on CUDA
``torch.cuda.max_memory_allocated``. Times are medians over the timed steps.
Results are ratios within one run on one machine: never compare absolute
seconds across machines.

    .venv/bin/python benchmarks/step_speed.py --sizes 256 512 --steps 5 \
        --markdown docs/performance_table.md --json benchmarks/results/step_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "baseline": "sequential baseline (reference structure, fp32, contiguous, NumPy augmentation)",
    "grata_fp32": "GraTa exact (fp32, channels_last, torch augmentation)",
    "grata_bf16": "GraTa fast (bf16 autocast, sequential views)",
    "grata_bf16_batched": "GraTa fast (bf16 autocast, six views in one batched forward)",
    "grata_fp32_batched": "GraTa exact with batched views",
    "grata_bf16_batched3": "GraTa fast (bf16, views in passes of three: the CUDA default)",
    "tent": "TENT (fp32, channels_last)",
    "inference": "plain inference (eval mode, fp32, contiguous)",
}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(config: str, size: int, steps: int, warmup: int, device: str, threads: int) -> dict:
    import numpy as np
    import torch

    from GraTaSegmenterLib.adaptation import GraTa, Tent
    from GraTaSegmenterLib.models.resunet import ResUnet

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sequential_baseline import SequentialGraTa

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = ResUnet("resnet34", heads=()).to(dev)
    batch = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    x = torch.from_numpy(batch).to(dev)

    if config == "baseline":
        method = SequentialGraTa(model)
        run = lambda: (method.step(batch if dev.type == "cpu" else batch), method.predict(batch))  # noqa: E731
        if dev.type != "cpu":
            raise SystemExit("the sequential baseline is a CPU yardstick")
    elif config == "inference":
        model.eval()

        def run():
            with torch.no_grad():
                return model(x)
    elif config == "tent":
        method = Tent(model, seed=0)
        run = lambda: (method.step(x), method.predict(x))  # noqa: E731
    else:
        precision = "bf16" if "bf16" in config else "fp32"
        views = 3 if config.endswith("batched3") else config.endswith("batched")
        method = GraTa(model, seed=0, precision=precision, batch_views=views)
        run = lambda: (method.step(x), method.predict(x))  # noqa: E731

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rss_before = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return {"config": config, "size": size, "seconds": statistics.median(times), "all_seconds": times,
            "peak_mb": peak, "device": device}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(args.worker[0], int(args.worker[1]), args.steps, args.warmup, args.device, args.threads)
        print(json.dumps(result))
        return 0

    results = []
    for size in args.sizes:
        for config in args.configs:
            if config == "baseline" and args.device != "cpu":
                continue
            cmd = [sys.executable, __file__, "--worker", config, str(size), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--device", args.device, "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{size:4d} {config:20s} {result['seconds']:7.3f} s  peak {result['peak_mb']:8.1f} MB",
                  flush=True)

    import torch

    machine = {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
               "threads": args.threads, "processor": platform.processor() or platform.machine(),
               "command": "python benchmarks/step_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    lines = ["| size | configuration | s / step + prediction | vs baseline | vs TENT | peak MB | peak vs TENT |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for size in args.sizes:
        rows = {r["config"]: r for r in results if r["size"] == size}
        base, tent = rows.get("baseline"), rows.get("tent")
        for config, r in rows.items():
            vs_base = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
            vs_tent = f"{r['seconds'] / tent['seconds']:.2f}x" if tent else "-"
            mem_tent = f"{r['peak_mb'] / tent['peak_mb']:.2f}x" if tent and tent["peak_mb"] > 0 else "-"
            lines.append(f"| {size} | {CONFIGS[config]} | {r['seconds']:.3f} | {vs_base} | {vs_tent} | "
                         f"{r['peak_mb']:.0f} | {mem_tent} |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1), encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
