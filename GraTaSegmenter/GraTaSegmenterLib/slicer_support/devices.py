"""Which compute devices the engine can use, asked in a child process.

Importing torch (and initialising CUDA) inside Slicer's process is slow and
cannot be undone, so the panel runs ``python -m
GraTaSegmenterLib.slicer_support.devices`` once, from a background thread
(:func:`probe_in_background`: starting torch takes seconds, which must not
freeze the panel), and that prints one JSON object::

    {"torch": "2.13.0", "cuda": [{"name": "NVIDIA ...", "memory_gb": 80.0}], "mps": false}

:func:`device_labels` turns it into the entries of the Device menu.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any, Mapping, Sequence


def probe() -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        return {"torch": None, "cuda": [], "mps": False, "error": f"PyTorch is not installed ({exc})"}
    cuda = []
    try:
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                cuda.append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)})
    except Exception as exc:  # a broken driver must not break the panel
        return {"torch": torch.__version__, "cuda": [], "mps": False, "error": f"CUDA: {exc}"}
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {"torch": torch.__version__, "cuda": cuda, "mps": mps}


# no console window flashes up on Windows while the probe runs (0 elsewhere)
NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)


def run_probe(python: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Run :func:`probe` in a child process; never raises."""
    try:
        out = subprocess.run([*python, "-m", "GraTaSegmenterLib.slicer_support.devices"], capture_output=True,
                             text=True, timeout=timeout, env=dict(env) if env is not None else None, check=False,
                             creationflags=NO_WINDOW)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode == 0 and lines:
            return json.loads(lines[-1])
        return {"torch": None, "cuda": [], "mps": False,
                "error": (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]}
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return {"torch": None, "cuda": [], "mps": False, "error": str(exc)}


def probe_in_background(python: Sequence[str], env: Mapping[str, str] | None = None,
                        timeout: float = 60.0) -> "Future[dict[str, Any]]":
    """:func:`run_probe` in a daemon thread; the GUI polls ``future.done()`` from a
    timer and reads ``future.result()`` in its own thread (no Qt object is touched
    from the worker). A daemon thread, so that quitting Slicer never waits for it."""
    future: Future[dict[str, Any]] = Future()

    def work() -> None:
        future.set_result(run_probe(python, env, timeout))

    threading.Thread(target=work, daemon=True, name="GraTaSegmenter-devices").start()
    return future


def device_labels(info: Mapping[str, Any]) -> dict[str, str]:
    """Menu text for auto / cuda / mps / cpu given a probe result."""
    cuda = info.get("cuda") or []
    gpu = ", ".join(f"{d['name']} ({d['memory_gb']:g} GB)" for d in cuda)
    labels = {
        "auto": "auto: " + (f"CUDA - {gpu}" if cuda else "Apple GPU (MPS)" if info.get("mps") else "CPU"),
        "cuda": f"cuda: {gpu}" if cuda else "cuda (no CUDA GPU found)",
        "mps": "mps: Apple GPU" if info.get("mps") else "mps (not available)",
        "cpu": "cpu",
    }
    if info.get("error"):
        labels["auto"] += f" [{info['error']}]"
    return labels


if __name__ == "__main__":
    print(json.dumps(probe()))
    sys.exit(0)
