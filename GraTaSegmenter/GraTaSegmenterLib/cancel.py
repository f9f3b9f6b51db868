"""Cancelling a run: SIGINT (Ctrl+C) and SIGTERM (the Slicer module's Cancel) raise
:class:`Cancelled` in the main thread, so that the run unwinds through its
clean-up code (temporary output folders removed) instead of dying mid-write."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


class Cancelled(Exception):
    """The run was cancelled by a signal (exit status 130)."""


class _State:
    """The cancel state of the active :func:`cancel_on_signals` block."""

    def __init__(self):
        self.fired: list[int] = []
        self.finished = False  # the run is complete: a late signal changes nothing any more
        self.protecting = 0  # inside protected(): a signal waits until the section ends
        self.deferred: int | None = None


_active: _State | None = None


def _cancelled(signum: int) -> Cancelled:
    return Cancelled(f"cancelled by {signal.Signals(signum).name}; no output was kept for the unfinished input")


@contextlib.contextmanager
def cancel_on_signals(then_ignore: bool = False) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Cancelled` (once: a
    second signal while cleaning up is ignored). Previous handlers come back on exit, or,
    with ``then_ignore`` (the program, which only reports and exits after the block), the
    signals are ignored from then on: restored, Python's default for SIGTERM would kill a
    run that has just written ``done``.
    Outside the main thread (signals cannot be handled there) this does nothing.

    Two refinements keep the event stream true to what is on disk: inside
    :func:`protected` (a result folder's rename and its ``output`` event) a signal
    waits until the section is over; after :func:`finish` (the run is complete and
    ``done`` is about to be written) a signal is ignored."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = _State()

    def handler(signum, frame):
        if state.fired or state.finished:
            return
        if state.protecting:
            state.deferred = state.deferred or signum
            return
        state.fired.append(signum)
        raise _cancelled(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    outer, _active = _active, state
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        _active = outer
        for s, h in previous.items():
            signal.signal(s, signal.SIG_IGN if then_ignore else h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def protected() -> Iterator[None]:
    """A section that a cancel must not split (e.g. renaming a result into place and
    announcing it): a signal arriving inside is raised when the section ends."""
    state = _active
    if state is None:
        yield
        return
    state.protecting += 1
    try:
        yield
    finally:
        state.protecting -= 1
    if not state.protecting and state.deferred and not state.fired and not state.finished:
        signum, state.deferred = state.deferred, None
        state.fired.append(signum)
        raise _cancelled(signum)


def finish() -> None:
    """The run is complete: from now on a signal is ignored (the results are all in place)."""
    if _active is not None:
        _active.finished = True


def interruptible(work: Callable[..., T], *args, **kwargs) -> T:
    """``work(*args, **kwargs)`` in a helper thread while the main thread waits for it.

    Python runs a signal handler only between bytecodes of the main thread: inside one long
    call into C (SimpleITK compressing and writing a large result, which takes seconds at
    8000 x 8000) a cancel would wait until the call returns, past the Slicer module's 1 s
    grace before SIGKILL, which leaves the staging folder behind; torch's import must not be
    interrupted at all, and held back it too outlasts the grace. Waiting here instead, the
    main thread raises :class:`Cancelled` at once; the helper is left to run (the caller
    removes what it was writing, and the command line ends the process). Outside a
    :func:`cancel_on_signals` block this is a plain call."""
    if _active is None or threading.current_thread() is not threading.main_thread():
        return work(*args, **kwargs)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            outcome["error"] = exc

    helper = threading.Thread(target=run, name=f"grata-{getattr(work, '__name__', 'work')}", daemon=True)
    helper.start()
    while helper.is_alive():
        helper.join(0.05)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
