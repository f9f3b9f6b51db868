"""A run cancelled by SIGTERM after its first step leaves nothing behind and exits 130."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from test_cli_support import (SUBPROCESS_ENV, assert_no_leftovers, checksum, fundus_like, tiny_2d_model, 
                              write_picture)
from GraTaSegmenterLib.events import validate


def test_sigterm_after_first_step(tmp_path):
    model = tiny_2d_model(tmp_path / "m.safetensors")
    image = write_picture(tmp_path / "eye.png", fundus_like())
    before = checksum(image)
    outdir = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "GraTaSegmenterLib.cli", "adapt", str(image), "-o", str(outdir), "--model",
         str(model), "--steps", "100000", "--device", "cpu", "--events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV)
    events = []
    try:
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] == "step":
                proc.send_signal(signal.SIGTERM)
                break
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    events += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == 130, err
    for e in events:
        assert not validate(e), e
    assert events[0]["event"] == "start" and events[-1]["event"] == "error"
    assert events[-1]["kind"] == "Cancelled" and events[-1]["input"] == str(image)
    assert err.strip().splitlines()[-1].startswith("grata-segmenter: error: cancelled by SIGTERM")
    assert_no_leftovers(outdir)
    assert checksum(image) == before
