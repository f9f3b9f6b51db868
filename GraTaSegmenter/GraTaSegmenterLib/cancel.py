"""Cancelling a run: SIGINT (Ctrl+C) and SIGTERM (the Slicer module's Cancel) raise
:class:`Cancelled` in the main thread, so that the run unwinds through its
clean-up code (temporary output folders removed) instead of dying mid-write."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Cancelled(Exception):
    """The run was cancelled by a signal (exit status 130)."""


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Cancelled` (once: a
    second signal while cleaning up is ignored). Previous handlers come back on exit.
    Outside the main thread (signals cannot be handled there) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        name = signal.Signals(signum).name
        raise Cancelled(f"cancelled by {name}; no output was kept for the unfinished input")

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
