"""Cancels at random moments of a run, as the Slicer panel cancels: SIGTERM, SIGKILL 1 s later.

Runs ``adapt --events`` on a large picture (default 3000 x 3000, with ``--probabilities
--uncertainty`` so that writing takes seconds) and sends SIGTERM at seeded random times
across start-up, steps, writing and commit. For each cancel it records the phase the run was
in (from its events and its staging folder), the exit status (130: its own clean exit; -9:
killed at the end of the grace period), whether anything partial was left, and whether the
event stream tells what is on disk (exactly one ``error`` last and no result folder, or
``done`` and the result folder). POSIX only.

    .venv/bin/python benchmarks/cancel_timing.py --runs 24 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "GraTaSegmenter"
sys.path.insert(0, str(MODULE_DIR))

from GraTaSegmenterLib.models import default_model_path  # noqa: E402
from GraTaSegmenterLib.slicer_support.parameters import engine_environment  # noqa: E402
from GraTaSegmenterLib.slicer_support.process import CANCEL_GRACE_SECONDS  # noqa: E402

SAMPLE = MODULE_DIR / "GraTaSegmenterLib" / "samples" / "phantom_B_0.png"


def one_run(command: list[str], out: Path, delay: float) -> dict:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=engine_environment(os.environ, MODULE_DIR))
    events: list[dict] = []
    reader = threading.Thread(target=lambda: events.extend(json.loads(line) for line in proc.stdout), daemon=True)
    reader.start()
    time.sleep(delay)
    seen = [e["event"] for e in events]
    staging = out.is_dir() and any(".partial-" in p.name for p in out.iterdir())
    if proc.poll() is not None:
        phase = "ended before the signal"
    elif "done" in seen:
        phase = "after done"
    elif "output" in seen:
        phase = "after the output event"
    elif staging:
        phase = "writing"
    elif "step" in seen:
        phase = "steps"
    elif "start" in seen:
        phase = "reading and first step"
    else:
        phase = "start-up"
    signalled = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=CANCEL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    ended = time.monotonic() - signalled
    reader.join(5)
    kinds = [e["event"] for e in events]
    result = out / "eye"
    left = sorted(p.name for p in out.iterdir() if ".partial-" in p.name or ".old-" in p.name) if out.is_dir() else []
    if kinds and kinds[-1] == "done":
        truthful = result.is_dir() and kinds.count("error") == 0
    else:
        truthful = kinds.count("error") == 1 and kinds[-1] == "error" and not result.exists()
    return {"delay_s": round(delay, 2), "phase": phase, "exit": proc.returncode, "ended_s": round(ended, 3),
            "left": left, "stream_matches_disk": truthful}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cancel_timing_cpu")
    args = parser.parse_args()
    from PIL import Image

    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        picture = work / "eye.png"
        Image.open(SAMPLE).convert("RGB").resize((args.side, args.side)).save(picture)
        base = [sys.executable, "-m", "GraTaSegmenterLib.cli", "adapt", str(picture), "--model",
                str(default_model_path()), "--steps", "2", "--device", "cpu", "--events",
                "--probabilities", "--uncertainty"]
        started = time.monotonic()
        subprocess.run(base + ["-o", str(work / "timing")], check=True, capture_output=True,
                       env=engine_environment(os.environ, MODULE_DIR))
        whole = time.monotonic() - started
        print(f"an uncancelled run takes {whole:.1f} s", flush=True)
        for i in range(args.runs):
            out = work / f"out{i}"
            rows.append(one_run(base + ["-o", str(out)], out, rng.uniform(0.0, whole * 1.05)))
            print(rows[-1], flush=True)
    by_phase = Counter(r["phase"] for r in rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"uncancelled_run_s": round(whole, 1), "runs": rows},
                                                        indent=1) + "\n", encoding="utf-8")
    lines = [f"# Cancel (SIGTERM, SIGKILL after {CANCEL_GRACE_SECONDS:g} s) at random times of a "
             f"{args.side} x {args.side} run ({whole:.1f} s uncancelled), seed {args.seed}", "",
             "| phase at the signal | runs | exit 130 (clean) | exit 0 (done) | killed | partial left "
             "| stream matches disk | slowest end (s) |", "|---|---|---|---|---|---|---|---|"]
    for phase in by_phase:
        group = [r for r in rows if r["phase"] == phase]
        lines.append(f"| {phase} | {len(group)} | {sum(r['exit'] == 130 for r in group)} | "
                     f"{sum(r['exit'] == 0 for r in group)} | {sum(r['exit'] == -9 for r in group)} | "
                     f"{sum(bool(r['left']) for r in group)} | {sum(r['stream_matches_disk'] for r in group)} | "
                     f"{max(r['ended_s'] for r in group):.2f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
