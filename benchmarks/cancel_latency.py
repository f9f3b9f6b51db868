"""How long the Slicer module's Cancel takes to end the engine's process tree.

Starts the command line exactly as the module does (``AdaptRun`` over
``adapt_command`` with ``--events``), on the bundled model and a bundled
sample, waits for the first adaptation step, cancels, and measures the time
until no process of the tree is left. Once with the interpreter as the child,
once through a launcher script that, like ``PythonSlicer``, starts the
interpreter as *its* child. The exit code says how the engine ended: 130 is
its own clean exit after removing its staged output; a negative code is a
signal (-9: killed at the end of the grace period). POSIX only.

    .venv/bin/python benchmarks/cancel_latency.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "GraTaSegmenter"
sys.path.insert(0, str(MODULE_DIR))

from GraTaSegmenterLib.models import default_model_path  # noqa: E402
from GraTaSegmenterLib.slicer_support.parameters import AdaptParameters, adapt_command, engine_environment  # noqa: E402
from GraTaSegmenterLib.slicer_support.process import CANCEL_GRACE_SECONDS, AdaptRun  # noqa: E402
from GraTaSegmenterLib.slicer_support.workspace import RunWorkspace  # noqa: E402


def launcher_script(folder: Path) -> list[str]:
    script = folder / "PythonSlicer"
    script.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\nexit $?\n', encoding="utf-8")
    script.chmod(0o755)
    return [str(script)]


def one_cancel(python: list[str], image: Path, parent: Path) -> tuple[float, int, bool]:
    """(seconds from cancel until the tree is gone, exit code, output left behind)."""
    ws = RunWorkspace(parent)
    params = AdaptParameters(steps=1000, device="cpu")
    run = AdaptRun(adapt_command(python, image, ws.output_dir, default_model_path(), params),
                   env=engine_environment(os.environ, MODULE_DIR))
    run.start()
    while run.progress.global_step < 1 and run.state.busy:
        run.poll()
        time.sleep(0.01)
    t0 = time.monotonic()
    run.cancel()
    while run.tree_alive() or run.state.busy:
        run.poll()
        time.sleep(0.005)
    seconds = time.monotonic() - t0
    left = ws.output_dir.exists() and any(ws.output_dir.iterdir())
    ws.cleanup()
    return seconds, run.returncode, left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    image = MODULE_DIR / "GraTaSegmenterLib" / "samples" / "phantom_C_0.png"
    print(f"grace period before SIGKILL: {CANCEL_GRACE_SECONDS} s; requirement: tree gone within 2 s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, python in (("interpreter", [sys.executable]), ("launcher", launcher_script(folder))):
            results = [one_cancel(python, image, folder) for _ in range(args.repeats)]
            times = [r[0] for r in results]
            print(f"{name:12s} median {statistics.median(times):.3f} s (max {max(times):.3f} s); "
                  f"exit codes {[r[1] for r in results]}; output left behind: {any(r[2] for r in results)}")


if __name__ == "__main__":
    main()
