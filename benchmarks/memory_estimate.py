"""Peak memory of the command line against picture size, and the engine's estimate.

Runs ``adapt`` (one CPU step, the bundled default model) on an RGB picture at several sizes,
with and without ``--probabilities --uncertainty``, and reads the child's peak resident
memory (``ru_maxrss``). The growth between two sizes, per added pixel, is what
:mod:`GraTaSegmenterLib.memory` budgets per pixel; the table shows the estimate beside each
measurement (it should lie a little above). POSIX only.

    .venv/bin/python benchmarks/memory_estimate.py --sizes 1000 2000 4000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "GraTaSegmenter"
sys.path.insert(0, str(MODULE_DIR))

from GraTaSegmenterLib import memory  # noqa: E402
from GraTaSegmenterLib.models import default_model_path, load_model  # noqa: E402
from GraTaSegmenterLib.slicer_support.parameters import engine_environment  # noqa: E402

SAMPLE = MODULE_DIR / "GraTaSegmenterLib" / "samples" / "phantom_B_0.png"


def peak_mib(command: list[str]) -> float:
    """Peak resident memory of one child run, in MiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(command, capture_output=True, text=True, env=engine_environment(os.environ, MODULE_DIR))
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise SystemExit("run the sizes in increasing order: ru_maxrss of children is a maximum over all of them")
    return after / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_estimate_cpu")
    args = parser.parse_args()
    from PIL import Image

    model = default_model_path()
    classes = len(load_model(model).card.classes)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for extras in ([], ["--probabilities", "--uncertainty"]):
            for side in sorted(args.sizes):
                picture = work / f"eye{side}.png"
                if not picture.exists():
                    Image.open(SAMPLE).convert("RGB").resize((side, side)).save(picture)
                command = [sys.executable, "-m", "GraTaSegmenterLib.cli", "adapt", str(picture), "-o",
                           str(work / "out"), "--model", str(model), "--steps", "1", "--device", "cpu",
                           "--overwrite", *extras]
                # a fresh accounting per run: each measurement in its own grandchild
                probe = [sys.executable, "-c", "import json, sys; sys.path.insert(0, %r); "
                         "from memory_estimate import peak_mib; print(json.dumps(peak_mib(%r)))"
                         % (str(Path(__file__).parent), command)]
                measured = json.loads(subprocess.run(probe, capture_output=True, text=True, check=True).stdout)
                estimate = memory.estimate_bytes(side * side, 3, classes, bool(extras), bool(extras)) / (1 << 20)
                rows.append({"side": side, "options": " ".join(extras) or "(defaults)",
                             "peak_mib": round(measured, 1), "estimate_mib": round(estimate, 1)})
                print(rows[-1], flush=True)
    growth = []
    for options in sorted({r["options"] for r in rows}):
        runs = [r for r in rows if r["options"] == options]
        for a, b in zip(runs, runs[1:]):
            per_pixel = (b["peak_mib"] - a["peak_mib"]) * (1 << 20) / (b["side"] ** 2 - a["side"] ** 2)
            growth.append({"options": options, "between": f"{a['side']}-{b['side']}", "bytes_per_pixel":
                           round(per_pixel, 1), "budgeted": memory.bytes_per_pixel(3, classes, bool(
                               options != "(defaults)"), bool(options != "(defaults)"))})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"runs": rows, "growth": growth}, indent=1) + "\n",
                                             encoding="utf-8")
    lines = ["# Peak memory of `adapt` (1 CPU step, bundled model) against picture size", "",
             "| side (px) | options | peak (MiB) | estimate (MiB) |", "|---|---|---|---|"]
    lines += [f"| {r['side']} | {r['options']} | {r['peak_mib']} | {r['estimate_mib']} |" for r in rows]
    lines += ["", "| options | sizes | measured bytes per added pixel | budgeted |", "|---|---|---|---|"]
    lines += [f"| {g['options']} | {g['between']} | {g['bytes_per_pixel']} | {g['budgeted']} |" for g in growth]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
