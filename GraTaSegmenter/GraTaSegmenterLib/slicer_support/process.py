"""The adaptation child process: start, read without blocking, cancel the tree.

Why ``subprocess.Popen`` polled from a timer, and not ``qt.QProcess``:

* ``slicer.util.launchConsoleProcess`` (5.10 and 5.12) returns a ``Popen`` at
  once, but merges stderr into stdout, starts no process group (so Cancel
  could not end PythonSlicer's child) and uses Slicer's startup environment.
  Our own ``Popen`` works the same in Slicer 5.10, 5.12 and in pytest, so
  the exact code the module runs is tested here.
* Cancel must end the whole tree: ``PythonSlicer`` is a launcher that starts
  the real interpreter as *its* child. On POSIX the child is started with
  ``start_new_session=True`` (its own session and process group), and cancel
  signals the group (``os.killpg``): SIGTERM first, so that the command line
  removes its temporary outputs and exits with 130, then SIGKILL for whatever
  is left after a grace period. On Windows it is started with
  ``CREATE_NEW_PROCESS_GROUP`` and the tree is ended at once with
  ``taskkill /T /F``: Windows finds the descendants through their parent, so
  the tree must be ended while the launcher is still alive (a gentle signal
  first could let the launcher exit and orphan the interpreter). Nothing is
  lost: the module removes the run's whole temporary folder afterwards.
  ``QProcess`` offers neither a new session nor a tree kill without a wrapper.
* Pipes are read by two daemon threads into a queue; :meth:`AdaptRun.poll`
  (called by a ``qt.QTimer`` in the GUI thread) drains the queue, so no Qt or
  Slicer object is ever touched from another thread.
"""

from __future__ import annotations

import enum
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable, Mapping, Sequence

from .events import LOG, Event, EventParser, RunProgress

CANCEL_GRACE_SECONDS = 1.0   # SIGTERM, then SIGKILL after this: the tree is gone well within 2 s
EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


class RunState(enum.Enum):
    Idle = "Idle"
    Starting = "Starting"      # process started, no "start" event yet (imports, model loading)
    Running = "Running"        # "start" event seen
    Cancelling = "Cancelling"  # cancel requested, tree being ended
    Done = "Done"              # exit 0 and a "done" event
    Failed = "Failed"          # anything else, cancellation included (see AdaptRun.cancelled)

    @property
    def busy(self) -> bool:
        return self in (RunState.Starting, RunState.Running, RunState.Cancelling)


def _popen_options() -> dict:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def group_members(pgid: int) -> list[int] | None:
    """The live (not zombie) processes of a process group, read from Linux /proc;
    None where there is no /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry))
    return members


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is in the group. On Linux /proc is
    read, because an ended process that nobody has reaped yet (a zombie) still
    counts for ``killpg(pgid, 0)``; elsewhere the signal test is the answer."""
    members = group_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reader(stream, tag: str, out: "queue.Queue[tuple[str, bytes | None]]") -> None:
    try:
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            out.put((tag, chunk))
    except (OSError, ValueError):
        pass
    finally:
        out.put((tag, None))


class AdaptRun:
    """One run of the command line with ``--events``.

    Usage (the GUI calls :meth:`poll` from a timer)::

        run = AdaptRun(command, env=env)
        run.start()
        while run.state.busy:
            for event in run.poll():
                ...
        run.state  # Done or Failed
    """

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                 on_log: Callable[[str], None] | None = None, stderr_lines: int = 200):
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.on_log = on_log
        self.state = RunState.Idle
        self.progress = RunProgress()
        self.returncode: int | None = None
        self.cancelled = False
        self.failure: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self._proc: subprocess.Popen | None = None
        self._queue: "queue.Queue[tuple[str, bytes | None]]" = queue.Queue()
        self._parser = EventParser()
        self._stderr_parser = EventParser()
        self._open_streams = 0
        self._kill_deadline: float | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        if self.state is not RunState.Idle:
            raise RuntimeError(f"a run can start once (state {self.state.value})")
        try:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, **_popen_options())
        except OSError as exc:
            self.state = RunState.Failed
            self.failure = f"could not start the engine ({self.command[0]}): {exc}"
            return
        self.state = RunState.Starting
        for tag, stream in (("out", self._proc.stdout), ("err", self._proc.stderr)):
            thread = threading.Thread(target=_reader, args=(stream, tag, self._queue), daemon=True,
                                      name=f"GraTaSegmenter-{tag}")
            thread.start()
            self._threads.append(thread)
        self._open_streams = 2

    def cancel(self) -> None:
        """Ask the whole tree to stop: SIGTERM now, SIGKILL after the grace period
        (checked by :meth:`poll`). Harmless when not running."""
        if not self.state.busy or self._proc is None:
            return
        self.cancelled = True
        self.state = RunState.Cancelling
        self._terminate_tree()
        self._kill_deadline = time.monotonic() + CANCEL_GRACE_SECONDS

    def wait(self, timeout: float | None = None, interval: float = 0.02) -> RunState:
        """Poll until the run ends (for tests, scripts and closing the scene)."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.state.busy:
            self.poll()
            if end is not None and time.monotonic() > end:
                break
            time.sleep(interval)
        return self.state

    def cancel_and_wait(self, timeout: float = 2.0) -> RunState:
        self.cancel()
        return self.wait(timeout)

    # -- polling ---------------------------------------------------------------
    def poll(self) -> list[Event]:
        """Drain what arrived; update progress and state; return the new events.
        Never blocks."""
        if self._proc is None:
            return []
        events: list[Event] = []
        while True:
            try:
                tag, chunk = self._queue.get_nowait()
            except queue.Empty:
                break
            if chunk is None:
                self._open_streams -= 1
                parser = self._parser if tag == "out" else self._stderr_parser
                self._handle(tag, parser.close(), events)
            elif tag == "out":
                self._handle(tag, self._parser.feed(chunk), events)
            else:
                self._handle(tag, self._stderr_parser.feed(chunk), events)
        if self.state is RunState.Cancelling and self._kill_deadline is not None \
                and time.monotonic() >= self._kill_deadline:
            self._kill_tree()
            self._kill_deadline = None
        if self.state.busy and self._open_streams <= 0:
            rc = self._proc.poll()
            if rc is not None:
                self._finish(rc)
        return events

    def _handle(self, tag: str, parsed: list[Event], events: list[Event]) -> None:
        for event in parsed:
            if tag == "err":  # stderr: plain log text (tracebacks, warnings)
                message = event.get("message") if event.kind == LOG else str(event.data)
                self.stderr_tail.append(message)
                event = Event(LOG, {"message": message, "stream": "stderr"})
            else:
                self.progress.update(event)
                if event.kind == "start" and self.state is RunState.Starting:
                    self.state = RunState.Running
            if event.kind == LOG and self.on_log is not None:
                self.on_log(event.get("message"))
            events.append(event)

    def _finish(self, rc: int) -> None:
        self.returncode = rc
        if os.name != "nt" and self._proc is not None and _group_alive(self._proc.pid):
            # the launcher ended but something it started is still there: end it too
            _signal_group(self._proc.pid, signal.SIGKILL)
        if self.cancelled or rc == EXIT_CANCELLED or rc in (-signal.SIGTERM, -signal.SIGINT):
            self.cancelled = True
            self.state = RunState.Failed
            self.failure = "Cancelled."
        elif rc == 0 and self.progress.done and not self.progress.error:
            self.state = RunState.Done
        else:
            self.state = RunState.Failed
            self.failure = self._failure_message(rc)

    def _failure_message(self, rc: int) -> str:
        if self.progress.error:
            return self.progress.error["message"]
        if rc == 0:
            return "the engine ended without reporting that it was done (see the log)"
        lines = [line for line in self.stderr_tail if line.strip()]
        last = lines[-1] if lines else ""
        if rc == EXIT_USER_ERROR and last:
            return last.replace("grata-segmenter: error: ", "")
        return f"the engine stopped with exit code {rc}" + (f": {last}" if last else " (see the log)")

    # -- the tree -------------------------------------------------------------------
    def _terminate_tree(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if os.name == "nt":
            self._kill_tree()  # see the module docstring: no gentle first step on Windows
        else:
            _signal_group(proc.pid, signal.SIGTERM)

    def _kill_tree(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/PID", str(proc.pid), "/T", "/F"], capture_output=True, check=False,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.kill()
        except OSError:
            pass

    def tree_alive(self) -> bool:
        """True while any process of the run's group exists (POSIX; on Windows the child only)."""
        if self._proc is None:
            return False
        if os.name == "nt":
            return self._proc.poll() is None
        self._proc.poll()  # reap the leader so that a zombie does not count
        return _group_alive(self._proc.pid)


def python_command(executable: str | None = None) -> list[str]:
    """Interpreter command for the engine: the given one or this interpreter."""
    return [executable or sys.executable]
