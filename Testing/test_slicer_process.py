"""The child-process protocol with a stand-in engine: state machine, events as
they arrive, failures with one clear message, and cancel ending the whole tree.

The stand-in behaves like ``PythonSlicer -m GraTaSegmenterLib.cli adapt
--events``: it prints events, and in 'slow' mode it starts a grandchild (as the
PythonSlicer launcher starts the real interpreter) that ignores SIGTERM, so the
test proves that cancel reaches - and ends - the whole process tree.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from GraTaSegmenterLib.slicer_support.process import AdaptRun, RunState

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX; Windows uses taskkill /T")

FAKE_ENGINE = textwrap.dedent(r'''
    import json, os, signal, subprocess, sys, time
    mode, pidfile = sys.argv[1], sys.argv[2]
    def emit(**e):
        e.setdefault("time", time.time())
        sys.stdout.write(json.dumps(e) + "\n"); sys.stdout.flush()
    def on_term(*_):
        emit(event="error", message="cancelled", kind="Cancelled", input=None)
        sys.exit(130)
    signal.signal(signal.SIGTERM, on_term)
    if mode == "usererror":
        print("grata-segmenter: error: the image has 4 channels; the model expects 3", file=sys.stderr)
        sys.exit(2)
    if mode == "crash":
        print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr)
        sys.exit(1)
    child = None
    if mode == "slow":
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    with open(pidfile, "w") as f:
        f.write(str(child.pid if child else os.getpid()))
    emit(event="start", version=1, inputs=["in.nrrd"], output_dir="out", model="m", model_name="m",
         method="grata", mode="episodic", device="cpu", steps_per_input=3, total_steps=3)
    sys.stdout.write("a stray print\n"); sys.stdout.flush()
    for step in (1, 2, 3):
        if mode == "slow":
            time.sleep(0.3 if step == 1 else 30)
        emit(event="step", input_index=0, input="in.nrrd", step=step, global_step=step, total_steps=3,
             cosine=0.1 * step, lr=1e-4, aux_loss=0.5, pseudo_loss=0.4, loss=0.9, seconds=0.01,
             applied=True, skipped=False)
    emit(event="output", input_index=0, input="in.nrrd", paths={"segmentation": "out/in.seg.nrrd"})
    sys.stdout.write(json.dumps({"event": "done", "time": 0, "outputs": [], "seconds": 0.1}))  # no newline
    sys.stdout.flush()
''')


@pytest.fixture
def engine(tmp_path):
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return lambda mode: [sys.executable, str(script), mode, str(tmp_path / "pid")]


def test_a_successful_run_goes_starting_running_done_and_reports_every_step(engine):
    run = AdaptRun(engine("ok"))
    assert run.state is RunState.Idle
    run.start()
    assert run.state in (RunState.Starting, RunState.Running)
    seen_states, kinds = set(), []
    end = time.monotonic() + 20
    while run.state.busy and time.monotonic() < end:
        kinds += [e.kind for e in run.poll()]
        seen_states.add(run.state)
        time.sleep(0.01)
    assert run.state is RunState.Done, run.failure
    assert RunState.Running in seen_states or "start" in kinds
    assert kinds.count("step") == 3 and "log" in kinds and kinds[-1] == "done"
    assert run.progress.plot_steps == [1, 2, 3] and run.progress.fraction == 1.0
    assert run.progress.outputs[0]["segmentation"] == "out/in.seg.nrrd"
    assert run.returncode == 0 and not run.tree_alive()


def test_a_user_error_gives_one_clear_message(engine):
    run = AdaptRun(engine("usererror"))
    run.start()
    assert run.wait(20) is RunState.Failed
    assert run.failure == "the image has 4 channels; the model expects 3"
    assert not run.cancelled and run.returncode == 2


def test_a_crash_says_so_and_keeps_the_details_for_the_log(engine):
    logs = []
    run = AdaptRun(engine("crash"), on_log=logs.append)
    run.start()
    assert run.wait(20) is RunState.Failed
    assert "exit code 1" in run.failure and "RuntimeError: boom" in run.failure
    assert any("Traceback" in line for line in logs)


def test_a_missing_interpreter_fails_without_raising(tmp_path):
    run = AdaptRun([str(tmp_path / "no-such-python"), "-m", "x"])
    run.start()
    assert run.state is RunState.Failed and "could not start" in run.failure


def test_cancel_ends_the_whole_tree_within_two_seconds(engine, tmp_path):
    run = AdaptRun(engine("slow"))
    run.start()
    end = time.monotonic() + 20
    while run.progress.global_step < 1 and time.monotonic() < end:
        run.poll()
        time.sleep(0.02)
    assert run.state is RunState.Running and run.progress.global_step == 1
    grandchild = int((tmp_path / "pid").read_text(encoding="utf-8"))
    t0 = time.monotonic()
    run.cancel()
    assert run.state is RunState.Cancelling
    state = run.wait(5)
    elapsed = time.monotonic() - t0
    assert state is RunState.Failed and run.cancelled and run.failure == "Cancelled."
    assert elapsed < 2.0
    assert not run.tree_alive()
    assert not _alive(grandchild)  # it ignored SIGTERM, and still it is gone


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by init has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_when_idle_or_finished_does_nothing(engine):
    run = AdaptRun(engine("ok"))
    run.cancel()
    assert run.state is RunState.Idle
    run.start()
    run.wait(20)
    run.cancel()
    assert run.state is RunState.Done and not run.cancelled
    with pytest.raises(RuntimeError):
        run.start()
