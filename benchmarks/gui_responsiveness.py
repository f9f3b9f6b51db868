"""Does an adaptation on the CPU make Slicer's GUI stutter, and would fewer torch threads help?

Slicer's GUI thread is stood in for by a separate process that wakes every
16 ms (60 frames per second), works 2 ms, and records how late each wake-up
was. It runs while the engine adapts a bundled sample on the CPU as the
module starts it (``python -m GraTaSegmenterLib.cli adapt ... --events``),
once with torch's default thread count and once per ``--threads`` value
given. Lateness above a frame (16 ms) is a visible stutter.

    .venv/bin/python benchmarks/gui_responsiveness.py --threads 1 --steps 10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "GraTaSegmenter"
sys.path.insert(0, str(MODULE_DIR))

from GraTaSegmenterLib.models import default_model_path  # noqa: E402
from GraTaSegmenterLib.slicer_support.parameters import AdaptParameters, adapt_command, engine_environment  # noqa: E402

FRAME = 0.016
WORK = 0.002


def ticker(stop, out) -> None:
    late = []
    while not stop.is_set():
        start = time.monotonic()
        while time.monotonic() - start < WORK:
            pass
        target = start + FRAME
        time.sleep(max(0.0, target - time.monotonic()))
        late.append(time.monotonic() - target)
    out.put(late)


def measure(threads: int | None, steps: int, image: Path, folder: Path) -> dict:
    env = engine_environment(os.environ, MODULE_DIR)
    cmd = adapt_command([sys.executable], image, folder / "out", default_model_path(),
                        AdaptParameters(steps=steps, device="cpu"))
    if threads is not None:
        cmd += ["--threads", str(threads)]
    stop, out = multiprocessing.Event(), multiprocessing.Queue()
    engine = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    gui = None
    t0 = time.monotonic()
    for line in engine.stdout:  # measure from the first step on (imports and model loading are not the point)
        if gui is None and json.loads(line).get("event") == "step":
            gui = multiprocessing.Process(target=ticker, args=(stop, out))
            gui.start()
    engine.wait()
    seconds = time.monotonic() - t0
    stop.set()
    late = sorted(out.get()) if gui is not None else [0.0]
    if gui is not None:
        gui.join()
    n = len(late)
    return {"threads": threads or "default", "engine_s": round(seconds, 1), "frames": n,
            "p95_ms": round(1000 * late[int(0.95 * (n - 1))], 2), "max_ms": round(1000 * late[-1], 1),
            "over_one_frame": sum(x > FRAME for x in late)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="*", default=[1], help="thread counts besides the default")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    image = MODULE_DIR / "GraTaSegmenterLib" / "samples" / "phantom_C_0.png"
    print(f"{os.cpu_count()} logical CPUs; a frame is {FRAME * 1000:.0f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        for threads in [None, *args.threads]:
            print(json.dumps(measure(threads, args.steps, image, Path(tmp))))


if __name__ == "__main__":
    main()
