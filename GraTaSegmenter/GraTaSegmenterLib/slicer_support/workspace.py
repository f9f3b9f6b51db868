"""Files of one run, and the adapted state kept between runs.

A :class:`RunWorkspace` is a fresh temporary folder holding the input volume
(written by the module as uncompressed NRRD) and the output folder the
command line fills. It is removed after the results are read, and after a
cancel or a failure, so nothing is left behind.

In continual mode the adapted model state must survive between clicks (the
cases of one centre are adapted one after the other): :class:`ContinualState`
owns one state file in its own folder; each run loads it (if present) and
saves the new state to a *separate* file that replaces it only when the run
succeeds, so a cancelled or failed run never damages the state. ``reset``
forgets it. A state belongs to one model and method (:meth:`ContinualState.follow`):
choosing another one between clicks starts again from the source model
instead of failing on a state that does not fit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "GraTaSegmenter-"


class RunWorkspace:
    def __init__(self, parent: str | os.PathLike | None = None):
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        self.input_path = self.root / "input.nrrd"
        self.output_dir = self.root / "output"

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "RunWorkspace":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


class ContinualState:
    FILE_NAME = "adapted_state.pt"

    def __init__(self, parent: str | os.PathLike | None = None):
        self._parent = parent
        self._dir: Path | None = None
        self._key: tuple | None = None
        self.runs = 0

    @property
    def directory(self) -> Path:
        if self._dir is None or not self._dir.is_dir():
            self._dir = Path(tempfile.mkdtemp(prefix=PREFIX + "state-", dir=self._parent))
        return self._dir

    @property
    def path(self) -> Path:
        return self.directory / self.FILE_NAME

    @property
    def pending_path(self) -> Path:
        return self.directory / ("next-" + self.FILE_NAME)

    def load_path(self) -> Path | None:
        """The state to continue from, or None for the first case."""
        return self.path if self._dir is not None and self.path.is_file() else None

    def follow(self, key: tuple) -> bool:
        """Before a continual run with ``key`` (model file, method): True when a
        state of another key was there and has been forgotten (the panel says so)."""
        changed = self.active and self._key is not None and key != self._key
        if changed:
            self.reset()
        self._key = key
        return changed

    def commit(self) -> bool:
        """After a successful run: the state it saved becomes the current one. After an
        episodic run (no state folder made) nothing happens and no folder is made."""
        if self._dir is None:
            return False
        pending = self.pending_path
        if not pending.is_file():
            return False
        os.replace(pending, self.path)
        self.runs += 1
        return True

    def discard_pending(self) -> None:
        if self._dir is not None:
            self.pending_path.unlink(missing_ok=True)

    def reset(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._key = None
        self.runs = 0

    @property
    def active(self) -> bool:
        return self.load_path() is not None
